"""The vector index: FAISS over every voiced reference window, with ids that say which track and
which window a vector came from (``id = track << 22 | window``).

The index type comes from a FAISS factory string. Small catalogs use exact search (``Flat``,
wrapped in ``IDMap2`` for the ids); large ones a trained compressed index of the IVF family
(``IVF…,PQ…``, optionally after ``OPQ…``), which keeps ids in its inverted lists and can remove
them. ``auto`` picks one by the number of vectors (``auto_factory``).

An exact index of at least ``SKIM_MIN_VECTORS`` also gets a *skim* when published: a small IVF-PQ
fast-scan index over the same vectors, which whole songs search instead (``search(exact=False)``):
its candidates are rescored exactly, so it costs recall only where a neighbour lies outside the
lists it probes, and it reads an eighth of the vectors.

Files live in ``HOME/index/gen-NNNNNN/`` beside a ``CURRENT`` file naming the published
generation, with the landmark layer's index of the same tracks. ``save()`` writes a new generation
and swaps ``CURRENT`` with ``os.replace``, so a crash leaves either the old or the new index, never
half of one.
"""
from __future__ import annotations

import copy
import json
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, NamedTuple

import faiss
import numpy as np

from detector.errors import ClearanceError

# Exact search takes FAISS's matrix-product (BLAS) path from this many queries up. The faiss-cpu
# wheel sets 128,000, which leaves a check's few hundred windows on the query-by-query path:
# against 253,042 vectors, 351 queries took 1.7-2.0 s there and 0.17 s by BLAS.
faiss.cvar.distance_compute_blas_threshold = 20
# ... and multiplies them by blocks of 1,024 reference vectors by default: as fast on an idle
# machine (1,000 queries against 223,741 vectors: 0.45 s), but with the cores busy (another check,
# indexing) 13 s against 3.2 s in blocks of 16,384. A block of 1,024 queries holds a 64 MB
# product; the neighbours are the same but for rounding ties.
faiss.cvar.distance_compute_blas_query_bs = 1024
faiss.cvar.distance_compute_blas_database_bs = 16384

FORMAT = 2                      # 2 adds the IVF family and the recall measured when trained
READABLE = frozenset({1, 2})    # format 1 (exact IDMap2 only) reads as format 2
WINDOW_BITS = 22

AUTO = "auto"
FLAT_MAX_VECTORS = 1_000_000    # exact search up to ~69 h of audio at a 0.25 s hop (0.5 GB of vectors)
COMPRESSED = "IVF{nlist},PQ64x4fsr"   # 40 B per vector with its id, fast-scan search; see benchmarks/scale.py
# The skim of an exact index: 4-bit PQ codes of dim / 2 sub-vectors (32 B per 128-d vector, 8 B
# more for its row), about 2 √n lists, one list in SKIM_PROBE probed; each query's SKIM_CANDIDATES × k
# nearest by code are rescored exactly. Once, on a 240 s output against 253,042 vectors (1,915 queries,
# 64 neighbours): 0.17 s instead of 1.14 s, with 99.2 % of the 8 nearest and 99.8 % of the nearest
# the exact ones. Below SKIM_MIN_VECTORS, exact search is fast enough for any output.
SKIM = "IVF{nlist},PQ{m}x4fsr"
SKIM_MIN_VECTORS = 50_000
SKIM_PROBE = 8
SKIM_CANDIDATES = 2
TIE_MARGIN = 8              # neighbours more than asked for from an exact search, rescored
SKIM_TRAINING_PER_LIST = 64
RESCORE_BLOCK = 256         # queries rescored at once: 256 × 128 candidates × 128 dims × 4 B = 16 MB


class IndexMismatch(ClearanceError):
    """An index built by another model or embedding size than the one loaded."""


class IndexFactoryError(ClearanceError):
    """A factory string FAISS cannot build, or whose index cannot remove vectors."""


@dataclass(frozen=True)
class IndexInfo:
    """What a published index holds: vectors of ``model`` (``dim``-d) every ``hop_s`` seconds,
    in an index built from ``factory``; ``recall`` is recall@1 against exact search measured
    when it was trained (1.0 for exact indexes)."""

    model: str
    dim: int
    hop_s: float
    factory: str
    recall: float = 1.0

    @classmethod
    def published(cls, meta: dict) -> "IndexInfo":
        """What the published index whose ``meta.json`` reads ``meta`` holds."""
        return cls(meta["model"], meta["dim"], meta["hop_s"], meta["factory"], meta.get("recall", 1.0))


def vector_ids(track: int, windows: np.ndarray) -> np.ndarray:
    """(n,) int64 ids of a track's windows."""
    return (np.int64(track) << WINDOW_BITS) + windows.astype(np.int64)


def split_ids(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(track keys, window numbers) of vector ids."""
    return ids >> WINDOW_BITS, ids & ((1 << WINDOW_BITS) - 1)


def auto_factory(n_vectors: int) -> str:
    """The factory ``auto`` means for ``n_vectors``: ``Flat`` up to ``FLAT_MAX_VECTORS``, else
    IVF-PQ (64 4-bit codes on the residual, fast-scan) with about √n lists, rounded to a power of 4 so that a growing catalog is
    retrained only at each ×16 of growth (1,024 lists at 10⁶ vectors, 4,096 at 10⁷, 16,384 at
    10⁸)."""
    if n_vectors <= FLAT_MAX_VECTORS:
        return "Flat"
    nlist = 4 ** round(math.log(math.sqrt(n_vectors), 4))
    return COMPRESSED.format(nlist=min(max(nlist, 1024), 262144))


def needs_training(factory: str) -> bool:
    return "IVF" in factory or "PQ" in factory


def min_training_vectors(factory: str) -> int:
    """Vectors needed to train ``factory``: 39 per IVF list (FAISS's floor), and 10,000 for PQ
    codebooks (8-bit ones need 256 codes × 39); 0 for indexes that need no training."""
    if not needs_training(factory):
        return 0
    lists = re.search(r"IVF(\d+)", factory)
    return max(39 * int(lists.group(1)) if lists else 0, 10_000 if "PQ" in factory else 0)


def new_index(dim: int, factory: str) -> faiss.Index:
    """An empty index from a FAISS factory string, searched by inner product. IVF indexes keep
    their own ids; flat ones (exact, SQ or PQ codes) are wrapped in ``IDMap2``; others (graphs)
    are refused, as they cannot remove vectors."""
    if factory == AUTO:
        raise IndexFactoryError("'auto' is resolved by auto_factory() before an index is made")
    ivf = "IVF" in factory
    try:
        index = faiss.index_factory(dim, factory if ivf else f"IDMap2,{factory}", faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise IndexFactoryError(f"FAISS cannot build index factory '{factory}': {str(exc).splitlines()[0]}") from None
    if ivf and hasattr(faiss.downcast_index(faiss.extract_index_ivf(index)), "do_polysemous_training"):
        # only for Hamming-filtered search, which is not used; it makes training many times slower
        faiss.downcast_index(faiss.extract_index_ivf(index)).do_polysemous_training = False
    if not ivf and not isinstance(faiss.downcast_index(faiss.downcast_index(index).index), faiss.IndexFlatCodes):
        raise IndexFactoryError(f"index factory '{factory}' makes an index that cannot remove vectors (takedowns); "
                                "use Flat, SQ/PQ codes or the IVF family")
    return index


def index_ids(index: faiss.Index) -> np.ndarray:
    """(ntotal,) int64: every id stored in ``index`` (IDMap2 or IVF family), in no order."""
    if index.ntotal == 0:
        return np.zeros(0, np.int64)
    top = faiss.downcast_index(index)
    if isinstance(top, faiss.IndexIDMap2):
        return faiss.vector_to_array(top.id_map).astype(np.int64)
    ivf = faiss.extract_index_ivf(index)
    lists = ivf.invlists
    parts = [faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
             for i in range(ivf.nlist) if lists.list_size(i)]
    return np.concatenate(parts).astype(np.int64)


class VectorIndex:
    """A FAISS index of L2-normalised vectors searched by inner product (= cosine)."""

    def __init__(self, root: Path, info: IndexInfo, index: faiss.Index, generation: int, nprobe: int = 32,
                 skim: faiss.Index | None = None):
        self.root, self.info, self.index, self.generation = root, info, index, generation
        if "IVF" in info.factory:
            ivf = faiss.extract_index_ivf(index)
            # never more lists than there are: FAISS's fast-scan search answers garbage then
            ivf.nprobe = min(nprobe, ivf.nlist)
        self._skim = self._trained = None
        self._use_skim(skim)

    @classmethod
    def open(cls, root: str | Path, model: str, dim: int, hop_s: float, nprobe: int = 32) -> "VectorIndex":
        """Load the published generation under ``root``, or start an empty exact index (the
        first rebuild after enough vectors trains a compressed one)."""
        root = Path(root)
        meta = published_meta(root)
        if meta is None:
            return cls(root, IndexInfo(model, dim, hop_s, "Flat"), new_index(dim, "Flat"), 0)
        info = IndexInfo.published(meta)
        if info.model != model or info.dim != dim or info.hop_s != hop_s:
            raise IndexMismatch(f"index at {root} holds vectors of model {info.model} ({info.dim}-d, every "
                                f"{info.hop_s:g} s); the loaded model is {model} ({dim}-d, every {hop_s:g} s): "
                                "rebuild the index with `clearance index --rebuild`")
        folder = generation_folder(root, meta["generation"])
        index = faiss.read_index(str(folder / "vectors.faiss"))
        skim = faiss.read_index(str(folder / "skim.faiss")) if (folder / "skim.faiss").exists() else None
        return cls(root, info, index, meta["generation"], nprobe, skim)

    @classmethod
    def trained(cls, root: str | Path, model: str, dim: int, hop_s: float, factory: str, sample: np.ndarray,
                nprobe: int = 32) -> "VectorIndex":
        """An empty index of ``factory`` trained on ``sample`` ((n, dim) float32), to be filled
        and saved as the generation after the published one."""
        index = new_index(dim, factory)
        if not index.is_trained:
            index.train(np.ascontiguousarray(sample, np.float32))
        meta = published_meta(Path(root))
        return cls(Path(root), IndexInfo(model, dim, hop_s, factory), index, meta["generation"] if meta else 0, nprobe)

    @property
    def size(self) -> int:
        return self.index.ntotal

    @property
    def bytes(self) -> int:
        """Size of the index as written to disk (≈ its memory), bytes."""
        return int(faiss.serialize_index(self.index).size)

    def add(self, track: int, vectors: np.ndarray, windows: np.ndarray) -> None:
        """Add a track's vectors ((n, dim) float32); ``windows`` are their window numbers
        (start = window × hop)."""
        if len(vectors):
            self.add_ids(vector_ids(track, windows), vectors)

    def add_ids(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self._use_skim(None)        # it would miss them; the next save() makes another
        self.index.add_with_ids(np.ascontiguousarray(vectors, np.float32), np.ascontiguousarray(ids, np.int64))

    def remove(self, tracks: list[int]) -> int:
        """Remove every vector of ``tracks``; returns how many were removed."""
        if not tracks or not self.size:
            return 0
        ids = index_ids(self.index)
        gone = ids[np.isin(split_ids(ids)[0], np.asarray(tracks, np.int64))]
        if not len(gone):
            return 0
        self._use_skim(None)        # its rows would name the wrong vectors
        return int(self.index.remove_ids(faiss.IDSelectorBatch(gone)))

    def ids(self) -> np.ndarray:
        """Every vector's id, in no order."""
        return index_ids(self.index)

    def without(self, tracks: list[int]) -> "VectorIndex":
        """A copy of this index in memory without the vectors of ``tracks``: a shard of it
        (``index/sharded.py``), which finds among its vectors what this index finds. Its skim is
        this one's without them (the same lists, probed alike), naming this index's rows."""
        if self.info.factory == "Flat":          # the kept rows copied, in order: no room left for the others
            ids = self._row_ids()
            gone = np.isin(split_ids(ids)[0], np.asarray(tracks, np.int64))
            part = VectorIndex(self.root, self.info, new_index(self.info.dim, "Flat"), self.generation)
            part.add_ids(ids[~gone], flat_vectors(self.index)[~gone])
        else:
            part = VectorIndex(self.root, self.info, faiss.clone_index(self.index), self.generation)
            if "IVF" in self.info.factory:
                faiss.extract_index_ivf(part.index).nprobe = faiss.extract_index_ivf(self.index).nprobe
            part.remove(tracks)
        if self._skim is not None:
            skim = faiss.clone_index(self._skim)
            skim.remove_ids(faiss.IDSelectorBatch(np.flatnonzero(gone).astype(np.int64)))
            part._use_skim(skim)
            part._skim_rows = np.flatnonzero(~gone) if self._skim_rows is None else self._skim_rows[~gone]
        return part

    def as_saved(self, folder: Path) -> "VectorIndex":
        """This index as ``save`` is writing it into ``folder`` (the next generation), with the skim
        written there: a shallow copy, the same FAISS index."""
        saved = copy.copy(self)
        skim = folder / "skim.faiss"
        saved._use_skim(faiss.read_index(str(skim)) if skim.exists() else None)
        saved.generation = self.generation + 1
        return saved

    def save_part(self, folder: Path) -> None:
        """Write this shard of an index (``without``) into ``folder``: its vectors, its skim and the
        rows of the whole index that the skim names (``open_part`` reads them)."""
        faiss.write_index(self.index, str(folder / "vectors.faiss"))
        if self._skim is not None:
            faiss.write_index(self._skim, str(folder / "skim.faiss"))
            np.save(folder / "skim-rows.npy", self._skim_rows)

    @classmethod
    def open_part(cls, folder: Path, root: Path, info: IndexInfo, generation: int, nprobe: int = 32) -> "VectorIndex":
        """The shard ``save_part`` wrote into ``folder``, of generation ``generation`` of the index
        at ``root``."""
        skim = folder / "skim.faiss"
        part = cls(root, info, faiss.read_index(str(folder / "vectors.faiss")), generation, nprobe,
                   faiss.read_index(str(skim)) if skim.exists() else None)
        if skim.exists():
            part._skim_rows = np.load(folder / "skim-rows.npy")
        return part

    def tracks(self) -> dict[int, int]:
        """Vector count per track key."""
        keys, counts = np.unique(split_ids(index_ids(self.index))[0], return_counts=True)
        return dict(zip(keys.tolist(), counts.tolist()))

    def search(self, queries: np.ndarray, k: int, exact: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, ids), each (n, k), nearest first; ids are -1 where fewer than k vectors
        exist. ``exact=False`` searches the skim where the index has one (see the module's
        docstring): the same neighbours but for about one in a hundred, in a seventh of the time.
        ``nearest`` of ``candidates``: what the shards of this index find, merged, is what it finds."""
        return nearest([self.candidates(queries, k, exact)], min(k, self.size), exact or not self.skimmed)

    def candidates(self, queries: np.ndarray, k: int, exact: bool = True) -> Candidates:
        """What ``search`` chooses each query's ``k`` nearest from: an exact index's
        ``k + TIE_MARGIN`` nearest by FAISS, or its skim's ``SKIM_CANDIDATES × k + TIE_MARGIN``
        nearest by code, each rescored one by one (a vector's similarity to a query, and so the
        neighbours, do not depend on what else the index holds: FAISS's matrix products round
        each by its block); a compressed index's ``k + TIE_MARGIN`` nearest by code (equally
        near ones are many: ``nearest`` orders them by id)."""
        if self.size == 0 or len(queries) == 0:
            empty = np.zeros((len(queries), 0), np.float32)
            return Candidates(empty, empty, empty.astype(np.int64))
        queries = np.ascontiguousarray(queries, np.float32)
        k = min(k, self.size)
        if self.info.factory != "Flat":
            sims, ids = self.index.search(queries, min(k + TIE_MARGIN, self.size))
            return Candidates(sims, sims, ids)
        if exact or self._skim is None:
            coded, rows = faiss.downcast_index(self.index).index.search(queries, min(k + TIE_MARGIN, self.size))
        else:
            coded, rows = self._skim.search(queries, SKIM_CANDIDATES * k + TIE_MARGIN)
            if self._skim_rows is not None:          # a shard's skim names the whole index's rows
                rows = np.where(rows >= 0, np.searchsorted(self._skim_rows, np.maximum(rows, 0)), -1)
        return Candidates(coded, *self._rescored(queries, rows))

    def _rescored(self, queries: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(exact similarities, ids) of the vectors of ``rows`` (-1: none, similarity -1)."""
        vectors = flat_vectors(self.index)
        sims = np.empty(rows.shape, np.float32)
        for a in range(0, len(queries), RESCORE_BLOCK):
            r = rows[a:a + RESCORE_BLOCK]
            sims[a:a + RESCORE_BLOCK] = np.einsum("qd,qkd->qk", queries[a:a + RESCORE_BLOCK], vectors[np.maximum(r, 0)])
        sims[rows < 0] = -1.0
        return sims, np.where(rows >= 0, self._row_ids()[np.maximum(rows, 0)], -1)

    def _row_ids(self) -> np.ndarray:
        """The id of each row of an exact index, in row order (kept until its vectors change)."""
        if self._rows is None:
            self._rows = faiss.vector_to_array(faiss.downcast_index(self.index).id_map)
        return self._rows

    def _use_skim(self, skim: faiss.Index | None) -> None:
        """Search ``skim`` (made by ``make_skim`` from this index as it is now) for inexact searches;
        None: search exactly. The last skim's training is kept for the next (``make_skim``)."""
        self._skim, self._rows, self._skim_rows = skim, None, None   # rows change with the vectors
        if skim is not None:
            self._trained = skim
            ivf = faiss.extract_index_ivf(skim)
            ivf.nprobe = max(1, ivf.nlist // SKIM_PROBE)

    @property
    def skimmed(self) -> bool:
        """Whether inexact searches search a skim."""
        return self._skim is not None

    @property
    def folder(self) -> Path | None:
        """The published generation's folder, where the other layers' indexes lie beside the
        vectors (``save``'s ``beside``); None before the first publish."""
        return generation_folder(self.root, self.generation) if self.generation else None

    def save(self, beside: Callable[[Path], None] | None = None) -> None:
        """Publish the in-memory index as a new generation, atomically; ``beside(folder)`` writes
        the other layers' indexes of the same tracks into the new generation's folder first."""
        self.root.mkdir(parents=True, exist_ok=True)
        gen = self.generation + 1
        name = generation_folder(self.root, gen).name
        tmp = self.root / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        faiss.write_index(self.index, str(tmp / "vectors.faiss"))
        skim = make_skim(self.index, self.info, self._trained)
        if skim is not None:
            faiss.write_index(skim, str(tmp / "skim.faiss"))
        meta = {"format": FORMAT, "generation": gen, "model": self.info.model, "dim": self.info.dim,
                "hop_s": self.info.hop_s, "factory": self.info.factory, "recall": self.info.recall,
                "vectors": self.size}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        if beside is not None:
            beside(tmp)
        fsync_tree(tmp)
        if (self.root / name).exists():     # left by a writer killed between this rename and the pointer's:
            shutil.rmtree(self.root / name)  # never published, so no reader has it open
        os.replace(tmp, self.root / name)
        publish_pointer(self.root / "CURRENT", name)
        # the previous generation stays for readers that read CURRENT just before the swap
        keep = {name, generation_folder(self.root, self.generation).name}
        self.generation = gen
        self._use_skim(skim)
        for old in self.root.glob("gen-*"):
            if old.name not in keep:
                shutil.rmtree(old, ignore_errors=True)

    def set_recall(self, recall: float) -> None:
        """Record the recall measured for this index (``measure_recall``); saved with it."""
        self.info = IndexInfo(self.info.model, self.info.dim, self.info.hop_s, self.info.factory, recall)


def generation_folder(root: Path, generation: int) -> Path:
    """Where generation ``generation`` of the index at ``root`` lies, with every layer's index."""
    return Path(root) / f"gen-{generation:06d}"


class Candidates(NamedTuple):
    """A search's candidate neighbours, (n queries, m) each: their similarity as the index's codes
    measure it (``coded``: exact for an exact index), their exact one (``sims``; the coded one
    where the index holds no vectors) and ``ids`` (-1: none)."""

    coded: np.ndarray
    sims: np.ndarray
    ids: np.ndarray


def nearest(found: list[Candidates], k: int, exact: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Each query's ``k`` nearest (similarities, ids) among the ``candidates`` of an index, or of
    each of its shards: in a skim's (not ``exact``) its ``SKIM_CANDIDATES × k`` nearest by code
    first, as the whole index's skim would have them; the lower id first where equal."""
    coded, sims, ids = (np.concatenate([getattr(f, name) for f in found], 1) for name in Candidates._fields)
    if not exact:
        first = np.lexsort((ids, -coded))[:, :SKIM_CANDIDATES * k]
        sims, ids = np.take_along_axis(sims, first, 1), np.take_along_axis(ids, first, 1)
    best = np.lexsort((ids, -sims))[:, :k]
    return np.take_along_axis(sims, best, 1), np.take_along_axis(ids, best, 1)


def flat_vectors(index: faiss.Index) -> np.ndarray:
    """(ntotal, d) float32: the vectors of an exact ``IDMap2,Flat`` index in row order, a view of
    FAISS's memory (valid until the index changes)."""
    flat = faiss.downcast_index(faiss.downcast_index(index).index)
    return faiss.rev_swig_ptr(flat.get_xb(), index.ntotal * index.d).reshape(index.ntotal, index.d)


def make_skim(index: faiss.Index, info: IndexInfo, trained: faiss.Index | None = None,
              seed: int = 0) -> faiss.Index | None:
    """The skim of an exact ``index`` (``SKIM``: its ids are the rows of the exact index's
    vectors), or None for compressed indexes and those under ``SKIM_MIN_VECTORS``. It takes the
    lists and codebooks of ``trained`` (an earlier skim) where they have as many lists as its size
    wants, so a publish that adds or removes a few tracks only encodes the vectors again (253,042
    in 0.9 s; training took 2.5 s more); the lists double, and are trained anew, as the catalog
    grows fourfold."""
    n = index.ntotal
    if info.factory != "Flat" or n < SKIM_MIN_VECTORS or info.dim % 2:
        return None
    vectors = flat_vectors(index)
    nlist = 2 ** round(math.log2(2 * math.sqrt(n)))
    if trained is not None and faiss.extract_index_ivf(trained).nlist == nlist:
        skim = faiss.clone_index(trained)
        skim.reset()
    else:
        skim = faiss.index_factory(info.dim, SKIM.format(nlist=nlist, m=info.dim // 2), faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(seed).choice(n, min(n, SKIM_TRAINING_PER_LIST * nlist), replace=False)
        skim.train(np.ascontiguousarray(vectors[np.sort(sample)]))
    skim.add(vectors)
    return skim


COPY_COSINE = 0.85   # how similar a copy's window stays to its reference window (codec + noise)


def measure_recall(index: VectorIndex, sample: np.ndarray, chunks: Iterable, queries: int = 1000,
                   seed: int = 0) -> float:
    """Recall@1 of ``index`` against exact search: the share of queries whose top hit in
    ``index`` is their exact nearest neighbour among all vectors. Queries are ``queries`` rows of
    ``sample`` ((n, dim) float32, drawn from the indexed vectors) with noise added down to
    ``COPY_COSINE``, as a copy's windows are; ``chunks`` yields every indexed vector once, as
    objects with ``ids`` (n,) and ``vectors`` (n, dim)."""
    rng = np.random.default_rng(seed)
    q = sample[rng.choice(len(sample), min(queries, len(sample)), replace=False)]
    noise = rng.standard_normal(q.shape).astype(np.float32)
    noise *= math.sqrt(1 / COPY_COSINE ** 2 - 1) / np.linalg.norm(noise, axis=1, keepdims=True)
    q = q + noise
    q = np.ascontiguousarray(q / np.linalg.norm(q, axis=1, keepdims=True), np.float32)
    best = np.full(len(q), -np.inf, np.float32)
    exact = np.full(len(q), -1, np.int64)
    for chunk in chunks:
        sims, rows = faiss.knn(q, np.ascontiguousarray(chunk.vectors, np.float32), 1, metric=faiss.METRIC_INNER_PRODUCT)
        better = sims[:, 0] > best
        best[better], exact[better] = sims[better, 0], chunk.ids[rows[better, 0]]
    _, found = index.search(q, 1)
    return float(np.mean(found[:, 0] == exact))


def published_meta(root: Path) -> dict | None:
    """``meta.json`` of the published generation under ``root``, or None when there is none."""
    current = root / "CURRENT"
    if not current.exists():
        return None
    meta = json.loads((root / current.read_text().strip() / "meta.json").read_text())
    if meta.get("format") not in READABLE:
        raise IndexMismatch(f"index at {root} has format {meta.get('format')}; this version reads "
                            f"{', '.join(map(str, sorted(READABLE)))}")
    return meta


def publish_pointer(pointer: Path, target: str) -> None:
    """Make ``pointer`` name ``target``: write beside, fsync, ``os.replace``."""
    tmp = pointer.with_name(f".{pointer.name}.tmp")
    with open(tmp, "w") as f:
        f.write(target + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, pointer)
    fsync_dir(pointer.parent)


def fsync_tree(folder: Path) -> None:
    """fsync every file in ``folder`` and in the folders under it, then each folder itself."""
    for f in folder.iterdir():
        if f.is_dir():
            fsync_tree(f)
            continue
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    fsync_dir(folder)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
