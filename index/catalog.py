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
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from detector import chromaprint, landmarks
from detector.audio import Clip, DecodeLimits, find_audio
from detector.errors import ClearanceError
from detector.matcher import (TEMPO_TOLERANCE, Calibration, Hits, Match, Matcher, from_chromaprint, merge,
                              stretches, window_background)
from detector.model import Embedder
from detector.policy import Rights
from index.pipeline import Failure, Fingerprinter, Outcome, Skipped, new_job_folder, run_local, run_ray
from index.shards import ShardStore
from index.store import CatalogError, Store, Track
from index.vectors import (AUTO, IndexMismatch, VectorIndex, auto_factory, measure_recall, min_training_vectors,
                           needs_training, new_index, split_ids, vector_ids)

QUERY_HOP_S = 0.25
NEIGHBOURS = 8              # hits per query window
BACKGROUND_SEARCH = 64      # neighbours searched for each query window's background
TRANSPOSE_ST = 6.0
REPORTED_P = 0.5            # embedding matches less likely than this by chance are reported
TEMPO_LOOKS = 2             # landmark searches at a tempo the embedding measured, per output


@dataclass
class IndexSummary:
    """What an indexing job did. ``failed`` holds (path, reason), ``too_large`` the paths of those
    refused by a size or duration cap; ``audio_s`` seconds of audio
    indexed in ``elapsed_s`` seconds of wall time; ``stage_s`` seconds spent per stage (hash,
    decode, embed, chromaprint and landmarks: CPU seconds summed over workers; add and publish: wall
    seconds of the writer);
    ``rebuilt`` says what a retraining of the index at the end of the job did. ``renamed``: the
    skipped files whose content is in the catalog under another id, as (path, the id this job
    would have given it, the id it has)."""

    indexed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    renamed: list[tuple[str, str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    too_large: list[str] = field(default_factory=list)
    audio_s: float = 0.0
    elapsed_s: float = 0.0
    stage_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    rebuilt: "RebuildReport | None" = None


STAGES = ("hash", "decode", "embed", "chromaprint", "landmarks", "add", "publish")


@dataclass(frozen=True)
class RebuildReport:
    """What ``Catalog.rebuild`` made: an index of ``factory`` holding ``vectors`` vectors of
    ``tracks`` tracks (``reembedded`` of them embedded again from their files), ``bytes`` on disk,
    with ``recall`` (recall@1 against exact search on noisy copies of stored vectors)."""

    factory: str
    tracks: int
    vectors: int
    reembedded: int
    bytes: int
    recall: float
    elapsed_s: float
    hop_s: float

    @property
    def mb_per_hour(self) -> float:
        """MB of index per hour of catalog audio (vectors every ``hop_s`` seconds)."""
        return self.bytes / max(self.vectors, 1) * (3600 / self.hop_s) / 1e6


@dataclass(frozen=True)
class ManifestEntry:
    external_id: str
    title: str = ""
    owner: str = ""


def read_manifest(path: str | Path) -> dict[Path, ManifestEntry]:
    """A CSV with ``path`` (relative to the CSV's folder, or absolute) and ``track_id`` or
    ``external_id`` columns; ``title`` and ``owner`` are optional."""
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
        out[(path.parent / r["path"]).resolve()] = ManifestEntry(eid, r.get("title") or "", r.get("owner") or "")
    return out


class RebuildError(ClearanceError):
    """A rebuild that cannot keep every track: their vectors are not stored and their files are
    gone or changed. Nothing was changed."""


class Catalog:
    """The catalog: tracks in ``store``, vectors under ``home/index``, stored vectors under
    ``home/vectors`` (shards, for retraining and rebuilding the index)."""

    def __init__(self, home: str | Path, store: Store, embedder: Embedder, calibration: Calibration,
                 factory: str = AUTO, limits: DecodeLimits = DecodeLimits(), nprobe: int = 32):
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        self.store = store
        self.embedder = embedder
        self.limits = limits
        self.factory = factory
        self.nprobe = nprobe
        self.shards = ShardStore(self.home / "vectors")
        self.matcher = Matcher(calibration, embedder.ref_hop_s, window_s=embedder.fe.window_s)
        self._vectors: VectorIndex | None = None
        self._chroma: chromaprint.ChromaIndex | None = None
        self._landmarks: landmarks.LandmarkIndex | None = None
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
            self._chroma = self._landmarks = None
            self._loaded = stamp
        return self._vectors

    @property
    def chroma(self) -> chromaprint.ChromaIndex:
        _ = self.vectors
        if self._chroma is None:
            self._chroma = chromaprint.ChromaIndex(self.store.chromaprints())
        return self._chroma

    @property
    def landmark_index(self) -> landmarks.LandmarkIndex:
        _ = self.vectors
        if self._landmarks is None:
            self._landmarks = landmarks.LandmarkIndex(self.store.landmarks())
        return self._landmarks

    def find_matches(self, clip: Clip) -> list[Match]:
        """Matches of ``clip`` from the three layers, merged, strongest first."""
        embedding = self.embedding_matches(clip, max_p_false=1.0)
        found = [m for m in embedding if m.p_false <= REPORTED_P]
        found += [replace(from_chromaprint(m), p_false=min(1.0, m.p_false * stretches(clip.duration)))
                  for m in self.chroma.search(chromaprint.fingerprint(clip))]
        found += self.landmark_matches(clip, embedding)
        return merge(found)

    def landmark_matches(self, clip: Clip, embedding: list[Match]) -> list[Match]:
        """Landmark stretches of ``clip`` at tempo 1.0, and at the tempo that each of the
        ``TEMPO_LOOKS`` strongest ``embedding`` matches measured where that is not 1.0, on its
        track: landmarks find a copy played faster or slower once they know how much (its peaks
        keep their frequencies), and the embedding measures that even where its own evidence is
        weak. Only the strongest few are asked: every search is another chance for unrelated
        music to collect votes, and an output's weaker matches at other tempos are mostly chance
        alignments (asked for all of them, the landmarks' strongest chance match rose from about
        20 votes to 35 on the robustness benchmark's negatives)."""
        index, query = self.landmark_index, landmarks.peaks(clip, landmarks.QUERY)
        found = index.search(query)
        changed = [m for m in embedding if abs(m.tempo_ratio - 1.0) > TEMPO_TOLERANCE]
        for m in sorted(changed, key=lambda m: m.evidence, reverse=True)[:TEMPO_LOOKS]:
            found += index.search(query, tempo=m.tempo_ratio, track=m.track)
        cal = index.calibration
        return [replace(landmarks.to_match(m), p_false=cal.p_false(m.evidence, clip.duration)) for m in found]

    def embedding_matches(self, clip: Clip, max_p_false: float = REPORTED_P) -> list[Match]:
        """Matches of ``clip`` found by the embedding layer alone.

        The query is also searched transposed by ±``TRANSPOSE_ST`` semitones, so copies shifted
        far beyond what the encoder absorbs by itself (about ±3 st) are still found. ``p_false``
        is that of music as long as the output (``Calibration.p_false``), as landmark matches' is.
        """
        hits = [self._hits(clip, t) for t in (0.0, -TRANSPOSE_ST, TRANSPOSE_ST)]
        merged = Hits(*(np.concatenate([getattr(h, f) for h in hits]) for f in ("query_t", "track", "ref_t", "weight")))
        cal = self.matcher.cal
        found = [replace(m, p_false=cal.p_false(m.evidence, clip.duration))
                 for m in self.matcher.match(merged, QUERY_HOP_S, max_p_false=1.0)]
        return [m for m in found if m.p_false <= max_p_false]

    def _hits(self, clip: Clip, transpose: float) -> Hits:
        emb = self.embedder.embed(clip, hop_s=QUERY_HOP_S, transpose=transpose)
        voiced = np.flatnonzero(emb.voiced)
        sims, ids = self.vectors.search(emb.vectors[voiced], BACKGROUND_SEARCH)
        tracks, windows = split_ids(ids)
        tracks[ids < 0] = -1
        background = window_background(sims, tracks, windows)[:, None]
        valid = ids[:, :NEIGHBOURS] >= 0
        return Hits(query_t=np.repeat(emb.starts[voiced], valid.sum(1)), track=tracks[:, :NEIGHBOURS][valid],
                    ref_t=windows[:, :NEIGHBOURS][valid] * self.vectors.info.hop_s,
                    weight=(sims[:, :NEIGHBOURS] - background)[valid])

    # --- writing ------------------------------------------------------------------------
    @contextmanager
    def _writer_lock(self) -> Iterator[None]:
        """Hold ``HOME/writer.lock`` (released by the kernel if this process dies) and clear what
        a killed writer left half-written."""
        lock = open(self.home / "writer.lock", "w")
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise CatalogError(f"another indexing job is writing to {self.home}; wait for it to finish") from None
            shutil.rmtree(self.home / "incoming", ignore_errors=True)
            self.shards.clear_temporary()
            self._loaded = None           # always start from what is published
            yield
        finally:
            lock.close()

    @contextmanager
    def writing(self) -> Iterator[VectorIndex]:
        """Hold the writer lock, reconcile the database with the index, yield the index."""
        with self._writer_lock():
            vectors = self.vectors
            self._reconcile(vectors)
            yield vectors

    def _reconcile(self, vectors: VectorIndex) -> None:
        in_index = vectors.tracks()
        rows = {t.id: t for t in self.store.list_tracks(state=None)}
        stray = [k for k in in_index if k not in rows or (rows[k].state == "pending" and rows[k].vectors != in_index[k])]
        adopt = [k for k in in_index if k in rows and rows[k].state == "pending" and k not in stray]
        lost = [k for k, t in rows.items() if t.state == "pending" and k not in in_index and t.vectors > 0]
        lost += [k for k, t in rows.items() if t.state == "indexed" and t.vectors > 0 and in_index.get(k) != t.vectors]
        silent = [k for k, t in rows.items() if t.state == "pending" and t.vectors == 0]
        if stray or lost:
            vectors.remove(stray + lost)
            vectors.save()
        self.store.delete(lost)
        self.store.mark_indexed(adopt + silent)

    def index_paths(self, paths: list[str | Path], rights: Rights, owner: str = "", manifest: str | Path | None = None,
                    entries: dict[Path, ManifestEntry] | None = None,
                    progress: Callable[[str, str, float], None] | None = None, publish_every_s: float = 30.0,
                    workers: int = 0, engine: str = "local", ray_address: str | None = None) -> IndexSummary:
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
        if engine not in ENGINES:
            raise ClearanceError(f"unknown indexing engine '{engine}'; use one of {', '.join(ENGINES)}")
        if self.factory != AUTO:
            new_index(self.embedder.dim, self.factory)       # refuse a bad factory before the work, not after
        entries = {**(read_manifest(manifest) if manifest else {}), **(entries or {})}
        files = find_audio(paths)
        summary = IndexSummary()
        t0 = time.perf_counter()
        with self.writing() as vectors:
            batch = _Unpublished()
            outcomes = self._outcomes(files, workers, engine, ray_address)
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
            wanted = self._wanted_factory(vectors.size)
            if wanted != vectors.info.factory and vectors.size >= min_training_vectors(wanted):
                summary.rebuilt = self._rebuild(workers, engine, ray_address)
        summary.elapsed_s = time.perf_counter() - t0
        return summary

    def _outcomes(self, files: list[Path], workers: int, engine: str, ray_address: str | None,
                  is_known: Callable[[str], bool] | None = None) -> Iterator[Outcome]:
        fingerprinter = Fingerprinter(self.embedder, self.limits)
        is_known = is_known or (lambda sha: self.store.find_by_hash(sha) is not None)
        if engine == "ray":
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
                peaks=outcome.peaks)
        except CatalogError as exc:
            return self._fail(source.path, str(exc), summary)
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
        vectors.save()
        self.store.mark_indexed(batch.keys)
        batch.clear()
        self._published()
        summary.stage_s["publish"] += time.perf_counter() - t0

    def _published(self) -> None:
        self._loaded = (self.home / "index" / "CURRENT").stat().st_mtime_ns
        self._chroma = self._landmarks = None

    def remove(self, external_ids: list[str]) -> list[Track]:
        """Take tracks down: their vectors leave the index, then their rows the database, then
        their stored vectors the shards."""
        found = [self.store.find(e) for e in external_ids]
        missing = [e for e, t in zip(external_ids, found) if t is None]
        if missing:
            raise CatalogError(f"no track with external_id {', '.join(repr(m) for m in missing)}")
        keys = np.asarray([t.id for t in found], np.int64)
        with self.writing() as vectors:
            vectors.remove(keys.tolist())
            vectors.save()
            self.store.delete(keys.tolist())
            self._published()
            self.shards.purge(self.embedder.dim, lambda ids, model: ~np.isin(split_ids(ids)[0], keys))
        return found

    # --- rebuilding ---------------------------------------------------------------------
    def rebuild(self, workers: int = 0, engine: str = "local", ray_address: str | None = None) -> RebuildReport:
        """Retrain and rebuild the index from the stored vectors, with the factory of the
        settings (or ``auto``'s choice for the catalog's size); tracks whose vectors are not
        stored for the loaded model (a new model, a catalog older than shards) are embedded again
        from their files, through the indexing engine."""
        with self._writer_lock():
            try:
                self._reconcile(self.vectors)
            except IndexMismatch:
                # another model's index: unfinished rows of that model are dropped (indexing the
                # files again adds them); finished ones are embedded again below
                self.store.delete([t.id for t in self.store.list_tracks(state="pending")])
            return self._rebuild(workers, engine, ray_address)

    def _wanted_factory(self, n_vectors: int) -> str:
        return auto_factory(n_vectors) if self.factory == AUTO else self.factory

    def _rebuild(self, workers: int, engine: str, ray_address: str | None) -> RebuildReport:
        t0 = time.perf_counter()
        dim, model = self.embedder.dim, self.embedder.version
        rows = {t.id: t for t in self.store.list_tracks()}
        where = self._stored_tracks(rows)
        missing = [t for k, t in rows.items() if k not in where and not (t.vectors == 0 and t.model == model)]
        where.update(self._reembed(missing, workers, engine, ray_address))
        counts = {k: n for k, (_, n) in where.items()}
        total = sum(counts.values())
        factory = self._wanted_factory(total)
        if needs_training(factory) and total < min_training_vectors(factory):
            factory = "Flat"           # too few vectors to train it: exact search until there are enough
        sample = self._sample(where, 4 * min_training_vectors(factory)) if needs_training(factory) else None
        new = VectorIndex.trained(self.home / "index", model, dim, self.embedder.ref_hop_s, factory,
                                  sample if sample is not None else np.zeros((0, dim), np.float32), self.nprobe)
        before = self.shards.paths()
        written: list[Path] = []
        ids, vecs = [], []
        for chunk_ids, chunk_vecs in self._live_vectors(where):
            new.add_ids(chunk_ids, chunk_vecs)
            ids.append(chunk_ids)
            vecs.append(chunk_vecs)
            if sum(map(len, ids)) >= SHARD_VECTORS:
                written.append(self.shards.write(np.concatenate(ids), np.concatenate(vecs), model))
                ids, vecs = [], []
        if ids:
            written.append(self.shards.write(np.concatenate(ids), np.concatenate(vecs), model))
        if sample is not None:
            new.set_recall(measure_recall(new, sample, (self.shards.read(p, dim) for p in written)))
        # counts and model first: if the publish below never happens, the old index (another
        # model) is refused until a rebuild, which finds every vector in the shards just written
        self.store.set_vectors({k: n for k, n in counts.items() if rows[k].model != model or rows[k].vectors != n},
                               model)
        new.save()
        for p in before:
            if p not in written:
                p.unlink(missing_ok=True)
        self._vectors = None
        self._chroma = self._landmarks = None
        return RebuildReport(factory, len(counts), new.size, len(missing), new.bytes, new.info.recall,
                             time.perf_counter() - t0, new.info.hop_s)

    def _stored_tracks(self, rows: dict[int, Track]) -> dict[int, tuple[Path, int]]:
        """Track key → (the shard holding its vectors of the loaded model, vector count), for
        live tracks whose stored vectors are complete. A track found in two shards (a crash
        during a compaction) is taken from the first."""
        found: dict[int, tuple[Path, int]] = {}
        for p in self.shards.paths():
            head = self.shards.read(p, self.embedder.dim, ids_only=True)
            if head.model != self.embedder.version:
                continue
            keys, counts = np.unique(split_ids(head.ids)[0], return_counts=True)
            for k, n in zip(keys.tolist(), counts.tolist()):
                t = rows.get(k)
                complete = t is not None and (t.model != self.embedder.version or t.vectors == n)
                if complete and k not in found:
                    found[k] = (p, n)
        return found

    def _live_vectors(self, where: dict[int, tuple[Path, int]]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids (n,) int64, vectors (n, dim) float32) of the tracks in ``where``, shard by shard,
        each track from the shard ``where`` names."""
        by_shard: dict[Path, list[int]] = defaultdict(list)
        for k, (p, _) in where.items():
            by_shard[p].append(k)
        for p, keys in sorted(by_shard.items()):
            shard = self.shards.read(p, self.embedder.dim)
            mask = np.isin(split_ids(shard.ids)[0], np.asarray(keys, np.int64))
            yield shard.ids[mask], shard.vectors[mask]

    def _sample(self, where: dict[int, tuple[Path, int]], n: int, seed: int = 0) -> np.ndarray:
        """About ``n`` vectors drawn uniformly from the tracks in ``where``, (≈n, dim) float32."""
        rng = np.random.default_rng(seed)
        p = n / max(sum(c for _, c in where.values()), 1)
        return np.concatenate([v[rng.random(len(v)) < p] for _, v in self._live_vectors(where)])

    def _reembed(self, tracks: list[Track], workers: int, engine: str,
                 ray_address: str | None) -> dict[int, tuple[Path, int]]:
        """Embed ``tracks`` again from their files with the loaded model, store the vectors as
        shards and return where they are (as ``_stored_tracks``). Refuses (``RebuildError``,
        nothing changed) when a file is gone, unreadable or no longer the indexed content."""
        if not tracks:
            return {}
        by_path = {t.source_path: t for t in tracks}
        problems = [f"{t.external_id}: {t.source_path or 'no file recorded'}: the file is gone"
                    for t in tracks if not Path(t.source_path).is_file()]
        if problems:
            raise RebuildError(_rebuild_refusal(problems))
        found: dict[int, tuple[Path, int]] = {}
        done: list[tuple[int, np.ndarray, np.ndarray]] = []

        def flush() -> None:
            if done:
                p = self.shards.write(np.concatenate([vector_ids(k, w) for k, w, _ in done]),
                                      np.concatenate([v for _, _, v in done]), self.embedder.version)
                found.update({k: (p, len(w)) for k, w, _ in done})
                done.clear()

        outcomes = self._outcomes([Path(p) for p in by_path], workers, engine, ray_address, is_known=lambda sha: False)
        for outcome in outcomes:
            if isinstance(outcome, Failure):
                problems.append(f"{by_path[outcome.path].external_id}: {outcome.path}: {outcome.reason}")
                continue
            t = by_path[outcome.source.path]
            if outcome.source.sha256 != t.content_sha256:
                problems.append(f"{t.external_id}: {t.source_path}: the file changed since it was indexed")
                continue
            done.append((t.id, outcome.windows, outcome.vectors))
            if sum(len(w) for _, w, _ in done) >= SHARD_VECTORS:
                flush()
        flush()
        if problems:
            raise RebuildError(_rebuild_refusal(problems))
        return found


SHARD_VECTORS = 200_000            # vectors per shard written by a rebuild (≈100 MB)
ENGINES = ("local", "ray")


def _rebuild_refusal(problems: list[str]) -> str:
    shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
    return (f"cannot rebuild the index: {len(problems)} tracks have no stored vectors for this model and cannot be "
            f"embedded again ({shown}); restore their files or remove the tracks, then rebuild")


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
