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
from detector.landmarks import default_calibration
from detector.version_model import shipped
from index import sharded
from index.layers import Layer
from index.layers.chromaprint import ChromaprintLayer
from index.layers.embedding import EmbeddingLayer
from index.layers.landmarks import LandmarkLayer
from index.layers.version import VersionLayer
from index.vectors import IndexInfo, VectorIndex, published_meta

if TYPE_CHECKING:
    from index.catalog import Catalog
    from index.store import Store

LAYERS: tuple[Layer, ...] = (EmbeddingLayer(), ChromaprintLayer(), LandmarkLayer(), VersionLayer())
LAYER = {layer.name: layer for layer in LAYERS}


def write_indexes(store: Store, published: Path | None, added: list[int] = (), dropped: list[int] = (),
                  cut: tuple[VectorIndex, int] | None = None) -> Callable[[Path], None]:
    """What ``VectorIndex.save`` calls with its next generation's folder: every layer writes its
    index of the tracks there (``Layer.write``): those of the ``published`` generation (None:
    every layer's built again from the database) with ``added``, less ``dropped``. With ``cut``
    (the vector index being saved, and a shard count over 1), the generation is also saved in
    that many shards (``sharded.write_shards``), for the replicas that serve them."""
    def write(folder: Path) -> None:
        for layer in LAYERS:
            layer.write(store, published, folder, added, dropped)
        if cut is not None and cut[1] > 1:
            sharded.write_shards(folder, *cut)
    return write


class Searcher:
    """Searches ``catalog``'s published indexes: each layer's index is loaded on first use and
    dropped (``forget``) when the catalog loads or publishes another vector index.

    With ``shards`` > 1, the catalog is searched in that many shards by track
    (``index/sharded.py``), cut in this process; with ``ray``, in the shards that those Ray
    actors hold (this process then loads no index). Either way a check finds what it finds
    searched whole."""

    def __init__(self, catalog: Catalog, shards: int = 1, ray: sharded.RayShards | None = None):
        self.catalog, self.shards, self.ray = catalog, shards, ray
        self._indexes: dict[str, object] = {}
        self._generation = 0

    def index(self, name: str) -> object:
        """Layer ``name``'s index of the published catalog (or what searches its shards)."""
        if self.ray is not None:
            return self._on_ray()[name]
        _ = self.catalog.vectors          # reloads (and forgets the others) when a newer index is published
        return self._loaded(name)

    def indexes(self) -> dict[str, object]:
        """Every layer's index, all of one published generation: what one check searches (asked
        for one by one, a publish between two of them would mix generations)."""
        if self.ray is not None:
            return dict(self._on_ray())
        _ = self.catalog.vectors
        return {layer.name: self._loaded(layer.name) for layer in LAYERS}

    def _loaded(self, name: str) -> object:
        if name not in self._indexes:
            if self.shards > 1:
                self._indexes = sharded.in_process({layer.name: layer.load(self.catalog) for layer in LAYERS},
                                                   self.shards)
            else:
                self._indexes[name] = LAYER[name].load(self.catalog)
        return self._indexes[name]

    def _on_ray(self) -> dict[str, object]:
        """The proxies of the catalog's shards on Ray, each holding the published generation
        (this process loads no index of its own)."""
        meta = published_meta(self.catalog.home / "index")
        generation = meta["generation"] if meta else 0
        if not self._indexes or self._generation < generation:
            sizes = self.ray.load(generation)
            info = IndexInfo.published(meta) if meta else \
                IndexInfo(self.catalog.embedder.version, self.catalog.embedder.dim, self.catalog.embedder.ref_hop_s, "Flat")
            self._generation = min(s["generation"] for s in sizes)
            self._indexes = sharded.proxies(self.ray.pinned(self._generation), sizes, info, sizes[0]["skimmed"],
                                            default_calibration(), shipped()[0])
        return self._indexes

    def forget(self) -> None:
        self._indexes.clear()

    def find_matches(self, clip: Clip) -> list[Match]:
        """Matches of ``clip`` from every layer, merged, strongest first. What a layer finds with
        its own index alone (``Layer.prepare``: Chromaprint, the landmarks at tempo 1.0) is found
        on a helper thread while the layers ahead of it search (a 4-minute output: 0.99 s
        instead of 1.28 on 2 cores, the median of 7)."""
        indexes = self.indexes()          # once: what the check searches
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
