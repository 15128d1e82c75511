"""Decision quality of the whole check (matcher + calibration + policy) on held-out music.

    python -m benchmarks.decision [--per-transform 12] [--negatives 400] [--model PATH]
                                  [--factory FAISS-FACTORY --nprobe N] [--seconds 10 30]
                                  [--shards N [--engine local|ray]]

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
fixes them). ``--shards 4 --engine ray`` searches the same catalog in four shards held by Ray
actors (``index/sharded.py``): every line printed should be the same as searched whole.
"""
from __future__ import annotations

import argparse
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
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


@dataclass
class Bench:
    """The indexed held-out catalog with every fourth track licensed, the tracks queries are made
    of, and a tally of verdicts over every query checked (``run``)."""

    engine: object
    tracks: list
    held: list
    licensed: set[str]
    seconds: tuple[float, float]
    rng: np.random.Generator
    verdicts: dict = field(default_factory=lambda: defaultdict(int))

    def __post_init__(self):
        self.protected_tracks = [t for t in self.held if t.track_id not in self.licensed and t.stem != "song"]
        self.licensed_tracks = [t for t in self.held if t.track_id in self.licensed]
        self.songs = [t for t in self.held if t.stem == "song"]
        self.new_material = [t for t in self.tracks if t.role == "unseen" or t.split == "train"]

    def query(self, name: str, secs: float, among: list):
        return C.make_query(name, secs, among, self.songs, self.new_material, self.rng)

    def run(self, x):
        d = self.engine.assess(Clip(np.asarray(x, np.float32), C.SR, "q"))
        self.verdicts[d.verdict] += 1
        return d


def _arguments(argv) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=WEIGHTS)
    ap.add_argument("--per-transform", type=int, default=12)
    ap.add_argument("--negatives", type=int, default=400)
    ap.add_argument("--seed", type=int, default=23)
    ap.add_argument("--factory", default="auto", help="FAISS factory string of the catalog's vector index")
    ap.add_argument("--nprobe", type=int, default=32, help="inverted lists searched per window (IVF factories)")
    ap.add_argument("--seconds", type=float, nargs=2, default=(10.0, 30.0), metavar=("SHORTEST", "LONGEST"),
                    help="length range of every output")
    ap.add_argument("--shards", type=int, default=1, help="search the catalog in this many shards")
    ap.add_argument("--engine", choices=["local", "ray"], default="local", help="where the shards are held")
    ap.add_argument("--home", type=Path, default=Path.home() / ".cache/clearance/bench-home")
    args = ap.parse_args(argv)
    lo, hi = args.seconds
    if not 1.0 <= lo <= hi:
        ap.error("--seconds needs 1 <= SHORTEST <= LONGEST")
    return args


def _bench(args: argparse.Namespace) -> Bench:
    """Index the held-out catalog and license every fourth of its tracks (songs stay protected)."""
    folder = C.music_folder("full")
    tracks = C.manifest(folder)
    home = args.home / args.model.stem
    if args.factory != "auto":
        home = home.with_name(f"{home.name}-{args.factory.replace(',', '-')}")
    engine = C.bench_engine(home, args.model, factory=args.factory, nprobe=args.nprobe, serve_shards=args.shards,
                            serve_engine=args.engine)
    catalog = C.heldout_catalog(engine, folder, tracks)
    held = [t for t in tracks if t.split == "heldout" and t.role == "catalog"]
    licensed = {t.track_id for i, t in enumerate(held) if i % 4 == 3 and t.stem != "song"}
    review, me = Review(engine.store), Actor("benchmark", "benchmarks.decision")
    for t in held:
        review.change_rights(t.track_id, Rights.licensed if t.track_id in licensed else Rights.protected, actor=me,
                             note="")
    bench = Bench(engine, tracks, held, licensed, tuple(args.seconds), np.random.default_rng(args.seed))
    print(f"model {engine.embedder.version}, policy {engine.policy.version}; catalog {len(held)} held-out tracks "
          f"({len(licensed)} licensed), {catalog.vectors.size} vectors, index {catalog.vectors.info.factory} "
          f"({catalog.vectors.bytes / catalog.vectors.size:.0f} bytes per vector)")
    return bench


@dataclass
class Copies:
    """Outcomes of the copies of protected recordings: per transform (and for collages) the counts
    ``n``, ``block``, ``wrong``, ``review``; ``ref_start`` errors (s); tempo errors (relative error,
    transform, match); blocks naming a track the query does not copy (query, match, track)."""

    stats: dict = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))
    ref_err: list = field(default_factory=list)
    tempo_err: list = field(default_factory=list)
    wrong_blocks: list = field(default_factory=list)


def copies(bench: Bench, per_transform: int) -> Copies:
    """``per_transform`` copies of protected recordings under every transform, spliced under new
    music and inside it; progress printed per transform."""
    out, (lo, hi), tracks = Copies(), bench.seconds, bench.tracks
    t0 = time.time()
    for name in [*C.TRANSFORMS, "guitar-over-backing", "splice-in-new"]:
        for _ in range(per_transform):
            secs = float(bench.rng.uniform(lo, hi))
            q = bench.query(name, secs, bench.protected_tracks)
            d = bench.run(q.samples)
            s = out.stats[name]
            s["n"] += 1
            blocking = [(m, i) for m, i in d.matches if i.rights is Rights.protected]
            if d.verdict is Verdict.block:
                right = [(m, i) for m, i in blocking if i.external_id in C.related(q.truth, tracks)]
                s["block"] += bool(right)
                wrong = [(m, i) for m, i in blocking if i.external_id not in C.related(q.truth, tracks)]
                s["wrong"] += bool(wrong)
                out.wrong_blocks += [(f"{name} of {q.truth.track_id}", m, i) for m, i in wrong]
                own = [m for m, i in right if i.external_id == q.truth.track_id]
                if own:             # a related track shares material, not necessarily its timing
                    m = own[0]
                    out.ref_err.append(abs(m.ref_start - (q.ref_at_zero + q.tempo * m.query_start)))
                    if q.tempo != 1.0:
                        out.tempo_err.append((abs(m.tempo_ratio / q.tempo - 1), name, m))
            s["review"] += d.verdict is Verdict.review
        print(f"  {name}: {out.stats[name]['block']}/{out.stats[name]['n']} blocked ({time.time() - t0:.0f} s)",
              flush=True)
    return out


def collages(bench: Bench, n: int, stats: dict) -> None:
    """Up to ``n`` collages of two protected recordings, each part 10-15 s by default, counted in
    ``stats['collage (both named)']``."""
    lo, hi = bench.seconds
    part = (lo, lo + (hi - lo) / 4)
    for _ in range(n):
        a = bench.query("clean", float(bench.rng.uniform(*part)), bench.protected_tracks)
        b = bench.query("clean", float(bench.rng.uniform(*part)), bench.protected_tracks)
        if a.truth.track_id == b.truth.track_id:
            continue
        d = bench.run(np.concatenate([a.samples, b.samples]))
        named = {i.external_id for _, i in d.matches}
        s = stats["collage (both named)"]
        s["n"] += 1
        s["block"] += d.verdict is Verdict.block and a.truth.track_id in named and b.truth.track_id in named
        s["wrong"] += any(e not in C.related(a.truth, bench.tracks) | C.related(b.truth, bench.tracks) for e in named)
        s["review"] += d.verdict is Verdict.review


def licensed_excerpts(bench: Bench, n: int, wrong_blocks: list) -> dict:
    """``n`` transformed excerpts of licensed tracks: counts ``n``, ``blocked``, ``attributed``;
    their blocks are added to ``wrong_blocks``."""
    lic = defaultdict(int)
    lo, hi = bench.seconds
    for _ in range(n):
        name = bench.rng.choice(["clean", "mp3-32k", "noise-10dB", "pitch+2st", "tempo-1.1x", "reverb-0.5s"])
        q = bench.query(str(name), float(bench.rng.uniform(lo, hi)), bench.licensed_tracks)
        d = bench.run(q.samples)
        lic["n"] += 1
        lic["blocked"] += d.verdict is Verdict.block
        wrong_blocks += [(f"licensed {name} of {q.truth.track_id}", m, i) for m, i in d.blocking]
        lic["attributed"] += any(i.external_id in C.related(q.truth, bench.tracks) and i.rights is Rights.licensed
                                 for _, i in d.matches)
    return lic


def negatives(bench: Bench, n: int, seed: int) -> tuple[dict, list, list]:
    """``n`` negatives (cut to the output lengths where those are shorter than every negative):
    counts ``n``, ``block``, ``related``, ``review``, ``version`` (flagged by the version layer),
    the false blocks and the strongest match of each negative sent to review (negative, match,
    track)."""
    lo, hi = bench.seconds
    neg = defaultdict(int)
    false_blocks, reviews = [], []
    negs = negative_queries(bench.tracks, n, np.random.default_rng(seed + 1))
    cuts = np.random.default_rng(seed + 2)
    for name, x, parts in negs:
        if hi < NEGATIVE_S[0]:      # outputs shorter than every negative: its first lo-hi s
            x = x[: int(cuts.uniform(lo, hi) * C.SR)]
        d = bench.run(x)
        neg["n"] += 1
        # a match with a track that shares material with the music in the output is not a false match
        unrelated = [(m, i) for m, i in d.blocking if i.external_id not in C.related_to(parts, bench.tracks)]
        if unrelated:
            neg["block"] += 1
            false_blocks += [(name, m, i) for m, i in unrelated]
        elif d.verdict is Verdict.block:
            neg["related"] += 1
        if d.verdict is Verdict.review:
            neg["review"] += 1
            reviews.append((name, *d.matches[0]))
        neg["version"] += any(m.method == "version" for m, _ in d.matches)
    return neg, false_blocks, reviews


def print_recall(stats: dict, seconds: tuple[float, float], per_transform: int) -> None:
    lo, hi = seconds
    print(f"\nBlock recall per transform ({lo:g}–{hi:g} s copies of protected held-out tracks, {per_transform} each):")
    print(f"{'transform':<24}{'blocked':>9}{'review':>8}{'wrong track':>13}")
    total = defaultdict(int)
    for name, s in stats.items():
        print(f"{name:<24}{100 * s['block'] / s['n']:8.0f}%{100 * s['review'] / s['n']:7.0f}%{s['wrong']:>13}")
        for k in ("n", "block", "wrong"):
            total[k] += s[k]
    print(f"{'all copies':<24}{100 * total['block'] / total['n']:8.1f}%{'':>8}{total['wrong']:>13}   (n={total['n']})")


def print_false_blocks(neg: dict, false_blocks: list, reviews: list, lic: dict, wrong_blocks: list) -> None:
    print(f"\nFalse blocks on negatives: {neg['block']}/{neg['n']} = {100 * neg['block'] / neg['n']:.2f}% "
          f"(95% upper bound {100 * upper95(neg['block'], neg['n']):.2f}%), sent to review {neg['review']}, "
          f"blocked as a related track {neg['related']}, flagged as a re-performance {neg['version']}")
    for kind, found in (("block", false_blocks), ("review", reviews)):
        for name, m, i in found:
            print(f"  {kind} {name} → {i.external_id} ({m.method}, score {m.score:.6f}, {m.duration:.1f} s, "
                  f"tempo {m.tempo_ratio:.2f})")
    print(f"Licensed excerpts: blocked {lic['blocked']}/{lic['n']}, attributed {lic['attributed']}/{lic['n']} "
          f"= {100 * lic['attributed'] / lic['n']:.1f}%")
    if wrong_blocks:
        print("Blocks naming a track the copy or licensed excerpt is not from (the manifest marks no shared material):")
    for name, m, i in wrong_blocks:
        print(f"  {name} → {i.external_id} ({m.method}, score {m.score:.6f}, {m.duration:.1f} s, reference "
              f"{m.ref_start:.1f} s, tempo {m.tempo_ratio:.2f})")


def print_errors(found: Copies, verdicts: dict) -> None:
    ref_err, tempo_err = found.ref_err, found.tempo_err
    print(f"ref_start error: median {np.median(ref_err):.2f} s, p90 {np.quantile(ref_err, 0.9):.2f} s (n={len(ref_err)})")
    if tempo_err:
        errs = np.array([e for e, _, _ in tempo_err])
        worst, name, m = max(tempo_err, key=lambda t: t[0])
        print(f"tempo_ratio error on tempo-changed copies: median {100 * np.median(errs):.1f}%, within 3% "
              f"{np.mean(errs <= 0.03) * 100:.1f}%, max {100 * worst:.1f}% (n={len(errs)}; the worst: {name}, "
              f"{m.method}, tempo_ratio {m.tempo_ratio:.3f} over {m.duration:.1f} s)")
    n_all = sum(verdicts.values())
    print(f"Review rate over all {n_all} queries: {100 * verdicts[Verdict.review] / n_all:.1f}%")


def main(argv=None) -> None:
    args = _arguments(argv)
    bench = _bench(args)
    found = copies(bench, args.per_transform)
    collages(bench, args.per_transform * 2, found.stats)
    lic = licensed_excerpts(bench, args.per_transform * 4, found.wrong_blocks)
    neg, false_blocks, reviews = negatives(bench, args.negatives, args.seed)
    print_recall(found.stats, bench.seconds, args.per_transform)
    print_false_blocks(neg, false_blocks, reviews, lic, found.wrong_blocks)
    print_errors(found, bench.verdicts)


if __name__ == "__main__":
    main()
