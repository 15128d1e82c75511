"""The landmark layer: peak pairs (``detector/landmarks.py``), at tempo 1.0 and at the tempos the
embedding layer measured."""
from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from detector import landmarks
from detector.audio import Clip
from detector.matcher import TEMPO_TOLERANCE, Match
from index.layers import Layer

if TYPE_CHECKING:
    from index.catalog import Catalog
    from index.search import Searcher
    from index.store import Store

log = logging.getLogger(__name__)
TEMPO_LOOKS = 2             # landmark searches at a tempo the embedding measured, per output
LOOK_MARGIN_S = 10.0        # how far beyond the embedding match's span such a search looks


class LandmarkLayer(Layer):
    name = "landmark"

    def load(self, catalog: Catalog) -> landmarks.LandmarkIndex:
        """The index saved with the published vectors (``write_index``), memory-mapped; built
        from the stored peaks where the catalog was published before such indexes were saved."""
        stale = catalog.store.stale_peaks(landmarks.PEAKS)
        if stale:
            # still searched (their peaks are sparser: fewer votes for a copy, and for chance)
            log.warning("%d catalog tracks have landmark peaks picked by an earlier version: copies of them under new "
                        "material are found less often until `clearance index --rebuild` takes them again", len(stale))
        folder = catalog.vectors.folder
        if folder is not None and landmarks.LandmarkIndex.saved_in(folder):
            return landmarks.LandmarkIndex.open(folder)
        t0 = time.perf_counter()
        index = landmarks.LandmarkIndex(catalog.store.landmarks())
        if len(index):
            log.warning("the landmark index was built from the stored peaks (%.1f s, %.0f MB in memory): this catalog "
                        "was published without it; the next indexing job or `clearance index --rebuild` saves it",
                        time.perf_counter() - t0, index.nbytes / 1e6)
        return index

    def search(self, searcher: Searcher, clip: Clip, earlier: dict[str, list[Match]]) -> list[Match]:
        return landmark_matches(searcher.index(self.name), clip, earlier.get("embedding", []))


def write_index(store: Store, published: Path | None, folder: Path, added: list[int] = (),
                dropped: list[int] = ()) -> None:
    """Save into ``folder`` (a vector index's next generation) the landmark index of its tracks:
    the one saved in the ``published`` generation, less the tracks ``dropped`` and with the stored
    peaks of ``added`` (``LandmarkIndex.updated``); or, where none is saved there (None: the
    peaks were taken again) or the tracks added do not come after those kept, one built from the
    stored peaks of every indexed track and of ``added``, less ``dropped``."""
    index = None
    if published is not None and landmarks.LandmarkIndex.saved_in(published):
        try:
            index = landmarks.LandmarkIndex.open(published).updated(store.landmarks(added), list(dropped))
        except ValueError:
            pass
    if index is None:
        prints = {**store.landmarks(), **store.landmarks(added)}
        index = landmarks.LandmarkIndex({k: p for k, p in prints.items() if k not in set(dropped)})
    index.save(folder)


def landmark_matches(index: landmarks.LandmarkIndex, clip: Clip, embedding: list[Match]) -> list[Match]:
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
    match at its tempo with ``QUERY``'s, as shorter outputs are everywhere."""
    if clip.duration > landmarks.DENSE_S:
        query = None        # its dense peaks are taken only if a search at a measured tempo needs them
        found = index.search(landmarks.peaks(clip, landmarks.LONG_QUERY), fan_out=landmarks.LONG_QUERY.fan_out)
    else:
        query = landmarks.peaks(clip, landmarks.QUERY)
        found = index.search(query)
    changed = [m for m in embedding if abs(m.tempo_ratio - 1.0) > TEMPO_TOLERANCE]
    for m in sorted(changed, key=lambda m: m.evidence, reverse=True)[:TEMPO_LOOKS]:
        if query is None:
            query = landmarks.peaks(clip, landmarks.QUERY)
        found += index.search(landmarks.between(query, m.query_start - LOOK_MARGIN_S, m.query_end + LOOK_MARGIN_S),
                              tempo=m.tempo_ratio, track=m.track)
    cal = index.calibration
    return [replace(landmarks.to_match(m), p_false=cal.p_false(m.evidence, clip.duration)) for m in found]
