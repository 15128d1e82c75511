"""The layers that search an output, one module each; ``index/search.py`` lists them in ``LAYERS``.

A layer has a ``name`` (the ``method`` its matches carry), ``load``\\s its index of the catalog's
indexed tracks, and ``search``\\es an output given what the layers before it found (what it can
find with its own index alone it may ``prepare`` on a helper thread meanwhile). A layer whose
index is built from per-track arrays in the database (``SavedLayer``) ``write``\\s it into each
generation of the vector index before it is published, and ``load`` opens it from there
memory-mapped. A new layer is one module here and one entry in ``LAYERS``.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from detector.audio import Clip
from detector.matcher import Match

if TYPE_CHECKING:
    from index.catalog import Catalog
    from index.search import Searcher
    from index.store import Store

log = logging.getLogger(__name__)


class Layer:
    """One way of finding copies. ``search`` returns every match the layer found, weak ones
    included (a later layer may use them as hypotheses); ``reported`` picks those that go on to
    be merged."""

    name: str = ""
    signal: bool = True         # finds copies of a recording (False: of its work; never merged with those)

    def load(self, catalog: Catalog) -> object:
        """This layer's index of ``catalog``'s indexed tracks (loaded once per published index)."""
        raise NotImplementedError

    def prepare(self, index: object, clip: Clip) -> object:
        """What this layer finds in ``clip`` with its ``index`` alone, before the layers ahead of
        it have searched: ``Searcher.find_matches`` runs it on a helper thread beside them and
        gives it to ``search`` as ``prepared``. None: nothing."""
        return None

    def search(self, searcher: Searcher, clip: Clip, earlier: dict[str, list[Match]], prepared: object) -> list[Match]:
        """Matches of ``clip``; ``earlier`` holds what each layer before this one found, by name,
        and ``prepared`` what ``prepare`` found."""
        raise NotImplementedError

    def reported(self, matches: list[Match]) -> list[Match]:
        return matches

    def write(self, store: Store, published: Path | None, folder: Path, added: list[int] = (),
              dropped: list[int] = ()) -> None:
        """Save into ``folder``, the vector index's next generation, this layer's index of its
        tracks (``SavedLayer``); nothing for a layer whose index is the vectors themselves."""


class SavedLayer(Layer):
    """A layer whose index (``index_type``: built from a dict of per-track arrays, ``updated``,
    ``save``\\d, ``saved_in`` and ``open``\\ed) is saved with each published generation of the
    vector index, so a server opens it instead of building it (``detector/saved.py``)."""

    index_type: type

    def arrays(self, store: Store, keys: list[int] | None = None) -> dict[int, np.ndarray]:
        """The per-track arrays the index is built from: of every indexed track, or of ``keys``."""
        raise NotImplementedError

    def load(self, catalog: Catalog) -> object:
        """The index saved with the published vectors, memory-mapped; built from the database
        where the catalog was published before such indexes were saved (with a warning)."""
        folder = catalog.vectors.folder
        if folder is not None and self.index_type.saved_in(folder):
            return self.index_type.open(folder)
        t0 = time.perf_counter()
        index = self.index_type(self.arrays(catalog.store))
        if len(index):
            log.warning("the %s index was built from the database (%.1f s, %.0f MB in memory): this catalog was "
                        "published without it; the next indexing job or `clearance index --rebuild` saves it",
                        self.name, time.perf_counter() - t0, index.nbytes / 1e6)
        return index

    def write(self, store: Store, published: Path | None, folder: Path, added: list[int] = (),
              dropped: list[int] = ()) -> None:
        """The index saved in the ``published`` generation, less the tracks ``dropped`` and with
        those ``added`` (``updated``: one pass over it); or, where none is saved there (None: the
        tracks' arrays changed) or the tracks added do not come after those kept, one built from
        the arrays of every indexed track and of ``added``, less ``dropped``."""
        index = None
        if published is not None and self.index_type.saved_in(published):
            try:
                index = self.index_type.open(published).updated(self.arrays(store, added), list(dropped))
            except ValueError:
                pass
        if index is None:
            arrays = {**self.arrays(store), **self.arrays(store, added)}
            index = self.index_type({k: a for k, a in arrays.items() if k not in set(dropped)})
        index.save(folder)
