"""How well the fingerprint survives what generators do to a recording (held-out tracks only).

    python -m benchmarks.robustness [--per-transform 25] [--negatives 300] [--segments 200] [--model PATH]

Indexes every held-out ``catalog`` track of the full corpus, then prints:
  1. segment-level top-1 hit rate of 1/2/3/5/10 s queries under noise (0–10 dB) + reverb: at the
     place the query was cut from, and also counting a verbatim repeat of that passage (game
     music loops: about one in five 5 s passages of the held-out catalog plays again in its track);
  2. track-level identification per transform for 10 s and 30 s copies, at the zero-false-match
     threshold (the strongest evidence any of the negatives produced against an unrelated
     track): the embedding, Chromaprint and landmark layers side by side; all three together
     (a copy found by any layer above its own threshold: on the negatives none of them, and so
     none of the three together, made a false match); and the layers' matches merged as the
     check merges them, with one threshold on the combined false-match probability;
  3. embedding throughput.
``--segments 0`` skips part 1, ``--per-transform 0`` part 2.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
import torchaudio.functional as AF

from benchmarks import corpus as C
from benchmarks.calibrate import WEIGHTS, negative_queries
from detector import chromaprint
from detector.audio import Clip, decode
from detector.matcher import from_chromaprint, merge
from index.catalog import QUERY_HOP_S
from index.vectors import split_ids

REPEAT_CORR = 0.9   # waveform correlation of two passages of a track that are the same audio


def evidence(catalog, x: np.ndarray, name: str):
    """Matches of a query by the embedding, Chromaprint and landmark layers, each a list of
    (external_id, strength, Match), and the three merged as the check merges them (strength
    −log10 of the combined false-match probability)."""
    clip = Clip(x.astype(np.float32), C.SR, name)
    ids = catalog_ids(catalog)
    emb = embedding_evidence(catalog, clip)
    chroma = [(ids.get(m.track), -math.log10(max(m.p_false, 1e-300)), from_chromaprint(m))
              for m in catalog.chroma.search(chromaprint.fingerprint(clip))]
    lm = [(ids.get(m.track), m.evidence, m) for m in catalog.landmark_matches(clip, [f[2] for f in emb])]
    merged = [(ids.get(m.track), -math.log10(max(m.p_false, 1e-300)), m)
              for m in merge([f[2] for f in emb + chroma + lm])]
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


def best_unrelated(found, related: set[str]) -> float:
    return max((s for eid, s, _ in found if eid not in related), default=0.0)


def identified(found, truth: set[str], threshold: float) -> bool:
    if not found:
        return False
    eid, strength, _ = max(found, key=lambda f: f[1])
    return eid in truth and strength > threshold


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=WEIGHTS)
    ap.add_argument("--per-transform", type=int, default=25, help="queries per transform and duration")
    ap.add_argument("--negatives", type=int, default=300)
    ap.add_argument("--segments", type=int, default=200, help="queries per length in the segment test")
    ap.add_argument("--durations", type=float, nargs="+", default=[10.0, 30.0])
    ap.add_argument("--only", nargs="*", help="transforms to run (default: all)")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--home", type=Path, default=Path.home() / ".cache/clearance/bench-home")
    args = ap.parse_args(argv)

    folder = C.music_folder("full")
    tracks = C.manifest(folder)
    engine = C.bench_engine(args.home / args.model.stem, args.model)
    catalog = C.heldout_catalog(engine, folder, tracks)
    cat_tracks = [t for t in tracks if t.split == "heldout" and t.role == "catalog" and t.stem != "song"]
    songs = [t for t in tracks if t.split == "heldout" and t.stem == "song"]
    new_material = [t for t in tracks if t.role == "unseen" or t.split == "train"]
    rng = np.random.default_rng(args.seed)

    print(f"model {engine.embedder.version}; catalog: {len(catalog.store.list_tracks())} held-out tracks, "
          f"{catalog.vectors.size} vectors")

    # --- 1. segment-level top-1 under noise + reverb ----------------------------------------
    if args.segments:
        print("\nSegment-level top-1 hit rate, noise 0–10 dB SNR + reverb RT60 0.3–1.0 s (no threshold): the\n"
              "best match names the track and the place the query was cut from (within 1 s), or also a\n"
              f"verbatim repeat of that passage elsewhere in the track (waveform correlation >= {REPEAT_CORR}):")
        print(f"{'query':>8} {'top-1':>7} {'or repeat':>10}")
        for secs in (1, 2, 3, 5, 10):
            hits = sum(segment_hit(catalog, cat_tracks, secs, rng) for _ in range(args.segments))
            print(f"{secs:>6} s " + "".join(f"{100 * h / args.segments:{w}.1f}%" for h, w in zip(hits, (6, 9))),
                  flush=True)

    # --- 2. identification per transform, at the thresholds set by the negatives --------------
    if args.per_transform:
        t0 = time.time()
        negs = negative_queries(tracks, args.negatives, np.random.default_rng(args.seed + 1))
        null = [[], [], [], []]
        for name, x, t in negs:
            for layer, found in zip(null, evidence(catalog, x, name)):
                layer.append(best_unrelated(found, C.related(t, tracks)))
        thresholds = [max(layer) for layer in null]
        print(f"\n{len(negs)} negatives ({time.time() - t0:.0f} s): zero-false-match thresholds: embedding evidence > "
              f"{thresholds[0]:.2f}, Chromaprint -log10 p > {thresholds[1]:.2f}, landmark votes > {thresholds[2]:.0f}, "
              f"merged -log10 p > {thresholds[3]:.2f}")

        names = args.only or [*C.TRANSFORMS, "guitar-over-backing", "splice-in-new"]
        print(f"\nTrack-level identification at zero false matches ({args.per_transform} queries per cell):")
        layers = ("emb", "chroma", "landm", "any", "merged")
        print(f"{'transform':<22}" + "".join(f"{f'{layer} {d:g}s':>11}" for d in args.durations for layer in layers))
        for name in names:
            row = f"{name:<22}"
            for secs in args.durations:
                ok = np.zeros(5)
                for _ in range(args.per_transform):
                    q = C.make_query(name, secs, cat_tracks, songs, new_material, rng)
                    hit = [identified(found, C.related(q.truth, tracks), thr)
                           for found, thr in zip(evidence(catalog, q.samples, name), thresholds)]
                    ok += [*hit[:3], any(hit[:3]), hit[3]]
                row += "".join(f"{100 * k / args.per_transform:10.0f}%" for k in ok)
            print(row, flush=True)

    # --- 3. throughput -------------------------------------------------------------------------
    t = cat_tracks[0]
    t0 = time.perf_counter()
    clip = decode(t.path, C.SR)
    t1 = time.perf_counter()
    hop = engine.embedder.ref_hop_s
    engine.embedder.embed(clip, hop_s=hop)
    t2 = time.perf_counter()
    print(f"\nEmbedding throughput ({clip.duration:.0f} s track, hop {hop:g} s): "
          f"{clip.duration / (t2 - t1):.0f}x real time (decode excluded), "
          f"{clip.duration / (t2 - t0):.0f}x (decode included)")


def segment_hit(catalog, cat_tracks, secs: int, rng) -> np.ndarray:
    """One segment query cut from a loud part of a random catalog track, with reverb and noise:
    (found at its place, found at its place or at a repeat of the passage), as 0/1."""
    start = None
    while start is None:
        t = cat_tracks[rng.integers(len(cat_tracks))]
        clip = C.load(t)
        start = C.loud_start(clip, secs + 2, rng)
    x = C.reverb(clip.excerpt(start, start + secs + 1).samples, float(rng.uniform(0.3, 1.0)), rng)
    x = C.noise(x[: int(secs * C.SR)], float(rng.uniform(0, 10)), rng)
    emb = embedding_evidence(catalog, Clip(x.astype(np.float32), C.SR, "seg"))
    if emb:
        eid, _, m = max(emb, key=lambda f: f[1])
        right, found = eid == t.track_id, m.ref_start - m.query_start
    elif secs == 1:
        right, found = segment_top1(catalog, x, t.track_id)
    else:
        right = False
    if not right:
        return np.zeros(2)
    place = abs(found - start) <= 1.0
    return np.array([place, place or repeats(clip, start, found, secs)], float)


def segment_top1(catalog, x, track_id) -> tuple[bool, float]:
    """A query of a single window: whether its nearest reference window is in the track, and
    that window's start."""
    emb = catalog.embedder.embed(Clip(x, C.SR, "seg"), hop_s=QUERY_HOP_S)
    sims, ids = catalog.vectors.search(emb.vectors[:1], 1)
    if ids.size == 0 or ids[0, 0] < 0:
        return False, 0.0
    key, window = split_ids(ids[0])
    return catalog_ids(catalog).get(int(key[0])) == track_id, float(window[0] * catalog.vectors.info.hop_s)


def repeats(clip: Clip, start: float, found: float, secs: float) -> bool:
    """Whether the clean track plays its ``secs`` s from ``start`` again from ``found`` (± 0.15 s).
    Game music loops verbatim: a query matched to a repeat of its passage has found the right
    audio, though not the place it was cut from, which nothing can tell apart."""
    sr = clip.sample_rate
    a = clip.samples[int(start * sr): int((start + secs) * sr)].astype(np.float64)
    b = clip.samples[max(int((found - 0.15) * sr), 0): max(int((found + secs + 0.15) * sr), 0)].astype(np.float64)
    if len(b) < len(a) or not a.any():
        return False
    xcorr = AF.fftconvolve(torch.from_numpy(b), torch.from_numpy(a[::-1].copy())).numpy()[len(a) - 1: len(b)]
    sq = np.concatenate([[0.0], np.cumsum(b ** 2)])
    energy = np.sqrt((sq[len(a):] - sq[:-len(a)]) * (a @ a)) + 1e-12
    return float((xcorr / energy).max()) >= REPEAT_CORR


if __name__ == "__main__":
    main()
