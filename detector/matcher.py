"""Stage 4, nearest-neighbour hits → ``Match``es with time spans, tempo and a calibrated score.

Every voiced query window brings its k nearest reference windows. Per candidate track the hits
must agree on a straight time mapping ``ref = offset + tempo_ratio * query`` (tempo 0.5–2.0),
found by a Hough vote over (tempo, offset) and refined by weighted least squares through each
window's position in the reference, to a fraction of a reference hop. A track can match several
times (the same recording quoted twice); several tracks can match (a collage).
"""
from __future__ import annotations

import heapq
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from detector.chromaprint import ITEM_S, ChromaMatch

TEMPO_GRID = np.exp(np.linspace(math.log(0.5), math.log(2.0), 121))   # ~1.2 % apart
# an alignment slower than the original plays each reference window against several query
# windows: its evidence is worth the reference time it covers, not the output time
REFERENCE_SHARE = np.minimum(1.0, TEMPO_GRID)
TEMPO_TOLERANCE = 0.03    # a measured tempo this close to 1.0 is no tempo change
TEMPO_FIT_SPAN_S = 1.5    # output seconds (of window starts) an alignment needs to measure its own tempo
TEMPO_FIT_SE = 2.0        # a fitted tempo within this many standard errors of 1.0 is reported as 1.0
CREDIBLE_P = 0.01         # an embedding match this unlikely by chance may correct a tempo-1.0 mapping
SAME_OFFSET_S = 2.0       # two matches of one track whose offsets differ by less align the same stretch
# a query window's background: its BACKGROUND_RANK-th nearest reference window, where the
# verbatim repeats of a looping track count BACKGROUND_PER_LOOP times at most (``window_background``)
BACKGROUND_RANK = 8
BACKGROUND_PER_LOOP = 2
LOOP_DENSITY = 0.35
REPEAT_WITHIN = 0.05
# evidence is counted over the best LOCAL_S seconds of an alignment (the longest calibration
# negatives'), and a longer output is that many stretches of LOCAL_S, each a chance (``stretches``)
LOCAL_S = 30.0
RUN_GAP_S = 8.0           # output seconds without a hit on the line that end a copy
# a window's weight counts once per this many seconds of output it stands for (twice at the 0.25 s
# query hop the calibration was fitted with), so that evidence does not depend on the hop
EVIDENCE_UNIT_S = 0.125
CORE_SHARE = 0.1          # of a hit's median weight: what each empty step costs a copy's span (``core``)


def stretches(duration_s: float | None) -> float:
    """How many times more chances for a spurious match an output of ``duration_s`` seconds
    offers than one of ``LOCAL_S`` (at least 1): a whole song is many excerpts, each of which
    may match by chance, and its evidence is counted over ``LOCAL_S`` at most."""
    return max(1.0, (duration_s or 0.0) / LOCAL_S)


@dataclass(frozen=True)
class Hits:
    """k nearest reference windows of each query window, flattened to (n,) arrays.

    ``query_t``/``ref_t``: window start times in seconds; ``track``: catalog track key;
    ``weight``: how far the hit's cosine similarity stands above the query window's background
    (``window_background``), so that windows similar to everything, and windows buried under
    new material, count by how much the right reference stands out.
    """

    query_t: np.ndarray
    track: np.ndarray
    ref_t: np.ndarray
    weight: np.ndarray


@dataclass(frozen=True)
class Match:
    """One stretch of the output that copies one stretch of one catalog track.

    Times in seconds; ``tempo_ratio`` is reference seconds per output second; ``evidence`` is
    the method's raw strength, ``p_false`` the chance that music not in the catalog produces
    evidence this strong, and ``score`` = 1 − ``p_false``. ``key_shift``: semitones from the
    reference's key to the output's (the version layer's re-performances; 0 for copies, whose
    pitch shifts the signal layers absorb unmeasured).
    """

    track: int
    query_start: float
    query_end: float
    ref_start: float
    ref_end: float
    tempo_ratio: float
    evidence: float
    p_false: float
    method: str
    windows: int = 0
    key_shift: int = 0

    @property
    def score(self) -> float:
        return 1.0 - self.p_false

    @property
    def duration(self) -> float:
        return self.query_end - self.query_start

    @property
    def offset(self) -> float:
        """Reference time aligned with output time 0."""
        return self.ref_start - self.tempo_ratio * self.query_start


def _tail_p(evidence: float, start: float, p: float, scale: float) -> float:
    """An exponential tail ``p * exp(-(e - start) / scale)`` above ``start``, ``p * start / e`` below."""
    if evidence <= start:
        return 1.0 if evidence <= 0 else min(1.0, p * (start / max(evidence, 1e-9)))
    return min(1.0, p * math.exp(-(evidence - start) / scale))


@dataclass(frozen=True)
class Calibration:
    """Maps evidence to a false-match probability: exponential tails fitted to the evidence of
    music that is not in the catalog (``benchmarks/calibrate.py`` writes it).

    ``p_false(e) = tail_p * exp(-(e - tail_start) / tail_scale)`` above ``tail_start``, for an
    output at least ``shortest_s`` long (the shortest of those negatives). ``shorter``: tails
    fitted to the same negatives cut to a few seconds, ``{"seconds", "tail_start", "tail_p",
    "tail_scale"}`` each, shortest first: a short output is held to what chance finds in music
    that short (``p_false(e, duration_s)``).
    """

    model: str
    tail_start: float
    tail_p: float
    tail_scale: float
    negatives: int = 0
    shortest_s: float = 10.0
    shorter: tuple[dict, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "shorter", tuple(sorted(map(dict, self.shorter), key=lambda t: t["seconds"])))

    def length_factor(self, duration_s: float) -> float:
        """What an output of ``duration_s`` seconds multiplies the full-length ``p_false`` by:
        chance matches come from the alignments an output offers, and an output shorter than the
        shortest negative offers proportionally fewer (a Bonferroni count)."""
        return min(1.0, max(duration_s, 1.0) / self.shortest_s)   # no output is shorter than one window

    def p_false(self, evidence: float, duration_s: float | None = None) -> float:
        """The chance that music not in the catalog, ``duration_s`` long (None: at least
        ``shortest_s`` and at most ``LOCAL_S``), produces ``evidence`` this strong. Between the
        lengths of the fitted tails log ``p_false`` is interpolated; below the shortest, its tail
        is scaled by the Bonferroni count; never above the full-length tail's Bonferroni count.
        Beyond ``LOCAL_S`` the full tail is multiplied by the output's ``stretches``."""
        full = _tail_p(evidence, self.tail_start, self.tail_p, self.tail_scale)
        if duration_s is None or duration_s >= self.shortest_s:
            return min(1.0, full * stretches(duration_s))
        bonferroni = full * self.length_factor(duration_s)
        if not self.shorter:
            return bonferroni
        tails = [(t["seconds"], _tail_p(evidence, t["tail_start"], t["tail_p"], t["tail_scale"])) for t in self.shorter]
        tails.append((self.shortest_s, full))
        if duration_s <= tails[0][0]:
            fitted = tails[0][1] * max(duration_s, 1.0) / tails[0][0]
        else:
            (a, pa), (b, pb) = next((lo, hi) for lo, hi in zip(tails, tails[1:]) if duration_s <= hi[0])
            x = (duration_s - a) / (b - a)
            fitted = math.exp((1 - x) * math.log(max(pa, 1e-300)) + x * math.log(max(pb, 1e-300)))
        return min(fitted, bonferroni)

    @classmethod
    def load(cls, path: str | Path) -> "Calibration":
        return cls(**json.loads(Path(path).read_text()))

    def save(self, path: str | Path) -> None:
        data = {**self.__dict__, "shorter": list(self.shorter)}
        if not self.shorter:
            del data["shorter"]
        Path(path).write_text(json.dumps(data, indent=2) + "\n")


class Matcher:
    """Aligns hits into matches.

    ``ref_hop_s``: seconds between the reference windows. It sets how finely the vote bins
    offsets and how far a hit may lie from its alignment line and still count: one reference
    hop, the most a query window can fall from the nearest reference window plus the error of
    the measured tempo. A wider band lets the chance hits of neighbouring reference windows add
    to every alignment, true or not.
    """

    def __init__(self, calibration: Calibration, ref_hop_s: float, window_s: float = 1.0, max_matches: int = 8,
                 min_windows: int = 3):
        self.cal = calibration
        self.ref_hop_s = ref_hop_s
        self.window_s = window_s
        self.max_matches = max_matches
        self.min_windows = min_windows

    def match(self, hits: Hits, query_hop_s: float, max_p_false: float = 0.5) -> list[Match]:
        """Embedding matches with ``p_false`` ≤ ``max_p_false``, strongest first.

        Tracks are aligned in the order of the most evidence their hits could give (``_bound``),
        and no further once that falls below the weakest of ``max_matches`` matches found: a
        whole song has hits on most of the catalog, nearly all of them too weak to matter."""
        keep = hits.weight > 0
        order = np.argsort(hits.track[keep], kind="stable")
        q_all, t_all, r_all, w_all = (a[keep][order] for a in (hits.query_t, hits.track, hits.ref_t, hits.weight))
        tracks, first = np.unique(t_all, return_index=True)
        spans = list(zip(first, np.append(first[1:], len(t_all))))
        bounds = np.array([self._bound(q_all[a:b], w_all[a:b], query_hop_s) for a, b in spans])
        found: list[tuple[int, int, Match]] = []       # (the track's place in ``tracks``, the match's on it, match)
        strongest: list[float] = []                    # a min-heap of the max_matches highest evidences kept
        for i in np.argsort(-bounds, kind="stable"):
            if len(strongest) == self.max_matches and bounds[i] < strongest[0]:
                break                                  # no match of this track or the rest would be kept
            a, b = spans[i]
            q, r, w = q_all[a:b], r_all[a:b], w_all[a:b]
            mine: list[Match] = []
            for _ in range(3):                      # the same recording quoted up to 3 times
                m, inliers = self._align(int(tracks[i]), q, r, w, query_hop_s)
                if m is None:
                    break
                # music repeats itself: the same output stretch aligned to a second place in the
                # recording is the same copy, not another one
                if not any(_overlap(m, o) > 0.5 * min(m.duration, o.duration) for o in mine):
                    mine.append(m)
                q, r, w = q[~inliers], r[~inliers], w[~inliers]
            for k, m in enumerate(mine):
                if m.p_false <= max_p_false:
                    found.append((i, k, m))
                    heapq.heappush(strongest, m.evidence)
                    if len(strongest) > self.max_matches:
                        heapq.heappop(strongest)
        found.sort(key=lambda f: (f[2].p_false, -f[2].evidence, f[0], f[1]))
        return [m for _, _, m in found[: self.max_matches]]

    @staticmethod
    def _bound(q: np.ndarray, w: np.ndarray, hop: float) -> float:
        """The most evidence any alignment of these hits (one track's, weights > 0) can have
        (``_align``): each query window's best weight, summed over the best ``LOCAL_S``."""
        qs, best = _best_per_window(q, w)
        return local_sum(qs, best, LOCAL_S) * (hop / EVIDENCE_UNIT_S)

    def _align(self, track, q, r, w, hop):
        if len(np.unique(q)) < self.min_windows:
            return None, None
        offsets = r[None, :] - TEMPO_GRID[:, None] * q[None, :]               # (tempi, hits)
        lo = offsets.min()
        bins = np.floor((offsets - lo) / self.ref_hop_s).astype(np.int64)
        nb = int(bins.max()) + 3
        keys = (np.arange(len(TEMPO_GRID))[:, None] * nb + bins + 1).ravel()
        votes = np.bincount(keys, weights=np.broadcast_to(w, offsets.shape).ravel(),
                            minlength=len(TEMPO_GRID) * nb).reshape(len(TEMPO_GRID), nb)
        votes = votes[:, :-2] + votes[:, 1:-1] + votes[:, 2:]                  # neighbouring bins
        votes *= REFERENCE_SHARE[:, None]
        ti, bi = np.unravel_index(np.argmax(votes), votes.shape)
        tempo = TEMPO_GRID[ti]
        offset = lo + (bi + 0.5) * self.ref_hop_s
        grid = self._weight_grid(q, r, w, hop)
        for _ in range(3):
            inl = np.abs(r - (offset + tempo * q)) <= self.ref_hop_s
            tempo, offset = self._refine(*self._positions(q, r, w, inl, grid), tempo, offset)
        inl = np.abs(r - (offset + tempo * q)) <= self.ref_hop_s
        # one vote per query window: its best inlier
        qs, best = _best_per_window(q[inl], w[inl])
        qs, best = _strongest_run(qs, best)
        keep = core(qs, best, hop)
        qs, best = qs[keep], best[keep]
        if len(qs) < self.min_windows:
            return None, None
        inl &= (q >= qs[0]) & (q <= qs[-1])          # the line's other runs may be copies of their own
        # each window's weight times the output time it stands for (``EVIDENCE_UNIT_S``: the same
        # evidence at any query hop), of reference when the copy is slowed down
        evidence = float(local_sum(qs, best, LOCAL_S) * (hop / EVIDENCE_UNIT_S) * min(1.0, tempo))
        q0, q1 = float(qs.min()), float(qs.max() + self.window_s)
        m = Match(track=track, query_start=q0, query_end=q1, ref_start=offset + tempo * q0,
                  ref_end=offset + tempo * q1, tempo_ratio=float(tempo), evidence=evidence,
                  p_false=self.cal.p_false(evidence), method="embedding", windows=len(qs))
        return m, inl

    def _weight_grid(self, q, r, w, query_hop):
        """The best weight of each (query window, reference window) pair among the hits, at any
        transposition: (sorted cell numbers, their weights, a function from times to cell numbers)."""
        width = int(np.rint(r.max() / self.ref_hop_s)) + 3        # reference windows, and one either side

        def cell(qt, rt):
            return np.rint(qt / query_hop).astype(np.int64) * width + np.rint(rt / self.ref_hop_s).astype(np.int64) + 1

        cells, weights = _best_per_window(cell(q, r), w)
        return cells, weights, cell

    def _positions(self, q, r, w, inliers, grid):
        """Where each query window with an inlier lies in the reference: (output times, reference
        times, weights), one per window. Its best inlier's reference window, moved by the parabola
        through its weight and those of the reference windows one hop either side (the query
        window's hits there, from ``grid``, ``_weight_grid``): a window falls anywhere between two
        reference windows, and the tempo of a copy a few seconds long is only measurable to a
        fraction of a hop."""
        qs, best, rs = _best_per_window(q[inliers], w[inliers], r[inliers])
        if len(qs) == 0:
            return qs, rs, best
        cells, weights, cell = grid
        centre = cell(qs, rs)
        side = []
        for k in (centre - 1, centre + 1):
            at = np.minimum(np.searchsorted(cells, k), len(cells) - 1)
            side.append(np.where(cells[at] == k, weights[at], np.nan))
        before, after = side
        curve = before - 2 * best + after
        shift = np.where(curve < 0, 0.5 * (before - after) / np.where(curve < 0, curve, -1.0), 0.0)
        return qs, rs + self.ref_hop_s * np.clip(shift, -0.5, 0.5), best

    @staticmethod
    def _refine(q, r, w, tempo, offset):
        """The line through the windows' reference positions: its tempo fitted by weighted least
        squares where the windows span ``TEMPO_FIT_SPAN_S`` or more, unless it stays within
        ``TEMPO_FIT_SE`` standard errors of 1.0 (then 1.0: a copy is not called tempo-changed
        unless the windows show it); else the vote's tempo. The offset fits the tempo kept."""
        if len(q) < 2:
            return tempo, offset
        if len(q) >= 4 and np.ptp(q) >= TEMPO_FIT_SPAN_S:
            A = np.stack([q, np.ones_like(q)], 1) * np.sqrt(w)[:, None]
            (t, o), *_ = np.linalg.lstsq(A, r * np.sqrt(w), rcond=None)
            spread = np.sqrt(np.average((q - np.average(q, weights=w)) ** 2, weights=w))
            scatter = np.average((r - (o + t * q)) ** 2, weights=w) / (len(q) - 2)
            if abs(t - 1.0) <= TEMPO_FIT_SE * np.sqrt(scatter) / max(spread, 1e-9):
                tempo = 1.0
            elif 0.5 <= t <= 2.0:
                return float(t), float(o)
        return tempo, float(np.average(r - tempo * q, weights=w))


def window_background(sims: np.ndarray, tracks: np.ndarray, windows: np.ndarray, rank: int = BACKGROUND_RANK,
                      per_loop: int = BACKGROUND_PER_LOOP, loop_density: float = LOOP_DENSITY,
                      repeat_within: float = REPEAT_WITHIN) -> np.ndarray:
    """Background similarity of each query window: that of its ``rank``-th nearest reference
    window, where the verbatim repeats of a looping track count ``per_loop`` times at most.

    ``sims``, ``tracks``, ``windows``: (query windows, k) neighbours, nearest first, with their
    track and window number; track −1 where the index had fewer than k vectors.

    Music loops: a window of a looping track has its passage again and again among its nearest
    neighbours, and a background taken among those repeats would erase the very match it should
    measure. A sustained texture (a held chord, a drone) also fills the nearest neighbours with
    one track, and there the background must stay high: such windows match anywhere in the
    texture, at any tempo. The two differ in how the track's neighbours lie: a loop's repeats are
    a few places far apart that answer the query about equally well, a texture's windows a dense
    run. A track's repeats are its neighbours within ``repeat_within`` of its nearest one's
    similarity, and they are taken for a loop when they are fewer than ``loop_density`` of the
    windows between the first and the last of them; every other neighbour counts.
    Where the neighbours hold fewer than ``rank`` countable windows, the background is the last
    neighbour's similarity (the countable one would be no nearer), and 0 for a window without
    neighbours.
    """
    n, k = sims.shape
    if k == 0:
        return np.zeros(n, np.float32)
    valid = tracks >= 0
    rows, cols = np.arange(n), np.arange(k)
    # each track's neighbours side by side, nearest first (a stable sort keeps the similarity order)
    order = np.argsort(tracks, axis=1, kind="stable")
    t, w, s = (np.take_along_axis(a, order, 1) for a in (tracks, windows, sims))
    first = np.ones((n, k), bool)
    first[:, 1:] = t[:, 1:] != t[:, :-1]
    start = np.maximum.accumulate(np.where(first, cols, 0), axis=1)
    nearer = cols - start                                                      # nearer windows of its track
    repeat = s >= s[rows[:, None], start] - repeat_within                      # as near as its track's nearest
    group = (np.cumsum(first, 1) - 1 + k * rows[:, None]).ravel()             # (window, track) → one number
    size = np.bincount(group, weights=repeat.ravel(), minlength=n * k)
    far = np.iinfo(np.int64).max
    lo = np.full(n * k, far)
    hi = np.full(n * k, -1)
    np.minimum.at(lo, group, np.where(repeat, w, far).ravel())
    np.maximum.at(hi, group, np.where(repeat, w, -1).ravel())
    looping = repeat & (size < loop_density * (hi - lo + 1))[group].reshape(n, k)
    counted = np.empty((n, k), bool)
    np.put_along_axis(counted, order, ~looping | (nearer < per_loop), 1)
    counted &= valid
    at = counted & (np.cumsum(counted, 1) == rank)
    lowest = np.where(valid.any(1), sims[rows, np.maximum(valid.sum(1) - 1, 0)], 0.0)
    return np.where(at.any(1), sims[rows, at.argmax(1)], lowest).astype(np.float32)


def _strongest_run(qs: np.ndarray, weights: np.ndarray, gap_s: float = RUN_GAP_S) -> tuple[np.ndarray, np.ndarray]:
    """The run of ``qs`` (sorted window starts, seconds) with no gap over ``gap_s`` whose
    ``weights`` sum highest, and its weights: hits of one line minutes apart are not one copy."""
    if len(qs) == 0:
        return qs, weights
    runs = np.split(np.arange(len(qs)), np.flatnonzero(np.diff(qs) > gap_s) + 1)
    run = max(runs, key=lambda i: weights[i].sum())
    return qs[run], weights[run]


def core(times: np.ndarray, weights: np.ndarray, step: float, share: float = CORE_SHARE) -> np.ndarray:
    """Which of ``times`` (sorted, seconds) lie in the stretch where the hits of one alignment
    are dense: the interval of a grid of ``step`` seconds that maximises the summed ``weights``
    less ``share`` of the median step's (among steps with hits) for every step it spans. A
    chance hit a few seconds beyond a copy, on its line, would need to outweigh the empty steps
    between them to join it."""
    if len(times) == 0:
        return np.zeros(0, bool)
    cell = np.rint((times - times[0]) / step).astype(np.int64)
    per_step = np.bincount(cell, weights=weights)
    gain = per_step - share * float(np.median(per_step[per_step > 0]))
    best, start, lo, hi, run = -np.inf, 0, 0, 0, 0.0
    for i, g in enumerate(gain):                    # Kadane: the best-sum interval
        if run <= 0:
            run, start = g, i
        else:
            run += g
        if run > best:
            best, lo, hi = run, start, i
    return (cell >= lo) & (cell <= hi)


def local_sum(qs: np.ndarray, weights: np.ndarray, span_s: float) -> float:
    """The highest sum of ``weights`` over windows starting within ``span_s`` seconds of one
    another (``qs`` sorted, seconds): the evidence of the strongest ``span_s`` of a line."""
    if len(qs) == 0 or qs[-1] - qs[0] < span_s:
        return float(np.sum(weights))
    total = np.concatenate([[0.0], np.cumsum(weights)])
    end = np.searchsorted(qs, qs + span_s, "left")
    return float(np.max(total[end] - total[:-1]))


def _best_per_window(q: np.ndarray, s: np.ndarray, *more: np.ndarray) -> tuple[np.ndarray, ...]:
    """Each distinct ``q``'s highest ``s`` (and the ``more`` values of the same element), by ``q``."""
    if len(q) == 0:
        return (q, s, *more)
    order = np.lexsort((-s, q))
    first = np.concatenate([[True], q[order][1:] != q[order][:-1]])
    return tuple(a[order][first] for a in (q, s, *more))


def from_chromaprint(m: ChromaMatch) -> Match:
    """A Chromaprint stretch as a ``Match`` (Chromaprint only finds tempo 1.0 copies)."""
    q0, r0, d = m.query_item * ITEM_S, m.ref_item * ITEM_S, m.items * ITEM_S
    return Match(track=m.track, query_start=q0, query_end=q0 + d, ref_start=r0, ref_end=r0 + d,
                 tempo_ratio=1.0, evidence=1.0 - m.bit_error_rate, p_false=m.p_false, method="chromaprint",
                 windows=m.items)


def within(m: Match, duration_s: float) -> Match:
    """``m`` with its span cut at the output's end (``duration_s``), and its reference span by as
    much at its tempo. A layer's span may reach past the last second it heard (a landmark
    stretch ends half a pair's reach after its last anchor); no copy lasts longer than the
    output it is in."""
    if m.query_end <= duration_s:
        return m
    return replace(m, query_end=duration_s, ref_end=m.ref_end - m.tempo_ratio * (m.query_end - duration_s))


def merge(matches: list[Match]) -> list[Match]:
    """One match per copied stretch: where both layers found the same alignment, keep the
    stronger one's mapping over the union of both spans, name both methods, and combine their
    false-match probabilities (``fisher``): two layers agreeing on one alignment by chance is
    rarer than either alone.

    Chromaprint (and landmarks searched at tempo 1.0) align at tempo 1.0 only: where they and an
    embedding match that measured another tempo cover the same stretch of the same track, both found the copy, and the embedding's
    mapping is the one that holds (a tempo-1.0 alignment of a tempo-changed copy is partial at
    best), carried with the combined score: when the embedding match covers more of
    the output and is itself credible (``p_false`` ≤ ``CREDIBLE_P``), so that a chance alignment
    at another tempo never displaces a full tempo-1.0 match.

    A weaker match of the same track at another alignment over the same stretch is the stretch
    aligned to a repeat of the recording's passage, and gives way, unless most of it lies beyond
    the stronger one's span: then it evidences more of the output than the stronger one does
    (a copy whose first seconds a loop's repeat matches better) and is kept beside it."""
    out: list[Match] = []
    p_values: list[list[float]] = []     # of the layers merged into each match of ``out``
    for m in sorted(matches, key=lambda m: (m.p_false, -m.duration)):
        for i, o in enumerate(out):
            if o.track != m.track or _overlap(o, m) == 0:
                continue
            same = same_alignment(o, m)
            if not same and _overlap(o, m) <= 0.5 * min(o.duration, m.duration):
                continue
            if ("embedding" not in o.method and "embedding" in m.method.split("+")
                    and abs(m.tempo_ratio - 1.0) > TEMPO_TOLERANCE and m.duration > o.duration and m.p_false <= CREDIBLE_P):
                p_values[i].append(m.p_false)
                out[i] = _spanning(replace(m, p_false=fisher(p_values[i]), method=_methods(o, m)), o if same else m)
            elif same and not set(m.method.split("+")) & set(o.method.split("+")):
                p_values[i].append(m.p_false)
                out[i] = _spanning(replace(o, p_false=fisher(p_values[i]), method=_methods(o, m)), m)
            elif not same and _overlap(o, m) <= 0.5 * m.duration:
                continue                    # mostly beyond the stronger one's span
            break                           # else the same stretch aligned to a repeat: keep the stronger
        else:
            out.append(m)
            p_values.append([m.p_false])
    return out


def same_alignment(a: Match, b: Match) -> bool:
    """Whether ``a`` and ``b`` align overlapping stretches of the output with one track at one
    offset."""
    return a.track == b.track and _overlap(a, b) > 0 and abs(a.offset - b.offset) < SAME_OFFSET_S


def confirm(hypothesis: Match, confirmation: Match) -> Match:
    """``hypothesis`` confirmed by another layer that looked at its alignment alone: the
    confirmation's mapping over both spans, both methods, and Fisher's combination of both
    false-match probabilities (``confirmation.p_false`` is that of its own question: chance
    agreeing this well with one given alignment). A confirmation never stands on its own
    (``fisher_combined``, not ``fisher``): it only strengthens the match that asked, so a chance
    agreement of some peaks with a weak chance alignment stays as weak as both together."""
    return _spanning(replace(confirmation, p_false=fisher_combined([hypothesis.p_false, confirmation.p_false]),
                             method=_methods(hypothesis, confirmation)), hypothesis)


def fisher(p_values: list[float]) -> float:
    """Fisher's combination of the false-match probabilities of layers that found the same copy
    independently (different features: embedding, Chromaprint bits, spectral peaks): the chance
    that chance alone makes all of them this strong; never weaker than the strongest alone (a
    weak second layer does not discredit a strong first one)."""
    return min(1.0, fisher_combined(p_values), *p_values)


def fisher_combined(p_values: list[float]) -> float:
    """Fisher's combined probability itself: the chance that independent tests, each true to its
    null, give p-values whose product is this small."""
    x = -sum(math.log(max(p, 1e-300)) for p in p_values)
    return min(1.0, math.exp(-x) * sum(x ** j / math.factorial(j) for j in range(len(p_values))))


def _spanning(m: Match, other: Match) -> Match:
    """``m``'s mapping over the union of both matches' output spans."""
    q0, q1 = min(m.query_start, other.query_start), max(m.query_end, other.query_end)
    return replace(m, query_start=q0, query_end=q1, ref_start=m.offset + m.tempo_ratio * q0,
                   ref_end=m.offset + m.tempo_ratio * q1)


def _methods(a: Match, b: Match) -> str:
    return "+".join(sorted({*a.method.split("+"), *b.method.split("+")}))


def _overlap(a: Match, b: Match) -> float:
    """Seconds of output covered by both matches."""
    return max(0.0, min(a.query_end, b.query_end) - max(a.query_start, b.query_start))
