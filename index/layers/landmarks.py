"""The landmark layer: peak pairs (``detector/landmarks.py``), at tempo 1.0 and at the tempos the
embedding layer measured."""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from detector import landmarks
from detector.audio import Clip
from detector.matcher import TEMPO_TOLERANCE, Match
from index.layers import SavedLayer

if TYPE_CHECKING:
    from index.catalog import Catalog
    from index.search import Searcher
    from index.store import Store

log = logging.getLogger(__name__)
TEMPO_LOOKS = 2             # landmark searches at a tempo the embedding measured, per output
LOOK_MARGIN_S = 10.0        # how far beyond the embedding match's span such a search looks


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
    """The stretches of ``clip`` at tempo 1.0, and its ``QUERY`` peaks where they were taken (an
    output longer than ``landmarks.DENSE_S`` is searched with ``LONG_QUERY``'s; its dense peaks are
    taken only if a search at a measured tempo needs them: None)."""
    if clip.duration > landmarks.DENSE_S:
        return index.search(landmarks.peaks(clip, landmarks.LONG_QUERY), fan_out=landmarks.LONG_QUERY.fan_out), None
    query = landmarks.peaks(clip, landmarks.QUERY)
    return index.search(query), query


def landmark_matches(index: landmarks.LandmarkIndex, clip: Clip, embedding: list[Match],
                     tempo_one: tuple[list[landmarks.LandmarkMatch], np.ndarray | None] | None = None) -> list[Match]:
    """Landmark stretches of ``clip`` at tempo 1.0, and at the tempo that each of the
    ``TEMPO_LOOKS`` strongest ``embedding`` matches measured where that is not 1.0, on its
    track: landmarks find a copy played faster or slower once they know how much (its peaks
    keep their frequencies), and the embedding measures that even where its own evidence is
    weak. Only the strongest few are asked: every search is another chance for unrelated
    music to collect votes, and an output's weaker matches at other tempos are mostly chance
    alignments (asked for all of them, the landmarks' strongest chance match rose from about
    20 votes to 35 on the robustness benchmark's negatives). And each is asked only where its
    match lies, up to ``LOOK_MARGIN_S`` beyond: a copy is one stretch at one tempo, and a
    whole song searched at a weak match's tempo offers its chance alignments everywhere (a
    chance match's tempo on one track found 18 votes two minutes away from it, in a song
    made of other music).

    An output longer than ``landmarks.DENSE_S`` is searched at tempo 1.0 with ``LONG_QUERY``'s
    sparser peaks (the search's work and memory grow with the output's length), and near each
    match at its tempo with ``QUERY``'s, as shorter outputs are everywhere. ``tempo_one``: what
    ``at_tempo_one`` found, where it has already searched."""
    found, query = tempo_one or at_tempo_one(index, clip)
    found = list(found)
    changed = [m for m in embedding if abs(m.tempo_ratio - 1.0) > TEMPO_TOLERANCE]
    for m in sorted(changed, key=lambda m: m.evidence, reverse=True)[:TEMPO_LOOKS]:
        if query is None:
            query = landmarks.peaks(clip, landmarks.QUERY)
        found += index.search(landmarks.between(query, m.query_start - LOOK_MARGIN_S, m.query_end + LOOK_MARGIN_S),
                              tempo=m.tempo_ratio, track=m.track)
    cal = index.calibration
    return [replace(landmarks.to_match(m), p_false=cal.p_false(m.evidence, clip.duration)) for m in found]
