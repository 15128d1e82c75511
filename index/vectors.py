"""The vector index: FAISS over every voiced reference window, ID-mapped so that a vector's id
says which track and which window it came from (``id = track << 22 | window``).

Files live in ``HOME/index/gen-NNNNNN/`` beside a ``CURRENT`` file naming the published
generation. ``save()`` writes a new generation and swaps ``CURRENT`` with ``os.replace``, so a
crash leaves either the old or the new index, never half of one.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from detector.errors import ClearanceError

FORMAT = 1
WINDOW_BITS = 22


class IndexMismatch(ClearanceError):
    """An index built by another model or embedding size than the one loaded."""


@dataclass(frozen=True)
class IndexInfo:
    model: str
    dim: int
    hop_s: float
    factory: str


def vector_ids(track: int, n: int) -> np.ndarray:
    return (np.int64(track) << WINDOW_BITS) + np.arange(n, dtype=np.int64)


def split_ids(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(track keys, window numbers) of vector ids."""
    return ids >> WINDOW_BITS, ids & ((1 << WINDOW_BITS) - 1)


class VectorIndex:
    """A FAISS index of L2-normalised vectors searched by inner product (= cosine)."""

    def __init__(self, root: Path, info: IndexInfo, index: faiss.Index, generation: int):
        self.root, self.info, self.index, self.generation = root, info, index, generation

    @classmethod
    def open(cls, root: str | Path, model: str, dim: int, hop_s: float, factory: str = "Flat") -> "VectorIndex":
        """Load the published generation under ``root``, or start an empty index."""
        root = Path(root)
        current = root / "CURRENT"
        if current.exists():
            gen_dir = root / current.read_text().strip()
            meta = json.loads((gen_dir / "meta.json").read_text())
            if meta.get("format") != FORMAT:
                raise IndexMismatch(f"index at {root} has format {meta.get('format')}, expected {FORMAT}")
            info = IndexInfo(meta["model"], meta["dim"], meta["hop_s"], meta["factory"])
            if info.model != model or info.dim != dim:
                raise IndexMismatch(f"index at {root} holds vectors of model {info.model} ({info.dim}-d); the loaded "
                                    f"model is {model} ({dim}-d): rebuild the index with `clearance index --rebuild`")
            return cls(root, info, faiss.read_index(str(gen_dir / "vectors.faiss")), meta["generation"])
        info = IndexInfo(model, dim, hop_s, factory)
        return cls(root, info, new_index(dim, factory), 0)

    @property
    def size(self) -> int:
        return self.index.ntotal

    def add(self, track: int, vectors: np.ndarray, windows: np.ndarray) -> None:
        """Add a track's vectors; ``windows`` are their window numbers (start = window × hop)."""
        if len(vectors):
            ids = (np.int64(track) << WINDOW_BITS) + windows.astype(np.int64)
            self.index.add_with_ids(np.ascontiguousarray(vectors, np.float32), ids)

    def remove(self, tracks: list[int]) -> int:
        """Remove every vector of ``tracks``; returns how many were removed."""
        removed = 0
        for t in tracks:
            sel = faiss.IDSelectorRange(int(t) << WINDOW_BITS, (int(t) + 1) << WINDOW_BITS)
            removed += self.index.remove_ids(sel)
        return removed

    def tracks(self) -> dict[int, int]:
        """Vector count per track key."""
        ids = faiss.vector_to_array(faiss.downcast_index(self.index).id_map) if self.size else np.zeros(0, np.int64)
        keys, counts = np.unique(split_ids(ids)[0], return_counts=True)
        return dict(zip(keys.tolist(), counts.tolist()))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, ids), each (n, k); ids are -1 where fewer than k vectors exist."""
        if self.size == 0 or len(queries) == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        return self.index.search(np.ascontiguousarray(queries, np.float32), min(k, self.size))

    def save(self) -> None:
        """Publish the in-memory index as a new generation, atomically."""
        self.root.mkdir(parents=True, exist_ok=True)
        gen = self.generation + 1
        name = f"gen-{gen:06d}"
        tmp = self.root / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        faiss.write_index(self.index, str(tmp / "vectors.faiss"))
        meta = {"format": FORMAT, "generation": gen, "model": self.info.model, "dim": self.info.dim,
                "hop_s": self.info.hop_s, "factory": self.info.factory, "vectors": self.size}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        _fsync_dir(tmp)
        os.replace(tmp, self.root / name)
        pointer = self.root / ".CURRENT.tmp"
        pointer.write_text(name + "\n")
        with open(pointer) as f:
            os.fsync(f.fileno())
        os.replace(pointer, self.root / "CURRENT")
        _fsync_dir(self.root)
        self.generation = gen
        for old in self.root.glob("gen-*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)


def new_index(dim: int, factory: str) -> faiss.Index:
    """An empty ID-mapped index from a FAISS factory string, searched by inner product."""
    return faiss.index_factory(dim, f"IDMap2,{factory}", faiss.METRIC_INNER_PRODUCT)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
