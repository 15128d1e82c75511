"""The landmark layer: peak pairs (``detector/landmarks.py``), at tempo 1.0, and at the alignments
the embedding layer measured."""
from __future__ import annotations

import functools
import logging
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from detector import landmarks
from detector.audio import Clip
from detector.matcher import TEMPO_TOLERANCE, Calibration, Match, confirm, fisher, same_alignment
from index.layers import SavedLayer

if TYPE_CHECKING:
    from index.catalog import Catalog
    from index.search import Searcher
    from index.store import Store

log = logging.getLogger(__name__)
CONFIRMS = 3                # embedding matches whose alignment the landmarks confirm, per output
CONFIRM_P = 1e-3            # a confirmation counts where chance agrees as well with one alignment this rarely
LOOK_MARGIN_S = 10.0        # how far beyond the embedding match's span a confirmation looks
POINTERS = 5                # a long output's sparse stretches whose alignments its dense peaks are searched at


class LandmarkLayer(SavedLayer):
    name = "landmark"
    index_type = landmarks.LandmarkIndex

    def arrays(self, store: Store, keys: list[int] | None = None) -> dict[int, np.ndarray]:
        return store.landmarks(keys)

    def load(self, catalog: Catalog) -> landmarks.LandmarkIndex:
        stale = catalog.store.stale_peaks(landmarks.PEAKS)
        if stale:
            # still searched (their peaks are sparser: fewer votes for a copy, and for chance)
            log.warning("%d catalog tracks have landmark peaks picked by an earlier version: copies of them under new "
                        "material are found less often until `clearance index --rebuild` takes them again", len(stale))
        return super().load(catalog)

    def prepare(self, index: landmarks.LandmarkIndex, clip: Clip) -> tuple:
        return index, *at_tempo_one(index, clip)

    def search(self, searcher: Searcher, clip: Clip, earlier: dict[str, list[Match]], prepared: tuple) -> list[Match]:
        index, found, query = prepared
        return landmark_matches(index, clip, earlier.get("embedding", []), (found, query))


def at_tempo_one(index: landmarks.LandmarkIndex, clip: Clip) -> tuple[list[landmarks.LandmarkMatch], np.ndarray | None]:
    """The stretches of ``clip`` at tempo 1.0, and its ``QUERY`` peaks where they were taken.

    An output up to ``landmarks.DENSE_S`` long is searched with those peaks. A longer one is
    searched with ``LONG_QUERY``'s, whose candidate pairs cost a fifth as much, for its
    ``POINTERS`` strongest stretches, however weak; the ``QUERY`` peaks of the passage where each
    one lies (and ``LOOK_MARGIN_S`` beyond) are then searched on its track, within
    ``landmarks.NEAR_S`` of its alignment, and the stronger of the two is kept (its dense peaks
    are taken only there: None). Under new material a copy keeps few of the sparse peaks (a wide
    neighbourhood's maximum is often the new material's), enough to point at it but not to prove
    it; the dense ones do, as they do in a shorter output. A stretch so found is held to the null
    of a dense search of the whole catalog at the output's length (``index.calibration``), which
    asks every track at every alignment what this asks a few tracks at one each."""
    if clip.duration <= landmarks.DENSE_S:
        query = landmarks.peaks(clip, landmarks.QUERY)
        return index.search(query), query
    found: list[landmarks.LandmarkMatch] = []
    for pointer in index.search(landmarks.peaks(clip, landmarks.LONG_QUERY), max_matches=POINTERS,
                                fan_out=landmarks.LONG_QUERY.fan_out):
        near, _ = _dense_near(clip, None, pointer.query_start, pointer.query_end)
        dense = index.search(near, max_matches=1, track=pointer.track, near=pointer.offset)
        best = max([pointer, *dense], key=lambda m: m.evidence)
        if not any(m.track == best.track and abs(m.offset - best.offset) <= landmarks.NEAR_S
                   and m.query_start < best.query_end and best.query_start < m.query_end for m in found):
            found.append(best)
    return sorted(found, key=lambda m: -m.evidence), None


def landmark_matches(index: landmarks.LandmarkIndex, clip: Clip, embedding: list[Match],
                     tempo_one: tuple[list[landmarks.LandmarkMatch], np.ndarray | None] | None = None) -> list[Match]:
    """Landmark stretches of ``clip`` at tempo 1.0 (``tempo_one``: what ``at_tempo_one`` found,
    where it has already searched), and the ``embedding`` layer's strongest matches confirmed by
    the landmarks (``confirmation``, ``matcher.confirm``) where that makes them stronger than the
    stretch found at tempo 1.0 at the same alignment would, which then gives way: the two are
    the same peaks' evidence, counted once."""
    found, query = tempo_one or at_tempo_one(index, clip)
    cal = index.calibration
    out = [replace(landmarks.to_match(m), p_false=cal.p_false(m.evidence, clip.duration)) for m in found]
    for hypothesis, peaks, searched in looks(clip, embedding, query):
        stretch = confirmation(index, hypothesis, peaks, searched)
        if stretch is None:
            continue
        confirmed = confirm(hypothesis, stretch)
        alike = [m for m in out if same_alignment(m, confirmed)]
        if any("embedding" in m.method for m in alike):
            continue                    # a stronger hypothesis of the same alignment was confirmed
        if confirmed.p_false < min((fisher([hypothesis.p_false, m.p_false]) for m in alike), default=hypothesis.p_false):
            out = [m for m in out if m not in alike] + [confirmed]
    return out


def looks(clip: Clip, embedding: list[Match], query: np.ndarray | None) -> list[tuple[Match, np.ndarray, float]]:
    """The ``CONFIRMS`` strongest ``embedding`` matches, each with the output's ``QUERY`` peaks
    where it lies and up to ``LOOK_MARGIN_S`` beyond, and the seconds of output those span.

    The embedding measures a copy's alignment even where its own evidence is weak (under new
    material, played faster or slower); the landmarks then ask whether the peaks agree at that
    alignment (``confirmation``). Only the strongest few are asked, and only where each lies: an
    output's weaker matches are mostly chance alignments, and a whole song searched at a weak
    match's alignment everywhere offers its chance agreements from any of its passages.
    ``query``: the output's ``QUERY`` peaks, or None where they were not taken (a long output:
    its peaks near each match are taken alone)."""
    return [(m, *_dense_near(clip, query, m.query_start, m.query_end))
            for m in sorted(embedding, key=lambda m: m.evidence, reverse=True)[:CONFIRMS]]


def _dense_near(clip: Clip, query: np.ndarray | None, start: float, end: float) -> tuple[np.ndarray, float]:
    """The ``QUERY`` peaks of ``clip`` from ``start`` to ``end`` seconds and ``LOOK_MARGIN_S``
    beyond, and the seconds those span: from ``query`` (all of the output's), or, where it is
    None, picked from that passage alone (a passage's peaks are its own loudest, as a short
    output's are, not the whole song's)."""
    lo, hi = max(0.0, start - LOOK_MARGIN_S), min(clip.duration, end + LOOK_MARGIN_S)
    if query is not None:
        return landmarks.between(query, lo, hi), hi - lo
    first = int(lo / landmarks.FRAME_S)
    return landmarks.peaks(clip.excerpt(first * landmarks.FRAME_S, hi), landmarks.QUERY) + np.uint32(first << 8), hi - lo


def confirmations(index: landmarks.LandmarkIndex, clip: Clip, embedding: list[Match],
                  query: np.ndarray | None) -> list[landmarks.LandmarkMatch]:
    """The landmark stretch at the alignment of each of ``looks``' embedding matches (its track,
    its tempo, its offset within ``landmarks.NEAR_S``), whatever its evidence: the sample that
    ``benchmarks/calibrate.py`` fits the null of a confirmation on
    (``landmarks.CONFIRM_CALIBRATION``)."""
    return [s for m, peaks, _ in looks(clip, embedding, query) for s in _asked(index, m, peaks, near=True)]


def confirmation(index: landmarks.LandmarkIndex, hypothesis: Match, peaks: np.ndarray, seconds: float) -> Match | None:
    """The landmark stretch of ``peaks`` (``seconds`` of output) that confirms ``hypothesis``, with
    its own ``p_false``, or None where none counts: one whose ``p_false`` is at most
    ``CONFIRM_P``, which bounds what confirmations add to the chance that music not in the
    catalog is sent to review or blocked (counted ungated, weak confirmations of weak chance
    alignments sent 4 of the decision benchmark's 300 negatives to review instead of 3, and 5 of
    the mixes benchmark's instead of 3).

    First at the hypothesis's alignment (its track, its tempo, its offset within
    ``landmarks.NEAR_S``): chance agrees with one given alignment far more weakly than with the
    best of every catalog track's, and that question has its own null
    (``landmarks.CONFIRM_CALIBRATION``, fitted on the strongest of an output's confirmations of
    catalog tracks unrelated to it). Then, for a match at another tempo, anywhere in its track at
    that tempo: the embedding may have aligned a varied repeat of the passage the output copies
    (game and pop music repeat themselves with small changes), which the peaks tell apart, and a
    copy played faster or slower is found by no search at tempo 1.0. That question is held to
    the null of a search of the whole catalog at one tempo (``index.calibration``), which a search
    of one track never exceeds."""
    questions = [(True, confirm_calibration())]
    if abs(hypothesis.tempo_ratio - 1.0) > TEMPO_TOLERANCE:
        questions.append((False, index.calibration))
    for near, cal in questions:
        for s in _asked(index, hypothesis, peaks, near):
            p_false = cal.p_false(s.evidence, seconds)
            if p_false <= CONFIRM_P:
                return replace(landmarks.to_match(s), p_false=p_false)
    return None


def _asked(index: landmarks.LandmarkIndex, hypothesis: Match, peaks: np.ndarray,
           near: bool) -> list[landmarks.LandmarkMatch]:
    """The strongest stretch of ``peaks`` on ``hypothesis``'s track at its tempo: within
    ``landmarks.NEAR_S`` of its offset (``near``), or at any offset."""
    return index.search(peaks, max_matches=1, tempo=hypothesis.tempo_ratio, track=hypothesis.track,
                        near=hypothesis.offset if near else None)


@functools.cache
def confirm_calibration() -> Calibration:
    """The null of a confirmation's evidence (``benchmarks/calibrate.py`` fits it)."""
    return landmarks.default_calibration(landmarks.CONFIRM_CALIBRATION)
