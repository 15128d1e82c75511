"""How long one check takes: 30 s MP3 outputs against the whole ``full`` corpus indexed (301
tracks, 17.9 h), decode included, one check at a time.

    python -m benchmarks.latency [--outputs 40] [--home ~/.cache/clearance/bench-service-home]

Times each output twice: in-process (``Engine.check``: decode, fingerprint, search, match,
decide, store) and over HTTP (``POST /v1/checks`` to a real ``clearance serve`` on loopback,
upload and JSON included); then a 600 s output (the default duration cap: 20 of the outputs one
after another) in-process. For in-process checks it also prints the CPU time used (both cores
count): on a busy machine it shows the work apart from the waiting. The first run builds the
catalog home (``benchmarks.load.full_catalog``: tens of minutes on 2 cores). Prints a table and
whether the claim "p50 ≤ 1 s" holds.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import httpx
import numpy as np
import torch

from benchmarks.load import HOME, OUTPUT_S, full_catalog, mp3_stereo, outputs, running_server
from detector.audio import decode

CLAIM_P50_S = 1.0
WARMUP = 3
LONG_RUNS = 3


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--outputs", type=int, default=40, help="30 s outputs to time (at least 20)")
    ap.add_argument("--home", type=Path, default=HOME)
    args = ap.parse_args(argv)
    if args.outputs < 20:
        ap.error("--outputs must be at least 20: the 600 s output is made of 20 of them")

    engine = full_catalog(args.home)
    files = outputs(args.outputs + WARMUP, seed=1)
    vectors = engine.catalog.vectors
    tracks = engine.store.list_tracks()

    def timed(name: str, data: bytes) -> tuple[float, float, dict]:
        """(wall s, CPU s of this process, result) of one in-process check."""
        t0, c0 = time.perf_counter(), time.process_time()
        result = engine.check(data, name)
        return time.perf_counter() - t0, time.process_time() - c0, result

    in_process, in_process_cpu, decisions = [], [], []
    for i, (name, data) in enumerate(files):
        wall, cpu, result = timed(name, data)
        if i >= WARMUP:
            in_process.append(wall)
            in_process_cpu.append(cpu)
            decisions.append(result["decision"])

    long = mp3_stereo(np.concatenate([decode(data, 44100).samples for _, data in files[WARMUP:WARMUP + 20]]))
    long_times, long_cpu = [], []
    for _ in range(LONG_RUNS):
        wall, cpu, _ = timed("600s.mp3", long)
        long_times.append(wall)
        long_cpu.append(cpu)

    over_http = []
    with running_server(args.home, check_workers=1) as (url, key), \
            httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as http:
        for i, (name, data) in enumerate(files):
            t0 = time.perf_counter()
            r = http.post("/v1/checks", files={"audio": (name, data)})
            r.raise_for_status()
            if i >= WARMUP:
                over_http.append(time.perf_counter() - t0)

    print(f"{OUTPUT_S:.0f} s MP3 outputs (44.1 kHz stereo, 192 kbps) against {len(tracks)} tracks "
          f"({sum(t.duration_s for t in tracks) / 3600:.1f} h, {vectors.size:,} vectors, {vectors.info.factory})")
    print(f"machine: {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, load average "
          f"{os.getloadavg()[0]:.1f} at the end; decisions: "
          f"{', '.join(f'{d} {decisions.count(d)}' for d in sorted(set(decisions)))}")
    print(f"{'path':<34}{'n':>4}{'p50 s':>8}{'p95 s':>8}{'max s':>8}{'CPU s p50':>11}")
    for label, times, cpu in [("in-process Engine.check", in_process, f"{np.median(in_process_cpu):>11.2f}"),
                              ("HTTP POST /v1/checks (1 client)", over_http, f"{'–':>11}"),
                              ("in-process, 600 s output", long_times, f"{np.median(long_cpu):>11.2f}")]:
        p50, p95 = np.percentile(times, [50, 95])
        print(f"{label:<34}{len(times):>4}{p50:>8.2f}{p95:>8.2f}{max(times):>8.2f}{cpu}")
    p50 = float(np.percentile(over_http, 50))
    print(f"claim p50 ≤ {CLAIM_P50_S:.0f} s over HTTP, decode included: {'met' if p50 <= CLAIM_P50_S else 'NOT met'} "
          f"({p50:.2f} s)")


if __name__ == "__main__":
    main()
