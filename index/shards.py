"""Vector shards: the reference vectors kept on disk beside the index, so that the index can be
retrained and rebuilt (a compressed index cannot give its vectors back), and the files through
which Ray workers hand their vectors to the indexing job.

A shard is one ``.npz`` file: ``ids`` (n,) int64 and ``vectors`` (n, dim) float32, with the
format version, the model version and the dimension. Shards are written beside and published
with ``os.replace``; a reader refuses a format it does not know and skips (or refuses) vectors
of another model. Catalog shards live in ``HOME/vectors/``; a shard holds whole tracks.
"""
from __future__ import annotations

import os
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from detector.errors import ClearanceError

SHARD_FORMAT = 1


class ShardError(ClearanceError):
    """A shard that cannot be read: unknown format, another embedding size, damaged file."""


@dataclass(frozen=True)
class Shard:
    """Vectors of one shard: ``ids`` (n,) int64, ``vectors`` (n, dim) float32 unit rows."""

    path: Path
    model: str
    ids: np.ndarray
    vectors: np.ndarray


class ShardStore:
    """The shards in one folder."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def write(self, ids: np.ndarray, vectors: np.ndarray, model: str) -> Path:
        """Write a new shard atomically and return its path."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"shard-{uuid.uuid4().hex}.npz"
        tmp = self.folder / f".{path.stem}.tmp.npz"
        with open(tmp, "wb") as f:
            np.savez(f, format=np.int64(SHARD_FORMAT), model=np.str_(model), dim=np.int64(vectors.shape[1]),
                     ids=np.ascontiguousarray(ids, np.int64), vectors=np.ascontiguousarray(vectors, np.float32))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return path

    def paths(self) -> list[Path]:
        return sorted(self.folder.glob("shard-*.npz")) if self.folder.exists() else []

    def read(self, path: Path, dim: int, ids_only: bool = False) -> Shard:
        """Load one shard, checking its format and dimension (``vectors`` is empty with
        ``ids_only``)."""
        try:
            with np.load(path, allow_pickle=False) as z:
                if int(z["format"]) != SHARD_FORMAT:
                    raise ShardError(f"vector shard {path} has format {int(z['format'])}, expected {SHARD_FORMAT}")
                if int(z["dim"]) != dim:
                    raise ShardError(f"vector shard {path} holds {int(z['dim'])}-d vectors, expected {dim}-d")
                vectors = np.zeros((0, dim), np.float32) if ids_only else z["vectors"]
                return Shard(path, str(z["model"]), z["ids"], vectors)
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
            raise ShardError(f"vector shard {path} cannot be read: {exc}") from None

    def iter(self, model: str, dim: int) -> Iterator[Shard]:
        """Every shard of vectors made by ``model``."""
        for p in self.paths():
            shard = self.read(p, dim)
            if shard.model == model:
                yield shard

    def purge(self, dim: int, keep: Callable[[np.ndarray, str], np.ndarray]) -> int:
        """Rewrite every shard without the vectors for which ``keep(ids, model)`` ((n,) bool)
        is False (takedowns, vectors of an old model); returns how many vectors were dropped."""
        dropped = 0
        for p in self.paths():
            head = self.read(p, dim, ids_only=True)
            mask = keep(head.ids, head.model)
            if mask.all():
                continue
            shard = self.read(p, dim)
            if mask.any():
                self.write(shard.ids[mask], shard.vectors[mask], shard.model)
            p.unlink()
            dropped += int((~mask).sum())
        return dropped

    def clear_temporary(self) -> None:
        """Remove half-written files a crash left."""
        for p in self.folder.glob(".shard-*.tmp.npz") if self.folder.exists() else []:
            p.unlink(missing_ok=True)
