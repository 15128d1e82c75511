"""The embedding layer: an output's windows embedded (also transposed), their nearest reference
windows in the FAISS index weighed above each window's background, aligned by the matcher."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from detector.audio import Clip
from detector.matcher import LOCAL_S, Hits, Match, window_background
from index.layers import Layer
from index.vectors import VectorIndex, split_ids

if TYPE_CHECKING:
    from index.catalog import Catalog
    from index.search import Searcher

QUERY_HOP_S = 0.25
NEIGHBOURS = 8              # hits per query window
BACKGROUND_SEARCH = 64      # neighbours searched for each query window's background
TRANSPOSE_ST = 6.0
REPORTED_P = 0.5            # embedding matches less likely than this by chance are reported
# outputs longer than LOCAL_S (whole songs) are searched more cheaply: transposed every other
# window, a window as similar as this to an earlier one (a loop's repeats) takes its neighbours,
# and the index's skim is searched, not all of its vectors (``index/vectors.py``). Sparser
# searches cost recall and chance matches: every 0.5 s untransposed, hidden 5 s copies pitched
# 2 st were found in 75 % instead of 92 % (``benchmarks/songs.py``); transposed every 1 s, a
# looped original was sent to review (``tests/index/test_catalog.py``)
SPARSE_TRANSPOSE = 2
REPEAT_COSINE = 0.98


class EmbeddingLayer(Layer):
    name = "embedding"

    def load(self, catalog: Catalog) -> VectorIndex:
        return catalog.vectors

    def prepare(self, index: VectorIndex, clip: Clip) -> VectorIndex:
        """The index the check started with (searched in ``search``, whatever is published meanwhile)."""
        return index

    def search(self, searcher: Searcher, clip: Clip, earlier: dict[str, list[Match]], prepared: VectorIndex) -> list[Match]:
        """Every embedding match, however weak: the landmark layer takes the tempo of the
        strongest as a hypothesis."""
        return embedding_matches(searcher.catalog, clip, max_p_false=1.0, vectors=prepared)

    def reported(self, matches: list[Match]) -> list[Match]:
        return [m for m in matches if m.p_false <= REPORTED_P]


def embedding_matches(catalog: Catalog, clip: Clip, max_p_false: float = REPORTED_P,
                      vectors: VectorIndex | None = None) -> list[Match]:
    """Matches of ``clip`` found by the embedding layer alone, in ``vectors`` (the catalog's
    published index unless given: its shards', ``index/sharded.py``).

    The query is also searched transposed by ±``TRANSPOSE_ST`` semitones, so copies shifted
    far beyond what the encoder absorbs by itself (about ±3 st) are still found. ``p_false``
    is that of music as long as the output (``Calibration.p_false``), as landmark matches' is.
    """
    long = clip.duration > LOCAL_S
    vectors = catalog.vectors if vectors is None else vectors
    asked = [_windows(catalog, clip, t, SPARSE_TRANSPOSE if t and long else 1, long)
             for t in (0.0, -TRANSPOSE_ST, TRANSPOSE_ST)]
    # one search for the three (one request per shard where the index is sharded)
    sims, ids = vectors.search(np.concatenate([w.vectors for w in asked]), BACKGROUND_SEARCH, exact=not long)
    bounds = np.cumsum([len(w.vectors) for w in asked])[:-1]
    hits = [w.hits(s, i, vectors.info.hop_s) for w, s, i in zip(asked, np.split(sims, bounds), np.split(ids, bounds))]
    merged = Hits(*(np.concatenate([getattr(h, f) for h in hits]) for f in ("query_t", "track", "ref_t", "weight")))
    cal = catalog.matcher.cal
    found = [replace(m, p_false=cal.p_false(m.evidence, clip.duration))
             for m in catalog.matcher.match(merged, QUERY_HOP_S, max_p_false=1.0)]
    return [m for m in found if m.p_false <= max_p_false]


@dataclass(frozen=True)
class Windows:
    """An output's voiced query windows, embedded: the ``vectors`` to search (a loop's repeats
    once), the start of each window (``starts``) and which of ``vectors`` it takes the
    neighbours of (``inverse``); each searched window stands for the ``every`` windows from it."""

    vectors: np.ndarray
    starts: np.ndarray
    inverse: np.ndarray
    every: int

    def hits(self, sims: np.ndarray, ids: np.ndarray, hop_s: float) -> Hits:
        """Each window's ``NEIGHBOURS`` nearest reference windows, weighed by their similarity
        above the window's background (from its ``BACKGROUND_SEARCH`` nearest), given each of
        ``vectors``' ``sims`` and ``ids`` (the index's reference windows lie ``hop_s`` apart)."""
        tracks, windows = split_ids(ids)
        tracks[ids < 0] = -1
        background = window_background(sims, tracks, windows)[self.inverse, None]
        sims, ids, tracks, windows = (a[self.inverse] for a in (sims, ids, tracks, windows))   # a repeat takes its first's
        valid = ids[:, :NEIGHBOURS] >= 0
        query_t = np.repeat(self.starts, valid.sum(1))
        ref_t = windows[:, :NEIGHBOURS][valid] * hop_s
        track, weight = tracks[:, :NEIGHBOURS][valid], (sims[:, :NEIGHBOURS] - background)[valid]
        shifts = np.arange(self.every) * QUERY_HOP_S
        return Hits(query_t=(query_t[None, :] + shifts[:, None]).ravel(), track=np.tile(track, self.every),
                    ref_t=(ref_t[None, :] + shifts[:, None]).ravel(), weight=np.tile(weight, self.every))


def _windows(catalog: Catalog, clip: Clip, transpose: float, every: int = 1, long: bool = False) -> Windows:
    """The voiced windows of ``clip`` transposed by ``transpose`` semitones, embedded.

    ``every`` > 1 embeds one window in ``every`` and gives each searched window's hits to the
    ``every - 1`` after it too (the reference a hop later): half a second apart (at
    ``SPARSE_TRANSPOSE``), overlapping 1 s windows find mostly the same reference windows.
    ``long``: windows at least ``REPEAT_COSINE`` similar to an earlier one are not searched but
    take its neighbours (and the index's skim is searched, not all of its vectors)."""
    emb = catalog.embedder.embed(clip, hop_s=QUERY_HOP_S * every, transpose=transpose)
    voiced = np.flatnonzero(emb.voiced)
    found = emb.vectors[voiced]
    first = first_of_repeats(found, REPEAT_COSINE) if long else np.arange(len(found))
    distinct, inverse = np.unique(first, return_inverse=True)
    return Windows(found[distinct], emb.starts[voiced], inverse, every)


def first_of_repeats(vectors: np.ndarray, cosine: float) -> np.ndarray:
    """For each of ``vectors`` (n, dim), L2-normalised, the index of the first of them at least
    ``cosine`` similar to it (itself where none before is): a loop's repeats, searched once."""
    first = np.arange(len(vectors))
    for a in range(0, len(vectors), 512):
        sims = vectors[a:a + 512] @ vectors[:a + 512].T                 # (block, a + block)
        for i in range(sims.shape[0]):
            earlier = np.flatnonzero(sims[i, :a + i] >= cosine)
            if len(earlier):
                first[a + i] = first[earlier[0]]
    return first
