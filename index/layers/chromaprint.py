"""The Chromaprint layer: near-exact copies, confirmed bit by bit (``detector/chromaprint.py``)."""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from detector import chromaprint
from detector.audio import Clip
from detector.matcher import Match, from_chromaprint, stretches
from index.layers import SavedLayer

if TYPE_CHECKING:
    from index.search import Searcher
    from index.store import Store


class ChromaprintLayer(SavedLayer):
    name = "chromaprint"
    index_type = chromaprint.ChromaIndex

    def arrays(self, store: Store, keys: list[int] | None = None) -> dict[int, np.ndarray]:
        return store.chromaprints(keys)

    def prepare(self, index: chromaprint.ChromaIndex, clip: Clip) -> list[Match]:
        """Chromaprint stretches of ``clip``, their ``p_false`` times the stretches its length offers."""
        return [replace(from_chromaprint(m), p_false=min(1.0, m.p_false * stretches(clip.duration)))
                for m in index.search(chromaprint.fingerprint(clip))]

    def search(self, searcher: Searcher, clip: Clip, earlier: dict[str, list[Match]],
               prepared: list[Match]) -> list[Match]:
        return prepared
