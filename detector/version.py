"""The version layer's index and verifier, in numpy alone: the catalog's version vectors
searched for an output's, and the Qmax alignment that verifies the nearest tracks. A shard's
replica holds and searches it without loading the model (torch); the model that makes the
vectors is ``detector/version_model.py``.

A re-performance keeps a work's melody, harmony and rhythm and changes everything else: sound,
key, tempo, arrangement. The layer keeps what survives, the energy of each of the 12 pitch
classes ten times a second (``chroma``), and embeds 20 s of it so that a transposition leaves
the vector unchanged (``detector.version_model.VersionNet``).

``qmax`` is the classic verifier (Serra et al., 2009): a cross-recurrence plot of two chroma
sequences, the second transposed to the first's key (the optimal transposition index of their
mean chroma), and the length of the longest path of recurrences along roughly diagonal lines,
which bend for tempo changes. Untrained, it is also the baseline the learned layer is measured
against.
"""
from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from detector import saved

if TYPE_CHECKING:
    from detector import version_model

CHROMA_FPS = 10                 # chroma frames per second
SEGMENT_S = 20.0                # seconds of audio per version vector
SILENT_DB = 50.0                # frames this far below the clip's loudest carry no pitch
QMAX_STEP = 2                   # chroma frames per Qmax step: 5 a second
DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / "clearance-ver-v1.pt"


def chroma(classes: np.ndarray) -> np.ndarray:
    """Pitch-class power (..., 12, frames) → float32 chroma: compressed, each frame's loudest
    class 1, frames ``SILENT_DB`` below the loudest frame 0."""
    classes = np.asarray(classes, np.float32)
    level = classes.sum(-2, keepdims=True)
    loud = level > level.max(-1, keepdims=True) * np.float32(10 ** (-SILENT_DB / 10))
    compressed = np.sqrt(np.maximum(classes, np.float32(1e-12)))
    return compressed / compressed.max(-2, keepdims=True) * loud


def weights_of(path: Path) -> str:
    """The sha256 of a version model's checkpoint: vectors of other weights are never mixed."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@functools.cache
def shipped_weights() -> str:
    """``weights_of`` the shipped checkpoint, without loading it."""
    return weights_of(DEFAULT_WEIGHTS)


# ---------------------------------------------------------------------------------------------
# verification


def transposition(a: np.ndarray, b: np.ndarray) -> int:
    """Semitones to add to ``b`` to bring it to ``a``'s key (the optimal transposition index:
    the rotation of ``b``'s mean chroma that best matches ``a``'s)."""
    pa, pb = a.mean(1), b.mean(1)
    return int(np.argmax([pa @ np.roll(pb, k) for k in range(12)]))


def _embed(c: np.ndarray, m: int = 3) -> np.ndarray:
    """Time-delay embedding: each frame joined with the next ``m - 1`` frames, unit length."""
    n = c.shape[1] - m + 1
    if n <= 0:
        return np.zeros((12 * m, 0), np.float32)
    x = np.concatenate([c[:, k:k + n] for k in range(m)], 0)
    return x / (np.linalg.norm(x, axis=0, keepdims=True) + 1e-9)


@dataclass(frozen=True)
class Alignment:
    """What ``qmax`` found for one reference: ``score``, the longest path of recurrences (steps of
    ``QMAX_STEP`` chroma frames, 0 where none); ``key_shift``, semitones that bring the
    reference to the output's key; the spans (seconds) of output and reference on the path."""

    score: float
    key_shift: int
    query_start: float
    query_end: float
    ref_start: float
    ref_end: float


def qmax(query: np.ndarray, refs: list[np.ndarray], *, kappa: float = 0.1, gap_open: float = 5.0,
         gap_extend: float = 0.5) -> list[Alignment]:
    """Qmax of chroma ``query`` (12, frames) against each of ``refs`` (12, frames), all at once.

    Each reference is transposed to the query's key (``transposition``) and both are taken every
    ``QMAX_STEP`` frames with a time-delay embedding; a pair of frames recurs when each is among
    the other's ``kappa`` nearest. Q[i, j] grows by one along recurrences from (i-1, j-1),
    (i-2, j-1) or (i-1, j-2), so paths bend for tempi between 0.5x and 2x, and decays by
    ``gap_open``, then ``gap_extend`` a step, across frames that do not recur."""
    shifts = [transposition(query, r) for r in refs]
    qa = _embed(query[:, ::QMAX_STEP])
    ras = [_embed(np.roll(r, k, 0)[:, ::QMAX_STEP]) for r, k in zip(refs, shifts)]
    n, m = qa.shape[1], max([r.shape[1] for r in ras] + [0])
    if n < 3 or m < 3:
        return [Alignment(0.0, k, 0, 0, 0, 0) for k in shifts]
    ra = np.zeros((len(refs), qa.shape[0], m), np.float32)
    for i, r in enumerate(ras):
        ra[i, :, :r.shape[1]] = r
    sim = np.einsum("dn,rdm->nrm", qa, ra)                           # (n, refs, m)
    lengths = np.array([r.shape[1] for r in ras])
    valid = np.arange(m)[None, :] < lengths[:, None]                   # (refs, m)
    masked = np.where(valid[None], sim, -np.inf)
    kr = np.maximum(1, (kappa * lengths).astype(int))
    row_cut = -np.sort(-masked, axis=2)[:, np.arange(len(refs)), kr - 1]      # (n, refs)
    kc = max(1, int(kappa * n))
    col_cut = np.partition(sim, n - kc, axis=0)[n - kc]                       # (refs, m)
    rec = np.zeros((n + 2, len(refs), m + 2), bool)
    rec[2:, :, 2:] = (sim >= row_cut[:, :, None]) & (sim >= col_cut[None]) & (sim > 0) & valid[None]
    q = np.zeros(rec.shape, np.float32)
    came = np.zeros(rec.shape, np.int8)                     # 0: from (-1, -1), 1: (-2, -1), 2: (-1, -2)
    for i in range(2, n + 2):
        before = np.stack([q[i - 1, :, 1:-1], q[i - 2, :, 1:-1], q[i - 1, :, :-2]])
        gaps = np.where(np.stack([rec[i - 1, :, 1:-1], rec[i - 2, :, 1:-1], rec[i - 1, :, :-2]]), gap_open, gap_extend)
        scored = np.where(rec[i, :, 2:], before + 1, before - gaps)
        came[i, :, 2:] = scored.argmax(0)
        q[i, :, 2:] = np.maximum(0, scored.max(0))
    out = []
    seconds = QMAX_STEP / CHROMA_FPS
    for r, shift in enumerate(shifts):
        grid = q[:, r]
        score = float(grid.max())
        if score <= 0:
            out.append(Alignment(0.0, shift, 0, 0, 0, 0))
            continue
        i, j = np.unravel_index(int(grid.argmax()), grid.shape)
        end_i, end_j = i, j
        while grid[i, j] > 0:
            di, dj = ((1, 1), (2, 1), (1, 2))[came[i, r, j]]
            i, j = i - di, j - dj
        out.append(Alignment(score, shift, (i - 1) * seconds, (end_i - 1) * seconds, (j - 1) * seconds,
                             (end_j - 1) * seconds))
    return out


# ---------------------------------------------------------------------------------------------
# the catalog's index


CALIBRATION = "clearance-ver-v1.calibration.json"
INDEX_HOP_S = 2.0               # seconds between a catalog track's version windows
QUERY_HOP_S = 5.0               # ... and an output's
CANDIDATES = 3                  # tracks verified with Qmax, per output
SHORTEST_S = 10.0               # outputs shorter than this are not searched: too little of a work to tell
VERIFY_MARGIN_S = 30.0          # how far around its best window a candidate is aligned
# An index of more vectors than ``LISTED`` (about 290 h of catalog) is saved with inverted lists
# (``VersionLists``): each output window scores the vectors of its ``PROBES`` nearest lists, not
# every vector (at a synthetic 10,000 h, 0.27 CPU-seconds a 30 s output instead of 6.5, every
# copy still found: ``benchmarks/scale.py --layers``).
LISTED = 1 << 19
PROBES = 8
LISTS_FILE = "version-lists-{}.npy"



@dataclass(frozen=True)
class VersionMatch:
    """A re-performance of a catalog track's work: ``alignment``, what Qmax found around the
    nearest pair of version windows of output and track (spans in seconds, key shift);
    ``evidence``, their cosine times the square root of the Qmax score: the vectors find
    candidates, the alignment tells a re-performance from a work that merely sounds alike (of
    3,000 rendered re-performances and 2,300 negatives, either alone found far fewer above every
    negative than their product)."""

    track: int
    evidence: float
    alignment: Alignment


class VersionIndex(saved.SavedArrays):
    """Every catalog track's version vectors (``INDEX_HOP_S`` apart; float16, the track of rank r
    from ``vector_starts[r]``) and its pitch-class power (float16, from ``frame_starts[r]``),
    which Qmax aligns: 1.3 MB an hour of catalog (0.46 of vectors). Built from pitch-class power
    (``VersionIndex(classes)``) with the shipped model, changed by ``updated``, saved beside a
    published vector index and opened from there memory-mapped, as the other layers' are."""

    saved_as, arrays = "version", ("ids", "vector_starts", "vectors", "frame_starts", "classes", "weights")

    def __init__(self, classes: dict[int, np.ndarray], model: version_model.VersionModel | None = None):
        self._model = model
        keys = sorted(classes)
        self._use(*self._table(np.asarray(keys, np.int64), [classes[k] for k in keys]))

    @property
    def model(self) -> version_model.VersionModel:
        """The model its vectors are of: the shipped one unless given (a benchmark's candidate).
        Imported here, where vectors are made: searching with vectors given needs no torch."""
        from detector.version_model import shipped

        return getattr(self, "_model", None) or shipped()[0]

    def _table(self, keys: np.ndarray, classes: list[np.ndarray]) -> tuple[np.ndarray, ...]:
        model = self.model
        vectors = [model.vectors(c, INDEX_HOP_S)[1].astype(np.float16)
                   for c in classes]
        counts = lambda arrays, axis: np.concatenate([[0], np.cumsum([a.shape[axis] for a in arrays])]).astype(np.int64)
        return (keys, counts(vectors, 0), np.concatenate(vectors) if vectors else np.zeros((0, model.dim), np.float16),
                counts(classes, 1), np.concatenate(classes, 1).astype(np.float16) if classes else
                np.zeros((12, 0), np.float16), np.array([model.weights]))

    def _use(self, ids, vector_starts, vectors, frame_starts, classes, weights) -> None:
        self.ids, self.vector_starts, self.vectors = ids, vector_starts, vectors
        self.frame_starts, self.classes, self.weights = frame_starts, classes, weights
        self.lists: VersionLists | None = None

    def save(self, folder: Path) -> None:
        """Write the index to ``folder``, with its inverted lists where it holds more than
        ``LISTED`` vectors (clustered now if it has none yet)."""
        super().save(folder)
        lists = self.lists
        if lists is None and len(self.vectors) > LISTED:
            lists = VersionLists.clustered(self.vectors)
        if lists is not None:
            lists.save(folder)

    @classmethod
    def open(cls, folder: Path, mapped: bool = True) -> VersionIndex:
        """The index ``save`` wrote to ``folder`` (with its lists, where it saved them),
        memory-mapped (``mapped``; else read into memory)."""
        index = super().open(folder, mapped)
        index.lists = VersionLists.open(folder, mapped)
        return index

    @property
    def current(self) -> bool:
        """Whether its vectors are the shipped model's."""
        return str(self.weights[0]) == shipped_weights()

    def __len__(self) -> int:
        return len(self.vectors)

    def updated(self, classes: dict[int, np.ndarray], drop: list[int] = ()) -> VersionIndex:
        """A new index in memory: this one without the tracks ``drop``, with those of ``classes``
        added (embedded now), which must come after every track kept, and its vectors the
        shipped model's (``ValueError`` otherwise: the layer builds a new one). It keeps this
        one's lists, the new vectors assigned to their nearest, while their count suits its size
        (``VersionLists.count``); once the catalog has grown (or shrunk) past that, it has none,
        and ``save`` clusters its vectors afresh: lists fitted to an early catalog grow long and
        uneven as it grows."""
        index = self._changed(classes, drop)
        if index.lists is not None and len(index.lists.centroids) != VersionLists.count(len(index.vectors)):
            index.lists = None
        return index

    def shard(self, drop: list[int]) -> VersionIndex:
        """This index without the tracks ``drop``, searched as a shard of it: with its lists,
        whatever its size, so that it probes what the whole index probes."""
        return self._changed({}, drop)

    def _changed(self, classes: dict[int, np.ndarray], drop: list[int]) -> VersionIndex:
        if not self.current:
            raise ValueError("this index holds another model's vectors")
        keep = ~np.isin(self.ids, np.asarray(drop, np.int64))
        keys = np.asarray(sorted(classes), np.int64)
        if len(keys) and keep.any() and keys[0] <= self.ids[keep][-1]:
            raise ValueError("the tracks added must come after every track kept")
        new = self._table(keys, [classes[k] for k in keys])
        rows = lambda starts: np.repeat(keep, np.diff(starts))
        vectors = np.concatenate([self.vectors[rows(self.vector_starts)], new[2]])
        frames = np.concatenate([self.classes[:, rows(self.frame_starts)], new[4]], 1)
        restart = lambda starts, added: np.concatenate(
            [[0], np.cumsum(np.concatenate([np.diff(starts)[keep], np.diff(added)]))]).astype(np.int64)
        index = VersionIndex.__new__(VersionIndex)
        index._model = getattr(self, "_model", None)
        index._use(np.concatenate([self.ids[keep], keys]), restart(self.vector_starts, new[1]), vectors,
                   restart(self.frame_starts, new[3]), frames, new[5])
        if self.lists is not None:          # the same lists: a shard probes what the whole index probes
            index.lists = self.lists.updated(rows(self.vector_starts), new[2])
        return index

    def search(self, classes: np.ndarray) -> list[VersionMatch]:
        """The ``CANDIDATES`` tracks whose version vectors come nearest those of an output's
        pitch-class power (12, frames), each aligned by Qmax around its nearest window; none for
        an output shorter than ``SHORTEST_S``: ``best`` of ``ranked``."""
        if len(self.vectors) == 0 or classes.shape[1] < SHORTEST_S * CHROMA_FPS:
            return []
        return best([self.ranked(classes, *self.model.vectors(classes, QUERY_HOP_S))])

    def ranked(self, classes: np.ndarray, starts: np.ndarray, query: np.ndarray) -> list[tuple[tuple, VersionMatch]]:
        """``search``'s candidates among this index's tracks, each with the key of their order
        (nearest first, then by track), given the output's version vectors ``query`` and their
        ``starts`` (seconds)."""
        if len(self.vectors) == 0:
            return []
        # the vectors scored: every one, or those of the lists nearest the output's windows
        rows = np.arange(len(self.vectors)) if self.lists is None else self.lists.probed(query)
        best_ref = np.empty(len(rows), np.float32)
        best_query = np.empty(len(rows), np.int64)
        for lo in range(0, len(rows), 65536):                   # bounded memory whatever the catalog
            block = self.vectors[lo:lo + 65536] if self.lists is None else self.vectors[rows[lo:lo + 65536]]
            # each similarity summed alike whatever else the block holds (a matrix product rounds
            # each by its place in the block): a shard scores a vector as the whole index does
            sims = np.einsum("qd,nd->qn", query, block.astype(np.float32))
            best_query[lo:lo + len(sims.T)] = sims.argmax(0)
            best_ref[lo:lo + len(sims.T)] = sims.max(0)
        track_of = np.searchsorted(self.vector_starts, rows, "right") - 1
        per_track = np.full(len(self.ids), -np.inf, np.float32)    # a track under 2 s has no vector
        np.maximum.at(per_track, track_of, best_ref)
        out = []
        query_chroma = chroma(classes)
        for rank in np.argsort(-per_track, kind="stable")[:min(CANDIDATES, int(np.isfinite(per_track).sum()))]:
            mine = np.flatnonzero(track_of == rank)
            best = mine[int(np.argmax(best_ref[mine]))]
            ref_s = (rows[best] - self.vector_starts[rank]) * INDEX_HOP_S
            q_s = starts[best_query[best]]
            a = max(0.0, ref_s - VERIFY_MARGIN_S)
            f0, f1 = self.frame_starts[rank], self.frame_starts[rank + 1]
            ref = self.classes[:, f0 + int(a * CHROMA_FPS):min(f1, f0 + int((ref_s + SEGMENT_S + VERIFY_MARGIN_S) * CHROMA_FPS))]
            q0 = max(0.0, q_s - VERIFY_MARGIN_S)
            segment = query_chroma[:, int(q0 * CHROMA_FPS):int((q_s + SEGMENT_S + VERIFY_MARGIN_S) * CHROMA_FPS)]
            found = qmax(segment, [chroma(ref)])[0]
            aligned = Alignment(found.score, found.key_shift, found.query_start + q0, found.query_end + q0,
                                found.ref_start + a, found.ref_end + a)
            out.append(((-float(per_track[rank]), int(self.ids[rank])),
                        VersionMatch(int(self.ids[rank]), float(per_track[rank]) * math.sqrt(found.score), aligned)))
        return out


@dataclass(frozen=True)
class VersionLists:
    """Inverted lists over a version index's vectors: ``centroids`` (lists, dim) of spherical
    k-means, and the vectors' rows in list order (``order``), list l's from ``starts[l]``."""

    centroids: np.ndarray
    order: np.ndarray
    starts: np.ndarray

    @classmethod
    def clustered(cls, vectors: np.ndarray, seed: int = 0) -> VersionLists:
        """Lists over ``vectors`` (n, dim): about √n / 4 of them (a power of 2), their centroids
        trained on at most 64 vectors a list."""
        import faiss

        n, dim = vectors.shape
        count = cls.count(n)
        sample = np.random.default_rng(seed).choice(n, min(n, 64 * count), replace=False)
        kmeans = faiss.Kmeans(dim, count, niter=10, spherical=True, seed=seed)
        kmeans.train(np.ascontiguousarray(vectors[np.sort(sample)], np.float32))
        return cls.of(kmeans.centroids, cls.nearest(kmeans.centroids, vectors))

    @staticmethod
    def count(n: int) -> int:
        """The lists for ``n`` vectors: about √n / 4, a power of 2, at least 16."""
        return 2 ** max(4, round(math.log2(math.sqrt(max(n, 1)) / 4)))

    @classmethod
    def of(cls, centroids: np.ndarray, assigned: np.ndarray) -> VersionLists:
        """The lists of vectors ``assigned`` (n,) to ``centroids``."""
        counts = np.bincount(assigned, minlength=len(centroids))
        return cls(centroids, np.argsort(assigned, kind="stable"), np.concatenate([[0], np.cumsum(counts)]))

    @staticmethod
    def nearest(centroids: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """The list of each of ``vectors``: its nearest centroid, by cosine."""
        out = np.empty(len(vectors), np.int64)
        for lo in range(0, len(vectors), 65536):
            out[lo:lo + 65536] = (vectors[lo:lo + 65536].astype(np.float32) @ centroids.T).argmax(1)
        return out

    def assigned(self) -> np.ndarray:
        """The list of each vector (by row)."""
        out = np.empty(len(self.order), np.int64)
        out[self.order] = np.repeat(np.arange(len(self.centroids)), np.diff(self.starts))
        return out

    def updated(self, kept: np.ndarray, added: np.ndarray) -> VersionLists:
        """The same lists over the rows ``kept`` ((n,) bool) and the vectors ``added`` after them."""
        return VersionLists.of(self.centroids, np.concatenate([self.assigned()[kept], self.nearest(self.centroids, added)]))

    def probed(self, query: np.ndarray) -> np.ndarray:
        """The rows, in order, of the ``PROBES`` lists nearest each of ``query``'s vectors."""
        near = np.unique(np.argsort(-(query @ self.centroids.T), axis=1, kind="stable")[:, :PROBES])
        return np.sort(np.concatenate([self.order[self.starts[k]:self.starts[k + 1]] for k in near]))

    def save(self, folder: Path) -> None:
        for name in ("centroids", "order", "starts"):
            np.save(folder / LISTS_FILE.format(name), getattr(self, name))

    @classmethod
    def open(cls, folder: Path, mapped: bool = True) -> VersionLists | None:
        """The lists ``save`` wrote to ``folder``, or None where it wrote none."""
        paths = [folder / LISTS_FILE.format(name) for name in ("centroids", "order", "starts")]
        if not all(p.exists() for p in paths):
            return None
        return cls(*(np.asarray(np.load(p, mmap_mode="r" if mapped else None)) for p in paths))


def best(ranked: list[list[tuple[tuple, VersionMatch]]]) -> list[VersionMatch]:
    """The ``CANDIDATES`` nearest of the candidates ``ranked`` by the shards of an index (or by
    itself), nearest first: what a search of the whole index finds."""
    return [m for _, m in sorted((r for part in ranked for r in part), key=lambda r: r[0])[:CANDIDATES]]
