"""Rebuilding the vector index: retrained from the stored vectors (``index/shards.py``), with the
tracks whose vectors are not stored for the loaded model, or whose landmark peaks or pitch
classes were taken by an older version (or not at all), taken again from their files, then compacted into new shards. Run by
``Catalog.rebuild`` and at the end of an indexing job whose catalog outgrew its index's factory."""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np

from detector import landmarks, version_model
from detector.errors import ClearanceError
from index.pipeline import Failure
from index.search import write_indexes
from index.store import Track, TrackState
from index.vectors import (IndexMismatch, VectorIndex, measure_recall, min_training_vectors, needs_training,
                           split_ids, vector_ids)

if TYPE_CHECKING:
    from index.catalog import Catalog

SHARD_VECTORS = 200_000            # vectors per shard written by a rebuild (≈100 MB)


@dataclass(frozen=True)
class RebuildReport:
    """What ``Catalog.rebuild`` made: an index of ``factory`` holding ``vectors`` vectors of
    ``tracks`` tracks (``reembedded`` of them embedded again from their files, ``repicked`` of
    those for their landmark peaks or pitch classes), ``bytes`` on disk, with ``recall`` (recall@1 against exact
    search on noisy copies of stored vectors)."""

    factory: str
    tracks: int
    vectors: int
    reembedded: int
    repicked: int
    bytes: int
    recall: float
    elapsed_s: float
    hop_s: float

    @property
    def mb_per_hour(self) -> float:
        """MB of index per hour of catalog audio (vectors every ``hop_s`` seconds)."""
        return self.bytes / max(self.vectors, 1) * (3600 / self.hop_s) / 1e6


class RebuildError(ClearanceError):
    """A rebuild that cannot keep every track: their vectors are not stored and their files are
    gone or changed. Nothing was changed."""


Progress = Callable[[int, int], None]    # (tracks taken again from their files so far, of how many)


def rebuild(catalog: Catalog, workers: int = 0, engine: str = "local", ray_address: str | None = None,
            progress: Progress | None = None) -> RebuildReport:
    """Retrain and rebuild ``catalog``'s index from the stored vectors, with the factory of the
    settings (or ``auto``'s choice for the catalog's size); tracks whose vectors are not
    stored for the loaded model (a new model, a catalog older than shards) or whose landmark
    peaks are not ``landmarks.PEAKS`` or pitch classes not ``version_model.PITCH_CLASSES`` are taken
    again from their files, through the indexing
    engine, ``progress`` called after each."""
    with catalog.writer_lock():
        try:
            catalog.reconcile(catalog.vectors)
        except IndexMismatch:
            # another model's index: unfinished rows of that model are dropped (indexing the
            # files again adds them); finished ones are embedded again below
            catalog.store.delete([t.id for t in catalog.store.list_tracks(state=TrackState.pending)])
        return rebuild_locked(catalog, workers, engine, ray_address, progress)


def rebuild_locked(catalog: Catalog, workers: int, engine: str, ray_address: str | None,
                   progress: Progress | None = None) -> RebuildReport:
    """``rebuild`` for a caller that holds the writer lock and has reconciled."""
    t0 = time.perf_counter()
    dim, model = catalog.embedder.dim, catalog.embedder.version
    rows = {t.id: t for t in catalog.store.list_tracks()}
    where = _stored_tracks(catalog, rows)
    stale = set(catalog.store.stale_peaks(landmarks.PEAKS)) | \
        set(catalog.store.stale_pitch_classes(version_model.PITCH_CLASSES))
    missing = [t for k, t in rows.items() if k in stale or (k not in where and not (t.vectors == 0 and t.model == model))]
    where.update(_reembed(catalog, missing, workers, engine, ray_address, progress))
    counts = {k: n for k, (_, n) in where.items()}
    total = sum(counts.values())
    factory = catalog.wanted_factory(total)
    if needs_training(factory) and total < min_training_vectors(factory):
        factory = "Flat"           # too few vectors to train it: exact search until there are enough
    sample = _sample(catalog, where, 4 * min_training_vectors(factory)) if needs_training(factory) else None
    new = VectorIndex.trained(catalog.home / "index", model, dim, catalog.embedder.ref_hop_s, factory,
                              sample if sample is not None else np.zeros((0, dim), np.float32), catalog.nprobe)
    before = catalog.shards.paths()
    written = _add_and_compact(catalog, new, where)
    if sample is not None:
        new.set_recall(measure_recall(new, sample, (catalog.shards.read(p, dim) for p in written)))
    # counts and model first: if the publish below never happens, the old index (another
    # model) is refused until a rebuild, which finds every vector in the shards just written
    catalog.store.set_vectors({k: n for k, n in counts.items() if rows[k].model != model or rows[k].vectors != n},
                              model)
    new.save(write_indexes(catalog.store, None, cut=(new, catalog.serve_shards)))   # some landmark peaks were taken again
    for p in before:
        if p not in written:
            p.unlink(missing_ok=True)
    catalog.unload()
    return RebuildReport(factory, len(counts), new.size, len(missing), len(stale), new.bytes, new.info.recall,
                         time.perf_counter() - t0, new.info.hop_s)


def _add_and_compact(catalog: Catalog, new: VectorIndex, where: dict[int, tuple[Path, int]]) -> list[Path]:
    """Add the vectors of the tracks in ``where`` to ``new`` and write them again as shards of
    about ``SHARD_VECTORS`` vectors; the shards written."""
    model = catalog.embedder.version
    written: list[Path] = []
    ids, vecs = [], []
    for chunk_ids, chunk_vecs in _live_vectors(catalog, where):
        new.add_ids(chunk_ids, chunk_vecs)
        ids.append(chunk_ids)
        vecs.append(chunk_vecs)
        if sum(map(len, ids)) >= SHARD_VECTORS:
            written.append(catalog.shards.write(np.concatenate(ids), np.concatenate(vecs), model))
            ids, vecs = [], []
    if ids:
        written.append(catalog.shards.write(np.concatenate(ids), np.concatenate(vecs), model))
    return written


def _stored_tracks(catalog: Catalog, rows: dict[int, Track]) -> dict[int, tuple[Path, int]]:
    """Track key → (the shard holding its vectors of the loaded model, vector count), for
    live tracks whose stored vectors are complete. A track found in two shards (a crash
    during a compaction) is taken from the first."""
    found: dict[int, tuple[Path, int]] = {}
    for p in catalog.shards.paths():
        head = catalog.shards.read(p, catalog.embedder.dim, ids_only=True)
        if head.model != catalog.embedder.version:
            continue
        keys, counts = np.unique(split_ids(head.ids)[0], return_counts=True)
        for k, n in zip(keys.tolist(), counts.tolist()):
            t = rows.get(k)
            complete = t is not None and (t.model != catalog.embedder.version or t.vectors == n)
            if complete and k not in found:
                found[k] = (p, n)
    return found


def _live_vectors(catalog: Catalog, where: dict[int, tuple[Path, int]]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids (n,) int64, vectors (n, dim) float32) of the tracks in ``where``, shard by shard,
    each track from the shard ``where`` names."""
    by_shard: dict[Path, list[int]] = defaultdict(list)
    for k, (p, _) in where.items():
        by_shard[p].append(k)
    for p, keys in sorted(by_shard.items()):
        shard = catalog.shards.read(p, catalog.embedder.dim)
        mask = np.isin(split_ids(shard.ids)[0], np.asarray(keys, np.int64))
        yield shard.ids[mask], shard.vectors[mask]


def _sample(catalog: Catalog, where: dict[int, tuple[Path, int]], n: int, seed: int = 0) -> np.ndarray:
    """About ``n`` vectors drawn uniformly from the tracks in ``where``, (≈n, dim) float32."""
    rng = np.random.default_rng(seed)
    p = n / max(sum(c for _, c in where.values()), 1)
    return np.concatenate([v[rng.random(len(v)) < p] for _, v in _live_vectors(catalog, where)])


def _reembed(catalog: Catalog, tracks: list[Track], workers: int, engine: str, ray_address: str | None,
             progress: Progress | None) -> dict[int, tuple[Path, int]]:
    """Embed ``tracks`` again from their files with the loaded model, store the vectors as
    shards and the landmark peaks and pitch classes in the database, a shard's worth at a time (memory stays
    bounded however many tracks), and return where the vectors are (as ``_stored_tracks``).
    Refuses (``RebuildError``, the index kept) when a file is gone, unreadable or no longer the
    indexed content; peaks already taken again from unchanged files stay, since they are right."""
    if not tracks:
        return {}
    by_path = {t.source_path: t for t in tracks}
    problems = [f"{t.external_id}: {t.source_path or 'no file recorded'}: the file is gone"
                for t in tracks if not Path(t.source_path).is_file()]
    if problems:
        raise RebuildError(_rebuild_refusal(problems))
    found: dict[int, tuple[Path, int]] = {}
    done: list[tuple[int, np.ndarray, np.ndarray]] = []
    peaks: dict[int, np.ndarray] = {}
    classes: dict[int, np.ndarray] = {}

    def flush() -> None:
        if done:
            p = catalog.shards.write(np.concatenate([vector_ids(k, w) for k, w, _ in done]),
                                     np.concatenate([v for _, _, v in done]), catalog.embedder.version)
            found.update({k: (p, len(w)) for k, w, _ in done})
            done.clear()
            catalog.store.set_peaks(peaks, landmarks.PEAKS)
            catalog.store.set_pitch_classes(classes, version_model.PITCH_CLASSES)
            peaks.clear()
            classes.clear()

    outcomes = catalog.outcomes([Path(p) for p in by_path], workers, engine, ray_address, is_known=lambda sha: False)
    for done_so_far, outcome in enumerate(outcomes, 1):
        if progress:
            progress(done_so_far, len(tracks))
        if isinstance(outcome, Failure):
            problems.append(f"{by_path[outcome.path].external_id}: {outcome.path}: {outcome.reason}")
            continue
        t = by_path[outcome.source.path]
        if outcome.source.sha256 != t.content_sha256:
            problems.append(f"{t.external_id}: {t.source_path}: the file changed since it was indexed")
            continue
        done.append((t.id, outcome.windows, outcome.vectors))
        peaks[t.id] = outcome.peaks
        classes[t.id] = outcome.classes
        if sum(len(w) for _, w, _ in done) >= SHARD_VECTORS:
            flush()
    flush()
    if problems:
        raise RebuildError(_rebuild_refusal(problems))
    return found


def _rebuild_refusal(problems: list[str]) -> str:
    shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
    return (f"cannot rebuild the index: {len(problems)} tracks must be taken again from their files (no stored "
            f"vectors for this model, or landmark peaks or pitch classes of an older version) and cannot be ({shown}); restore their "
            f"files or remove the tracks, then rebuild")
