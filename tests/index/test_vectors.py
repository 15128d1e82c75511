"""The vector index and stored vector shards: ids, removal, atomic publish, refusing another
model's vectors, compressed indexes against exact search."""
from __future__ import annotations

import faiss
import numpy as np
import pytest

from index import vectors
from index.shards import Shard, ShardError, ShardStore
from index.vectors import (COMPRESSED, FLAT_MAX_VECTORS, IndexFactoryError, IndexMismatch, VectorIndex, auto_factory,
                           measure_recall, min_training_vectors, new_index)


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
    assert sorted(p.name for p in tmp_path.glob("gen-*")) == ["gen-000001", "gen-000002"]   # one back, for readers
    # a writer killed after renaming its generation into place, before naming it in CURRENT
    (tmp_path / "gen-000003").mkdir()
    (tmp_path / "gen-000003" / "vectors.faiss").write_bytes(b"half")
    idx.add(5, a, np.arange(30))
    idx.save(lambda folder: (folder / "beside.npy").write_bytes(b"x"))
    again = VectorIndex.open(tmp_path, "m1", 16, 0.5)
    assert again.tracks() == {5: 30, 9: 20} and again.generation == 3
    assert (again.folder / "beside.npy").exists() and again.folder.name == "gen-000003"


def test_refuses_vectors_of_another_model(tmp_path):
    idx = VectorIndex.open(tmp_path, "m1", 16, 0.5)
    idx.add(1, unit(3), np.arange(3))
    idx.save()
    with pytest.raises(IndexMismatch, match="rebuild"):
        VectorIndex.open(tmp_path, "m2", 16, 0.5)
    with pytest.raises(IndexMismatch, match=r"every 0.5 s.*every 0.25 s.*rebuild"):
        VectorIndex.open(tmp_path, "m1", 16, 0.25)          # the same vectors at another hop


def near_copies(x, cos, seed):
    """Rows of ``x`` with noise added until their cosine to the original is about ``cos``."""
    noise = np.random.default_rng(seed).standard_normal(x.shape).astype(np.float32)
    noise *= np.sqrt(1 / cos ** 2 - 1) / np.linalg.norm(noise, axis=1, keepdims=True)
    q = x + noise
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def test_compressed_index_finds_what_exact_search_finds(tmp_path):
    base = unit(20000, dim=32, seed=3)
    ids = (np.repeat(np.arange(200), 100).astype(np.int64) << 22) + np.tile(np.arange(100), 200)
    exact = VectorIndex.open(tmp_path / "exact", "m1", 32, 0.5)
    exact.add_ids(ids, base)
    approx = VectorIndex.trained(tmp_path / "pq", "m1", 32, 0.5, "IVF16,PQ16x4fs", base, nprobe=64)   # > 16 lists
    approx.add_ids(ids, base)
    q = near_copies(base[::40], 0.9, seed=4)
    _, want = exact.search(q, 1)
    _, got = approx.search(q, 1)
    assert np.mean(got[:, 0] == want[:, 0]) >= 0.9               # 4-bit PQ16 on 32-d: 8 bytes a vector
    assert measure_recall(approx, base, [Shard(tmp_path, "m1", ids, base)], queries=500) >= 0.9
    assert measure_recall(exact, base, [Shard(tmp_path, "m1", ids, base)], queries=500) == 1.0
    assert approx.bytes < exact.bytes / 3
    # ids, removal and publishing work the same as for the exact index
    assert approx.tracks() == {t: 100 for t in range(200)}
    assert approx.remove([5, 7]) == 200 and 5 not in approx.tracks()
    approx.set_recall(0.95)
    approx.save()
    again = VectorIndex.open(tmp_path / "pq", "m1", 32, 0.5)
    assert again.info.factory == "IVF16,PQ16x4fs" and again.info.recall == 0.95 and again.size == 19800


def test_whole_songs_search_a_skim_that_finds_the_exact_neighbours_and_follows_takedowns(tmp_path, monkeypatch):
    monkeypatch.setattr(vectors, "SKIM_MIN_VECTORS", 10_000)
    base = unit(20000, dim=32, seed=6)
    ids = (np.repeat(np.arange(200), 100).astype(np.int64) << 22) + np.tile(np.arange(100), 200)
    idx = VectorIndex.open(tmp_path, "m1", 32, 0.5)
    idx.add_ids(ids, base)
    q = near_copies(base[::40], 0.9, seed=7)
    want_sims, want = idx.search(q, 8)
    assert np.array_equal(idx.search(q, 8, exact=False)[1], want)      # no skim before it is published
    idx.save()
    assert (tmp_path / "gen-000001" / "skim.faiss").exists()
    again = VectorIndex.open(tmp_path, "m1", 32, 0.5)
    for skimmed in (idx, again):
        sims, got = skimmed.search(q, 8, exact=False)
        assert np.mean(got[:, 0] == want[:, 0]) >= 0.95        # (random vectors have no other near neighbours)
        exact = np.einsum("qd,qkd->qk", q, base[np.searchsorted(ids, got)])
        assert np.allclose(sims, exact, atol=1e-5) and np.all(np.diff(sims, axis=1) <= 0)   # rescored exactly, in order
    # a takedown drops the skim (its rows would name other vectors) until the next publish makes another
    assert again.remove([0]) == 100
    _, after = again.search(q, 8, exact=False)
    assert not np.isin(after >> 22, [0]).any() and np.array_equal(after, again.search(q, 8)[1])
    again.save()
    _, later = VectorIndex.open(tmp_path, "m1", 32, 0.5).search(q, 8, exact=False)
    assert not np.isin(later >> 22, [0]).any() and np.mean(later[:, 0] == after[:, 0]) >= 0.95
    # ... with the lists of the one before (a publish encodes, it does not train again)
    skims = [faiss.read_index(str(tmp_path / g / "skim.faiss")) for g in ("gen-000001", "gen-000002")]
    lists = [faiss.extract_index_ivf(skim).quantizer for skim in skims]
    assert np.array_equal(*(c.reconstruct_n(0, c.ntotal) for c in lists))


def test_auto_factory_is_exact_for_small_catalogs_and_compressed_for_large():
    assert auto_factory(10_000) == "Flat" and auto_factory(FLAT_MAX_VECTORS) == "Flat"
    assert auto_factory(10_000_000) == COMPRESSED.format(nlist=4096)
    assert auto_factory(100_000_000) == COMPRESSED.format(nlist=16384)
    assert min_training_vectors(COMPRESSED.format(nlist=4096)) == 39 * 4096
    with pytest.raises(IndexFactoryError, match="cannot remove"):
        new_index(16, "HNSW32")
    with pytest.raises(IndexFactoryError, match="cannot build"):
        new_index(16, "IVF16,Nonsense")


def test_shards_round_trip_refuse_other_formats_and_purge(tmp_path):
    store = ShardStore(tmp_path)
    a = store.write(np.arange(4, dtype=np.int64), unit(4), "m1")
    store.write(np.arange(10, 13, dtype=np.int64), unit(3, seed=5), "m2")
    [only] = list(store.iter("m1", 16))
    assert only.path == a and only.ids.tolist() == [0, 1, 2, 3] and np.allclose(only.vectors, unit(4))
    with pytest.raises(ShardError, match="16-d"):
        store.read(a, 32)
    (tmp_path / "shard-damaged.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(ShardError, match="cannot be read"):
        list(store.iter("m1", 16))
    (tmp_path / "shard-damaged.npz").unlink()
    assert store.purge(16, lambda ids, model: (ids % 2 == 0) | (model == "m2")) == 2
    assert sorted(np.concatenate([s.ids for s in store.iter("m1", 16)]).tolist()) == [0, 2]
    assert len(store.paths()) == 2


@pytest.mark.parametrize("factory", ["Flat", "IVF16,PQ16x4fs"])
def test_the_shards_of_an_index_find_what_it_finds(tmp_path, monkeypatch, factory):
    monkeypatch.setattr(vectors, "SKIM_MIN_VECTORS", 10_000)
    base = unit(20000, dim=32, seed=8)
    base[5000:5100] = base[:100]                      # track 50 repeats track 0: equal similarities
    ids = (np.repeat(np.arange(200), 100).astype(np.int64) << 22) + np.tile(np.arange(100), 200)
    idx = VectorIndex.trained(tmp_path, "m1", 32, 0.5, factory, base, nprobe=4)
    idx.add_ids(ids, base)
    idx.save()                                        # an exact index gets its skim
    idx = VectorIndex.open(tmp_path, "m1", 32, 0.5, nprobe=4)
    assert idx.skimmed == (factory == "Flat")
    shards = [idx.without([t for t in range(200) if t % 3 != k]) for k in range(3)]
    assert sum(s.size for s in shards) == idx.size and not np.isin(shards[1].ids() >> 22, [0, 2, 3]).any()
    q = near_copies(base[::37], 0.8, seed=9)
    for exact in (True, False):
        want = idx.search(q, 64, exact)
        got = vectors.nearest([s.candidates(q, 64, exact) for s in shards], 64, exact or not idx.skimmed)
        assert np.array_equal(want[0], got[0]) and np.array_equal(want[1], got[1])
    # of two equal vectors, the lower id comes first, whichever shard holds it (by codes, many are equal)
    pairs = [(list(r).index(i), list(r).index(i + (50 << 22))) for r in want[1]
             for i in r if i >> 22 == 0 and i + (50 << 22) in r]
    assert pairs and all(b == a + 1 if factory == "Flat" else b > a for a, b in pairs)
