"""A catalog searched in shards: its tracks split by key into ``count`` shards (track ``k`` in
shard ``k % count``), each holding its slice of every layer's index (``Shard``), so that no one
process has to hold the whole catalog.

A check is fingerprinted once; every layer asks each shard what it finds among its tracks and
merges the answers as its index's own search would rank them (``index.vectors.nearest``,
``detector.landmarks.best``, ``detector.chromaprint.best``, ``detector.version.best``): a hash
or a sub-fingerprint value is as common in a shard as in the whole catalog, and a question about
one track goes to the shard that holds it. The matcher and the policy then decide on the merged
answers as on one process's, so a sharded check returns what an unsharded one returns (a test
pins it on real audio). The layers search the proxies here (``ShardedVectors`` …) as they would
search their own indexes.

Shards answer in this process (``LocalShards``) or from Ray actors (``RayShards``: each shard
held by ``replicas`` actors, on a local Ray instance or a cluster); a proxy asks them through a
``Fanout``, every shard at once. A shard whose actor dies is asked of another replica; with none
left, the check fails (``Unavailable``: HTTP 503) rather than be decided without it.
"""
from __future__ import annotations

import itertools
import logging
import os
import threading
from typing import Callable, Protocol

import numpy as np

from detector import chromaprint, landmarks, version
from detector.errors import ClearanceError, Unavailable
from index.vectors import Candidates, IndexInfo, VectorIndex, nearest, split_ids


class Fanout(Protocol):
    """How a proxy asks its shards: ``every(method, *args)``: each shard's answer, in shard order;
    ``one(shard, method, *args)``: shard number ``shard``'s."""

    count: int

    def every(self, method: str, *args) -> list: ...

    def one(self, shard: int, method: str, *args): ...


class Shard:
    """Shard ``number`` of ``count``: every layer's index of the catalog's tracks in it, cut from
    the whole catalog's (``of``); its methods answer the proxies' questions."""

    def __init__(self, number: int, count: int, indexes: dict[str, object]):
        self.number, self.count, self.indexes = number, count, indexes

    @classmethod
    def of(cls, indexes: dict[str, object], number: int, count: int) -> "Shard":
        """Shard ``number`` of ``count`` of the catalog whose layers' indexes are ``indexes`` (by
        layer name: ``embedding``, ``chromaprint``, ``landmark``, ``version``)."""
        vectors: VectorIndex = indexes["embedding"]
        keys = np.unique(np.concatenate([split_ids(vectors.ids())[0]] +
                                        [np.asarray(indexes[n].ids, np.int64) for n in ("chromaprint", "landmark", "version")]))
        others = keys[keys % count != number].tolist()
        return cls(number, count, {"embedding": vectors.without(others),
                                   "chromaprint": indexes["chromaprint"].updated({}, others),
                                   "landmark": indexes["landmark"].shard(others),
                                   "version": indexes["version"].updated({}, others)})

    def sizes(self) -> dict[str, int]:
        return {name: len(index) if name != "embedding" else index.size for name, index in self.indexes.items()}

    def vector_tracks(self) -> dict[int, int]:
        return self.indexes["embedding"].tracks()

    def vectors(self, queries: np.ndarray, k: int, exact: bool) -> Candidates:
        return self.indexes["embedding"].candidates(queries, k, exact)

    def landmarks(self, *args) -> list:
        return self.indexes["landmark"].ranked(*args)

    def chroma_counts(self, query: np.ndarray) -> np.ndarray:
        return self.indexes["chromaprint"].counts(query)

    def chroma(self, query: np.ndarray, max_matches: int, counts: np.ndarray) -> list:
        return self.indexes["chromaprint"].ranked(query, max_matches, counts)

    def versions(self, classes, starts: np.ndarray, query: np.ndarray) -> list:
        return self.indexes["version"].ranked(classes, starts, query)


class ShardServer:
    """What a Ray actor holds: shard ``number`` of ``count`` of the catalog that ``open_catalog()``
    opens, cut from its published indexes (read whole while it is cut) and cut again when
    asked to ``load`` a newer generation; the shard of the generation before stays for the
    checks that started with it, as the published generation before does for readers."""

    def __init__(self, open_catalog: Callable[[], object], number: int, count: int):
        self.catalog, self.number, self.count = open_catalog(), number, count
        self.shards: dict[int, Shard] = {}

    def load(self, generation: int) -> dict:
        """Hold the shard of the published generation (at least ``generation``); its sizes."""
        from index.search import LAYERS

        catalog = self.catalog
        if not self.shards or max(self.shards) < generation:
            catalog.searcher.forget()
            current = catalog.vectors.generation
            self.shards[current] = Shard.of({layer.name: layer.load(catalog) for layer in LAYERS}, self.number,
                                            self.count)
            self.shards = {g: self.shards[g] for g in sorted(self.shards)[-2:]}
            catalog.unload()                  # the whole catalog's indexes: only the shards are kept
        newest = max(self.shards)
        shard = self.shards[newest]
        return {**shard.sizes(), "skimmed": shard.indexes["embedding"].skimmed, "generation": newest,
                "pid": os.getpid()}

    def ask(self, generation: int, method: str, *args):
        shard = self.shards.get(generation)
        if shard is None:
            raise Unavailable(f"shard {self.number} of {self.count} no longer holds generation {generation} of the "
                              f"catalog, published over twice during this check: check again")
        return getattr(shard, method)(*args)


class RayShards:
    """``count`` shards on Ray, each held by ``replicas`` actors (``ShardServer``), started on the
    cluster at ``address`` (None: ``RAY_ADDRESS``, else a local instance of this machine's cores).
    A question goes to each shard's replicas in turn; a replica that died is not asked again."""

    def __init__(self, open_catalog: Callable[[], object], count: int, replicas: int = 1, address: str | None = None):
        try:
            import ray
        except ImportError as exc:
            raise ClearanceError("serving shards on Ray needs Ray installed: pip install 'clearance[ray]'") from exc

        self.ray, self.count = ray, count
        if not ray.is_initialized():
            _start_ray(ray, address or os.environ.get("RAY_ADDRESS") or None)
        actor = ray.remote(num_cpus=0)(ShardServer)
        self.replicas = [[actor.remote(open_catalog, k, count) for _ in range(replicas)] for k in range(count)]
        self._turn = [itertools.count() for _ in range(count)]
        self._lock = threading.Lock()

    def load(self, generation: int) -> list[dict]:
        """Every replica holds its shard of ``generation`` (or a newer one); each shard's sizes."""
        calls = [[(r, r.load.remote(generation)) for r in self._live(k)] for k in range(self.count)]
        sizes = []
        for k, asked in enumerate(calls):
            answers = [a for a in (self._get(k, r, call) for r, call in asked) if a is not None]
            if not answers:
                self._live(k)                     # raises: none left
            sizes.append(answers[0])
        return sizes

    def pinned(self, generation: int) -> Fanout:
        """What asks the shards of ``generation``: every question of a check goes to the shards of
        the generation it started with."""
        return _Pinned(self, generation)

    def every(self, generation: int, method: str, *args) -> list:
        asked = [self._send(k, (generation, method, *args)) for k in range(self.count)]
        return [self._answer(k, (generation, method, *args), *sent) for k, sent in enumerate(asked)]

    def one(self, generation: int, shard: int, method: str, *args):
        return self._answer(shard, (generation, method, *args), *self._send(shard, (generation, method, *args)))

    def _live(self, shard: int) -> list:
        with self._lock:
            live = list(self.replicas[shard])
        if not live:
            raise Unavailable(f"shard {shard} of {self.count} of the catalog has no replica left: no check is "
                              f"decided without it; restart the service to start its replicas again")
        return live

    def _send(self, shard: int, question: tuple):
        live = self._live(shard)
        replica = live[next(self._turn[shard]) % len(live)]
        return replica, replica.ask.remote(*question)

    def _answer(self, shard: int, question: tuple, replica, call):
        """The answer to ``call``; asked again of another replica where ``replica`` died."""
        found = self._get(shard, replica, call)
        return found if found is not None else self._answer(shard, question, *self._send(shard, question))

    def _get(self, shard: int, replica, call):
        """What ``call`` returned, or None where ``replica`` is gone (then no longer asked)."""
        try:
            return self.ray.get(call)
        except self.ray.exceptions.RayTaskError as exc:        # raised by the shard
            if isinstance(exc.cause, ClearanceError):
                raise exc.cause from None
            raise
        except (self.ray.exceptions.RayActorError, self.ray.exceptions.ActorUnavailableError):
            with self._lock:
                if replica in self.replicas[shard]:
                    self.replicas[shard].remove(replica)
                left = len(self.replicas[shard])
            logging.getLogger(__name__).warning("a replica of shard %d of %d is gone; %d left", shard, self.count, left)
            return None


class _Pinned:
    """``RayShards`` asking the shards of one generation."""

    def __init__(self, shards: RayShards, generation: int):
        self.shards, self.generation, self.count = shards, generation, shards.count

    def every(self, method: str, *args) -> list:
        return self.shards.every(self.generation, method, *args)

    def one(self, shard: int, method: str, *args):
        return self.shards.one(self.generation, shard, method, *args)


def _start_ray(ray, address: str | None) -> None:
    """Connect to the Ray cluster at ``address``, or start a local instance, from a thread that
    lives as long as this process: the processes of a local instance are killed when the thread
    that started them ends (Linux's parent-death signal follows the thread), and the service
    loads its indexes on a worker thread that ends when idle (the local instance, and every
    shard with it, died a few seconds into a load run)."""
    done, failed = threading.Event(), []

    def keep() -> None:
        try:
            os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                     configure_logging=True, **({} if address else {"num_cpus": os.cpu_count() or 1}))
        except BaseException as exc:          # raised again in the caller's thread
            failed.append(exc)
        finally:
            done.set()
        threading.Event().wait()

    threading.Thread(target=keep, name="clearance-ray", daemon=True).start()
    done.wait()
    if failed:
        raise failed[0]


class LocalShards:
    """Shards held in this process, asked one after the other."""

    def __init__(self, shards: list[Shard]):
        self.shards, self.count = shards, len(shards)

    def every(self, method: str, *args) -> list:
        return [getattr(s, method)(*args) for s in self.shards]

    def one(self, shard: int, method: str, *args):
        return getattr(self.shards[shard], method)(*args)


class ShardedVectors:
    """The embedding layer's index, in shards: each query's ``k`` nearest of all shards'
    candidates (``skimmed``: whether they search skims where not asked to search exactly)."""

    def __init__(self, fanout: Fanout, info: IndexInfo, size: int, skimmed: bool):
        self.fanout, self.info, self.size, self.skimmed = fanout, info, size, skimmed

    def search(self, queries: np.ndarray, k: int, exact: bool = True) -> tuple[np.ndarray, np.ndarray]:
        return nearest(self.fanout.every("vectors", queries, k, exact), min(k, self.size), exact or not self.skimmed)

    def tracks(self) -> dict[int, int]:
        """Vector count per track key, of every shard."""
        return {k: n for part in self.fanout.every("vector_tracks") for k, n in part.items()}


class ShardedLandmarks:
    """The landmark layer's index, in shards (``LandmarkIndex.search``'s arguments)."""

    def __init__(self, fanout: Fanout, calibration, size: int):
        self.fanout, self.calibration, self.size = fanout, calibration, size

    def __len__(self) -> int:
        return self.size

    def search(self, query: np.ndarray, max_matches: int = 5, tempo: float = 1.0, track: int | None = None,
               fan_out: int = landmarks.QUERY.fan_out, near: float | None = None) -> list[landmarks.LandmarkMatch]:
        args = (query, max_matches, tempo, track, fan_out, near)
        if track is not None:
            return landmarks.best([self.fanout.one(track % self.fanout.count, "landmarks", *args)], max_matches)
        return landmarks.best(self.fanout.every("landmarks", *args), max_matches)


class ShardedChroma:
    """The Chromaprint layer's index, in shards: a value's commonness summed over them first."""

    def __init__(self, fanout: Fanout, size: int):
        self.fanout, self.size = fanout, size

    def __len__(self) -> int:
        return self.size

    def search(self, query: np.ndarray, max_matches: int = 5) -> list[chromaprint.ChromaMatch]:
        counts = np.sum(self.fanout.every("chroma_counts", query), axis=0)
        return chromaprint.best(self.fanout.every("chroma", query, max_matches, counts), max_matches)


class ShardedVersions:
    """The version layer's index, in shards: the output's version vectors computed once."""

    def __init__(self, fanout: Fanout, model: version.VersionModel, size: int, current: bool = True):
        self.fanout, self.model, self.size, self.current = fanout, model, size, current

    def __len__(self) -> int:
        return self.size

    def search(self, classes) -> list[version.VersionMatch]:
        if self.size == 0 or classes.shape[1] < version.SHORTEST_S * version.CHROMA_FPS:
            return []
        return version.best(self.fanout.every("versions", classes, *self.model.vectors(classes, version.QUERY_HOP_S)))


def proxies(fanout: Fanout, sizes: list[dict[str, int]], info: IndexInfo, skimmed: bool,
            landmark_calibration, version_model: version.VersionModel) -> dict[str, object]:
    """What each layer searches, by name, given its shards (``fanout``) and their ``sizes``."""
    total: Callable[[str], int] = lambda name: sum(s[name] for s in sizes)
    return {"embedding": ShardedVectors(fanout, info, total("embedding"), skimmed),
            "chromaprint": ShardedChroma(fanout, total("chromaprint")),
            "landmark": ShardedLandmarks(fanout, landmark_calibration, total("landmark")),
            "version": ShardedVersions(fanout, version_model, total("version"))}


def in_process(indexes: dict[str, object], count: int) -> dict[str, object]:
    """``indexes`` (each layer's, by name) cut into ``count`` shards held in this process, and the
    proxies that search them."""
    shards = [Shard.of(indexes, k, count) for k in range(count)]
    return proxies(LocalShards(shards), [s.sizes() for s in shards], indexes["embedding"].info,
                   indexes["embedding"].skimmed, indexes["landmark"].calibration, indexes["version"].model)
