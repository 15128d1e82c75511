"""How long one check takes: MP3 outputs against the whole ``full`` corpus indexed (301 tracks,
17.9 h), decode included, one check at a time.

    python -m benchmarks.latency [--outputs 40] [--song-runs 5] [--rendered N]
                                 [--home ~/.cache/clearance/bench-service-home]

Times 30 s outputs twice: in-process (``Engine.check``: decode, fingerprint, search, match,
decide, store) and over HTTP (``POST /v1/checks`` to a real ``clearance serve`` on loopback with
one check worker, upload and JSON included); then a 600 s output (20 of the outputs one after
another) in-process; then whole songs over HTTP to the same server: a 240 s output (8 of the
outputs) and the 600 s one, ``--song-runs`` times each, taking turns. 600 s is the default
duration cap (``max_audio_s``), which refuses only audio longer than it, so the 10-minute output
is exactly 600 s; at 192 kbps it is 14.4 MB, under the 100 MB upload cap. For in-process checks
it also prints the CPU time used (both cores count): on a busy machine it shows the work apart
from the waiting. The first run builds the catalog home (``benchmarks.load.full_catalog``: tens
of minutes on 2 cores). Prints a table, the peak memory one 30 s and one 600 s check allocate,
and whether the claims of issue #32 hold over HTTP: p50 ≤ 1 s for a 30 s output, ≤ 2 s for a
4-minute one, ≤ 5 s for a 10-minute one.

``--rendered N`` adds to the catalog the reference renders of N works of music21's corpus
(``detector/versionset.py``; kept as Ogg files in the home), in a home of its own
(``bench-service-home-rendered-N``): the catalog of real and rendered music that the version
layer's issue (#35) times checks against.
"""
from __future__ import annotations

import argparse
import os
import time
import tracemalloc
import zlib
from pathlib import Path

import httpx
import numpy as np
import torch

from benchmarks.load import HOME, OUTPUT_S, full_catalog, mp3_stereo, outputs, running_server
from detector.audio import Clip, decode, encode
from detector.policy import Rights

CLAIM_P50_S = 1.0                           # a 30 s output, over HTTP
SONG_CLAIMS = ((240.0, 2.0), (600.0, 5.0))  # (whole-song output s, claimed p50 s over HTTP): issue #32
WARMUP = 3
LONG_RUNS = 3


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--outputs", type=int, default=40, help="30 s outputs to time (at least 20)")
    ap.add_argument("--song-runs", type=int, default=5, help="HTTP checks of each whole-song output (240 s, 600 s)")
    ap.add_argument("--home", type=Path, help=f"catalog home [default {HOME}, with --rendered N: "
                                              f"{HOME.name}-rendered-N beside it]")
    ap.add_argument("--rendered", type=int, default=0, help="also index the reference renders of this many works "
                                                            "of music21's corpus")
    args = ap.parse_args(argv)
    args.home = args.home or (HOME.with_name(f"{HOME.name}-rendered-{args.rendered}") if args.rendered else HOME)
    if args.outputs < 20:
        ap.error("--outputs must be at least 20: the 600 s output is made of 20 of them")
    if args.song_runs < 1:
        ap.error("--song-runs must be at least 1")

    engine = full_catalog(args.home)
    if args.rendered:
        add_rendered(engine, args.rendered, args.home / "rendered")
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

    pieces = [decode(data, 44100).samples for _, data in files[WARMUP:WARMUP + 20]]
    songs = {s: mp3_stereo(np.concatenate(pieces[:round(s / OUTPUT_S)])) for s, _ in SONG_CLAIMS}
    long = songs[600.0]
    long_times, long_cpu = [], []
    for _ in range(LONG_RUNS):
        wall, cpu, _ = timed("600s.mp3", long)
        long_times.append(wall)
        long_cpu.append(cpu)

    memory = {s: peak_allocated(engine, data) for s, data in ((OUTPUT_S, files[WARMUP][1]), (600.0, long))}

    over_http, song_times = [], {s: [] for s in songs}
    with running_server(args.home, check_workers=1) as (url, key), \
            httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as http:
        def posted(name: str, data: bytes) -> float:
            """Wall seconds of one check over HTTP, upload and answer included."""
            t0 = time.perf_counter()
            http.post("/v1/checks", files={"audio": (name, data)}).raise_for_status()
            return time.perf_counter() - t0

        for i, (name, data) in enumerate(files):
            seconds = posted(name, data)
            if i >= WARMUP:
                over_http.append(seconds)
        for _ in range(args.song_runs):     # taking turns, so a burst of other load hits both lengths
            for s, data in songs.items():
                song_times[s].append(posted(f"{s:.0f}s.mp3", data))

    print(f"{OUTPUT_S:.0f} s MP3 outputs (44.1 kHz stereo, 192 kbps) and {' and '.join(f'{s:.0f} s' for s in songs)} "
          f"ones made of them, against {len(tracks)} tracks "
          f"({sum(t.duration_s for t in tracks) / 3600:.1f} h, {vectors.size:,} vectors, {vectors.info.factory})")
    print(f"machine: {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, load average "
          f"{os.getloadavg()[0]:.1f} at the end; decisions: "
          f"{', '.join(f'{d} {decisions.count(d)}' for d in sorted(set(decisions)))}")
    print(f"{'path':<34}{'n':>4}{'p50 s':>8}{'p95 s':>8}{'max s':>8}{'CPU s p50':>11}")
    for label, times, cpu in [("in-process Engine.check", in_process, f"{np.median(in_process_cpu):>11.2f}"),
                              ("HTTP POST /v1/checks (1 client)", over_http, f"{'–':>11}"),
                              ("in-process, 600 s output", long_times, f"{np.median(long_cpu):>11.2f}"),
                              *((f"HTTP POST, {s:.0f} s output", song_times[s], f"{'–':>11}") for s in songs)]:
        p50, p95 = np.percentile(times, [50, 95])
        print(f"{label:<34}{len(times):>4}{p50:>8.2f}{p95:>8.2f}{max(times):>8.2f}{cpu}")
    print("peak of the arrays allocated during one in-process check (tracemalloc): "
          + ", ".join(f"{s:.0f} s output {b / 1e9:.2f} GB" for s, b in memory.items()))
    for seconds, times, claim in [(OUTPUT_S, over_http, CLAIM_P50_S), *((s, song_times[s], c) for s, c in SONG_CLAIMS)]:
        p50 = float(np.percentile(times, 50))
        print(f"claim {seconds:.0f} s output p50 ≤ {claim:.0f} s over HTTP, decode included: "
              f"{'met' if p50 <= claim else 'NOT met'} ({p50:.2f} s, n {len(times)})")


def add_rendered(engine, n: int, folder: Path) -> None:
    """Index, as protected, the reference renders of ``n`` works of the version layer's
    development set (spread over its collections), rendered once into ``folder``."""
    from detector import versionset
    chosen = sorted(versionset.works(), key=lambda w: zlib.crc32(w.work_id.encode()))[:n]
    folder.mkdir(parents=True, exist_ok=True)
    renderer = versionset.Renderer()
    for w in chosen:
        path = folder / f"{w.work_id.replace('/', '--')}.ogg"
        if not path.exists():
            audio = renderer.render(versionset.perform(w))
            path.write_bytes(encode(Clip(audio, versionset.SAMPLE_RATE, path.name), "ogg"))
    summary = engine.catalog.index_paths(sorted(folder.glob("*.ogg")), Rights.protected)
    if summary.failed:
        raise SystemExit(f"indexing failed: {summary.failed}")


def peak_allocated(engine, data: bytes) -> int:
    """Bytes: the peak of what Python and numpy allocate during one check of ``data``, above what
    was held before it (untimed: tracing slows the check)."""
    tracemalloc.start()
    try:
        engine.check(data, "memory.mp3")
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


if __name__ == "__main__":
    main()
