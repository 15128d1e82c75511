"""Indexing throughput on the ``full`` corpus (301 tracks, 17.9 h): decode → embed → add, end to
end and per stage, with 1 and 2 workers.

    python -m benchmarks.indexing [--workers 2 1] [--engines local ray] [--limit N]

Each run indexes every track of the corpus into a fresh catalog (exact index, SQLite) through
``Catalog.index_paths``, as ``clearance index`` does, after reading every file once so that all
runs find them in the page cache. Prints, per run: wall time, audio seconds per wall second
(end to end: hashing, decoding, embedding, Chromaprint, database, index and shard writes,
publishing), and for each stage the audio seconds per second spent in it (summed over workers,
so a stage's rate is what one core does). The first row is the number the issue's target
(≥ 300× real time on 2 cores) is about.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks import corpus as C
from detector.policy import Rights
from index.catalog import STAGES


def run(files: list[Path], workers: int, engine_name: str, home: Path) -> dict:
    from service.engine import Engine
    from service.settings import Settings

    engine = Engine(Settings(home=home, index_factory="Flat"))
    catalog = engine.catalog
    t0 = time.perf_counter()
    summary = catalog.index_paths(files, Rights.protected, workers=workers, engine=engine_name)
    wall = time.perf_counter() - t0
    if summary.failed:
        raise SystemExit(f"indexing failed: {summary.failed[:3]}")
    return {"engine": engine_name, "workers": workers, "tracks": len(summary.indexed), "audio_s": summary.audio_s,
            "wall_s": wall, "vectors": catalog.vectors.size, "stage_s": summary.stage_s}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", nargs="+", type=int, default=[2, 1])
    ap.add_argument("--engines", nargs="+", default=["local"], choices=["local", "ray"])
    ap.add_argument("--limit", type=int, help="only the first N tracks (a quick run)")
    args = ap.parse_args(argv)
    files = [t.path for t in C.manifest(C.music_folder("full"))][:args.limit]
    for f in files:                      # into the page cache, so every run reads the same way
        f.read_bytes()
    print(f"{len(files)} files, {sum(f.stat().st_size for f in files) / 1e6:.0f} MB, {os.cpu_count()} CPU cores")
    head = (f"{'engine':<6} {'workers':>7} {'tracks':>6} {'audio h':>7} {'wall s':>7} {'x real time':>11} | "
            + " ".join(f"{s:>11}" for s in STAGES))
    print(head)
    print(f"{'':<43}  audio s per second spent in each stage (one core)")
    print("-" * len(head))
    for engine_name in args.engines:
        for workers in args.workers:
            home = Path(tempfile.mkdtemp(prefix="clearance-index-bench-"))
            try:
                r = run(files, workers, engine_name, home)
            finally:
                shutil.rmtree(home, ignore_errors=True)
            rates = " ".join(f"{r['audio_s'] / max(r['stage_s'][s], 1e-9):>10.0f}x" for s in STAGES)
            print(f"{engine_name:<6} {workers:>7} {r['tracks']:>6} {r['audio_s'] / 3600:>7.2f} {r['wall_s']:>7.0f} "
                  f"{r['audio_s'] / r['wall_s']:>10.0f}x | {rates}", flush=True)


if __name__ == "__main__":
    main()
