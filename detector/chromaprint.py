"""The Chromaprint layer: exact and near-exact copies, found by a classic fingerprint.

Chromaprint (via pyacoustid) turns audio into one 32-bit sub-fingerprint every ~0.124 s.
A copy that is not pitch-shifted or tempo-changed reproduces most sub-fingerprints bit for bit,
so candidates come from exact sub-fingerprint hits voted by time offset, and are confirmed by
the bit error rate over the aligned stretch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import acoustid
import chromaprint
import numpy as np

from detector import saved
from detector.audio import Clip

ITEM_S = 4096 / 3 / 11025     # seconds per sub-fingerprint (chromaprint's default algorithm)
MAX_BIT_ERRORS = 10           # of 32: a sub-fingerprint "agrees" below this
MIN_MATCH_S = 4.0             # shortest aligned stretch reported
SHIFTS = np.r_[-16:-2, 3:17]  # items (0.37–2 s) to another alignment of the same stretch


def fingerprint(clip: Clip) -> np.ndarray:
    """(n,) uint32 raw sub-fingerprints of the whole clip."""
    pcm = (np.clip(clip.samples, -1, 1) * 32767).astype("<i2").tobytes()
    encoded = acoustid.fingerprint(clip.sample_rate, 1, iter([pcm]), maxlength=int(clip.duration) + 10)
    values, _ = chromaprint.decode_fingerprint(encoded)
    return np.asarray(values, dtype=np.int64).astype(np.uint32)


@dataclass(frozen=True)
class ChromaMatch:
    """An aligned stretch: item positions (query, reference), length in items, bit error rate;
    ``observations``, the independent bits the stretch holds (``independent_bits``), ``varying_error_rate``,
    the error rate of the query on the reference bits that change within the stretch, and
    ``shifted_error_rate``, the same at the best other alignment up to 2 s away (``SHIFTS``)."""

    track: int
    query_item: int
    ref_item: int
    items: int
    bit_error_rate: float
    observations: int
    varying_error_rate: float
    shifted_error_rate: float = 0.5

    @property
    def p_false(self) -> float:
        """Chance that unrelated audio agrees this well: a binomial tail over the stretch's
        independent bits, each wrong with the error rate the stretch has at its best other
        alignment nearby (at most a fair coin's 1/2). A copy agrees at its own alignment only;
        a slowly changing texture, a fade, agrees with a similar one nearly as well a second
        earlier or later, and agreement that any nearby alignment has is no evidence of this one."""
        n = self.observations
        p0 = min(0.5, self.shifted_error_rate)
        q = self.varying_error_rate
        # Chernoff bound on P[Binomial(n, p0) <= q n]
        if n == 0 or q >= p0:
            return 1.0
        kl = q * math.log(q / p0 + 1e-300) + (1 - q) * math.log((1 - q) / (1 - p0))
        return math.exp(-n * kl)


def bits(values: np.ndarray) -> np.ndarray:
    """(n, 32) uint8: the bits of ``n`` sub-fingerprints."""
    return np.unpackbits(values.astype("<u4").view(np.uint8).reshape(-1, 4), axis=1)


def independent_bits(ref: np.ndarray) -> tuple[int, np.ndarray]:
    """Independent bits of a reference stretch of sub-fingerprints, and which of the 32 bit
    positions change in it. Sub-fingerprints overlap (each spans ~3 items), so at most a third
    of the items are independent; and a bit that holds its value over a run of items is one
    observation, not one per item: a sustained chord keeps most bits still, and two unrelated
    recordings holding similar chords agree on all of those at once. Bits that never change in
    the stretch are left out altogether."""
    held = bits(ref)
    varying = held.min(axis=0) != held.max(axis=0)
    flips = int(np.abs(np.diff(held[:, varying].astype(np.int8), axis=0)).sum())
    return min(int(varying.sum()) + flips, int(varying.sum()) * max(len(ref) // 3, 1)), varying


class ChromaIndex(saved.SavedArrays):
    """Inverted index of the catalog's sub-fingerprints: every sub-fingerprint value, sorted, with
    its track (its rank among ``ids``) and position; and each track's sub-fingerprints in order
    (``items``, the track of rank r from ``starts[r]``), which confirm an alignment. 14 to 17 bytes
    a sub-fingerprint. Built from fingerprints (``ChromaIndex(prints)``), changed by ``updated``,
    saved beside a published vector index and opened from there memory-mapped, as
    ``LandmarkIndex`` is."""

    saved_as, arrays = "chromaprint", ("ids", "starts", "items", "values", "tracks", "positions")

    def __init__(self, prints: dict[int, np.ndarray]):
        keys = sorted(prints)
        self._use(*_table(np.asarray(keys, np.int64), [np.asarray(prints[k], np.uint32) for k in keys]))

    def _use(self, ids: np.ndarray, starts: np.ndarray, items: np.ndarray, values: np.ndarray, tracks: np.ndarray,
             positions: np.ndarray) -> None:
        self.ids, self.starts, self.items, self.values, self.tracks, self.positions = \
            ids, starts, items, values, tracks, positions

    def __len__(self) -> int:
        return len(self.items)

    def updated(self, prints: dict[int, np.ndarray], drop: list[int] = ()) -> "ChromaIndex":
        """A new index in memory: this one without the tracks ``drop``, with the tracks of
        ``prints`` added, which must come after every track kept (``ValueError`` otherwise).
        Each added value goes after the kept ones equal to it: no sort of the kept values."""
        kept = self.ids[~np.isin(self.ids, np.asarray(drop, np.int64))]
        keys = np.asarray(sorted(prints), np.int64)
        if len(keys) and len(kept) and keys[0] <= kept[-1]:
            raise ValueError("the tracks added must come after every track kept")
        _, new_starts, new_items, new_values, new_tracks, new_positions = \
            _table(keys, [np.asarray(prints[k], np.uint32) for k in keys])
        ids = np.concatenate([kept, keys])
        kept_rank = np.isin(self.ids, kept)
        keep = kept_rank[self.tracks]
        values = self.values[keep]
        at = np.searchsorted(values, new_values, "right") + np.arange(len(new_values))
        old = np.ones(len(values) + len(new_values), bool)
        old[at] = False
        out = {"values": np.empty(len(old), np.uint32), "tracks": np.empty(len(old), saved.rank_type(len(ids))),
               "positions": np.empty(len(old), np.int32)}
        out["values"][old], out["values"][at] = values, new_values
        out["tracks"][old] = np.searchsorted(ids, self.ids[self.tracks[keep]])
        out["tracks"][at] = new_tracks.astype(out["tracks"].dtype) + len(kept)
        out["positions"][old], out["positions"][at] = self.positions[keep], new_positions
        lengths = np.diff(self.starts)
        items = np.concatenate([self.items[np.repeat(kept_rank, lengths)], new_items])
        starts = np.concatenate([[0], np.cumsum(np.concatenate([lengths[kept_rank], np.diff(new_starts)]))])
        index = ChromaIndex.__new__(ChromaIndex)
        index._use(ids, starts, items, out["values"], out["tracks"], out["positions"])
        return index

    def search(self, query: np.ndarray, max_matches: int = 5) -> list[ChromaMatch]:
        """Aligned stretches of catalog tracks that agree with ``query``, best first: ``best`` of
        ``ranked``."""
        return best([self.ranked(query, max_matches)], max_matches)

    def counts(self, query: np.ndarray) -> np.ndarray:
        """How often each of ``query``'s values occurs in the index: a shard's search takes the
        sum over the shards of a catalog, so that a value is as common as it is in the catalog."""
        if len(self.values) == 0:
            return np.zeros(len(query), np.int64)
        return np.searchsorted(self.values, query, "right") - np.searchsorted(self.values, query, "left")

    def ranked(self, query: np.ndarray, max_matches: int,
               counts: np.ndarray | None = None) -> list[tuple[tuple, ChromaMatch | None]]:
        """The alignments that ``search`` tries (the ``4 × max_matches`` with most agreeing
        values, at least 3, values ignored when very common: as common as ``counts`` says, or as
        they are here), each with the key of that order (most votes first, then by track and
        offset) and the stretch it verified, or None."""
        if len(query) == 0 or len(self.values) == 0:
            return []
        lo = np.searchsorted(self.values, query, "left")
        here = np.searchsorted(self.values, query, "right") - lo
        counts = here if counts is None else counts
        keep = (here > 0) & (counts < 200)        # very common values (silence) carry no evidence
        qpos = np.repeat(np.arange(len(query))[keep], here[keep])
        idx = np.concatenate([np.arange(a, a + n) for a, n in zip(lo[keep], here[keep])]) if keep.any() \
            else np.zeros(0, int)
        if len(idx) == 0:
            return []
        ranks, offsets = self.tracks[idx].astype(np.int64), self.positions[idx].astype(np.int64) - qpos
        pairs, votes = np.unique(np.stack([ranks, offsets], 1), axis=0, return_counts=True)
        out = []
        for j in np.argsort(-votes, kind="stable")[: 4 * max_matches]:     # pairs are in track order
            if votes[j] < 3:
                break
            rank, offset = int(pairs[j, 0]), int(pairs[j, 1])
            out.append(((-int(votes[j]), int(self.ids[rank]), offset), self._verify(query, rank, offset)))
        return out

    def _verify(self, query: np.ndarray, rank: int, offset: int) -> ChromaMatch | None:
        """The stretch aligned at ``offset`` with the track of rank ``rank``, if it agrees."""
        ref = self.items[self.starts[rank]:self.starts[rank + 1]]
        q0, q1 = max(0, -offset), min(len(query), len(ref) - offset)
        if q1 - q0 < MIN_MATCH_S / ITEM_S:
            return None
        wrong = bits(np.bitwise_xor(query[q0:q1], ref[q0 + offset:q1 + offset]))
        errors = wrong.sum(1)
        good = np.convolve(errors < MAX_BIT_ERRORS, np.ones(9) / 9, "same") > 0.5
        if not good.any():
            return None
        # the longest run of agreeing items
        edges = np.diff(np.concatenate([[0], good.astype(int), [0]]))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        k = np.argmax(ends - starts)
        a, b = starts[k], ends[k]
        if (b - a) * ITEM_S < MIN_MATCH_S:
            return None
        ber = errors[a:b].sum() / (32 * (b - a))
        r0, r1 = q0 + a + offset, q0 + b + offset
        observations, varying = independent_bits(ref[r0:r1])
        on_varying = wrong[a:b][:, varying]
        shifted = [bits(np.bitwise_xor(query[q0 + a:q0 + b], ref[r0 + d:r1 + d]))[:, varying].mean()
                   for d in SHIFTS if r0 + d >= 0 and r1 + d <= len(ref)] if varying.any() else []
        return ChromaMatch(int(self.ids[rank]), q0 + a, r0, int(b - a), float(ber), observations,
                           float(on_varying.mean()) if on_varying.size else 0.5, float(min(shifted, default=0.5)))


def best(ranked: list[list[tuple[tuple, ChromaMatch | None]]], max_matches: int) -> list[ChromaMatch]:
    """What a search of the whole index finds, from ``ranked`` of each of its shards (or of
    itself): the stretches verified at the first ``4 × max_matches`` alignments in the order
    they are tried, one per track and offset, the likeliest copies first."""
    found: list[ChromaMatch] = []
    for (_, _, offset), m in sorted((r for part in ranked for r in part), key=lambda r: r[0])[: 4 * max_matches]:
        if m and not any(f.track == m.track and abs((f.ref_item - f.query_item) - offset) < 8 for f in found):
            found.append(m)
    found.sort(key=lambda m: m.p_false)
    return found[:max_matches]


def _table(ids: np.ndarray, prints: list[np.ndarray]) -> tuple[np.ndarray, ...]:
    """(ids, starts, items, values, tracks, positions) of ``ChromaIndex`` from each track's
    sub-fingerprints, in the order of ``ids`` (sorted): a stable sort of the values keeps equal
    ones in track order."""
    lengths = [len(p) for p in prints]
    items = np.concatenate(prints) if prints else np.zeros(0, np.uint32)
    starts = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    order = np.argsort(items, kind="stable")
    tracks = np.repeat(np.arange(len(ids)), lengths).astype(saved.rank_type(len(ids)))
    positions = (np.arange(len(items)) - np.repeat(starts[:-1], lengths)).astype(np.int32)
    return ids, starts, items, items[order], tracks[order], positions[order]
