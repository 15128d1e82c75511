"""Prometheus metrics of the HTTP service (``GET /metrics``), in a registry of the app's own."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from detector.policy import Verdict
from service.engine import Engine
from service.pool import WorkPool

CHECK_SECONDS_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 120.0)


class Metrics:
    """Counters the routes update, and gauges read when scraped: the published index's size
    and the work pools' slots."""

    def __init__(self, engine: Engine, pools: list[WorkPool]):
        self.registry = CollectorRegistry()
        self.checks = Counter("clearance_checks", "Checks answered, by decision.", ["decision"],
                              registry=self.registry)
        self.check_seconds = Histogram("clearance_check_seconds",
                                       "Time to decode, fingerprint, match, decide and store one check, seconds "
                                       "(on a worker: upload and queueing not included).",
                                       buckets=CHECK_SECONDS_BUCKETS, registry=self.registry)
        self.decode_failures = Counter("clearance_decode_failures",
                                       "Uploads refused as audio, by kind: unreadable (422) or too_large (413).",
                                       ["kind"], registry=self.registry)
        for verdict in Verdict:
            self.checks.labels(verdict.value)
        for kind in ("unreadable", "too_large"):
            self.decode_failures.labels(kind)
        self.registry.register(_Scraped(engine, pools))

    def exposition(self) -> bytes:
        """Every metric in the Prometheus text format."""
        return generate_latest(self.registry)


class _Scraped:
    """Values read at scrape time rather than counted as they happen."""

    def __init__(self, engine: Engine, pools: list[WorkPool]):
        self.engine = engine
        self.pools = pools

    def collect(self):
        vectors = self.engine.catalog.searcher.index("embedding")
        yield GaugeMetricFamily("clearance_index_vectors", "Reference windows in the published vector index.",
                                value=vectors.size)
        yield GaugeMetricFamily("clearance_index_tracks", "Catalog recordings in the published vector index.",
                                value=len(vectors.tracks()))
        taken = GaugeMetricFamily("clearance_pool_slots_taken", "Requests holding a slot of a work pool "
                                  "(running, or waiting for a worker).", labels=["pool"])
        slots = GaugeMetricFamily("clearance_pool_slots", "Slots of a work pool: workers plus queue.", labels=["pool"])
        refused = CounterMetricFamily("clearance_pool_refused", "Requests answered 503 because every slot of a "
                                      "work pool was taken.", labels=["pool"])
        for pool in self.pools:
            taken.add_metric([pool.what], pool.taken)
            slots.add_metric([pool.what], pool.capacity)
            refused.add_metric([pool.what], pool.refused)
        yield from (taken, slots, refused)
