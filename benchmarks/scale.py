"""How the vector index scales: synthetic catalogs of 10⁶ and 10⁷ reference windows, with the
projection to 10⁸.

    python -m benchmarks.scale [--sizes 1e6 1e7] [--factories Flat auto "IVF{nlist},PQ32" …]
                               [--queries 2000] [--nprobe 32]

Synthetic vectors follow the statistics of real embeddings of the corpus (mean, covariance and
the correlation of consecutive windows, fitted on 40 tracks of the ``full`` corpus with the
shipped model at its reference hop), grouped in tracks of 4 min (960 windows at the shipped model's
0.25 s). Queries
are windows of random catalog tracks with noise added down to cosine 0.85 with their source
(``index.vectors.COPY_COSINE``; real MP3-32k + 10 dB noise copies keep about 0.96, so this is
the harder case).

For each index it prints: build time (training and adding), its size in memory (= its file),
bytes per vector (ids included), MB of index per hour of audio (14,400 windows at the 0.25 s hop), search
latency per query window and per 30 s
output (117 windows at the 0.25 s query hop, k = 8, one FAISS thread, measured as the CPU
time of the searching thread: the latency on an idle core), and recall
against exact search: ``recall@1`` (same top id), ``track@1`` (top hit on the same track as the
exact top hit: what the matcher votes on) and ``src@8`` (the query's source track among the 8
hits). The 10⁸ rows project the largest measured size: bytes × size; latency × √size for IVF
indexes (lists grow as √n, so the codes scanned per query do too), × size for exact search.

    python -m benchmarks.scale --layers [--hours 30 100 200] [--queries 20] [--layer chromaprint --layer version]

measures the landmark, Chromaprint and version indexes instead (or those ``--layer`` names: a
landmark index of more than a few hundred hours does not fit this machine's memory to be built),
on synthetic catalogs of that many hours in tracks of up to 4 min, each drawn from a real track
of the ``full`` corpus as indexed by ``benchmarks.load`` (its stored peaks, sub-fingerprints,
version vectors and pitch-class power): the landmark peaks of a random 4 min of it moved by a
random number of bins (up to ±12: the same spacing of peaks in time and frequency, other
hashes), its sub-fingerprints XORed with a random 32-bit mask (the same changes from one to the
next, other values), its version vectors' dimensions permuted and their signs flipped as the
mask draws (as near to one another as before, far from every other track's), its pitch-class
power as it is. Each index is built as a publish builds it (the version index's arrays filled
in place: its vectors are not computed again), saved, and opened as a server opens it
(memory-mapped); per size it prints its bytes on disk and per hour, the seconds to open it,
and for ``--queries`` copies (30 s of the real audio a synthetic track was drawn from, changed
alike) the catalog entries a search reads (landmark pairs of hashes not too common to count;
Chromaprint values; version vectors scored: every one, or those of the lists probed), its
milliseconds (median CPU time of the searching thread) and how many of the copies it finds.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from index.vectors import COPY_COSINE, auto_factory, index_ids, min_training_vectors, new_index, split_ids, vector_ids

OUT = Path(__file__).resolve().parent / "out"
TRACK_S = 240.0                      # a synthetic track's length
TRACKS_PER_CHUNK = 100               # tracks generated per seed
QUERY_WINDOWS = 117                  # 30 s output at the 0.25 s query hop
K = 8


@dataclass(frozen=True)
class Stats:
    """Fitted statistics of real embeddings of model ``version`` at its reference hop ``hop_s``:
    ``mean`` (dim,), ``chol`` (dim, dim) Cholesky factor of the covariance, ``rho`` lag-1
    correlation in whitened space, ``copy_cos`` mean cosine of a copied window to its reference
    window."""

    version: str
    hop_s: float
    mean: np.ndarray
    chol: np.ndarray
    rho: float
    copy_cos: float

    @property
    def track_windows(self) -> int:
        return round(TRACK_S / self.hop_s)

    @property
    def chunk(self) -> int:
        """Vectors generated per seed."""
        return TRACKS_PER_CHUNK * self.track_windows

    @property
    def windows_per_hour(self) -> float:
        return 3600 / self.hop_s


def real_stats(n_tracks: int = 40) -> Stats:
    """Fit (once per model; cached in benchmarks/out/) the statistics of the shipped model's
    real embeddings at its reference hop."""
    from detector.model import Embedder

    emb = Embedder.load()
    hop = emb.ref_hop_s
    cache = OUT / f"embedding-stats-{emb.version}.npz"
    if cache.exists():
        z = np.load(cache)
        return Stats(emb.version, hop, z["mean"], z["chol"], float(z["rho"]), float(z["copy_cos"]))
    from benchmarks import corpus as C
    from detector.audio import Clip

    tracks = C.manifest(C.music_folder("full"))[::7][:n_tracks]
    rng = np.random.default_rng(0)
    vecs, lag_a, lag_b, copy = [], [], [], []
    for t in tracks:
        clip = C.load(t)
        e = emb.embed(clip, hop_s=hop)
        v = e.vectors[e.voiced]
        vecs.append(v)
        pairs = e.voiced[:-1] & e.voiced[1:]
        lag_a.append(e.vectors[:-1][pairs])
        lag_b.append(e.vectors[1:][pairs])
        s = C.loud_start(clip, 10.0, rng)
        if s is not None:
            x = C.noise(C.codec(clip.excerpt(s, s + 10).samples, "mp3", 32), 10, rng)
            q = emb.embed(Clip(x[: 10 * C.SR], C.SR, "copy"), hop_s=hop).vectors
            r = emb.embed(clip.excerpt(s, s + 10), hop_s=hop).vectors
            n = min(len(q), len(r))
            copy.append(np.sum(q[:n] * r[:n], 1))
    v = np.concatenate(vecs)
    mean = v.mean(0)
    cov = np.cov(v - mean, rowvar=False) + 1e-6 * np.eye(v.shape[1])
    chol = np.linalg.cholesky(cov)
    white = lambda x: np.linalg.solve(chol, (x - mean).T).T          # noqa: E731
    a, b = white(np.concatenate(lag_a)), white(np.concatenate(lag_b))
    rho = float(np.mean(np.sum(a * b, 1)) / np.mean(np.sum(a * a, 1)))
    stats = Stats(emb.version, hop, mean.astype(np.float32), chol.astype(np.float32), rho,
                  float(np.mean(np.concatenate(copy))))
    OUT.mkdir(exist_ok=True)
    np.savez(cache, mean=stats.mean, chol=stats.chol, rho=stats.rho, copy_cos=stats.copy_cos)
    return stats


def chunk(stats: Stats, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of chunk ``seed``: ``TRACKS_PER_CHUNK`` synthetic tracks of
    ``stats.track_windows`` windows, ids laid out as the catalog does (``vector_ids``),
    vectors (``stats.chunk``, dim) float32 unit."""
    rng = np.random.default_rng(seed)
    dim, n, w = len(stats.mean), TRACKS_PER_CHUNK, stats.track_windows
    z = np.empty((n, w, dim), np.float32)
    z[:, 0] = rng.standard_normal((n, dim))
    innov = math.sqrt(1 - stats.rho ** 2)
    for i in range(1, w):
        z[:, i] = stats.rho * z[:, i - 1] + innov * rng.standard_normal((n, dim))
    x = z.reshape(-1, dim) @ stats.chol.T + stats.mean
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    tracks = seed * n + np.repeat(np.arange(n), w)
    ids = vector_ids(tracks, np.tile(np.arange(w), n))
    return ids, x.astype(np.float32)


def queries(stats: Stats, n_chunks: int, n: int, cos: float) -> tuple[np.ndarray, np.ndarray]:
    """(source ids, query vectors): windows of random catalog tracks, noised to cosine ``cos``
    with their source."""
    rng = np.random.default_rng(12345)
    seeds = np.sort(rng.integers(0, n_chunks, n))
    src, out = [], []
    for s in np.unique(seeds):
        ids, x = chunk(stats, int(s))
        pick = rng.integers(0, len(ids), int(np.sum(seeds == s)))
        src.append(ids[pick])
        out.append(x[pick])
    src, q = np.concatenate(src), np.concatenate(out)
    # noise of norm σ orthogonal-ish to q gives cos ≈ 1/√(1+σ²)
    sigma = math.sqrt(1 / cos ** 2 - 1)
    noise = rng.standard_normal(q.shape).astype(np.float32)
    noise *= sigma / np.linalg.norm(noise, axis=1, keepdims=True)
    q = q + noise
    return src, (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def exact_top(stats: Stats, n_chunks: int, q: np.ndarray) -> np.ndarray:
    """(n,) ids of the exact top-1 inner-product neighbours, streamed over the chunks
    (cached per size in benchmarks/out/)."""
    cache = OUT / f"exact-top1-{stats.version}-{n_chunks}-{len(q)}-{COPY_COSINE}.npy"
    if cache.exists():
        return np.load(cache)
    best_s = np.full(len(q), -np.inf, np.float32)
    best_i = np.full(len(q), -1, np.int64)
    for s in range(n_chunks):
        ids, x = chunk(stats, s)
        d, i = faiss.knn(q, x, 1, metric=faiss.METRIC_INNER_PRODUCT)
        better = d[:, 0] > best_s
        best_s[better], best_i[better] = d[better, 0], ids[i[better, 0]]
    np.save(cache, best_i)
    return best_i


def build(stats: Stats, factory: str, n_chunks: int) -> tuple[faiss.Index, float]:
    """The index of ``factory`` over ``n_chunks`` chunks, and the seconds spent training and
    adding (making the synthetic vectors not counted)."""
    index = new_index(len(stats.mean), factory)
    spent = 0.0
    if not index.is_trained:
        # as a rebuild does: a uniform sample of 4× the vectors the factory needs
        want = 4 * min_training_vectors(factory)
        rng = np.random.default_rng(1)
        train = np.concatenate([x[rng.random(len(x)) < want / (n_chunks * stats.chunk)]
                                for x in (chunk(stats, s)[1] for s in range(n_chunks))])
        t0 = time.perf_counter()
        index.train(train)
        spent += time.perf_counter() - t0
    for s in range(n_chunks):
        ids, x = chunk(stats, s)
        t0 = time.perf_counter()
        index.add_with_ids(x, ids)
        spent += time.perf_counter() - t0
    return index, spent


def measure(index: faiss.Index, src: np.ndarray, q: np.ndarray, exact: np.ndarray, nprobe: int) -> dict:
    if hasattr(faiss, "extract_index_ivf") and _is_ivf(index):
        faiss.extract_index_ivf(index).nprobe = nprobe
    batches = [q[i:i + QUERY_WINDOWS] for i in range(0, len(q) - QUERY_WINDOWS + 1, QUERY_WINDOWS)]
    index.search(batches[0], K)                                     # warm caches
    times, found = [], []
    for b in batches:
        # CPU time of this thread (FAISS runs in it with one thread): the latency on an idle
        # core, whatever else the machine is doing
        t = time.thread_time()
        _, ids = index.search(b, K)
        times.append(time.thread_time() - t)
        found.append(ids)
    ids = np.concatenate(found)
    n = len(ids)
    per_output = float(np.median(times))
    return {
        "ms_per_window": 1000 * per_output / QUERY_WINDOWS,
        "ms_per_30s": 1000 * per_output,
        "recall@1": float(np.mean(ids[:, 0] == exact[:n])),
        "track@1": float(np.mean(split_ids(ids[:, 0])[0] == split_ids(exact[:n])[0])),
        "src@8": float(np.mean(np.any(split_ids(ids)[0] == split_ids(src[:n, None])[0], 1))),
    }


def _is_ivf(index: faiss.Index) -> bool:
    try:
        faiss.extract_index_ivf(index)
        return True
    except RuntimeError:
        return False


LAYERS = ("landmarks", "chromaprint", "version")  # the indexes ``--layers`` measures
SHIFT_BINS = 12                      # a synthetic track's landmark peaks move by up to this many bins
QUERY_S = 30.0


@dataclass(frozen=True)
class Drawn:
    """A synthetic track: ``seconds`` of the real track ``source`` from ``start_s``, its peaks
    moved by ``shift`` bins, its sub-fingerprints XORed with ``mask``."""

    source: int
    start_s: float
    seconds: float
    shift: int
    mask: int


def moved(peaks: np.ndarray, start_s: float, seconds: float, shift: int) -> np.ndarray:
    """``peaks`` (``landmarks.peaks``' order) from ``start_s`` for ``seconds``, from time 0,
    ``shift`` bins higher (those moved out of the band dropped)."""
    from detector import landmarks

    t = (peaks >> 8).astype(np.int64) - round(start_s / landmarks.FRAME_S)
    f = (peaks & 0xFF).astype(np.int64) + shift
    keep = (t >= 0) & (t < seconds / landmarks.FRAME_S) & (f >= 0) & (f < landmarks.BINS[1] - landmarks.BINS[0])
    return ((t[keep] << 8) | f[keep]).astype(np.uint32)


def masked(prints: np.ndarray, start_s: float, seconds: float, mask: int) -> np.ndarray:
    """``prints`` (sub-fingerprints) from ``start_s`` for ``seconds``, XORed with ``mask``."""
    from detector.chromaprint import ITEM_S

    first = round(start_s / ITEM_S)
    return prints[first:first + round(seconds / ITEM_S)] ^ np.uint32(mask)


def layer_rows(hours: list[float], n_queries: int, which: tuple[str, ...] = LAYERS) -> None:
    """The landmark, Chromaprint and version indexes (those named in ``which``) of synthetic
    catalogs of ``hours`` (module docstring)."""
    import tempfile

    import torch

    from benchmarks import corpus as C
    from benchmarks.load import full_catalog
    from detector import chromaprint, landmarks, version, version_model

    catalog = full_catalog().catalog
    store = catalog.store
    real = {t.id: t for t in store.list_tracks()}
    peaks, prints = store.landmarks(), store.chromaprints()
    versions = catalog.searcher.index("version")
    sources = [t for t in real.values() if t.id in peaks and t.id in prints and t.id in versions.ids]
    by_id = {t.track_id: t for t in C.manifest(C.music_folder("full"))}
    print(f"synthetic tracks of up to {TRACK_S / 60:g} min drawn from the {len(sources)} tracks "
          f"({sum(t.duration_s for t in sources) / 3600:.1f} h) of the full corpus: landmark peaks moved by up to "
          f"±{SHIFT_BINS} bins, sub-fingerprints masked, version vectors' dimensions permuted and signed; "
          f"{n_queries} copies of {QUERY_S:g} s searched per size, on one thread")
    head = (f"{'layer':<12} {'hours':>6} {'tracks':>7} {'disk MB':>8} {'MB/h':>6} {'open s':>6} "
            f"{'read/30s':>10} {'ms/30s':>7} {'found':>6}")
    print(head)
    print("-" * len(head))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    for h in hours:
        rng = np.random.default_rng(round(h))
        drawn, shifts, total = [], 2 * SHIFT_BINS + 1, 0.0
        # each (source, shift) once while there are enough: the same passage moved alike twice is a
        # catalog holding one recording twice
        for pick in itertools.cycle(rng.permutation(len(sources) * shifts)):
            if total >= h * 3600:
                break
            t = sources[pick // shifts]
            seconds = min(TRACK_S, t.duration_s)
            total += seconds
            drawn.append(Drawn(t.id, float(rng.uniform(0, t.duration_s - seconds)), seconds,
                               int(pick % shifts) - SHIFT_BINS, int(rng.integers(1, 1 << 32))))
        copies = []
        for k in rng.choice(len(drawn), min(n_queries, len(drawn)), replace=False):
            d = drawn[k]
            into = float(rng.uniform(0, max(0.0, d.seconds - QUERY_S)))
            clip = C.load(by_id[real[d.source].external_id]).excerpt(d.start_s + into, d.start_s + into + QUERY_S)
            asked = None                  # the version index's question: the output's classes, windows, vectors
            if "version" in which:
                classes = version_model.VersionModel.classes(clip.samples)
                starts, vectors = version_model.shipped()[0].vectors(classes, version.QUERY_HOP_S)
                asked = (classes, starts, _signed(vectors, d.mask))
            copies.append((int(k), moved(landmarks.peaks(clip, landmarks.QUERY), 0.0, QUERY_S, d.shift),
                           chromaprint.fingerprint(clip) ^ np.uint32(d.mask), asked))
        layers = (
            ("landmarks", landmarks.LandmarkIndex,
             lambda: landmarks.LandmarkIndex(
                 {k: moved(peaks[d.source], d.start_s, d.seconds, d.shift) for k, d in enumerate(drawn)}),
             lambda index, c: index.search(c[1]), _landmark_reads),
            ("chromaprint", chromaprint.ChromaIndex,
             lambda: chromaprint.ChromaIndex(
                 {k: masked(prints[d.source], d.start_s, d.seconds, d.mask) for k, d in enumerate(drawn)}),
             lambda index, c: index.search(c[2]), lambda index, c: int(index.counts(c[2]).sum())),
            ("version", version.VersionIndex, lambda: synthetic_versions(versions, drawn),
             lambda index, c: version.best([index.ranked(*c[3])]),
             lambda index, c: len(index) if index.lists is None else len(index.lists.probed(c[3][2]))))
        for name, kind, build, search, reads in layers:
            if name not in which:
                continue
            with tempfile.TemporaryDirectory(dir=OUT) as folder:
                build().save(Path(folder))
                disk = sum(f.stat().st_size for f in Path(folder).iterdir())
                t0 = time.perf_counter()
                index = kind.open(Path(folder))
                open_s = time.perf_counter() - t0
                ms, found = [], 0
                for c in copies:
                    t0 = time.thread_time()
                    got = search(index, c)
                    ms.append((time.thread_time() - t0) * 1e3)
                    found += bool(got) and got[0].track == c[0]
                read = np.mean([reads(index, c) for c in copies])
                print(f"{name:<12} {h:>6g} {len(drawn):>7} {disk / 1e6:>8.0f} {disk / 1e6 / h:>6.2f} {open_s:>6.2f} "
                      f"{read:>10.3g} {np.median(ms):>7.0f} {found:>3}/{len(copies)}", flush=True)
                del index
    torch.set_num_threads(threads)


def _signed(vectors: np.ndarray, seed: int) -> np.ndarray:
    """``vectors`` (n, dim) with their dimensions permuted and signs flipped as ``seed`` draws:
    as near to each other as before, as far from every other track's."""
    rng = np.random.default_rng(seed)
    dim = vectors.shape[1]
    return vectors[:, rng.permutation(dim)] * rng.choice(np.array([-1, 1], vectors.dtype), dim)


def synthetic_versions(real, drawn: list[Drawn]):
    """A version index of the ``drawn`` tracks (keys 0, 1, …), each the vectors and pitch-class
    power of its source in ``real`` (the full corpus's version index) over its seconds, the vectors
    ``_signed`` by its mask; filled in place (10,000 h: 13 GB)."""
    from detector import version

    rank = {int(k): r for r, k in enumerate(real.ids)}
    spans = []
    for d in drawn:
        r = rank[d.source]
        v0 = real.vector_starts[r] + int(d.start_s / version.INDEX_HOP_S)
        v1 = min(real.vector_starts[r + 1], v0 + int(d.seconds / version.INDEX_HOP_S))
        f0 = real.frame_starts[r] + int(d.start_s * version.CHROMA_FPS)
        f1 = min(real.frame_starts[r + 1], f0 + int(d.seconds * version.CHROMA_FPS))
        spans.append((v0, v1, f0, f1))
    starts = lambda n: np.concatenate([[0], np.cumsum(n)]).astype(np.int64)
    vector_starts, frame_starts = starts([v1 - v0 for v0, v1, _, _ in spans]), starts([f1 - f0 for _, _, f0, f1 in spans])
    vectors = np.empty((vector_starts[-1], real.vectors.shape[1]), np.float16)
    classes = np.empty((12, frame_starts[-1]), np.float16)
    for k, (d, (v0, v1, f0, f1)) in enumerate(zip(drawn, spans)):
        vectors[vector_starts[k]:vector_starts[k + 1]] = _signed(real.vectors[v0:v1], d.mask)
        classes[:, frame_starts[k]:frame_starts[k + 1]] = real.classes[:, f0:f1]
    index = version.VersionIndex.__new__(version.VersionIndex)
    index._use(np.arange(len(drawn), dtype=np.int64), vector_starts, vectors, frame_starts, classes, real.weights)
    return index


def _landmark_reads(index, copy: tuple) -> int:
    """The catalog pairs a landmark search of ``copy`` reads: its hashes' pairs, but those of
    hashes too common to count (``landmarks.COMMON``)."""
    from detector import landmarks

    h, _ = landmarks.hashes(copy[1], landmarks.QUERY.fan_out)
    counts = index.starts[h + 1] - index.starts[h]
    return int(counts[counts <= landmarks.COMMON].sum())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", type=float, default=[1e6, 1e7])
    ap.add_argument("--factories", nargs="+", default=["Flat", "auto", "IVF{nlist},PQ32", "IVF{nlist},PQ32x4fsr"])
    ap.add_argument("--queries", type=int, help="query windows (default 2000); with --layers, 30 s copies (default 20)")
    ap.add_argument("--nprobe", type=int, default=32)
    ap.add_argument("--layers", action="store_true", help="measure the landmark, Chromaprint and version indexes instead")
    ap.add_argument("--hours", nargs="+", type=float, default=[30, 100, 200], help="with --layers: synthetic catalogs")
    ap.add_argument("--layer", choices=LAYERS, action="append",
                    help="with --layers: measure this index only (again for another; default: all three)")
    args = ap.parse_args(argv)
    if args.layers:
        OUT.mkdir(exist_ok=True)
        layer_rows(args.hours, args.queries or 20, args.layer or LAYERS)
        return
    args.queries = args.queries or 2000
    stats = real_stats()
    print(f"synthetic vectors: {len(stats.mean)}-d, one per {stats.hop_s:g} s ({stats.version}'s reference hop), "
          f"lag-1 correlation {stats.rho:.3f} (fitted on real embeddings); "
          f"queries at cosine {COPY_COSINE} to their source (real MP3-32k + 10 dB noise copies: {stats.copy_cos:.3f}); "
          f"search on one thread, k={K}, nprobe={args.nprobe}")
    head = (f"{'vectors':>9} {'factory':<30} {'build s':>8} {'RAM GB':>6} {'B/vec':>6} {'MB/h':>6} "
            f"{'ms/win':>7} {'ms/30s':>7} {'rec@1':>6} {'trk@1':>6} {'src@8':>6}")
    print(head)
    print("-" * len(head))
    rows = []
    for size in args.sizes:
        n_chunks = max(1, round(size / stats.chunk))
        n = n_chunks * stats.chunk
        src, q = queries(stats, n_chunks, args.queries, COPY_COSINE)
        exact = exact_top(stats, n_chunks, q)
        for spec in args.factories:
            nlist = 4 ** round(math.log(math.sqrt(n), 4))
            factory = auto_factory(n) if spec == "auto" else spec.format(nlist=nlist)
            faiss.omp_set_num_threads(2)
            index, build_s = build(stats, factory, n_chunks)
            faiss.omp_set_num_threads(1)
            assert len(index_ids(index)) == n
            nbytes = faiss.serialize_index(index).size
            r = measure(index, src, q, exact, args.nprobe)
            row = {"vectors": n, "factory": factory, "label": spec, "build_s": build_s, "bytes_per_vector": nbytes / n,
                   "mb_per_hour": nbytes / n * stats.windows_per_hour / 1e6, "index_gb": nbytes / 1e9, **r}
            rows.append(row)
            print(_line(row, f"{n:>9.0e}"), flush=True)
            del index
    largest = max(r["vectors"] for r in rows)
    for r in rows:
        if r["vectors"] == largest:
            scale = 1e8 / largest
            grow = math.sqrt(scale) if "IVF" in r["factory"] else scale     # exact search scans everything
            proj = {**r, "build_s": float("nan"), "ms_per_window": r["ms_per_window"] * grow,
                    "ms_per_30s": r["ms_per_30s"] * grow, "index_gb": r["index_gb"] * scale}
            print(_line(proj, "1e8 proj."), flush=True)
    (OUT / "scale.json").write_text(json.dumps(rows, indent=1))


def _line(r: dict, size: str) -> str:
    return (f"{size:>9} {r['factory']:<30} {r['build_s']:>8.0f} {r['index_gb']:>6.2f} {r['bytes_per_vector']:>6.1f} "
            f"{r['mb_per_hour']:>6.3f} {r['ms_per_window']:>7.3f} {r['ms_per_30s']:>7.1f} "
            f"{r['recall@1']:>6.3f} {r['track@1']:>6.3f} {r['src@8']:>6.3f}")


if __name__ == "__main__":
    main()
