"""The layers that search an output, one module each; ``index/search.py`` lists them in ``LAYERS``.

A layer has a ``name`` (the ``method`` its matches carry), ``load``\\s its index of the catalog's
indexed tracks, and ``search``\\es an output given what the layers before it found. A new layer is
one module here and one entry in ``LAYERS``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from detector.audio import Clip
from detector.matcher import Match

if TYPE_CHECKING:
    from index.catalog import Catalog
    from index.search import Searcher


class Layer:
    """One way of finding copies. ``search`` returns every match the layer found, weak ones
    included (a later layer may use them as hypotheses); ``reported`` picks those that go on to
    be merged."""

    name: str = ""

    def load(self, catalog: Catalog) -> object:
        """This layer's index of ``catalog``'s indexed tracks (loaded once per published index)."""
        raise NotImplementedError

    def search(self, searcher: Searcher, clip: Clip, earlier: dict[str, list[Match]]) -> list[Match]:
        """Matches of ``clip``; ``earlier`` holds what each layer before this one found, by name."""
        raise NotImplementedError

    def reported(self, matches: list[Match]) -> list[Match]:
        return matches
