"""Decision quality of the whole check (matcher + calibration + policy) on held-out music.

    python -m benchmarks.decision [--per-transform 12] [--negatives 400] [--model PATH]
                                  [--factory FAISS-FACTORY --nprobe N] [--seconds 10 30]

The held-out ``catalog`` tracks are indexed; every fourth is then made *licensed* with
``Review.change_rights`` (metadata only, as in production) and the rest stay *protected*.
Queries: transformed copies (10–30 s) of protected tracks under every transform, copies spliced
inside new music, collages of two protected tracks, excerpts of licensed tracks, and negatives
(excerpts of held-out ``unseen`` tracks and training-package tracks, clean and transformed).
``--seconds 3 8`` draws every output 3–8 s long instead, for generators of short clips: copies
and licensed excerpts that long, collages of two parts of 3–4.25 s, and, where the whole range
is shorter than the 10–30 s negatives, each negative cut to its first 3–8 s (the same negatives
as the default run).
Prints block recall per transform, wrong-track rate, false blocks with a 95 % interval,
licensed outcomes, ``ref_start`` and ``tempo_ratio`` errors, and the review rate.

``--factory`` sets the vector index (default ``auto``: exact for a catalog this small); run it
again with a compressed one, e.g. ``--factory IVF256,PQ64x4fsr --nprobe 4`` (the 4-bit codes of
the index ``auto`` builds beyond 10⁶ vectors), to compare decisions on the same queries (the seed
fixes them).
"""
from __future__ import annotations

import argparse
import math
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from benchmarks import corpus as C
from benchmarks.calibrate import NEGATIVE_S, WEIGHTS, negative_queries
from detector.audio import Clip
from detector.policy import Rights, Verdict
from index.reviews import Actor, Review


def upper95(k: int, n: int) -> float:
    """Upper end of the Wilson 95 % interval of a rate seen k times in n."""
    z, p = 1.96, k / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre + spread) / (1 + z * z / n)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=WEIGHTS)
    ap.add_argument("--per-transform", type=int, default=12)
    ap.add_argument("--negatives", type=int, default=400)
    ap.add_argument("--seed", type=int, default=23)
    ap.add_argument("--factory", default="auto", help="FAISS factory string of the catalog's vector index")
    ap.add_argument("--nprobe", type=int, default=32, help="inverted lists searched per window (IVF factories)")
    ap.add_argument("--seconds", type=float, nargs=2, default=(10.0, 30.0), metavar=("SHORTEST", "LONGEST"),
                    help="length range of every output")
    ap.add_argument("--home", type=Path, default=Path.home() / ".cache/clearance/bench-home")
    args = ap.parse_args(argv)
    lo, hi = args.seconds
    if not 1.0 <= lo <= hi:
        ap.error("--seconds needs 1 <= SHORTEST <= LONGEST")

    folder = C.music_folder("full")
    tracks = C.manifest(folder)
    home = args.home / args.model.stem
    if args.factory != "auto":
        home = home.with_name(f"{home.name}-{args.factory.replace(',', '-')}")
    engine = C.bench_engine(home, args.model, factory=args.factory, nprobe=args.nprobe)
    catalog = C.heldout_catalog(engine, folder, tracks)
    held = [t for t in tracks if t.split == "heldout" and t.role == "catalog"]
    licensed = {t.track_id for i, t in enumerate(held) if i % 4 == 3 and t.stem != "song"}
    review, me = Review(engine.store), Actor("benchmark", "benchmarks.decision")
    for t in held:
        review.change_rights(t.track_id, Rights.licensed if t.track_id in licensed else Rights.protected, actor=me,
                             note="")
    protected_tracks = [t for t in held if t.track_id not in licensed and t.stem != "song"]
    licensed_tracks = [t for t in held if t.track_id in licensed]
    songs = [t for t in held if t.stem == "song"]
    new_material = [t for t in tracks if t.role == "unseen" or t.split == "train"]
    rng = np.random.default_rng(args.seed)
    print(f"model {engine.embedder.version}, policy {engine.policy.version}; catalog {len(held)} held-out tracks "
          f"({len(licensed)} licensed), {catalog.vectors.size} vectors, index {catalog.vectors.info.factory} "
          f"({catalog.vectors.bytes / catalog.vectors.size:.0f} bytes per vector)")

    stats = defaultdict(lambda: defaultdict(int))
    ref_err, tempo_err, verdicts = [], [], defaultdict(int)
    wrong_blocks = []       # (query, match, track): blocks naming a track the query does not copy
    t0 = time.time()

    def run(x) -> tuple:
        d = engine.assess(Clip(np.asarray(x, np.float32), C.SR, "q"))
        verdicts[d.verdict] += 1
        return d

    # copies of protected recordings
    names = [*C.TRANSFORMS, "guitar-over-backing", "splice-in-new"]
    for name in names:
        for _ in range(args.per_transform):
            secs = float(rng.uniform(lo, hi))
            q = C.make_query(name, secs, protected_tracks, songs, new_material, rng)
            d = run(q.samples)
            s = stats[name]
            s["n"] += 1
            blocking = [(m, i) for m, i in d.matches if i.rights is Rights.protected]
            if d.verdict is Verdict.block:
                right = [(m, i) for m, i in blocking if i.external_id in C.related(q.truth, tracks)]
                s["block"] += bool(right)
                wrong = [(m, i) for m, i in blocking if i.external_id not in C.related(q.truth, tracks)]
                s["wrong"] += bool(wrong)
                wrong_blocks += [(f"{name} of {q.truth.track_id}", m, i) for m, i in wrong]
                own = [m for m, i in right if i.external_id == q.truth.track_id]
                if own:             # a related track shares material, not necessarily its timing
                    m = own[0]
                    ref_err.append(abs(m.ref_start - (q.ref_at_zero + q.tempo * m.query_start)))
                    if q.tempo != 1.0:
                        tempo_err.append((abs(m.tempo_ratio / q.tempo - 1), name, m))
            s["review"] += d.verdict is Verdict.review
        print(f"  {name}: {stats[name]['block']}/{stats[name]['n']} blocked ({time.time() - t0:.0f} s)", flush=True)

    # collages of two protected recordings, each part 10-15 s by default
    part = (lo, lo + (hi - lo) / 4)
    for _ in range(args.per_transform * 2):
        a = C.make_query("clean", float(rng.uniform(*part)), protected_tracks, songs, new_material, rng)
        b = C.make_query("clean", float(rng.uniform(*part)), protected_tracks, songs, new_material, rng)
        if a.truth.track_id == b.truth.track_id:
            continue
        d = run(np.concatenate([a.samples, b.samples]))
        named = {i.external_id for _, i in d.matches}
        s = stats["collage (both named)"]
        s["n"] += 1
        s["block"] += d.verdict is Verdict.block and a.truth.track_id in named and b.truth.track_id in named
        s["wrong"] += any(e not in C.related(a.truth, tracks) | C.related(b.truth, tracks) for e in named)
        s["review"] += d.verdict is Verdict.review

    # licensed excerpts
    lic = defaultdict(int)
    for _ in range(args.per_transform * 4):
        name = rng.choice(["clean", "mp3-32k", "noise-10dB", "pitch+2st", "tempo-1.1x", "reverb-0.5s"])
        q = C.make_query(str(name), float(rng.uniform(lo, hi)), licensed_tracks, songs, new_material, rng)
        d = run(q.samples)
        lic["n"] += 1
        lic["blocked"] += d.verdict is Verdict.block
        wrong_blocks += [(f"licensed {name} of {q.truth.track_id}", m, i) for m, i in d.blocking]
        lic["attributed"] += any(i.external_id in C.related(q.truth, tracks) and i.rights is Rights.licensed for _, i in d.matches)

    # negatives
    negs = negative_queries(tracks, args.negatives, np.random.default_rng(args.seed + 1))
    neg = defaultdict(int)
    false_blocks = []
    cuts = np.random.default_rng(args.seed + 2)
    for name, x, t in negs:
        if hi < NEGATIVE_S[0]:      # outputs shorter than every negative: its first lo-hi s
            x = x[: int(cuts.uniform(lo, hi) * C.SR)]
        d = run(x)
        neg["n"] += 1
        # a match with a track that shares material with the excerpt's is not a false match
        unrelated = [(m, i) for m, i in d.blocking if i.external_id not in C.related(t, tracks)]
        if unrelated:
            neg["block"] += 1
            false_blocks += [(name, m, i) for m, i in unrelated]
        elif d.verdict is Verdict.block:
            neg["related"] += 1
        neg["review"] += d.verdict is Verdict.review

    print(f"\nBlock recall per transform ({lo:g}–{hi:g} s copies of protected held-out tracks, {args.per_transform} each):")
    print(f"{'transform':<24}{'blocked':>9}{'review':>8}{'wrong track':>13}")
    total = defaultdict(int)
    for name, s in stats.items():
        print(f"{name:<24}{100 * s['block'] / s['n']:8.0f}%{100 * s['review'] / s['n']:7.0f}%{s['wrong']:>13}")
        for k in ("n", "block", "wrong"):
            total[k] += s[k]
    print(f"{'all copies':<24}{100 * total['block'] / total['n']:8.1f}%{'':>8}{total['wrong']:>13}   (n={total['n']})")
    print(f"\nFalse blocks on negatives: {neg['block']}/{neg['n']} = {100 * neg['block'] / neg['n']:.2f}% "
          f"(95% upper bound {100 * upper95(neg['block'], neg['n']):.2f}%), sent to review {neg['review']}, "
          f"blocked as a related track {neg['related']}")
    for name, m, i in false_blocks:
        print(f"  {name} → {i.external_id} ({m.method}, score {m.score:.6f}, {m.duration:.1f} s, "
              f"tempo {m.tempo_ratio:.2f})")
    print(f"Licensed excerpts: blocked {lic['blocked']}/{lic['n']}, attributed {lic['attributed']}/{lic['n']} "
          f"= {100 * lic['attributed'] / lic['n']:.1f}%")
    if wrong_blocks:
        print("Blocks naming a track the copy or licensed excerpt is not from (the manifest marks no shared material):")
    for name, m, i in wrong_blocks:
        print(f"  {name} → {i.external_id} ({m.method}, score {m.score:.6f}, {m.duration:.1f} s, reference "
              f"{m.ref_start:.1f} s, tempo {m.tempo_ratio:.2f})")
    print(f"ref_start error: median {np.median(ref_err):.2f} s, p90 {np.quantile(ref_err, 0.9):.2f} s (n={len(ref_err)})")
    if tempo_err:
        errs = np.array([e for e, _, _ in tempo_err])
        worst, name, m = max(tempo_err, key=lambda t: t[0])
        print(f"tempo_ratio error on tempo-changed copies: median {100 * np.median(errs):.1f}%, within 3% "
              f"{np.mean(errs <= 0.03) * 100:.1f}%, max {100 * worst:.1f}% (n={len(errs)}; the worst: {name}, "
              f"{m.method}, tempo_ratio {m.tempo_ratio:.3f} over {m.duration:.1f} s)")
    n_all = sum(verdicts.values())
    print(f"Review rate over all {n_all} queries: {100 * verdicts[Verdict.review] / n_all:.1f}%")


if __name__ == "__main__":
    main()
