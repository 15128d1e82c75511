"""Indexes saved as named arrays, one ``.npy`` file each, and opened memory-mapped: the layers'
indexes beside a published generation of the vector index (``index/layers/__init__.py``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


class SavedArrays:
    """An index made of the arrays named in ``arrays`` (the first, ``ids``, its track keys), which
    ``_use`` takes in that order; saved as ``<saved_as>-<name>.npy`` files."""

    saved_as: str
    arrays: tuple[str, ...]

    def _use(self, *arrays: np.ndarray, **kwargs) -> None:
        raise NotImplementedError

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, name).nbytes for name in self.arrays)

    @classmethod
    def saved_in(cls, folder: Path) -> bool:
        return all(cls._path(folder, name).exists() for name in cls.arrays)

    def save(self, folder: Path) -> None:
        """Write the index to ``folder``, one file per array."""
        for name in self.arrays:
            np.save(self._path(folder, name), np.ascontiguousarray(getattr(self, name)))

    @classmethod
    def open(cls, folder: Path, mapped: bool = True, **kwargs):
        """The index ``save`` wrote to ``folder``, memory-mapped (``mapped``; else read into
        memory; ``kwargs`` go to ``_use``): its arrays are plain arrays over the mapped files, so
        what a search computes from them is no ``memmap``."""
        index = cls.__new__(cls)
        ids, *rest = (np.asarray(np.load(cls._path(folder, name), mmap_mode="r" if mapped else None))
                      for name in cls.arrays)
        index._use(np.array(ids), *rest, **kwargs)
        return index

    @classmethod
    def _path(cls, folder: Path, name: str) -> Path:
        return folder / f"{cls.saved_as}-{name}.npy"


def rank_type(n: int) -> np.dtype:
    """The smallest unsigned type that numbers ``n`` tracks."""
    return np.min_scalar_type(max(n - 1, 0))
