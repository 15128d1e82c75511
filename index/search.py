"""Searching an output: each layer of ``LAYERS`` finds its matches, given what the layers before it
found, and what the signal layers report is merged per copied stretch (``detector/matcher.py``,
``merge``); the version layer's re-performances follow, apart.

The order matters: the landmark layer searches at the tempos the embedding layer measured. A
layer joins by adding its module under ``index/layers/`` and its entry here.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from detector.audio import Clip
from detector.matcher import Match, merge, within
from index.layers import Layer
from index.layers.chromaprint import ChromaprintLayer
from index.layers.embedding import EmbeddingLayer
from index.layers.landmarks import LandmarkLayer
from index.layers.version import VersionLayer

if TYPE_CHECKING:
    from index.catalog import Catalog
    from index.store import Store

LAYERS: tuple[Layer, ...] = (EmbeddingLayer(), ChromaprintLayer(), LandmarkLayer(), VersionLayer())
LAYER = {layer.name: layer for layer in LAYERS}


def write_indexes(store: Store, published: Path | None, added: list[int] = (),
                  dropped: list[int] = ()) -> Callable[[Path], None]:
    """What ``VectorIndex.save`` calls with its next generation's folder: every layer writes its
    index of the tracks there (``Layer.write``): those of the ``published`` generation (None:
    every layer's built again from the database) with ``added``, less ``dropped``."""
    def write(folder: Path) -> None:
        for layer in LAYERS:
            layer.write(store, published, folder, added, dropped)
    return write


class Searcher:
    """Searches ``catalog``'s published indexes: each layer's index is loaded on first use and
    dropped (``forget``) when the catalog loads or publishes another vector index."""

    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        self._indexes: dict[str, object] = {}

    def index(self, name: str) -> object:
        """Layer ``name``'s index of the published catalog."""
        _ = self.catalog.vectors          # reloads (and forgets the others) when a newer index is published
        if name not in self._indexes:
            self._indexes[name] = LAYER[name].load(self.catalog)
        return self._indexes[name]

    def forget(self) -> None:
        self._indexes.clear()

    def find_matches(self, clip: Clip) -> list[Match]:
        """Matches of ``clip`` from every layer, merged, strongest first. What a layer finds with
        its own index alone (``Layer.prepare``: Chromaprint, the landmarks at tempo 1.0) is found
        on a helper thread while the layers ahead of it search (a 4-minute output: 0.99 s
        instead of 1.28 on 2 cores, the median of 7)."""
        indexes = {layer.name: self.index(layer.name) for layer in LAYERS}
        earlier: dict[str, list[Match]] = {}
        copies: list[Match] = []
        versions: list[Match] = []
        with ThreadPoolExecutor(1, thread_name_prefix="prepare") as helper:
            prepared = [helper.submit(layer.prepare, indexes[layer.name], clip) for layer in LAYERS]
            for layer, ready in zip(LAYERS, prepared):
                earlier[layer.name] = layer.search(self, clip, earlier, ready.result())
                (copies if layer.signal else versions).extend(within(m, clip.duration)
                                                               for m in layer.reported(earlier[layer.name]))
        return merge(copies) + sorted(versions, key=lambda m: m.p_false)
