"""Fit the score calibrations of the embedding and landmark layers from music that is not in
the catalog.

    python -m benchmarks.calibrate [--model detector/weights/clearance-fp-v7.pt] [--negatives 600]

Indexes the held-out ``catalog`` tracks of the full corpus, then checks excerpts (10–30 s,
clean and transformed) of held-out ``unseen`` tracks (same games, same composers: the hard
negatives) and of training-package tracks. The strongest evidence each negative produces
against any unrelated catalog track is a sample of the null distribution; an exponential tail
fitted to its top decile gives ``p_false(evidence)``, for outputs at least as long as the
shortest negative (``shortest_s``). The same negatives cut to their first 3, 5 and 8 s give the
tails of shorter outputs (``Calibration.shorter``): music that short finds less by chance.
The embedding's is written beside the
model weights, the landmark layer's to ``detector/weights/``: its search of every catalog track at
tempo 1.0 (``landmarks.calibration.json``) and its confirmations of the strongest embedding
matches' alignments (``landmarks.confirm.calibration.json``), each searched as a check searches.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from benchmarks import corpus as C
from detector import landmarks
from detector.matcher import Calibration
from detector.model import DEFAULT_WEIGHTS
from index.layers.landmarks import at_tempo_one, confirmations

WEIGHTS = C.REPO / "detector" / "weights" / DEFAULT_WEIGHTS
NEGATIVE_S = (10.0, 30.0)   # lengths of the negative excerpts, before a transform changes them
SHORTER_S = (3.0, 5.0, 8.0)  # the negatives cut to these lengths give short outputs' tails


def negative_queries(tracks, n: int, rng: np.random.Generator):
    """(name, clip samples, the tracks whose music it holds) of ``n`` excerpts of non-catalog
    music, half transformed (a mix holds two tracks' music: a match with a track related to
    either is no false match)."""
    pool = [t for t in tracks if t.role == "unseen"] + [t for t in tracks if t.split == "train"]
    weights = np.array([3.0 if t.role == "unseen" else 1.0 for t in pool])
    out = []
    while len(out) < n:
        t = pool[rng.choice(len(pool), p=weights / weights.sum())]
        clip = C.load(t)
        secs = float(rng.uniform(*NEGATIVE_S))
        start = C.loud_start(clip, secs, rng)
        if start is None:
            continue
        x = clip.excerpt(start, start + secs).samples
        parts = (t,)
        kind = rng.choice(["clean", "noise", "reverb", "pitch", "tempo", "mp3", "mix"])
        if kind == "noise":
            x = C.noise(x, 5, rng)
        elif kind == "reverb":
            x = C.reverb(x, 1.0, rng)
        elif kind == "pitch":
            x = C.pitch(x, float(rng.choice([-3, -2, 2, 3])))
        elif kind == "tempo":
            x = C.tempo(x, float(rng.choice([0.85, 1.15])))
        elif kind == "mp3":
            x = C.codec(x, "mp3", 64)
        elif kind == "mix":
            o = pool[rng.integers(len(pool))]
            oc = C.load(o)
            s2 = C.loud_start(oc, secs, rng)
            if s2 is None:
                continue
            x = C.mix(x, oc.excerpt(s2, s2 + secs).samples, 0.0)
            parts = (t, o)
        out.append((f"{t.track_id}@{start:.0f}:{kind}", x, parts))
    return out


def null_evidence(catalog, queries, related_ids) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Strongest evidence of each query against a catalog track unrelated to its parts
    (``related_ids``): (embedding, landmarks at tempo 1.0, landmark confirmations)."""
    from detector.audio import Clip

    ids = {t.id: t.external_id for t in catalog.store.list_tracks()}
    samples = ([], [], [])
    for name, x, parts in queries:
        clip = Clip(x, C.SR, name)
        matches = catalog.embedding_matches(clip, max_p_false=1.0)
        # landmark evidence does not depend on the calibrations the landmark layer holds
        found, query = at_tempo_one(catalog.landmark_index, clip)
        confirmed = confirmations(catalog.landmark_index, clip, matches, query)
        for sample, got in zip(samples, (matches, found, confirmed)):
            sample.append(max((m.evidence for m in got if ids.get(m.track) not in related_ids(parts)), default=0.0))
    return tuple(np.array(s, float) for s in samples)


def tail(evidence: np.ndarray, tail_fraction: float = 0.1) -> dict:
    """An exponential tail fitted to the top ``tail_fraction`` of a null sample."""
    start = float(np.quantile(evidence, 1 - tail_fraction))
    excess = evidence[evidence > start] - start
    scale = float(excess.mean()) if len(excess) else 1.0
    return {"tail_start": start, "tail_p": tail_fraction, "tail_scale": max(scale, 1e-3)}


def fit(evidence: np.ndarray, model: str, shortest_s: float, cut: dict[float, np.ndarray]) -> Calibration:
    """The tail of the null over negatives the shortest of which lasts ``shortest_s`` seconds,
    and those of the same negatives cut to each length in ``cut`` (seconds → null sample)."""
    return Calibration(model=model, **tail(evidence), negatives=len(evidence), shortest_s=round(shortest_s, 2),
                       shorter=tuple({"seconds": s, **tail(ev)} for s, ev in sorted(cut.items())))


def report(name: str, ev: np.ndarray, cut: dict[float, np.ndarray], cal: Calibration, out: Path) -> None:
    for label, sample, fitted in [("whole", ev, {"tail_start": cal.tail_start, "tail_p": cal.tail_p,
                                                 "tail_scale": cal.tail_scale}),
                                  *((f"cut to {t['seconds']:g} s", cut[t["seconds"]], t) for t in cal.shorter)]:
        qs = np.quantile(sample, [0.5, 0.9, 0.99, 1.0])
        at = {p: fitted["tail_start"] + fitted["tail_scale"] * np.log(fitted["tail_p"] / p) for p in (1e-2, 1e-3, 1e-4)}
        print(f"{name}, {len(sample)} negatives {label}: null median {qs[0]:.2f}, p90 {qs[1]:.2f}, p99 {qs[2]:.2f}, "
              f"max {qs[3]:.2f}; " + ", ".join(f"p_false {p:g} at evidence {e:.2f}" for p, e in at.items()))
    print(f"  wrote {out}")


UNCALIBRATED = Calibration(model="uncalibrated", tail_start=1.0, tail_p=1.0, tail_scale=1.0)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=WEIGHTS)
    ap.add_argument("--negatives", type=int, default=600)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--home", type=Path, default=Path.home() / ".cache/clearance/bench-home")
    args = ap.parse_args(argv)

    folder = C.music_folder("full")
    tracks = C.manifest(folder)
    out = args.model.with_suffix(".calibration.json")
    # any calibration will do while measuring: evidence does not depend on it
    engine = C.bench_engine(args.home / args.model.stem, args.model, calibration=out if out.exists() else None)
    if not out.exists():
        engine.__dict__["calibration"] = UNCALIBRATED
    t0 = time.time()
    catalog = C.heldout_catalog(engine, folder, tracks)
    print(f"catalog: {len(catalog.store.list_tracks())} held-out tracks, {catalog.vectors.size} vectors "
          f"({time.time() - t0:.0f} s)")
    rng = np.random.default_rng(args.seed)
    queries = negative_queries(tracks, args.negatives, rng)

    null = null_evidence(catalog, queries, lambda parts: C.related_to(parts, tracks))
    print(f"whole negatives measured ({time.time() - t0:.0f} s)", flush=True)
    cut = {}
    for secs in SHORTER_S:
        shorter = [(name, x[: int(secs * C.SR)], parts) for name, x, parts in queries]
        cut[secs] = null_evidence(catalog, shorter, lambda parts: C.related_to(parts, tracks))
        print(f"negatives cut to {secs:g} s measured ({time.time() - t0:.0f} s)", flush=True)
    shortest = min(len(x) for _, x, _ in queries) / C.SR
    weights = C.REPO / "detector" / "weights"
    for k, (name, version, path) in enumerate([
            ("embedding", engine.embedder.version, out),
            ("landmarks at tempo 1.0", landmarks.VERSION, weights / landmarks.CALIBRATION),
            ("landmark confirmations", landmarks.VERSION, weights / landmarks.CONFIRM_CALIBRATION)]):
        shorter = {secs: sample[k] for secs, sample in cut.items()}
        cal = fit(null[k], version, shortest, shorter)
        cal.save(path)
        report(name, null[k], shorter, cal, path)

if __name__ == "__main__":
    main()
