"""Copies under new material, mixed the way producers mix (held-out tracks only).

    python -m benchmarks.mixes [--per-cell 16] [--negatives 300] [--seconds 5 10 30] [--snr 0 -5 -10]

The catalog is the decision benchmark's (the held-out ``catalog`` tracks, every fourth licensed).
Each query copies an excerpt of a protected track and mixes it as ``corpus.produce`` does: under
music of a game other than the copy's, from the held-out ``unseen`` tracks (never trained on),
the two matched by integrated loudness (BS.1770) over the copy's span at the row's SNR, the copy
filling the output or, for half of the queries, placed at a random point of an output twice as
long; then mastered (compressor and peak limiter) and MP3-encoded. The same copy under the same
music is also mixed the old way (``corpus.mix``: RMS over the excerpt, the copy filling the
output, neither master nor codec: the robustness benchmark's ``mix-*dB`` rows) for comparison.
Negatives are held-out ``unseen`` music of one game mixed under that of another through the same
chain, as long as the rows' copies and at their SNRs.

Prints, per copy length and SNR, the copies blocked naming the copied track where the copy is
(new chain, old chain), which layers made the blocking match, and the false blocks (a block
naming a catalog track that shares material with the music under the copy is not one: that
music holds it).
"""
from __future__ import annotations

import argparse
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from benchmarks import corpus as C
from benchmarks.calibrate import WEIGHTS
from benchmarks.decision import Bench, _bench, upper95
from benchmarks.songs import Song, blocked_by, false_blocks
from detector.policy import Verdict


def loud_excerpt(track: C.Track, secs: float, rng: np.random.Generator) -> np.ndarray | None:
    clip = C.load(track)
    s = C.loud_start(clip, secs, rng)
    return None if s is None else clip.excerpt(s, s + secs).samples


def overlay_for(track: C.Track, pool: list[C.Track], secs: float,
                rng: np.random.Generator) -> tuple[C.Track, np.ndarray]:
    """A loud ``secs`` of a random track of ``pool`` from a package other than ``track``'s, and
    that track."""
    return C.music_from([t for t in pool if t.package != track.package], secs, rng)


def make_pair(among: list[C.Track], pool: list[C.Track], tracks: list[C.Track], secs: float, snr_db: float,
              rng: np.random.Generator) -> tuple[Song, Song]:
    """A ``secs`` copy of a random track of ``among`` mixed at ``snr_db``: (the producer's mix,
    the old mix of the same copy under the same music)."""
    while True:
        truth = among[rng.integers(len(among))]
        copy = loud_excerpt(truth, secs, rng)
        if copy is not None:
            break
    length = secs if rng.random() < 0.5 else 2 * secs
    under, overlay = overlay_for(truth, pool, length, rng)
    at = float(rng.uniform(0, length - secs))
    related, host = frozenset(C.related(truth, tracks)), frozenset(C.related(under, tracks))
    new = Song("producer", C.produce(copy, overlay, snr_db, at), related, truth.track_id, at, at + secs, host)
    i = int(at * C.SR)
    old = Song("old", C.mix(copy, overlay[i:i + len(copy)], snr_db), related, truth.track_id, 0.0, secs, host)
    return new, old


def _arguments(argv) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=WEIGHTS)
    ap.add_argument("--per-cell", type=int, default=16, help="copies per length and SNR")
    ap.add_argument("--negatives", type=int, default=300)
    ap.add_argument("--seconds", type=float, nargs="+", default=[5.0, 10.0, 30.0], help="copy lengths")
    ap.add_argument("--snr", type=float, nargs="+", default=[0.0, -5.0, -10.0],
                    help="loudness of the copy over the music it is mixed under, dB")
    ap.add_argument("--seed", type=int, default=37)
    ap.add_argument("--home", type=Path, default=Path.home() / ".cache/clearance/bench-home")
    return ap.parse_args(argv)


def copies(bench: Bench, pool: list[C.Track], args) -> tuple[dict, list]:
    """Per (seconds, snr): lists of the layers that blocked each new-chain and old-chain copy (None
    where it was not blocked); and every block naming an unrelated track."""
    cells, wrong, t0 = defaultdict(lambda: ([], [])), [], time.time()
    for secs in args.seconds:
        for snr in args.snr:
            for _ in range(args.per_cell):
                pair = make_pair(bench.protected_tracks, pool, bench.tracks, secs, snr, bench.rng)
                for q, got in zip(pair, cells[secs, snr]):
                    d = bench.run(q.samples)
                    match = blocked_by(d, q)
                    got.append(match.method if match else None)
                    wrong += [(f"{secs:g} s at {snr:g} dB of {q.truth}", *b) for b in false_blocks(d, q)[:1]]
            new, old = cells[secs, snr]
            print(f"  {secs:g} s at {snr:g} dB: {sum(map(bool, new))}/{len(new)} blocked, old mix "
                  f"{sum(map(bool, old))}/{len(old)} ({time.time() - t0:.0f} s)", flush=True)
    return cells, wrong


def negatives(bench: Bench, pool: list[C.Track], args) -> tuple[int, int, list]:
    """``args.negatives`` mixes of music not in the catalog, of the rows' lengths and SNRs:
    (checked, sent to review, each false block's negative and first unrelated match)."""
    rng = np.random.default_rng(args.seed + 1)
    review, blocks = 0, []
    for k in range(args.negatives):
        secs, snr = args.seconds[k % len(args.seconds)], args.snr[k // len(args.seconds) % len(args.snr)]
        while True:
            t = pool[rng.integers(len(pool))]
            x = loud_excerpt(t, secs, rng)
            if x is not None:
                break
        under, overlay = overlay_for(t, pool, secs, rng)
        q = Song("negative", C.produce(x, overlay, snr, 0.0), frozenset(C.related(t, bench.tracks)),
                 host=frozenset(C.related(under, bench.tracks)))
        d = bench.run(q.samples)
        wrong = false_blocks(d, q)
        if wrong:
            blocks.append((f"{secs:g} s at {snr:g} dB of {t.track_id}", *wrong[0]))
        review += d.verdict is Verdict.review
    return args.negatives, review, blocks


def rows(cells: dict) -> list[str]:
    out = [f"{'copy':<8}{'SNR':>6}{'n':>5}{'blocked':>9}{'old mix':>9}   layers of the blocking match"]
    totals = defaultdict(lambda: ([], []))
    for (secs, snr), (new, old) in cells.items():
        layers = Counter(m for m in new if m)
        out.append(f"{secs:>5g} s{snr:>5g} dB{len(new):>4}{100 * np.mean([bool(m) for m in new]):>8.1f}%"
                   f"{100 * np.mean([bool(m) for m in old]):>8.1f}%   "
                   + ", ".join(f"{k} {v}" for k, v in layers.most_common()))
        totals[snr][0].extend(new)
        totals[snr][1].extend(old)
    for snr, (new, old) in totals.items():
        out.append(f"{'all':>7}{snr:>5g} dB{len(new):>4}{100 * np.mean([bool(m) for m in new]):>8.1f}%"
                   f"{100 * np.mean([bool(m) for m in old]):>8.1f}%")
    return out


def main(argv=None) -> None:
    args = _arguments(argv)
    # the decision benchmark's catalog, exact index, searched whole (its defaults)
    bench = _bench(argparse.Namespace(**{**vars(args), "factory": "auto", "nprobe": 32, "shards": 1, "engine": "local",
                                         "seconds": (min(args.seconds), max(args.seconds))}))
    pool = [t for t in bench.tracks if t.split == "heldout" and t.role == "unseen"]
    cells, wrong = copies(bench, pool, args)
    n, review, blocks = negatives(bench, pool, args)
    print(f"\nCopies of protected held-out tracks mixed under held-out music of another game "
          f"({args.per_cell} per row), blocked naming the copied track where it is:")
    print("\n".join(rows(cells)))
    checked = 2 * sum(len(new) for new, _ in cells.values())
    print(f"Copies also blocked naming an unrelated track: {len(wrong)} of {checked}")
    for name, m, i in wrong:
        print(f"  {name} → {i.external_id} ({m.method}, score {m.score:.6f}, {m.duration:.1f} s)")
    print(f"False blocks on {n} mixed negatives: {len(blocks)} (95% upper bound {100 * upper95(len(blocks), n):.2f}%), "
          f"sent to review {review}")
    for name, m, i in blocks:
        print(f"  {name} → {i.external_id} ({m.method}, score {m.score:.6f}, {m.duration:.1f} s)")


if __name__ == "__main__":
    main()
