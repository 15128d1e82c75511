"""The landmark layer: copies buried under new material, found by pairs of spectral peaks.

A recording mixed under new vocals or instruments keeps many of its own spectral peaks wherever
it is locally the loudest thing in the spectrum. Pairs of nearby peaks, hashed as (frequency,
frequency difference, time difference), come back at one constant time offset when the output
plays the recording at its original pitch and tempo (Wang 2003, the method behind Shazam), and
also at another tempo once the output's peak times are scaled by it (a tempo change moves the
peaks, not their frequencies; the catalog asks at the tempo its strongest embedding matches
measured).
Candidates are voted by offset; the votes at the best offset are the evidence, calibrated on
music that is not in the catalog like the embedding's (``benchmarks/calibrate.py``).

The three layers divide the work: Chromaprint confirms near-exact copies, the embedding finds
pitch-shifted, tempo-changed and degraded ones, and landmarks find copies under new material
and confirm tempo-changed ones.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from detector import saved
from detector.audio import Clip
from detector.matcher import LOCAL_S, Calibration, Match, core, local_sum

if TYPE_CHECKING:
    import torch

VERSION = "landmarks-v4"          # the settings below and the search; recorded in the landmark calibration
PEAKS = "peaks-v2"                # how catalog peaks are picked (``CATALOG``); stored with each track's peaks
SAMPLE_RATE = 8000
N_FFT, HOP = 512, 128             # 64 ms frames every 16 ms
FRAME_S = HOP / SAMPLE_RATE
BINS = (3, 200)                   # 47 Hz … 3.1 kHz
DYNAMIC_RANGE = 7.0               # natural-log units (~60 dB) below the clip's loudest bin
MAX_DT, MAX_DF = 63, 31           # frames (~1 s) and bins (~480 Hz) to a paired peak
HASHES = 1 << 20                  # distinct pair hashes


@dataclass(frozen=True)
class Picking:
    """How peaks are picked and paired."""

    neighbourhood: tuple[int, int]  # a peak is the maximum of this many bins × frames around it
    per_second: int                 # the strongest peaks of every second are kept
    fan_out: int                    # pairs per anchor peak


# Catalog tracks are indexed at ±4 bins × ±5 frames (±0.08 s), at most 60 peaks a second, 10 pairs
# per peak. Under new material a recording's peak is often not the maximum of a wide neighbourhood
# any more: the catalog keeps the peaks that a copy keeps where it is only locally the loudest
# (sparser picking, ±7 × ±10 and 30 a second, found 82.5 % of 10 s copies mixed at 0 dB under
# other music, this one 92.5 %, at 2.3 times the pairs; ``docs/model-history.md``).
CATALOG = Picking((9, 11), 60, 10)
# Outputs are searched more densely still, and each anchor pairs twice as far: the new material's
# peaks between a copy's own push a catalog pair out of an anchor's first 10.
QUERY = Picking((7, 9), 120, 20)
# A search's candidate pairs grow with the output's pairs times the catalog's: an output longer
# than ``DENSE_S`` is searched at tempo 1.0 with sparser peaks (a 10-minute output against 15.8 h
# of catalog: 0.6 s and 0.6 GB, where ``QUERY``'s would take 2.9 s and 3.0 GB), and with
# ``QUERY``'s only where those point and near the matches whose tempo it is searched at
# (``index/layers/landmarks.py``).
DENSE_S = 120.0
LONG_QUERY = Picking((11, 15), 45, 10)
OFFSET_BIN = 4                    # frames: alignments this close vote together
COMMON = 1000                     # hashes found this often in the catalog carry no evidence
MIN_VOTES = 6
VOTE_BINS = 1 << 22               # (track, offset cell) counters a search holds at once: 32 MB
PER_SECOND_VOTES = 10
GAP_S = 3.0                       # a stretch of aligned pairs ends at a gap this long
EXTENT_GAP_S = 6.0                # ... and the copy it evidences, at a gap this long (``_stretch``)
CORE_STEP_S = 0.25                # a stretch's ends are where its pairs stop being dense (``matcher.core``)
TEXTURE_CELLS = 31                # offset cells (~2 s) either side where a texture's other alignments lie
NEAR_S = 1.0                      # how far from a given alignment (``search``'s ``near``) a confirmation looks
CALIBRATION = "landmarks.calibration.json"
CONFIRM_CALIBRATION = "landmarks.confirm.calibration.json"   # the null of a confirmation's evidence
COUNTS_FILE = "landmarks-catalog-counts.npy"                  # a shard's: each hash's pairs in the whole catalog


def peaks(clip: Clip, picking: Picking = CATALOG) -> np.ndarray:
    """(n,) uint32 spectral peaks of ``clip`` sorted by time, each ``frame << 8 | bin``."""
    import torch        # here: a shard's replica searches the index and never picks peaks (nor loads torch)

    if clip.sample_rate != SAMPLE_RATE:
        raise ValueError(f"landmarks need {SAMPLE_RATE} Hz audio, got {clip.sample_rate}")
    x = torch.from_numpy(np.ascontiguousarray(clip.samples, np.float32))
    if len(x) < N_FFT:
        return np.zeros(0, np.uint32)
    mag = torch.stft(x, N_FFT, HOP, window=torch.hann_window(N_FFT), return_complex=True).abs()
    logm = torch.log(mag[BINS[0]:BINS[1]] + 1e-9)
    loud = logm > logm.max() - DYNAMIC_RANGE
    rel = logm - logm.mean(dim=1, keepdim=True)          # every band on its own footing
    top = _window_max(_window_max(rel, picking.neighbourhood[0], 0), picking.neighbourhood[1], 1)
    f, t = torch.nonzero((rel == top) & loud & (rel > 0.5), as_tuple=True)
    f, t, v = f.numpy(), t.numpy(), rel[f, t].numpy()
    # the strongest of every second, so quiet passages keep their share
    second = t // round(1 / FRAME_S)
    order = np.lexsort((-v, second))
    f, t, second = f[order], t[order], second[order]
    first = np.searchsorted(second, second, "left")
    keep = np.arange(len(second)) - first < picking.per_second
    f, t = f[keep], t[keep]
    order = np.argsort(t, kind="stable")
    return ((t[order].astype(np.uint32) << 8) | f[order].astype(np.uint32)).astype(np.uint32)


def between(prints: np.ndarray, start_s: float, end_s: float) -> np.ndarray:
    """The peaks of ``prints`` (``peaks``' order) from ``start_s`` to ``end_s`` seconds."""
    frames = prints >> 8
    lo, hi = np.searchsorted(frames, [max(start_s, 0.0) / FRAME_S, end_s / FRAME_S])
    return prints[lo:hi]


def _window_max(x: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    """Maximum over the centred window of odd length ``k`` along ``dim`` (a sparse table: a few
    elementwise maxima instead of a k-wide pooling kernel)."""
    import torch

    n = x.shape[dim]
    pad = [0, 0] * (x.dim() - 1 - dim) + [k // 2, k // 2]
    m = torch.nn.functional.pad(x, pad, value=float("-inf"))
    span = 1
    while span * 2 <= k:
        m = torch.maximum(m.narrow(dim, 0, m.shape[dim] - span), m.narrow(dim, span, m.shape[dim] - span))
        span *= 2
    return torch.maximum(m.narrow(dim, 0, n), m.narrow(dim, k - span, n))


def hashes(prints: np.ndarray, fan_out: int = CATALOG.fan_out) -> tuple[np.ndarray, np.ndarray]:
    """(hashes, anchor frames) of the peak pairs of ``prints`` (from ``peaks``), int64 each."""
    t = (prints >> 8).astype(np.int64)
    f = (prints & 0xFF).astype(np.int64)
    n = len(t)
    if n < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    i = np.arange(n)[:, None]
    j = i + np.arange(1, 3 * fan_out + 1)[None, :]
    inside = j < n                  # the last peaks have fewer after them: no pair is counted twice
    j = np.minimum(j, n - 1)
    dt, df = t[j] - t[i], f[j] - f[i]
    ok = inside & (dt >= 1) & (dt <= MAX_DT) & (np.abs(df) <= MAX_DF)
    ok &= np.cumsum(ok, axis=1) <= fan_out
    h = (f[i] << 12) | ((df + MAX_DF + 1) << 6) | dt       # < HASHES: 197 bins, 63 differences, 63 frames
    return h[ok], np.broadcast_to(t[:, None], ok.shape)[ok]


@dataclass(frozen=True)
class LandmarkMatch:
    """A stretch of the output aligned with a catalog track (seconds): reference time =
    ``offset`` + ``tempo`` × output time."""

    track: int
    query_start: float
    query_end: float
    offset: float                 # reference time at output time 0
    votes: int
    p_false: float
    tempo: float = 1.0            # the tempo the output was searched at (``LandmarkIndex.search``)
    evidence: float = 0.0         # the votes less the share a nearby alignment also gets (``_stretch``)


def to_match(m: LandmarkMatch) -> Match:
    """A landmark stretch as a ``Match``."""
    return Match(track=m.track, query_start=m.query_start, query_end=m.query_end,
                 ref_start=m.offset + m.tempo * m.query_start, ref_end=m.offset + m.tempo * m.query_end,
                 tempo_ratio=m.tempo, evidence=m.evidence, p_false=m.p_false, method="landmark",
                 windows=m.votes)


def default_calibration(name: str = CALIBRATION) -> Calibration:
    with resources.as_file(resources.files("detector") / "weights" / name) as p:
        return Calibration.load(p)


class LandmarkIndex(saved.SavedArrays):
    """Inverted index of the catalog's peak-pair hashes: where each hash's pairs start
    (``starts``, 8 MB), and each pair's track (its rank among ``ids``, in the smallest type that
    holds it) and anchor frame (2 bytes while no track is longer than 17 min 28 s, else 4), the
    pairs of one hash in track order: 3 to 8 bytes a pair.

    Built from peaks in memory (``LandmarkIndex(prints)``), changed by ``updated``, written beside
    a published vector index by ``save`` and opened from there memory-mapped (``open``): a server
    then starts without building it, and holds in memory the pages that its checks read."""

    saved_as, arrays = "landmarks", ("ids", "tracks", "times", "starts")

    def __init__(self, prints: dict[int, np.ndarray], calibration: Calibration | None = None):
        keys = sorted(prints)
        self._use(*_table(np.asarray(keys, np.int64), [hashes(prints[k]) for k in keys]), calibration)

    def _use(self, ids: np.ndarray, tracks: np.ndarray, times: np.ndarray, starts: np.ndarray,
             calibration: Calibration | None = None) -> None:
        self.ids, self.tracks, self.times, self.starts = ids, tracks, times, starts
        self.calibration = calibration or default_calibration()
        self.catalog_counts: np.ndarray | None = None

    def shard(self, drop: list[int]) -> "LandmarkIndex":
        """This index without the tracks ``drop``, searched as a shard of it: a hash is as common
        (``COMMON``) as it is in the whole of it, so that its shards' searches, merged
        (``best``), find what it finds."""
        part = self.updated({}, drop)
        part.catalog_counts = (self.catalog_counts if self.catalog_counts is not None
                               else np.diff(self.starts).astype(np.int32))
        return part

    def save(self, folder: Path) -> None:
        """Write the index to ``folder``; a shard (``shard``), with the whole index's counts."""
        super().save(folder)
        if self.catalog_counts is not None:
            np.save(folder / COUNTS_FILE, self.catalog_counts)

    @classmethod
    def open(cls, folder: Path, calibration: Calibration | None = None, mapped: bool = True) -> "LandmarkIndex":
        """The index ``save`` wrote to ``folder``, its pairs (and a shard's counts) memory-mapped
        (``mapped``; else read into memory)."""
        index = super().open(folder, mapped, calibration=calibration)
        if (folder / COUNTS_FILE).exists():
            index.catalog_counts = np.asarray(np.load(folder / COUNTS_FILE, mmap_mode="r" if mapped else None))
        return index

    def updated(self, prints: dict[int, np.ndarray], drop: list[int] = ()) -> "LandmarkIndex":
        """A new index in memory: this one without the tracks ``drop``, with the tracks of
        ``prints`` (their peaks) added, which must come after every track kept (``ValueError``
        otherwise: build a new index then). It reads this one's pairs once, in order, and
        never sorts them: one pass, where building from peaks hashes and sorts every pair."""
        kept = self.ids[~np.isin(self.ids, np.asarray(drop, np.int64))]
        keys = np.asarray(sorted(prints), np.int64)
        if len(keys) and len(kept) and keys[0] <= kept[-1]:
            raise ValueError("the tracks added must come after every track kept")
        new_ids, new_tracks, new_times, new_starts = _table(keys, [hashes(prints[k]) for k in keys])
        ids = np.concatenate([kept, keys])
        rank = saved.rank_type(len(ids))
        # each kept pair's hash, and how many kept pairs come before it (``self.tracks`` in order)
        keep = np.isin(self.ids, kept)[self.tracks]
        before = np.concatenate([[0], np.cumsum(keep)])
        old_counts = before[self.starts[1:]] - before[self.starts[:-1]]
        counts = old_counts + np.diff(new_starts)
        starts = np.concatenate([[0], np.cumsum(counts)])
        kept_times = self.times[keep]
        last = max(int(kept_times.max(initial=0)), int(new_times.max(initial=0)))
        tracks, times = np.empty(starts[-1], rank), np.empty(starts[-1], _time_type(last))
        h = np.repeat(np.arange(HASHES, dtype=np.int32), np.diff(self.starts))[keep]
        at = starts[h] + before[:-1][keep] - before[self.starts[h]]
        tracks[at] = np.searchsorted(ids, self.ids[self.tracks[keep]])
        times[at] = kept_times
        # a hash's added pairs come after its kept ones
        h = np.repeat(np.arange(HASHES, dtype=np.int32), np.diff(new_starts))
        at = starts[h] + old_counts[h] + np.arange(len(h)) - new_starts[h]
        tracks[at] = new_tracks.astype(rank) + len(kept)
        times[at] = new_times
        index = LandmarkIndex.__new__(LandmarkIndex)
        index._use(ids, tracks, times, starts, self.calibration)
        return index

    def __len__(self) -> int:
        return len(self.times)

    def search(self, query: np.ndarray, max_matches: int = 5, tempo: float = 1.0, track: int | None = None,
               fan_out: int = QUERY.fan_out, near: float | None = None) -> list[LandmarkMatch]:
        """Stretches of catalog tracks aligned with the output's peaks ``query`` (``peaks(clip,
        QUERY)``, or another picking whose ``fan_out`` is given), best first: ``best`` of
        ``ranked``."""
        return best([self.ranked(query, max_matches, tempo, track, fan_out, near)], max_matches)

    def ranked(self, query: np.ndarray, max_matches: int = 5, tempo: float = 1.0, track: int | None = None,
               fan_out: int = QUERY.fan_out, near: float | None = None) -> list[tuple[tuple, LandmarkMatch]]:
        """The first ``max_matches`` stretches that ``search`` finds, each with the key of the
        order it tries candidates in (most votes first, then by track and offset), which orders the
        stretches of an index's shards as the index's own search would.

        ``tempo`` (reference seconds per output second) searches for a copy played that much
        faster: it keeps the frequencies of its peaks but not their spacing, so the output's peak
        times are scaled to the reference's first. ``track`` searches that catalog track alone,
        ``near`` (seconds of reference at output time 0) the alignments within ``NEAR_S`` of it
        alone.
        """
        p = query
        if tempo != 1.0:
            p = np.sort(np.round((p >> 8) * tempo).astype(np.uint32) << 8 | (p & 0xFF))
        h, qt = hashes(p, fan_out)
        if len(h) == 0 or len(self.times) == 0:
            return []
        lo = self.starts[h]
        counts = self.starts[h + 1] - lo
        counts[(counts if self.catalog_counts is None else self.catalog_counts[h]) > COMMON] = 0
        if track is not None:
            rank = int(np.searchsorted(self.ids, track))
            if rank == len(self.ids) or self.ids[rank] != track:
                return []
            lo, hi = self._of_track(lo, lo + counts, rank)
            counts = hi - lo
        total = int(counts.sum())
        if total == 0:
            return []
        idx = np.repeat(lo - (np.cumsum(counts) - counts), counts) + np.arange(total)
        qt = np.repeat(qt.astype(np.int32), counts)
        which = self.tracks[idx]
        offset = self.times[idx] - qt
        cell = offset // OFFSET_BIN
        key_group, key_cell, votes = self._votes(which, cell)
        if near is not None:
            mine = np.abs(key_cell - near / FRAME_S / OFFSET_BIN) <= NEAR_S / FRAME_S / OFFSET_BIN
            key_group, key_cell, votes = key_group[mine], key_cell[mine], votes[mine]
        found: list[tuple[tuple, LandmarkMatch]] = []
        pairs: dict[int, np.ndarray] = {}      # a candidate track's pairs, in the order found
        for k in np.argsort(-votes, kind="stable"):     # keys are in track and cell order
            if votes[k] < MIN_VOTES or len(found) >= max_matches:
                break
            g, c = key_group[k], int(key_cell[k])
            tr = int(self.ids[g])
            if any(m.track == tr and abs(m.offset / FRAME_S / OFFSET_BIN - c) < 3 for _, m in found):
                continue
            if g not in pairs:
                pairs[g] = np.flatnonzero(which == g)
            mine = pairs[g]
            m = self._stretch(tr, c, qt[mine], cell[mine], offset[mine], tempo)
            if m is not None:
                found.append(((-int(votes[k]), tr, c), m))
        return found

    def _votes(self, which: np.ndarray, cell: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(track ranks, offset cells, votes) of every (track, offset cell) with a pair, ordered by
        track then cell: where votes tie, the order ``argsort`` leaves them in decides which
        candidate ``search`` tries first. Counted by ``np.bincount`` over both as one key, in
        passes over as many tracks as ``VOTE_BINS`` counters hold: the pairs are never sorted."""
        low = int(cell.min())
        span = int(cell.max()) - low + 1
        per_pass = max(1, VOTE_BINS // span)
        key_group, key_cell, votes = [], [], []
        for first in range(0, len(self.ids), per_pass):
            some = slice(None) if per_pass >= len(self.ids) else \
                np.flatnonzero((which >= first) & (which < first + per_pass))
            key = (which[some].astype(np.int64) - first) * span + (cell[some] - low)
            per_cell = np.bincount(key)
            keys = np.flatnonzero(per_cell)
            key_group.append(keys // span + first)
            key_cell.append(keys % span + low)
            votes.append(per_cell[keys])
        return tuple(np.concatenate(a) for a in (key_group, key_cell, votes))

    def _of_track(self, lo: np.ndarray, hi: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
        """The pairs of the track ``self.ids[rank]`` within each range ``[lo, hi)`` of one hash's
        pairs, found by bisection (a hash's pairs are sorted by track): a search of one track reads
        only its own pairs, however large the catalog. A range is bisected only where its first
        and last pairs' tracks enclose the track, and for its end only where the track is there."""
        some = np.flatnonzero(hi > lo)
        some = some[(self.tracks[lo[some]] <= rank) & (self.tracks[hi[some] - 1] >= rank)]
        first = lo.copy()
        first[some] = self._first_from(lo[some], hi[some], rank)
        last = first.copy()
        some = some[self.tracks[first[some]] == rank]
        last[some] = self._first_from(first[some], hi[some], rank + 1)
        return first, last

    def _first_from(self, a: np.ndarray, b: np.ndarray, rank: int) -> np.ndarray:
        """The first pair of each range ``[a, b)`` (sorted by track) whose track's rank is at
        least ``rank``, or ``b``."""
        a, b = a.copy(), b.copy()
        while (open_ := np.flatnonzero(a < b)).size:
            mid = (a[open_] + b[open_]) // 2
            after = self.tracks[mid] < rank
            a[open_[after]] = mid[after] + 1
            b[open_[~after]] = mid[~after]
        return a

    def _stretch(self, track: int, c: int, qt: np.ndarray, cell: np.ndarray, offset: np.ndarray,
                 tempo: float) -> LandmarkMatch | None:
        """The densest run of pairs aligned at offset cell ``c`` (chance agreements elsewhere in
        the output do not stretch the match over material that is not a copy), given all of
        ``track``'s pairs, in any order: their output times ``qt`` (frames, on the reference's time scale),
        offset cells and offsets (frames).

        Its evidence is its votes, over its best ``LOCAL_S`` seconds (a long output offers more
        stretches, which ``Calibration.p_false`` counts, not longer ones), less the share that the
        strongest other alignment within ``TEXTURE_CELLS`` gets over the same stretch. A copy
        aligns at one offset; a texture that repeats every fraction of a second (a hi-hat, an
        arpeggio) aligns with any texture of the same period at every multiple of it, and two
        unrelated pieces at one tempo collect many votes at each of them.

        Its span is the copy's extent: the stretch's pairs and those of the same alignment up to
        ``EXTENT_GAP_S`` beyond, trimmed to where they are dense. Under new material a copy's pairs
        come in bursts, where it is the loudest thing in the spectrum, and the bursts of one 10 s
        copy can lie more than ``GAP_S`` apart; its evidence stays that of its densest burst."""
        near = np.abs(cell - c) <= 1
        order = np.argsort(qt[near])
        q_near, off_near = qt[near][order], offset[near][order]
        run = _dense_run(q_near, GAP_S)
        q = q_near[run]
        extent = _dense_run(q_near, EXTENT_GAP_S, holding=run[0])
        if q_near[extent[0]] <= q[-1] and q_near[extent[-1]] >= q[0]:    # still the stretch's copy once trimmed
            run = np.union1d(run, extent)
        # at most PER_SECOND_VOTES from any one second: a burst of identical pairs (a click, a
        # held synthetic tone) is one moment of agreement, not many
        per_second = np.minimum(np.bincount((q - q[0]) // round(1 / FRAME_S)), PER_SECOND_VOTES)
        votes = int(per_second.sum())
        if votes < MIN_VOTES:
            return None
        local = local_sum(np.arange(len(per_second)), per_second, LOCAL_S)     # its best LOCAL_S seconds
        inside = (qt >= q[0]) & (qt <= q[-1]) & (np.abs(cell - c) <= TEXTURE_CELLS + 1)
        counts = np.bincount(cell[inside] - (c - TEXTURE_CELLS - 1), minlength=2 * TEXTURE_CELLS + 3)
        sums = counts[:-2] + counts[1:-1] + counts[2:]                 # [j]: cells c - TEXTURE_CELLS + j ± 1
        centre = TEXTURE_CELLS
        others = np.concatenate([sums[:centre - 2], sums[centre + 3:]])
        share = min(1.0, others.max() / max(sums[centre], 1))
        evidence = local * (1.0 - share)
        first, last = q_near[run[0]], q_near[run[-1]]
        return LandmarkMatch(track, float(first * FRAME_S / tempo), float((last + MAX_DT / 2) * FRAME_S / tempo),
                             float(np.median(off_near[run]) * FRAME_S), votes,
                             self.calibration.p_false(evidence), tempo, evidence)


def best(ranked: list[list[tuple[tuple, LandmarkMatch]]], max_matches: int) -> list[LandmarkMatch]:
    """The stretches that a search of the whole index finds, from ``ranked`` of each of its shards
    (or of itself): the first ``max_matches`` in the order candidates are tried, strongest first.
    A stretch is found or not by its own track's pairs alone, and the tracks of one shard are
    tried in the index's order, so a shard's first ``max_matches`` hold all of its stretches that
    the index's first ``max_matches`` hold."""
    first = sorted((r for part in ranked for r in part), key=lambda r: r[0])[:max_matches]
    return sorted((m for _, m in first), key=lambda m: (m.p_false, -m.evidence))


def _time_type(last_frame: int) -> np.dtype:
    """The type of an index's anchor frames: 2 bytes while no anchor lies past 65,535 frames
    (17 min 28 s into its track), else 4."""
    return np.dtype(np.uint16) if last_frame < 1 << 16 else np.dtype(np.int32)


def _table(ids: np.ndarray, pairs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, ...]:
    """(ids, tracks, times, starts) of ``LandmarkIndex`` from each track's (hashes, anchor frames),
    in the order of ``ids`` (sorted): a stable sort by hash keeps each hash's pairs in track order."""
    h = np.concatenate([p[0] for p in pairs]).astype(np.int32) if pairs else np.zeros(0, np.int32)
    frames = np.concatenate([p[1] for p in pairs]) if pairs else np.zeros(0, np.int64)
    times = frames.astype(_time_type(int(frames.max(initial=0))))
    rank = np.repeat(np.arange(len(ids)), [len(p[0]) for p in pairs]).astype(saved.rank_type(len(ids)))
    order = np.argsort(h, kind="stable")
    starts = np.concatenate([[0], np.cumsum(np.bincount(h, minlength=HASHES))])
    return ids, rank[order], times[order], starts


def _dense_run(times: np.ndarray, gap_s: float, holding: int | None = None) -> np.ndarray:
    """Indices of a run of ``times`` (sorted, frames) without a gap over ``gap_s`` seconds, the
    one that holds index ``holding`` (None: the longest), trimmed to where its times are dense
    (``matcher.core``)."""
    breaks = np.flatnonzero(np.diff(times) * FRAME_S > gap_s) + 1
    runs = np.split(np.arange(len(times)), breaks)
    run = max(runs, key=len) if holding is None else runs[int(np.searchsorted(breaks, holding, "right"))]
    return run[core(times[run] * FRAME_S, np.ones(len(run)), CORE_STEP_S)]
