"""The check engine shared by the CLI and the HTTP API: decode → fingerprint → match → decide,
and the one place where a check result's JSON shape is made."""
from __future__ import annotations

import hashlib
import os
import shutil
import time
import uuid
from functools import cached_property, partial
from pathlib import Path

from detector import version_model
from detector.audio import AUDIO_SUFFIXES, Clip, DecodeLimits, decode
from detector.errors import AudioError
from detector.matcher import Calibration
from detector.model import DEFAULT_WEIGHTS, Embedder
from detector.policy import Decision, Policy, decide
from index.catalog import Catalog
from index.pipeline import IndexEngine
from index.search import Searcher
from index.sharded import RayShards, ShardSource
from index.store import Store
from service.settings import Settings


class Engine:
    """Models, policy and catalog loaded once, per process."""

    def __init__(self, settings: Settings):
        self.settings = settings

    @cached_property
    def embedder(self) -> Embedder:
        return Embedder.load(self.settings.model)

    @cached_property
    def calibration(self) -> Calibration:
        path = self.settings.calibration
        if path is None:
            weights = self.settings.model or Path(__file__).resolve().parents[1] / "detector" / "weights" / DEFAULT_WEIGHTS
            path = Path(weights).with_suffix(".calibration.json")
        return Calibration.load(path)

    @cached_property
    def policy(self) -> Policy:
        return Policy.load(self.settings.policy)

    def limits(self, max_seconds: float) -> DecodeLimits:
        s = self.settings
        return DecodeLimits(int(s.max_upload_mb * 1e6), max_seconds, s.decode_timeout_s)

    @cached_property
    def store(self) -> Store:
        """The catalog database: keys and stored checks need no model loaded."""
        self.settings.home.mkdir(parents=True, exist_ok=True)
        return Store(self.settings.db_url)

    @cached_property
    def catalog(self) -> Catalog:
        """The catalog that checks read."""
        return self.open_catalog()

    def open_catalog(self) -> Catalog:
        """A new handle on the catalog with its own in-memory index. The HTTP service changes the
        catalog through a second handle, so checks running meanwhile never search an index that
        is being changed; they load the new one once it is published."""
        s = self.settings
        catalog = Catalog(s.home, self.store, self.embedder, self.calibration, factory=s.index_factory,
                          limits=self.limits(s.max_reference_s), nprobe=s.index_nprobe, serve_shards=s.serve_shards)
        if s.serve_engine is IndexEngine.ray:
            catalog.searcher = Searcher(catalog, s.serve_shards, self.ray_shards)
        elif s.serve_shards > 1:
            catalog.searcher = Searcher(catalog, s.serve_shards)
        return catalog

    @cached_property
    def ray_shards(self) -> RayShards:
        """The catalog's shards on Ray Serve (``serve_engine`` 'ray'), one set for every catalog
        handle of this engine: ``serve_shards`` shards of ``serve_replicas`` replicas each, named
        after the catalog's home (two catalogs can be served from one cluster)."""
        s = self.settings
        home = hashlib.sha1(str(Path(s.home).resolve()).encode()).hexdigest()[:10]
        return RayShards(self.shard_source(), s.serve_shards, s.serve_replicas, s.ray_address,
                         name=f"clearance-{home}")

    def shard_source(self) -> ShardSource:
        """What a shard's replica opens: this catalog's saved shards, or the whole catalog to cut one."""
        s = self.settings
        return ShardSource.of(s.home, self.embedder.version, s.index_nprobe, partial(whole_catalog, s))

    def release(self) -> None:
        """Take down what this engine started outside its process: the shards' Serve applications."""
        if "ray_shards" in self.__dict__:
            self.ray_shards.close()
            del self.ray_shards

    def assess(self, clip: Clip) -> Decision:
        """The decision for a decoded output, with rights as the catalog says now."""
        matches = self.catalog.find_matches(clip)
        return decide(matches, self.store.infos(m.track for m in matches), clip.duration, self.policy)

    def check(self, source, name: str, *, submitter: str | None = None, idempotency_key: str | None = None) -> dict:
        """Check one output (a path or bytes), store the result and return it."""
        t0 = time.perf_counter()
        clip = decode(source, self.embedder.fe.sample_rate, name=name, limits=self.limits(self.settings.max_audio_s))
        if clip.duration < self.embedder.fe.window_s:    # nothing to fingerprint: an answer would be a guess
            raise AudioError(name, f"the audio is {clip.duration:.2f} s long; a check needs at least "
                                   f"{self.embedder.fe.window_s:g} s")
        decision = self.assess(clip)
        result = result_json(str(uuid.uuid4()), name, clip.duration, decision, self.embedder.version,
                             self.policy.version, time.perf_counter() - t0, version_model.shipped()[0].version)
        kept = self.output_path(result["id"], name) if self.settings.keep_outputs else None
        if kept:
            self._keep_output(source, kept)
        try:
            self.store.save_check(result, submitter=submitter, idempotency_key=idempotency_key)
        except BaseException:    # DuplicateCheck (the same key raced and lost) or a database error: no check
            if kept:             # refers to the file, so it goes too
                kept.unlink(missing_ok=True)
            raise
        return result

    def output_path(self, check_id: str, name: str) -> Path:
        """Where the audio of check ``check_id`` (input ``name``) is kept: ``HOME/outputs/<id><suffix>``,
        the suffix of ``name`` when it is an audio one, so the file is served with its type."""
        suffix = Path(name).suffix.lower()
        return self.settings.home / "outputs" / f"{check_id}{suffix if suffix in AUDIO_SUFFIXES else ''}"

    @staticmethod
    def _keep_output(source, dest: Path) -> None:
        """Copy the checked audio (a path or bytes) to ``dest``: written beside, then renamed."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")
        if isinstance(source, (bytes, bytearray)):
            part.write_bytes(source)
        else:
            shutil.copyfile(source, part)
        os.replace(part, dest)


def result_json(check_id: str, name: str, duration: float, decision: Decision, model: str, policy: str,
                elapsed_s: float, version_model: str) -> dict:
    """The check result, as the CLI prints it and the API returns it."""
    return {
        "id": check_id,
        "input": name,
        "duration_s": round(duration, 3),
        "decision": decision.verdict.value,
        "reasons": list(decision.reasons),
        "matches": [{
            "external_id": info.external_id, "title": info.title, "owner": info.owner, "rights": info.rights.value,
            "work_id": info.work.external_id if info.work else None,
            "work_title": info.work.title if info.work else None,
            "work_owner": info.work.owner if info.work else None,
            "work_rights": info.work.rights.value if info.work else None,
            "kind": "reperformance" if m.method == "version" else "copy", "decided_by": right,
            "score": round(m.score, 6), "query_start": round(m.query_start, 2), "query_end": round(m.query_end, 2),
            "ref_start": round(m.ref_start, 2), "ref_end": round(m.ref_end, 2),
            "tempo_ratio": round(m.tempo_ratio, 4), "key_shift_st": m.key_shift, "method": m.method,
        } for (m, info), right in zip(decision.matches, decision.decided_by)],
        "model": model,
        "version_model": version_model,
        "policy": policy,
        "elapsed_ms": round(elapsed_s * 1000),
    }


def whole_catalog(settings: Settings) -> Catalog:
    """The catalog of ``settings``, searched whole: what a shard's replica cuts its shard from."""
    return Engine(settings.model_copy(update={"serve_shards": 1, "serve_engine": IndexEngine.local})).catalog
