"""The version layer: re-performances of a catalog track's work (``detector/version.py``). Its
matches are not copies of a recording: they are kept apart from the signal layers' (``signal``
is False) and the policy sends them to a person."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from detector import version, version_model
from detector.audio import Clip
from detector.matcher import Match
from index.layers import SavedLayer

if TYPE_CHECKING:
    from index.catalog import Catalog
    from index.search import Searcher
    from index.store import Store

log = logging.getLogger(__name__)


class VersionLayer(SavedLayer):
    name = "version"
    signal = False
    index_type = version.VersionIndex

    def arrays(self, store: Store, keys: list[int] | None = None) -> dict[int, np.ndarray]:
        return store.pitch_classes(keys)

    def load(self, catalog: Catalog) -> version.VersionIndex:
        stale = catalog.store.stale_pitch_classes(version_model.PITCH_CLASSES)
        if stale:
            # those of an earlier version are still searched; tracks with none are not seen at all
            log.warning("%d catalog tracks have no pitch classes, or pitch classes of an earlier version: "
                        "`clearance index --rebuild` takes them again", len(stale))
        index = super().load(catalog)
        if not index.current:
            log.warning("the version index was published with other version-model weights: built again from the "
                        "database; the next indexing job or `clearance index --rebuild` saves it")
            index = version.VersionIndex(self.arrays(catalog.store))
        return index

    def prepare(self, index: version.VersionIndex, clip: Clip) -> list[version.VersionMatch]:
        return index.search(version_model.VersionModel.classes(clip.samples))

    def search(self, searcher: Searcher, clip: Clip, earlier: dict[str, list[Match]],
               prepared: list[version.VersionMatch]) -> list[Match]:
        """Each candidate as a ``Match``: its spans and key shift as Qmax aligned them, its tempo
        the slope of that alignment, its ``p_false`` the chance that another work comes this
        near in an output of this length."""
        _, calibration = version_model.shipped()
        out = []
        for found in prepared:
            a = found.alignment
            spans = a.query_end - a.query_start, a.ref_end - a.ref_start
            tempo = spans[1] / spans[0] if min(spans) > 0 else 1.0
            out.append(Match(found.track, a.query_start, a.query_end, a.ref_start, a.ref_end, round(tempo, 2),
                             found.evidence, calibration.p_false(found.evidence, clip.duration), self.name,
                             key_shift=(a.key_shift + 6) % 12 - 6))
        return out
