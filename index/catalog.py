"""Catalog operations over the database and the vector index, kept in agreement.

Writers (indexing, removal) hold ``HOME/writer.lock``. Indexing inserts a track as *pending*,
adds its vectors, publishes the index atomically, then marks the track *indexed*; opening as a
writer reconciles whatever a crash left between those steps. Readers use indexed tracks only.
"""
from __future__ import annotations

import csv
import fcntl
import hashlib
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from detector import chromaprint
from detector.audio import Clip, DecodeLimits, decode, find_audio
from detector.errors import ClearanceError
from detector.matcher import Calibration, Hits, Match, Matcher, from_chromaprint, merge
from detector.model import Embedder
from detector.policy import Rights
from index.store import CatalogError, Store, Track
from index.vectors import VectorIndex, split_ids

REF_HOP_S = 0.5
QUERY_HOP_S = 0.25
NEIGHBOURS = 8


@dataclass
class IndexSummary:
    """What an indexing job did; ``failed`` holds (path, reason)."""

    indexed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    audio_s: float = 0.0


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


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Catalog:
    """The catalog: tracks in ``store``, vectors under ``home/index``."""

    def __init__(self, home: str | Path, store: Store, embedder: Embedder, calibration: Calibration,
                 factory: str = "Flat", limits: DecodeLimits = DecodeLimits()):
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        self.store = store
        self.embedder = embedder
        self.limits = limits
        self.factory = factory
        self.matcher = Matcher(calibration, window_s=embedder.fe.window_s)
        self._vectors: VectorIndex | None = None
        self._chroma: chromaprint.ChromaIndex | None = None
        self._loaded = None

    # --- reading ------------------------------------------------------------------------
    @property
    def vectors(self) -> VectorIndex:
        """The published index, reloaded when another process has published a newer one."""
        current = self.home / "index" / "CURRENT"
        stamp = current.stat().st_mtime_ns if current.exists() else None
        if self._vectors is None or stamp != self._loaded:
            self._vectors = VectorIndex.open(self.home / "index", self.embedder.version, self.embedder.dim,
                                             REF_HOP_S, self.factory)
            self._chroma = None
            self._loaded = stamp
        return self._vectors

    @property
    def chroma(self) -> chromaprint.ChromaIndex:
        _ = self.vectors
        if self._chroma is None:
            self._chroma = chromaprint.ChromaIndex(self.store.chromaprints())
        return self._chroma

    def find_matches(self, clip: Clip) -> list[Match]:
        """Matches of ``clip`` from both layers, merged, strongest first."""
        found = self.embedding_matches(clip)
        found += [from_chromaprint(m) for m in self.chroma.search(chromaprint.fingerprint(clip))]
        return merge(found)

    def embedding_matches(self, clip: Clip, max_p_false: float = 0.5) -> list[Match]:
        """Matches of ``clip`` found by the embedding layer alone."""
        emb = self.embedder.embed(clip, hop_s=QUERY_HOP_S)
        voiced = np.flatnonzero(emb.voiced)
        sims, ids = self.vectors.search(emb.vectors[voiced], NEIGHBOURS)
        valid = ids >= 0
        track, window = split_ids(ids[valid])
        hits = Hits(query_t=np.repeat(emb.starts[voiced], valid.sum(1)), track=track,
                    ref_t=window * self.vectors.info.hop_s, sim=sims[valid])
        return self.matcher.match(hits, QUERY_HOP_S, max_p_false=max_p_false)

    # --- writing ------------------------------------------------------------------------
    @contextmanager
    def writing(self) -> Iterator[VectorIndex]:
        """Hold the writer lock, reconcile the database with the index, yield the index."""
        lock = open(self.home / "writer.lock", "w")
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ClearanceError(f"another indexing job is writing to {self.home}; wait for it to finish") from None
            self._loaded = None           # always start from what is published
            vectors = self.vectors
            self._reconcile(vectors)
            yield vectors
        finally:
            lock.close()

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
                    progress: Callable[[str, str, float], None] | None = None, publish_every_s: float = 30.0) -> IndexSummary:
        """Index audio files and folders; a bad file is recorded and the job goes on.

        External ids, titles and owners come from ``entries`` (resolved path → entry), else from
        the ``manifest`` CSV, else from file names. ``progress(path, outcome, audio_seconds)`` is
        called after each file.
        """
        entries = {**(read_manifest(manifest) if manifest else {}), **(entries or {})}
        files = find_audio(paths)
        summary = IndexSummary()
        with self.writing() as vectors:
            pending: list[int] = []
            last = time.monotonic()
            for f in files:
                outcome, seconds = self._index_one(f, rights, owner, entries, vectors, pending, summary)
                summary.audio_s += seconds
                if progress:
                    progress(str(f), outcome, seconds)
                if pending and time.monotonic() - last > publish_every_s:
                    self._publish(vectors, pending)
                    last = time.monotonic()
            self._publish(vectors, pending)
        return summary

    def _index_one(self, f: Path, rights, owner, entries, vectors, pending, summary) -> tuple[str, float]:
        try:
            entry = entries.get(f.resolve()) or ManifestEntry(f.stem)
            digest = sha256_file(f)
            if self.store.find_by_hash(digest):
                summary.skipped.append(str(f))
                return "skipped", 0.0
            clip = decode(f, self.embedder.fe.sample_rate, limits=self.limits)
            emb = self.embedder.embed(clip, hop_s=REF_HOP_S)
            windows = np.flatnonzero(emb.voiced)
            key = self.store.add_pending(
                external_id=entry.external_id, title=entry.title or entry.external_id, owner=entry.owner or owner,
                rights=rights, sha256=digest, source_path=str(f.resolve()), duration_s=clip.duration,
                model=self.embedder.version, vectors=len(windows), fingerprint=chromaprint.fingerprint(clip))
            vectors.add(key, emb.vectors[windows], windows)
            pending.append(key)
            summary.indexed.append(str(f))
            return "indexed", clip.duration
        except (ClearanceError, OSError) as exc:
            reason = getattr(exc, "reason", None) or str(exc)
            summary.failed.append((str(f), reason))
            self.store.record_failure(str(f), reason)
            return "failed", 0.0

    def _publish(self, vectors: VectorIndex, pending: list[int]) -> None:
        if pending:
            vectors.save()
            self.store.mark_indexed(pending)
            pending.clear()
            self._loaded = (self.home / "index" / "CURRENT").stat().st_mtime_ns
            self._chroma = None

    def remove(self, external_ids: list[str]) -> list[Track]:
        """Take tracks down: their vectors leave the index, then their rows the database."""
        found = [self.store.find(e) for e in external_ids]
        missing = [e for e, t in zip(external_ids, found) if t is None]
        if missing:
            raise CatalogError(f"no track with external_id {', '.join(repr(m) for m in missing)}")
        with self.writing() as vectors:
            vectors.remove([t.id for t in found])
            vectors.save()
            self.store.delete([t.id for t in found])
            self._loaded = (self.home / "index" / "CURRENT").stat().st_mtime_ns
            self._chroma = None
        return found
