"""Whole songs: decisions on outputs of 1 to 8 minutes, as generators publish them, against the
whole corpus.

    python -m benchmarks.songs [--originals 300] [--per-cell 16] [--model PATH] [--seed 5] [--timing-only]

The catalog is every track of the ``full`` corpus but the held-out ``unseen`` ones (230 tracks,
15.8 h, all protected). Queries:

* **originals**, music that is not in the catalog (the ``unseen`` tracks: same games, same
  composers as catalog tracks): each one whole (up to 8 min), two of one game joined (with up to
  2 s of digital silence between), a 15–60 s passage looped to 5 min as generators extend a loop;
  half of them fade out over their last 5–15 s, some start with silence. A block is a false block,
  and a review a false review, unless it names only tracks that share material with the original
  (``related``: the ``related`` column counts those, blocked or sent to review).
* **hidden copies**: a 5, 10 or 15 s excerpt of a held-out catalog track, clean, pitch ±2 st,
  tempo 0.9/1.1× or mixed at 0 dB under other music, placed at a random point inside 3 min of
  other music (originals' tracks). Found when the output is blocked naming the track at the
  copy's place.
* **whole tracks**: held-out catalog tracks whole (up to 8 min), MP3 at 32 kb/s, pitch +2 st or
  tempo 1.1×.

Then seconds per check (``Engine.assess``: fingerprint, search, match, decide; decoding is
``benchmarks.latency``'s) against output length: 30 s, 1, 4 and 10 min, timed first, before the
decisions. ``--timing-only`` prints those alone (a minute), for a quiet machine.
"""
from __future__ import annotations

import argparse
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks import corpus as C
from benchmarks.calibrate import WEIGHTS
from benchmarks.decision import upper95
from detector.audio import Clip
from detector.matcher import Match
from detector.policy import Decision, Rights, Verdict

LONGEST_S = 480.0
LOOP_S = 300.0
HOST_S = 180.0
COPY_S = (5.0, 10.0, 15.0)
COPY_TRANSFORMS = ("clean", "pitch+2st", "pitch-2st", "tempo-0.9x", "tempo-1.1x", "mix-0dB")
WHOLE_TRANSFORMS = ("mp3-32k", "pitch+2st", "tempo-1.1x")
TIMED_S = (30.0, 60.0, 240.0, 600.0)


@dataclass(frozen=True)
class Song:
    """An output: ``samples`` (8 kHz) of ``kind``; ``related`` the catalog ids it may name
    (its own material); for a copy, ``truth`` and the copy's place in the output (seconds), and
    ``host`` the catalog ids that share material with the music it is mixed under (a block naming
    one is no false block, nor the copy found)."""

    kind: str
    samples: np.ndarray
    related: frozenset[str]
    truth: str = ""
    start: float = 0.0
    end: float = 0.0
    host: frozenset[str] = frozenset()


def song_catalog(engine, folder: Path, tracks: list[C.Track]):
    """The engine's catalog holding every track but the ``unseen`` ones, protected (built once
    per home; indexing is idempotent)."""
    paths = [t.path for t in tracks if t.role != "unseen"]
    summary = engine.catalog.index_paths(paths, Rights.protected, manifest=folder / "manifest.csv", workers=2)
    if summary.failed:
        raise SystemExit(f"indexing failed: {summary.failed}")
    return engine.catalog


def _fade(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Half the time a fade-out over the last 5–15 s; a quarter of the time 1–3 s of silence first."""
    x = x.copy()
    if rng.random() < 0.5:
        n = min(len(x), int(rng.uniform(5, 15) * C.SR))
        x[len(x) - n:] *= np.linspace(1.0, 0.0, n, dtype=np.float32) ** 2
    if rng.random() < 0.25:
        x = np.concatenate([np.zeros(int(rng.uniform(1, 3) * C.SR), np.float32), x])
    return x


def originals(tracks: list[C.Track], n: int, rng: np.random.Generator) -> list[Song]:
    """``n`` songs of 1–8 min made of ``unseen`` tracks only: each whole, then joined pairs and
    loops in turn."""
    pool = [t for t in tracks if t.role == "unseen"]
    out = []
    for t in pool:
        x = C.load(t).samples[: int(LONGEST_S * C.SR)]
        if len(x) >= 60 * C.SR and len(out) < n:
            out.append(Song("whole", _fade(x, rng), frozenset(C.related(t, tracks))))
    by_game = defaultdict(list)
    for t in pool:
        by_game[t.package].append(t)
    games = [g for g in by_game.values() if len(g) > 1]
    while len(out) < n:
        if len(out) % 2:
            a, b = (games[rng.integers(len(games))][i] for i in rng.permutation(2))
            gap = np.zeros(int(rng.uniform(0, 2) * C.SR), np.float32)
            x = np.concatenate([C.load(a).samples, gap, C.load(b).samples])[: int(LONGEST_S * C.SR)]
            if len(x) >= 60 * C.SR:
                out.append(Song("joined", _fade(x, rng), frozenset(C.related(a, tracks) | C.related(b, tracks))))
        else:
            t = pool[rng.integers(len(pool))]
            clip = C.load(t)
            secs = float(rng.uniform(15, 60))
            s = C.loud_start(clip, secs, rng)
            if s is not None:
                x = np.resize(clip.excerpt(s, s + secs).samples, int(LOOP_S * C.SR))
                out.append(Song("looped", _fade(x, rng), frozenset(C.related(t, tracks))))
    return out


def host_music(pool: list[C.Track], seconds: float, rng: np.random.Generator) -> np.ndarray:
    """``seconds`` of other music: random tracks of ``pool`` from random points, one after another."""
    parts, total = [], 0
    while total < seconds * C.SR:
        clip = C.load(pool[rng.integers(len(pool))])
        x = clip.samples[int(rng.uniform(0, max(clip.duration - 30, 0)) * C.SR):]
        parts.append(x)
        total += len(x)
    return np.concatenate(parts)[: int(seconds * C.SR)]


def hidden_copies(tracks: list[C.Track], per_cell: int, rng: np.random.Generator) -> list[Song]:
    """Copies of 5, 10 and 15 s under each transform, each inside 3 min of other music."""
    protected = [t for t in tracks if t.split == "heldout" and t.role == "catalog" and t.stem != "song"]
    songs = [t for t in tracks if t.split == "heldout" and t.stem == "song"]
    pool = [t for t in tracks if t.role == "unseen"]
    out = []
    for secs in COPY_S:
        for name in COPY_TRANSFORMS:
            for _ in range(per_cell):
                q = C.make_query(name, secs, protected, songs, pool, rng)
                host = host_music(pool, HOST_S, rng)
                at = int(rng.uniform(0, HOST_S - secs) * C.SR)
                x = np.concatenate([host[:at], q.samples, host[at + len(q.samples):]])
                out.append(Song(f"{secs:g} s {name}", x, frozenset(C.related(q.truth, tracks)), q.truth.track_id,
                                at / C.SR, at / C.SR + len(q.samples) / C.SR))
    return out


def whole_copies(tracks: list[C.Track], n: int, rng: np.random.Generator) -> list[Song]:
    """``n`` held-out catalog tracks whole (up to 8 min), each under one of ``WHOLE_TRANSFORMS``."""
    protected = [t for t in tracks if t.split == "heldout" and t.role == "catalog" and t.stem != "song"]
    out = []
    for i in range(n):
        t = protected[rng.integers(len(protected))]
        name = WHOLE_TRANSFORMS[i % len(WHOLE_TRANSFORMS)]
        x = C.TRANSFORMS[name](C.load(t).samples[: int(LONGEST_S * C.SR)], rng, [])
        out.append(Song(f"whole {name}", x, frozenset(C.related(t, tracks)), t.track_id, 0.0, len(x) / C.SR))
    return out


def false_blocks(d: Decision, song: Song) -> list:
    return [(m, i) for m, i in d.blocking if i.external_id not in song.related | song.host]


def false_reviews(d: Decision, song: Song) -> list:
    """The matches that send ``song`` to review naming a track that shares no material with it
    (a review of a track that does is a right one, as a block of it is)."""
    if d.verdict is not Verdict.review:
        return []
    return [(m, i) for m, i in d.matches if i.external_id not in song.related | song.host]


def found(d: Decision, song: Song) -> bool:
    """Blocked, naming the copied track (or one sharing its material) where the copy is."""
    return blocked_by(d, song) is not None


def blocked_by(d: Decision, song: Song) -> Match | None:
    """The match that blocks ``song`` naming the copied track (or one sharing its material) where
    the copy is, or None."""
    return next((m for m, i in d.blocking
                 if i.external_id in song.related and m.query_start < song.end and m.query_end > song.start), None)


def assess_all(engine, queries: list[Song], label: str) -> list[tuple[Song, Decision, float]]:
    out, t0 = [], time.time()
    for k, song in enumerate(queries, 1):
        t = time.perf_counter()
        d = engine.assess(Clip(song.samples, C.SR, song.kind))
        out.append((song, d, time.perf_counter() - t))
        if k % 25 == 0 or k == len(queries):
            print(f"  {label}: {k}/{len(queries)} ({time.time() - t0:.0f} s)", flush=True)
    return out


def originals_rows(results) -> list[str]:
    rows, by_kind = [], defaultdict(list)
    for song, d, _ in results:
        by_kind[song.kind].append((song, d))
    rows.append(f"{'originals':<12}{'n':>5}{'minutes':>10}{'blocked':>9}{'review':>8}{'related':>9}")
    for kind, got in [*by_kind.items(), ("all", [(s, d) for s, d, _ in results])]:
        mins = np.mean([len(s.samples) / C.SR / 60 for s, _ in got])
        blocked = sum(bool(false_blocks(d, s)) for s, d in got)
        review = sum(bool(false_reviews(d, s)) for s, d in got)
        related = sum(d.verdict is not Verdict.allow and not false_blocks(d, s) and not false_reviews(d, s)
                      for s, d in got)
        rows.append(f"{kind:<12}{len(got):>5}{mins:>10.1f}{blocked:>9}{review:>8}{related:>9}")
    n = len(results)
    blocked = sum(bool(false_blocks(d, s)) for s, d, _ in results)
    review = sum(bool(false_reviews(d, s)) for s, d, _ in results)
    related = sum(d.verdict is Verdict.review and not false_reviews(d, s) for s, d, _ in results)
    rows.append(f"False blocks on originals: {blocked}/{n} (95% upper bound {100 * upper95(blocked, n):.2f}%), "
                f"sent to review {review}/{n} = {100 * review / n:.1f}% ({related} more sent to review naming only "
                f"tracks that share the original's material)")
    for song, d, _ in results:
        for m, i in false_blocks(d, song) or false_reviews(d, song)[:1]:
            rows.append(f"  {d.verdict.value} {song.kind} ({len(song.samples) / C.SR:.0f} s) → {i.external_id} "
                        f"({m.method}, score {m.score:.6f}, output {m.query_start:.1f}–{m.query_end:.1f} s, "
                        f"tempo {m.tempo_ratio:.2f})")
    return rows


def copies_rows(results) -> list[str]:
    cells, lengths = defaultdict(list), defaultdict(list)
    for song, d, _ in results:
        cells[song.kind].append(found(d, song))
        lengths[song.kind.split(" s ")[0] + " s" if " s " in song.kind else "whole tracks"].append(found(d, song))
    rows = [f"{'hidden copy':<22}{'n':>5}{'blocked at its place':>22}"]
    rows += [f"{kind:<22}{len(v):>5}{100 * np.mean(v):>21.1f}%" for kind, v in cells.items()]
    rows += [f"{'all ' + length:<22}{len(v):>5}{100 * np.mean(v):>21.1f}%" for length, v in lengths.items()]
    wrong = sum(bool(false_blocks(d, s)) for s, d, _ in results)
    rows.append(f"Copies also blocked naming an unrelated track: {wrong}/{len(results)}")
    return rows


def timing_rows(engine, tracks: list[C.Track], rng: np.random.Generator, runs: int = 5) -> list[str]:
    pool = [t for t in tracks if t.role == "unseen"]
    rows = [f"{'output':<10}{'p50 s':>8}{'max s':>8}"]
    for secs in TIMED_S:
        times = []
        for _ in range(runs):
            x = host_music(pool, secs, rng)
            t = time.perf_counter()
            engine.assess(Clip(x, C.SR, "timed"))
            times.append(time.perf_counter() - t)
        rows.append(f"{secs / 60:>6.1f} min{np.median(times):>8.2f}{max(times):>8.2f}")
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=WEIGHTS)
    ap.add_argument("--originals", type=int, default=300)
    ap.add_argument("--per-cell", type=int, default=16, help="hidden copies per length and transform")
    ap.add_argument("--whole", type=int, default=24, help="whole catalog tracks transformed")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--home", type=Path, default=Path.home() / ".cache/clearance/bench-home")
    ap.add_argument("--timing-only", action="store_true", help="print the seconds per check alone")
    args = ap.parse_args(argv)

    folder = C.music_folder("full")
    tracks = C.manifest(folder)
    engine = C.bench_engine(args.home / f"songs-{args.model.stem}", args.model)
    catalog = song_catalog(engine, folder, tracks)
    hours = sum(t.duration_s for t in engine.store.list_tracks()) / 3600
    print(f"model {engine.embedder.version}, policy {engine.policy.version}; catalog {len(engine.store.list_tracks())} "
          f"tracks ({hours:.1f} h), {catalog.vectors.size} vectors", flush=True)
    rng = np.random.default_rng(args.seed)
    engine.assess(Clip(host_music([t for t in tracks if t.role == "unseen"], 30, rng), C.SR, "warm-up"))
    timed = ["Seconds per check against output length (fingerprint, search, match, decide):",
             *timing_rows(engine, tracks, np.random.default_rng(args.seed + 3))]
    if args.timing_only:
        print("\n".join(timed))
        return
    orig = assess_all(engine, originals(tracks, args.originals, np.random.default_rng(args.seed)), "originals")
    copies = assess_all(engine, hidden_copies(tracks, args.per_cell, np.random.default_rng(args.seed + 1))
                        + whole_copies(tracks, args.whole, np.random.default_rng(args.seed + 2)), "copies")
    print()
    for row in [*originals_rows(orig), "", *copies_rows(copies), "", *timed]:
        print(row)


if __name__ == "__main__":
    main()
