"""Catalog operations over the database and the vector index, kept in agreement.

Writers (indexing, removal) hold ``HOME/writer.lock``. Indexing inserts a track as *pending*,
adds its vectors, publishes the index atomically, then marks the track *indexed*; opening as a
writer reconciles whatever a crash left between those steps. Readers use indexed tracks only.
"""
from __future__ import annotations

import csv
import fcntl
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from detector import landmarks, version_model
from detector.audio import Clip, DecodeLimits, find_audio
from detector.errors import ClearanceError, Conflict, NotFound
from detector.matcher import Calibration, Match, Matcher
from detector.model import Embedder
from detector.policy import Rights, WorkInfo, WorkRights
from index.layers.embedding import REPORTED_P, embedding_matches
from index.layers.landmarks import landmark_matches
from index.pipeline import (Failure, Fingerprinter, IndexEngine, Outcome, Skipped, new_job_folder, run_local,
                            run_ray)
from index.rebuild import Progress, RebuildReport, rebuild, rebuild_locked
from index.search import Searcher, write_indexes
from index.shards import ShardStore
from index.store import Store, Track, TrackState, valid_work_id
from index.vectors import AUTO, VectorIndex, auto_factory, min_training_vectors, new_index, split_ids, vector_ids


@dataclass
class IndexSummary:
    """What an indexing job did. ``failed`` holds (path, reason), ``too_large`` the paths of those
    refused by a size or duration cap; ``audio_s`` seconds of audio
    indexed in ``elapsed_s`` seconds of wall time; ``stage_s`` seconds spent per stage (hash,
    decode, embed, chromaprint, landmarks and version: CPU seconds summed over workers; add and publish: wall
    seconds of the writer);
    ``rebuilt`` says what a retraining of the index at the end of the job did. ``renamed``: the
    skipped files whose content is in the catalog under another id, as (path, the id this job
    would have given it, the id it has). ``works_kept``: works the manifest describes otherwise
    than the catalog has them, as (what the manifest says, what the catalog keeps)."""

    indexed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    renamed: list[tuple[str, str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    too_large: list[str] = field(default_factory=list)
    audio_s: float = 0.0
    elapsed_s: float = 0.0
    stage_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    rebuilt: "RebuildReport | None" = None
    works_kept: list[tuple[WorkInfo, WorkInfo]] = field(default_factory=list)


STAGES = ("hash", "decode", "embed", "chromaprint", "landmarks", "version", "add", "publish")


@dataclass(frozen=True)
class ManifestEntry:
    external_id: str
    title: str = ""
    owner: str = ""
    work: WorkInfo | None = None         # the work the recording records


def read_manifest(path: str | Path) -> dict[Path, ManifestEntry]:
    """A CSV with ``path`` (relative to the CSV's folder, or absolute) and ``track_id`` or
    ``external_id`` columns; ``title`` and ``owner`` are optional, and so are the work the
    recording records, ``work_id`` (an ISWC or the catalog's own id), and of a work that is not
    in the catalog yet its ``work_title``, ``work_owner`` and ``work_rights`` (protected, licensed
    or unknown, the default). A work already in the catalog keeps its own."""
    path = Path(path)
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise ClearanceError(f"cannot read manifest {path}: {exc.strerror}") from None
    out = {}
    for i, r in enumerate(rows, start=2):
        eid = r.get("external_id") or r.get("track_id")
        if not r.get("path") or not eid:
            raise ClearanceError(f"manifest {path} line {i}: needs 'path' and 'track_id' (or 'external_id')")
        work, rights = None, r.get("work_rights") or WorkRights.unknown.value
        if rights not in {w.value for w in WorkRights}:
            raise ClearanceError(f"manifest {path} line {i}: work_rights is protected, licensed or unknown, "
                                 f"not {rights!r}")
        if r.get("work_id"):
            try:
                work = WorkInfo(valid_work_id(r["work_id"]), r.get("work_title") or "", r.get("work_owner") or "",
                                WorkRights(rights))
            except ClearanceError as exc:
                raise ClearanceError(f"manifest {path} line {i}: {exc}") from None
        out[(path.parent / r["path"]).resolve()] = ManifestEntry(eid, r.get("title") or "", r.get("owner") or "", work)
    return out


class Catalog:
    """The catalog: tracks in ``store``, vectors under ``home/index``, stored vectors under
    ``home/vectors`` (shards, for retraining and rebuilding the index)."""

    def __init__(self, home: str | Path, store: Store, embedder: Embedder, calibration: Calibration,
                 factory: str = AUTO, limits: DecodeLimits = DecodeLimits(), nprobe: int = 32, serve_shards: int = 1):
        self.home = Path(home)
        self.serve_shards = serve_shards      # each publish also saves the catalog in this many shards, if over 1
        self.home.mkdir(parents=True, exist_ok=True)
        self.store = store
        self.embedder = embedder
        self.limits = limits
        self.factory = factory
        self.nprobe = nprobe
        self.shards = ShardStore(self.home / "vectors")
        self.matcher = Matcher(calibration, embedder.ref_hop_s, window_s=embedder.fe.window_s)
        self._vectors: VectorIndex | None = None
        self.searcher = Searcher(self)
        self._loaded = None

    # --- reading ------------------------------------------------------------------------
    @property
    def vectors(self) -> VectorIndex:
        """The published index, reloaded when another process has published a newer one."""
        current = self.home / "index" / "CURRENT"
        stamp = current.stat().st_mtime_ns if current.exists() else None
        if self._vectors is None or stamp != self._loaded:
            self._vectors = VectorIndex.open(self.home / "index", self.embedder.version, self.embedder.dim,
                                             self.embedder.ref_hop_s, self.nprobe)
            self.searcher.forget()
            self._loaded = stamp
        return self._vectors

    @property
    def chroma(self) -> object:
        return self.searcher.index("chromaprint")

    @property
    def landmark_index(self) -> object:
        return self.searcher.index("landmark")

    def find_matches(self, clip: Clip) -> list[Match]:
        """Matches of ``clip`` from every layer, merged, strongest first (``index/search.py``)."""
        return self.searcher.find_matches(clip)

    def landmark_matches(self, clip: Clip, embedding: list[Match]) -> list[Match]:
        """The landmark layer's matches of ``clip``, at the tempos ``embedding`` measured
        (``index/layers/landmarks.py``)."""
        return landmark_matches(self.landmark_index, clip, embedding)

    def embedding_matches(self, clip: Clip, max_p_false: float = REPORTED_P) -> list[Match]:
        """The embedding layer's matches of ``clip`` (``index/layers/embedding.py``)."""
        return embedding_matches(self, clip, max_p_false)

    # --- writing ------------------------------------------------------------------------
    @contextmanager
    def writer_lock(self) -> Iterator[None]:
        """Hold ``HOME/writer.lock`` (released by the kernel if this process dies) and clear what
        a killed writer left half-written."""
        lock = open(self.home / "writer.lock", "w")
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise Conflict(f"another indexing job is writing to {self.home}; wait for it to finish") from None
            shutil.rmtree(self.home / "incoming", ignore_errors=True)
            self.shards.clear_temporary()
            self._loaded = None           # always start from what is published
            yield
        finally:
            lock.close()

    @contextmanager
    def writing(self) -> Iterator[VectorIndex]:
        """Hold the writer lock, reconcile the database with the index, yield the index."""
        with self.writer_lock():
            vectors = self.vectors
            self.reconcile(vectors)
            yield vectors

    def reconcile(self, vectors: VectorIndex) -> None:
        """Make the database and ``vectors`` agree after a crash between the steps of indexing."""
        in_index = vectors.tracks()
        rows = {t.id: t for t in self.store.list_tracks(state=None)}
        stray = [k for k in in_index
                 if k not in rows or (rows[k].state is TrackState.pending and rows[k].vectors != in_index[k])]
        adopt = [k for k in in_index if k in rows and rows[k].state is TrackState.pending and k not in stray]
        lost = [k for k, t in rows.items() if t.state is TrackState.pending and k not in in_index and t.vectors > 0]
        lost += [k for k, t in rows.items()
                 if t.state is TrackState.indexed and t.vectors > 0 and in_index.get(k) != t.vectors]
        silent = [k for k, t in rows.items() if t.state is TrackState.pending and t.vectors == 0]
        if stray or lost:
            vectors.remove(stray + lost)
            vectors.save(write_indexes(self.store, vectors.folder, added=adopt + silent, dropped=stray + lost,
                                       cut=(vectors, self.serve_shards)))
        self.store.delete(lost)
        self.store.mark_indexed(adopt + silent)

    def index_paths(self, paths: list[str | Path], rights: Rights, owner: str = "", manifest: str | Path | None = None,
                    entries: dict[Path, ManifestEntry] | None = None,
                    progress: Callable[[str, str, float], None] | None = None, publish_every_s: float = 30.0,
                    workers: int = 0, engine: IndexEngine | str = IndexEngine.local,
                    ray_address: str | None = None) -> IndexSummary:
        """Index audio files and folders; a bad file is recorded and the job goes on.

        External ids, titles and owners come from ``entries`` (resolved path → entry), else from
        the ``manifest`` CSV, else from file names. ``progress(path, outcome, audio_seconds)`` is
        called after each file. ``engine`` ``local`` runs the stages in this process
        (``workers=0``) or in ``workers`` processes, ``ray`` as Ray Data tasks (``workers``
        actors; ``ray_address`` a cluster, else a local instance). Finished tracks are published
        every ``publish_every_s`` seconds: a killed job loses at most that much work, and
        running it again does the rest. At the end, the index is retrained if the factory
        wanted for its new size differs from the one it has (``RebuildReport`` in ``rebuilt``).
        """
        try:
            engine = IndexEngine(engine)
        except ValueError:
            raise ClearanceError(f"unknown indexing engine '{engine}'; use one of "
                                 f"{', '.join(e.value for e in IndexEngine)}") from None
        if self.factory != AUTO:
            new_index(self.embedder.dim, self.factory)       # refuse a bad factory before the work, not after
        entries = {**(read_manifest(manifest) if manifest else {}), **(entries or {})}
        files = find_audio(paths)
        summary = IndexSummary()
        t0 = time.perf_counter()
        with self.writing() as vectors:
            batch = _Unpublished()
            outcomes = self.outcomes(files, workers, engine, ray_address)
            skips: list[tuple[str, str, str]] = []
            last = time.monotonic()
            try:
                for outcome in outcomes:
                    path, label, seconds = self._take(outcome, rights, owner, entries, vectors, batch, summary, skips)
                    if progress:
                        progress(path, label, seconds)
                    if batch.keys and time.monotonic() - last > publish_every_s:
                        self._publish(vectors, batch, summary)
                        last = time.monotonic()
            finally:
                outcomes.close()
                self._publish(vectors, batch, summary)
                shutil.rmtree(self.home / "incoming", ignore_errors=True)
            # a duplicate may come before the file that is kept: its id is looked up at the end, in one go
            kept = self.store.external_ids_by_hash(sha256 for _, _, sha256 in skips)
            summary.renamed = [(path, external_id, kept[sha256]) for path, external_id, sha256 in skips
                               if kept.get(sha256, external_id) != external_id]
            wanted = self.wanted_factory(vectors.size)
            if wanted != vectors.info.factory and vectors.size >= min_training_vectors(wanted):
                summary.rebuilt = rebuild_locked(self, workers, engine, ray_address)
        summary.elapsed_s = time.perf_counter() - t0
        return summary

    def outcomes(self, files: list[Path], workers: int, engine: str, ray_address: str | None,
                  is_known: Callable[[str], bool] | None = None) -> Iterator[Outcome]:
        fingerprinter = Fingerprinter(self.embedder, self.limits)
        is_known = is_known or (lambda sha: self.store.find_by_hash(sha) is not None)
        if engine == IndexEngine.ray:
            return run_ray(files, fingerprinter, workers or 1, is_known, new_job_folder(self.home / "incoming"),
                           ray_address)
        return run_local(files, fingerprinter, workers, is_known)

    def _take(self, outcome: Outcome, rights: Rights, owner: str, entries: dict[Path, ManifestEntry],
              vectors: VectorIndex, batch: "_Unpublished", summary: IndexSummary,
              skips: list[tuple[str, str, str]]) -> tuple[str, str, float]:
        """Record one outcome: (path, ``indexed``/``skipped``/``failed``, seconds of audio); a
        skipped file's (path, id it would get, sha256) also goes to ``skips``."""
        if isinstance(outcome, Failure):
            if outcome.too_large:
                summary.too_large.append(outcome.path)
            return self._fail(outcome.path, outcome.reason, summary)
        source = outcome.source
        summary.stage_s["hash"] += source.hash_s
        path = Path(source.path)
        entry = entries.get(path.resolve()) or ManifestEntry(path.stem)
        if isinstance(outcome, Skipped) or source.sha256 in batch.hashes:
            summary.skipped.append(source.path)
            skips.append((source.path, entry.external_id, source.sha256))
            return source.path, "skipped", 0.0
        for f in fields(outcome.times):
            summary.stage_s[f.name.removesuffix("_s")] += getattr(outcome.times, f.name)
        t0 = time.perf_counter()
        try:
            key = self.store.add_pending(
                external_id=entry.external_id, title=entry.title or entry.external_id, owner=entry.owner or owner,
                rights=rights, sha256=source.sha256, source_path=str(path.resolve()), duration_s=outcome.duration_s,
                model=outcome.model, vectors=len(outcome.windows), fingerprint=outcome.chromaprint,
                peaks=outcome.peaks, peaks_version=landmarks.PEAKS, classes=outcome.classes,
                classes_version=version_model.PITCH_CLASSES, work=entry.work)
        except Conflict as exc:
            return self._fail(source.path, str(exc), summary)
        if entry.work:
            kept = self.store.find_work(entry.work.external_id)
            if kept != entry.work and (entry.work, kept) not in summary.works_kept:
                summary.works_kept.append((entry.work, kept))
        vectors.add(key, outcome.vectors, outcome.windows)
        batch.add(key, source.sha256, vector_ids(key, outcome.windows), outcome.vectors)
        summary.indexed.append(source.path)
        summary.audio_s += outcome.duration_s
        summary.stage_s["add"] += time.perf_counter() - t0
        return source.path, "indexed", outcome.duration_s

    def _fail(self, path: str, reason: str, summary: IndexSummary) -> tuple[str, str, float]:
        summary.failed.append((path, reason))
        self.store.record_failure(path, reason)
        return path, "failed", 0.0

    def _publish(self, vectors: VectorIndex, batch: "_Unpublished", summary: IndexSummary) -> None:
        """Store the batch's vectors as a shard, publish the index, then mark its tracks indexed:
        a crash between any two steps is repaired by ``_reconcile``."""
        if not batch.keys:
            return
        t0 = time.perf_counter()
        if batch.ids:
            self.shards.write(np.concatenate(batch.ids), np.concatenate(batch.vectors), self.embedder.version)
        vectors.save(write_indexes(self.store, vectors.folder, added=batch.keys, cut=(vectors, self.serve_shards)))
        self.store.mark_indexed(batch.keys)
        batch.clear()
        self._published()
        summary.stage_s["publish"] += time.perf_counter() - t0

    def _published(self) -> None:
        self._loaded = (self.home / "index" / "CURRENT").stat().st_mtime_ns
        self.searcher.forget()

    def remove(self, external_ids: list[str]) -> list[Track]:
        """Take tracks down: their vectors leave the index, then their rows the database, then
        their stored vectors the shards."""
        found = [self.store.find(e) for e in external_ids]
        missing = [e for e, t in zip(external_ids, found) if t is None]
        if missing:
            raise NotFound(f"no track with external_id {', '.join(repr(m) for m in missing)}")
        keys = np.asarray([t.id for t in found], np.int64)
        with self.writing() as vectors:
            vectors.remove(keys.tolist())
            vectors.save(write_indexes(self.store, vectors.folder, dropped=keys.tolist(),
                                       cut=(vectors, self.serve_shards)))
            self.store.delete(keys.tolist())
            self._published()
            self.shards.purge(self.embedder.dim, lambda ids, model: ~np.isin(split_ids(ids)[0], keys))
        return found

    # --- rebuilding ---------------------------------------------------------------------
    def rebuild(self, workers: int = 0, engine: str = "local", ray_address: str | None = None,
                progress: Progress | None = None) -> RebuildReport:
        """Retrain and rebuild the index from the stored vectors (``index/rebuild.py``)."""
        return rebuild(self, workers, engine, ray_address, progress)

    def wanted_factory(self, n_vectors: int) -> str:
        return auto_factory(n_vectors) if self.factory == AUTO else self.factory

    def unload(self) -> None:
        """Drop the loaded indexes: the next search opens what is published."""
        self._vectors = None
        self.searcher.forget()


class _Unpublished:
    """What an indexing job added since it last published: track keys and the vectors to store
    as a shard (ids (n,) int64, vectors (n, dim) float32 per track); and the content hashes of
    everything the job added, kept across publishes, so the same content twice in one job is
    added once."""

    def __init__(self):
        self.keys: list[int] = []
        self.hashes: set[str] = set()
        self.ids: list[np.ndarray] = []
        self.vectors: list[np.ndarray] = []

    def add(self, key: int, sha256: str, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.keys.append(key)
        self.hashes.add(sha256)
        if len(ids):
            self.ids.append(ids)
            self.vectors.append(vectors)

    def clear(self) -> None:
        """Forget what was published (not the hashes)."""
        self.keys.clear()
        self.ids.clear()
        self.vectors.clear()
