"""The vector index: ids, removal, atomic publish, refusing another model's vectors."""
from __future__ import annotations

import numpy as np
import pytest

from index.vectors import IndexMismatch, VectorIndex


def unit(n, dim=16, seed=0):
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_add_search_remove_and_reopen(tmp_path):
    idx = VectorIndex.open(tmp_path, "m1", 16, 0.5)
    a, b = unit(30, seed=1), unit(20, seed=2)
    idx.add(3, a, np.arange(30))
    idx.add(9, b, np.arange(5, 25))
    sims, ids = idx.search(b[:4], 1)
    assert (ids[:, 0] >> 22).tolist() == [9] * 4 and (ids[:, 0] & 0x3FFFFF).tolist() == [5, 6, 7, 8]
    assert np.allclose(sims[:, 0], 1.0, atol=1e-5)
    assert idx.tracks() == {3: 30, 9: 20}
    idx.save()
    assert idx.remove([3]) == 30
    assert VectorIndex.open(tmp_path, "m1", 16, 0.5).tracks() == {3: 30, 9: 20}   # unpublished change
    idx.save()
    again = VectorIndex.open(tmp_path, "m1", 16, 0.5)
    assert again.tracks() == {9: 20} and again.generation == 2
    assert [p.name for p in tmp_path.glob("gen-*")] == ["gen-000002"]


def test_refuses_vectors_of_another_model(tmp_path):
    idx = VectorIndex.open(tmp_path, "m1", 16, 0.5)
    idx.add(1, unit(3), np.arange(3))
    idx.save()
    with pytest.raises(IndexMismatch, match="rebuild"):
        VectorIndex.open(tmp_path, "m2", 16, 0.5)
