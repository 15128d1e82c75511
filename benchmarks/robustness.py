"""How well the fingerprint survives what generators do to a recording (held-out tracks only).

    python -m benchmarks.robustness [--per-transform 25] [--negatives 300] [--segments 200] [--model PATH]

Indexes every held-out ``catalog`` track of the full corpus, then prints:
  1. segment-level top-1 hit rate of 1/2/3/5/10 s queries under noise (0–10 dB) + reverb: at the
     place the query was cut from, and also counting a verbatim repeat of that passage, in the
     track or in a ``related`` one (game music loops: about one in five 5 s passages of the
     held-out catalog plays again in its track), and at any place in the right track, both by the
     check's matcher and by the sequence search of the neural fingerprinting papers;
  2. track-level identification per transform for 10 s and 30 s copies, at the zero-false-match
     threshold (the strongest evidence any of the negatives produced against an unrelated
     track): the embedding, Chromaprint and landmark layers side by side; all three together
     (a copy found by any layer above its own threshold: on the negatives none of them, and so
     none of the three together, made a false match); and the layers' matches merged as the
     check merges them, with one threshold on the combined false-match probability. Copies
     shorter than 10 s (``--durations 3 5``) are held to the negatives cut to their length;
  3. embedding throughput.
``--segments 0`` skips part 1, ``--per-transform 0`` part 2.
"""
from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchaudio.functional as AF

from benchmarks import corpus as C
from benchmarks.calibrate import NEGATIVE_S, WEIGHTS, negative_queries
from detector import chromaprint, landmarks
from detector.audio import Clip, decode
from detector.matcher import from_chromaprint, merge
from index.layers.embedding import QUERY_HOP_S
from index.layers.landmarks import at_tempo_one, landmark_matches
from index.vectors import index_ids, split_ids

REPEAT_CORR = 0.9   # waveform correlation of two passages of a track that are the same audio
SEQUENCE_NEIGHBOURS = 10   # nearest reference windows per query window in the sequence search


def evidence(catalog, x: np.ndarray, name: str):
    """Matches of a query by the embedding, Chromaprint and landmark layers, each a list of
    (external_id, strength, Match), and the three merged as the check merges them (strength
    −log10 of the combined false-match probability)."""
    clip = Clip(x.astype(np.float32), C.SR, name)
    ids = catalog_ids(catalog)
    emb = embedding_evidence(catalog, clip)
    chroma = [(ids.get(m.track), -math.log10(max(m.p_false, 1e-300)), from_chromaprint(m))
              for m in catalog.chroma.search(chromaprint.fingerprint(clip))]
    # the landmark layer's own evidence is its search of the catalog at tempo 1.0; its
    # confirmations of embedding matches strengthen those matches, merged
    tempo_one = at_tempo_one(catalog.landmark_index, clip)
    lm = [(ids.get(m.track), m.evidence, landmarks.to_match(m)) for m in tempo_one[0]]
    layer = landmark_matches(catalog.landmark_index, clip, [f[2] for f in emb], tempo_one)
    merged = [(ids.get(m.track), -math.log10(max(m.p_false, 1e-300)), m)
              for m in merge([f[2] for f in emb + chroma] + layer)]
    return emb, chroma, lm, merged


def embedding_evidence(catalog, clip: Clip):
    """Matches of a query by the embedding layer, as (external_id, evidence, Match)."""
    ids = catalog_ids(catalog)
    return [(ids.get(m.track), m.evidence, m) for m in catalog.embedding_matches(clip, max_p_false=1.0)]


_IDS = {}


def catalog_ids(catalog) -> dict[int, str]:
    if not _IDS:
        _IDS.update({t.id: t.external_id for t in catalog.store.list_tracks()})
    return _IDS


def zero_false_match(catalog, negs, tracks, secs: float | None) -> list[float]:
    """The strongest evidence that any of ``negs`` (whole, or cut to their first ``secs`` seconds)
    produced against an unrelated track, per layer (embedding, Chromaprint, landmarks, merged); printed."""
    t0 = time.time()
    null = [[], [], [], []]
    for name, x, parts in negs:
        for layer, found in zip(null, evidence(catalog, x if secs is None else x[: int(secs * C.SR)], name)):
            layer.append(best_unrelated(found, C.related_to(parts, tracks)))
    out = [max(layer) for layer in null]
    cut = "" if secs is None else f" cut to {secs:g} s"
    print(f"\n{len(negs)} negatives{cut} ({time.time() - t0:.0f} s): zero-false-match thresholds: embedding evidence > "
          f"{out[0]:.2f}, Chromaprint -log10 p > {out[1]:.2f}, landmark votes > {out[2]:.0f}, merged -log10 p > {out[3]:.2f}")
    return out


def best_unrelated(found, related: set[str]) -> float:
    return max((s for eid, s, _ in found if eid not in related), default=0.0)


def identified(found, truth: set[str], threshold: float) -> bool:
    if not found:
        return False
    eid, strength, _ = max(found, key=lambda f: f[1])
    return eid in truth and strength > threshold


@dataclass
class Bench:
    """The indexed held-out catalog and the tracks queries are made of (``tracks``: the whole manifest)."""

    engine: object
    catalog: object
    tracks: list
    rng: np.random.Generator

    def __post_init__(self):
        self.cat_tracks = [t for t in self.tracks if t.split == "heldout" and t.role == "catalog" and t.stem != "song"]
        self.songs = [t for t in self.tracks if t.split == "heldout" and t.stem == "song"]
        self.new_material = [t for t in self.tracks if t.role == "unseen" or t.split == "train"]


def _arguments(argv) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=WEIGHTS)
    ap.add_argument("--per-transform", type=int, default=25, help="queries per transform and duration")
    ap.add_argument("--negatives", type=int, default=300)
    ap.add_argument("--segments", type=int, default=200, help="queries per length in the segment test")
    ap.add_argument("--durations", type=float, nargs="+", default=[10.0, 30.0])
    ap.add_argument("--only", nargs="*", help="transforms to run (default: all)")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--home", type=Path, default=Path.home() / ".cache/clearance/bench-home")
    return ap.parse_args(argv)


def _bench(args: argparse.Namespace) -> Bench:
    folder = C.music_folder("full")
    tracks = C.manifest(folder)
    engine = C.bench_engine(args.home / args.model.stem, args.model)
    catalog = C.heldout_catalog(engine, folder, tracks)
    bench = Bench(engine, catalog, tracks, np.random.default_rng(args.seed))
    print(f"model {engine.embedder.version}; catalog: {len(catalog.store.list_tracks())} held-out tracks, "
          f"{catalog.vectors.size} vectors")
    return bench


def segment_table(bench: Bench, n: int) -> None:
    """1. Segment-level top-1 under noise + reverb, ``n`` queries per length; printed row by row."""
    print("\nSegment-level top-1 hit rate, noise 0–10 dB SNR + reverb RT60 0.3–1.0 s (no threshold): the\n"
          "best match names the track and the place the query was cut from (within 1 s), or also a\n"
          "verbatim repeat of that passage elsewhere in the track or in a track that shares its material\n"
          f"(waveform correlation >= {REPEAT_CORR}); `track`: the track or one that shares its material, at any place.\n"
          "`matcher`: the check's embedding matches (a 1 s query, one window: its nearest reference\n"
          "window); `sequence`: the papers' sequence search (every query window's nearest reference\n"
          "windows propose alignments, each scored by the mean similarity over the whole query):")
    print(f"{'query':>8} {'matcher':>8} {'or repeat':>10} {'track':>7} {'sequence':>9} {'or repeat':>10} {'track':>7}")
    references = reference_vectors(bench.catalog)
    for secs in (1, 2, 3, 5, 10):
        hits = sum(segment_hit(bench.catalog, references, bench.cat_tracks, bench.tracks, secs, bench.rng)
                   for _ in range(n))
        print(f"{secs:>6} s " + "".join(f"{100 * h / n:{w}.1f}%" for h, w in zip(hits, (7, 9, 6, 8, 9, 6))),
              flush=True)


def identification_table(bench: Bench, args: argparse.Namespace) -> None:
    """2. Identification per transform, at the thresholds set by the negatives; printed row by row."""
    catalog, tracks = bench.catalog, bench.tracks
    negs = negative_queries(tracks, args.negatives, np.random.default_rng(args.seed + 1))
    # copies shorter than the negatives (10–30 s) are held to negatives cut to their length
    cut = {secs: secs if secs < NEGATIVE_S[0] else None for secs in args.durations}
    null = {c: zero_false_match(catalog, negs, tracks, c) for c in dict.fromkeys(cut.values())}
    thresholds = {secs: null[c] for secs, c in cut.items()}

    names = args.only or [*C.TRANSFORMS, "guitar-over-backing", "splice-in-new"]
    print(f"\nTrack-level identification at zero false matches ({args.per_transform} queries per cell):")
    layers = ("emb", "chroma", "landm", "any", "merged")
    print(f"{'transform':<22}" + "".join(f"{f'{layer} {d:g}s':>11}" for d in args.durations for layer in layers))
    for name in names:
        row = f"{name:<22}"
        for secs in args.durations:
            ok = np.zeros(5)
            for _ in range(args.per_transform):
                q = C.make_query(name, secs, bench.cat_tracks, bench.songs, bench.new_material, bench.rng)
                hit = [identified(found, C.related(q.truth, tracks), thr)
                       for found, thr in zip(evidence(catalog, q.samples, name), thresholds[secs])]
                ok += [*hit[:3], any(hit[:3]), hit[3]]
            row += "".join(f"{100 * k / args.per_transform:10.0f}%" for k in ok)
        print(row, flush=True)


def throughput(bench: Bench) -> None:
    """3. Embedding throughput on the first catalog track; printed."""
    t = bench.cat_tracks[0]
    t0 = time.perf_counter()
    clip = decode(t.path, C.SR)
    t1 = time.perf_counter()
    hop = bench.engine.embedder.ref_hop_s
    bench.engine.embedder.embed(clip, hop_s=hop)
    t2 = time.perf_counter()
    print(f"\nEmbedding throughput ({clip.duration:.0f} s track, hop {hop:g} s): "
          f"{clip.duration / (t2 - t1):.0f}x real time (decode excluded), "
          f"{clip.duration / (t2 - t0):.0f}x (decode included)")


def main(argv=None) -> None:
    args = _arguments(argv)
    bench = _bench(args)
    if args.segments:
        segment_table(bench, args.segments)
    if args.per_transform:
        identification_table(bench, args)
    throughput(bench)


def segment_hit(catalog, references, cat_tracks, tracks, secs: int, rng) -> np.ndarray:
    """One segment query cut from a loud part of a random catalog track, with reverb and noise:
    (found at its place, found at its place or at a repeat of the passage, found in its track or a
    related one at any place) by the check's matcher, then the same by the papers' sequence
    search, as 0/1. ``tracks``: the whole manifest, for the tracks that share material."""
    start = None
    while start is None:
        t = cat_tracks[rng.integers(len(cat_tracks))]
        clip = C.load(t)
        start = C.loud_start(clip, secs + 2, rng)
    x = C.reverb(clip.excerpt(start, start + secs + 1).samples, float(rng.uniform(0.3, 1.0)), rng)
    query = Clip(C.noise(x[: int(secs * C.SR)], float(rng.uniform(0, 10)), rng).astype(np.float32), C.SR, "seg")
    emb = embedding_evidence(catalog, query)
    sequence = sequence_top1(catalog, references, query)
    if emb:
        eid, _, m = max(emb, key=lambda f: f[1])
        matcher = eid, m.ref_start - m.query_start
    else:   # one window is below the matcher's shortest run: its top-1 is the nearest reference window
        matcher = sequence if secs == 1 else None
    out = []
    for best in (matcher, sequence):
        track = best is not None and best[0] in C.related(t, tracks)
        place = track and best[0] == t.track_id and abs(best[1] - start) <= 1.0
        repeat = place or (track and repeats(clip, start, clip if best[0] == t.track_id else
                                              C.load(next(r for r in tracks if r.track_id == best[0])), best[1], secs))
        out += [place, repeat, track]
    return np.array(out, float)


def reference_vectors(catalog) -> dict[int, np.ndarray]:
    """Every catalog track's reference vectors, (windows, dim) by window number (silent
    windows, which are not indexed, as zeros), read back from the held-out catalog's index (exact
    at its size)."""
    ids = index_ids(catalog.vectors.index)
    keys, windows = split_ids(ids)
    stored = catalog.vectors.index.reconstruct_batch(ids)
    out = {}
    for key in np.unique(keys):
        mine = keys == key
        out[int(key)] = np.zeros((windows[mine].max() + 1, stored.shape[1]), np.float32)
        out[int(key)][windows[mine]] = stored[mine]
    return out


def sequence_top1(catalog, references: dict[int, np.ndarray], query: Clip) -> tuple[str, float] | None:
    """The segment search of the neural fingerprinting papers: every query window's nearest
    reference windows propose alignments (track, offset) at the original tempo; each is scored
    by the mean similarity of all the query's voiced windows to the reference windows it puts
    against them; the best alignment's (external id, reference time of the query's start)."""
    emb = catalog.embedder.embed(query, hop_s=QUERY_HOP_S)
    voiced = np.flatnonzero(emb.voiced)
    if voiced.size == 0:
        return None
    q, steps = emb.vectors[voiced], np.rint(emb.starts[voiced] / catalog.vectors.info.hop_s).astype(int)
    _, ids = catalog.vectors.search(q, SEQUENCE_NEIGHBOURS)
    keys, windows = split_ids(ids)
    best, best_score = None, -np.inf
    for key, offset in {(int(k), int(w) - s) for k, w, s, i in
                        zip(keys.ravel(), windows.ravel(), np.repeat(steps, ids.shape[1]), ids.ravel()) if i >= 0}:
        ref, at = references[key], offset + steps
        inside = (at >= 0) & (at < len(ref))
        score = np.einsum("ij,ij->i", q[inside], ref[at[inside]]).sum() / len(q)
        if score > best_score:
            best, best_score = (key, offset), score
    return catalog_ids(catalog).get(best[0]), best[1] * catalog.vectors.info.hop_s


def repeats(clip: Clip, start: float, other: Clip, found: float, secs: float) -> bool:
    """Whether the clean ``other`` track plays ``clip``'s ``secs`` s from ``start`` from ``found``
    (± 0.15 s). Game music loops verbatim, and a game may ship the same passage in two tracks
    (``related``): a query matched to a repeat of its passage has found the right audio, though
    not the place it was cut from, which nothing can tell apart."""
    sr = clip.sample_rate
    a = clip.samples[int(start * sr): int((start + secs) * sr)].astype(np.float64)
    b = other.samples[max(int((found - 0.15) * sr), 0): max(int((found + secs + 0.15) * sr), 0)].astype(np.float64)
    if len(b) < len(a) or not a.any():
        return False
    xcorr = AF.fftconvolve(torch.from_numpy(b), torch.from_numpy(a[::-1].copy())).numpy()[len(a) - 1: len(b)]
    sq = np.concatenate([[0.0], np.cumsum(b ** 2)])
    energy = np.sqrt((sq[len(a):] - sq[:-len(a)]) * (a @ a)) + 1e-12
    return float((xcorr / energy).max()) >= REPEAT_CORR


if __name__ == "__main__":
    main()
