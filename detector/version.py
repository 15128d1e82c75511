"""The version layer's stages: semitone bands → chroma → version embeddings, and the Qmax
alignment that verifies them.

A re-performance keeps a work's melody, harmony and rhythm and changes everything else: sound,
key, tempo, arrangement. The front end keeps what survives, the energy of each of the 12 pitch
classes ten times a second (``chroma``); the encoder (``VersionNet``) pads and convolves the
pitch-class axis circularly and then takes the maximum over it, so a transposition, a rotation
of that axis, leaves its vector exactly unchanged. Tempo, timbre and arrangement it learns to
ignore from rendered versions (``detector/train_version.py``).

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

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from detector import saved
from detector.features import FrontEnd, Spectrogram
from detector.matcher import Calibration
from detector.model import load_checkpoint

CHROMA_FPS = 10                 # chroma frames per second
SEGMENT_S = 20.0                # seconds of audio per version vector
PITCH_CLASSES = "pc-v2"         # how ``pitch_class_power`` is computed, stored with every track
PITCH_CLASS_SCALE = 256.0       # stored pitch-class power is divided by it (float16's range)
SILENT_DB = 50.0                # frames this far below the clip's loudest carry no pitch
QMAX_STEP = 2                   # chroma frames per Qmax step: 5 a second
MIN_FRAMES = 20                 # chroma frames (2 s) a version vector needs at least
CHECKPOINT_FORMAT = 1
DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / "clearance-ver-v1.pt"


def pitch_classes(power: torch.Tensor, f_min_midi: int, frames_per_second: float) -> torch.Tensor:
    """Semitone band power (bands, frames) → power of each pitch class (12, frames at
    ``CHROMA_FPS``); row k is pitch class k (0 = C). Powers add when recordings are mixed."""
    pooled = _at_chroma_rate(power, frames_per_second)
    classes = (torch.arange(len(pooled)) + f_min_midi) % 12
    return torch.zeros(12, pooled.shape[1], dtype=pooled.dtype).index_add_(0, classes, pooled)


def _at_chroma_rate(power: torch.Tensor, frames_per_second: float) -> torch.Tensor:
    """Band power (bands, frames) averaged down to ``CHROMA_FPS`` frames a second."""
    bands, frames = power.shape
    step = max(1, round(frames_per_second / CHROMA_FPS))
    n = frames // step
    return power[:, : n * step].reshape(bands, n, step).mean(2)


@functools.cache
def _spectrogram() -> Spectrogram:
    return Spectrogram(FrontEnd())


def band_power(samples: np.ndarray) -> torch.Tensor:
    """Mono samples at the fingerprint front end's rate (8 kHz) → their power in its semitone
    bands (bands, frames at its 50 a second): what ``pitch_class_power`` and ``melody`` reduce."""
    with torch.inference_mode():
        return _spectrogram().of_long(torch.from_numpy(np.ascontiguousarray(samples, np.float32)))


def _band0_midi(fe: FrontEnd) -> int:
    """The MIDI note of the front end's lowest band."""
    return round(69 + 12 * math.log2(fe.f_min / 440))


def pitch_class_power(samples: np.ndarray) -> np.ndarray:
    """Mono samples at the fingerprint front end's rate (8 kHz) → (12, frames) float16 power of
    each pitch class at ``CHROMA_FPS``: what the catalog stores of a track for this layer (240
    bytes a second), computed from the same semitone bands as the fingerprints."""
    return stored_pitch_classes(band_power(samples))


def stored_pitch_classes(power: torch.Tensor) -> np.ndarray:
    """``pitch_class_power`` of samples whose ``band_power`` is ``power``."""
    fe = _spectrogram().fe
    with torch.inference_mode():
        classes = pitch_classes(power, _band0_midi(fe), fe.sample_rate / fe.hop_length)
    # float16 holds up to 65,504: full-scale music reaches about 300,000 before this scaling, and
    # the model sees power only relative to the window's loudest frame
    return np.minimum(classes.numpy() / PITCH_CLASS_SCALE, 6e4).astype(np.float16)


MELODY_MIDI = (55, 84)          # the melody view's range: G3 to C6
MELODY_QUIET_DB = 30.0          # frames this far below the clip's loudest have no melody
_HARMONICS = ((0, 1.0), (12, 0.5), (19, 0.33), (24, 0.25))      # semitones above a note, weight


def melody(power: torch.Tensor) -> np.ndarray:
    """The layer's melody view, drawn for reviewers (the search does not use it): from the
    ``band_power`` of mono samples, the predominant pitch of each ``CHROMA_FPS`` frame as a MIDI
    note number (-1 where the frame is quiet). Each semitone band of ``MELODY_MIDI`` is scored by
    harmonic summation of the compressed band power at its first harmonics; the best wins."""
    fe = _spectrogram().fe
    pooled = _at_chroma_rate(power, fe.sample_rate / fe.hop_length).numpy()
    notes = np.arange(MELODY_MIDI[0], MELODY_MIDI[1] + 1)
    magnitude = np.sqrt(pooled)
    salience = np.zeros((len(notes), pooled.shape[1]), np.float32)
    for offset, weight in _HARMONICS:
        bands = notes - _band0_midi(fe) + offset
        inside = bands < len(pooled)
        salience[inside] += weight * magnitude[bands[inside]]
    level = pooled.sum(0)
    loud = level > level.max(initial=0) * 10 ** (-MELODY_QUIET_DB / 10)
    return np.where(loud & (level > 0), notes[salience.argmax(0)], -1)


def chroma(classes: torch.Tensor) -> torch.Tensor:
    """Pitch-class power (..., 12, frames) → chroma: compressed, each frame's loudest class 1,
    frames ``SILENT_DB`` below the loudest frame 0."""
    level = classes.sum(-2, keepdim=True)
    loud = level > level.amax(-1, keepdim=True) * 10 ** (-SILENT_DB / 10)
    compressed = classes.clamp_min(1e-12).sqrt()
    return compressed / compressed.amax(-2, keepdim=True) * loud


class CircularConv(nn.Module):
    """A 2-d convolution over (pitch class, time) whose pitch axis wraps around."""

    def __init__(self, cin: int, cout: int, time_kernel: int = 3, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, (3, time_kernel), stride=(1, stride), dilation=(1, dilation), bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.time_pad = dilation * (time_kernel - 1) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x[:, :, -1:], x, x[:, :, :1]], 2)
        x = F.pad(x, (self.time_pad, self.time_pad))
        return F.relu(self.bn(self.conv(x)))


class VersionNet(nn.Module):
    """Chroma (batch, 12, frames) → (batch, dim) L2-normalised version vectors, the same for
    every transposition of the input."""

    def __init__(self, width: int = 32, dim: int = 128):
        super().__init__()
        w = width
        self.body = nn.Sequential(
            CircularConv(1, w // 2, 5, stride=2), CircularConv(w // 2, w, 3, stride=2), CircularConv(w, w),
            CircularConv(w, 2 * w, 3, stride=2), CircularConv(2 * w, 4 * w, 3, dilation=2),
            CircularConv(4 * w, 4 * w, 3, dilation=4))
        self.head = nn.Linear(8 * w, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x[:, None]).amax(2)                    # (batch, channels, time): max over pitch
        pooled = torch.cat([h.mean(2), h.amax(2)], 1)
        return F.normalize(self.head(pooled), dim=1)


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
# the shipped model


class VersionModel:
    """The version encoder with its settings, ``load``\\ed from a checkpoint of
    ``detector/train_version.py``."""

    def __init__(self, net: VersionNet, version: str, segment_s: float = SEGMENT_S, weights: str = ""):
        self.net, self.version, self.segment_s = net.eval(), version, segment_s
        self.weights = weights          # sha256 of the checkpoint: vectors of other weights are never mixed

    @classmethod
    def load(cls, path: str | Path | None = None) -> VersionModel:
        path = Path(path) if path else DEFAULT_WEIGHTS
        ckpt = load_checkpoint(path, CHECKPOINT_FORMAT, "version model")
        net = VersionNet(ckpt["width"], ckpt["dim"])
        net.load_state_dict(ckpt["state"])
        return cls(net, ckpt["version"], ckpt["segment_s"], hashlib.sha256(path.read_bytes()).hexdigest())

    @property
    def dim(self) -> int:
        return self.net.head.out_features

    @staticmethod
    def classes(samples: np.ndarray) -> torch.Tensor:
        """8 kHz mono samples → (12, frames) pitch-class power at ``CHROMA_FPS``."""
        return torch.from_numpy(pitch_class_power(samples).astype(np.float32))

    def vectors(self, classes: torch.Tensor, hop_s: float, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """Version vectors of ``segment_s`` windows every ``hop_s`` seconds of pitch-class power
        (12, frames): ``(starts, vectors)``, (n,) seconds and (n, dim) float32 L2-normalised.
        Audio shorter than a window is one window of its length; shorter than ``MIN_FRAMES``, none."""
        size, hop = round(self.segment_s * CHROMA_FPS), max(1, round(hop_s * CHROMA_FPS))
        frames = classes.shape[1]
        if frames < MIN_FRAMES:
            return np.zeros(0), np.zeros((0, self.dim), np.float32)
        starts = np.arange(0, max(frames - size, 0) + 1, hop)
        windows = chroma(torch.stack([classes[:, s:s + size] for s in starts]).float())
        with torch.inference_mode():
            out = [self.net(windows[i:i + batch]) for i in range(0, len(windows), batch)]
        return starts / CHROMA_FPS, torch.cat(out).numpy()


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


@functools.cache
def shipped() -> tuple[VersionModel, Calibration]:
    """The shipped version model and its calibration, loaded once per process."""
    return VersionModel.load(), Calibration.load(DEFAULT_WEIGHTS.with_name(CALIBRATION))


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

    def __init__(self, classes: dict[int, np.ndarray], model: VersionModel | None = None):
        self._model = model
        keys = sorted(classes)
        self._use(*self._table(np.asarray(keys, np.int64), [classes[k] for k in keys]))

    @property
    def model(self) -> VersionModel:
        """The model its vectors are of: the shipped one unless given (a benchmark's candidate)."""
        return getattr(self, "_model", None) or shipped()[0]

    def _table(self, keys: np.ndarray, classes: list[np.ndarray]) -> tuple[np.ndarray, ...]:
        model = self.model
        vectors = [model.vectors(torch.from_numpy(c.astype(np.float32)), INDEX_HOP_S)[1].astype(np.float16)
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
        return str(self.weights[0]) == shipped()[0].weights

    def __len__(self) -> int:
        return len(self.vectors)

    def updated(self, classes: dict[int, np.ndarray], drop: list[int] = ()) -> VersionIndex:
        """A new index in memory: this one without the tracks ``drop``, with those of ``classes``
        added (embedded now), which must come after every track kept, and its vectors the
        shipped model's (``ValueError`` otherwise: the layer builds a new one)."""
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

    def search(self, classes: torch.Tensor) -> list[VersionMatch]:
        """The ``CANDIDATES`` tracks whose version vectors come nearest those of an output's
        pitch-class power (12, frames), each aligned by Qmax around its nearest window; none for
        an output shorter than ``SHORTEST_S``: ``best`` of ``ranked``."""
        if len(self.vectors) == 0 or classes.shape[1] < SHORTEST_S * CHROMA_FPS:
            return []
        return best([self.ranked(classes, *self.model.vectors(classes, QUERY_HOP_S))])

    def ranked(self, classes: torch.Tensor, starts: np.ndarray, query: np.ndarray) -> list[tuple[tuple, VersionMatch]]:
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
        query_chroma = chroma(classes.float()).numpy()
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
            found = qmax(segment, [chroma(torch.from_numpy(ref.astype(np.float32))).numpy()])[0]
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
        count = 2 ** max(4, round(math.log2(math.sqrt(n) / 4)))
        sample = np.random.default_rng(seed).choice(n, min(n, 64 * count), replace=False)
        kmeans = faiss.Kmeans(dim, count, niter=10, spherical=True, seed=seed)
        kmeans.train(np.ascontiguousarray(vectors[np.sort(sample)], np.float32))
        return cls.of(kmeans.centroids, cls.nearest(kmeans.centroids, vectors))

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
