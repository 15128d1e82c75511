"""Load on the HTTP service: N concurrent clients posting 30 s MP3 outputs for T seconds to a real
``clearance serve`` process on loopback, over the whole ``full`` corpus indexed (301 tracks).

    python -m benchmarks.load [--clients 16] [--seconds 60] [--workers 2] [--queue 16]
                              [--shards 1] [--engine local|ray] [--replicas 1]
                              [--home ~/.cache/clearance/bench-service-home]

Each client posts, waits for the answer and posts again. Prints how long the server took to be
ready, throughput, latency percentiles of the answered checks, and every other outcome: 503 (the
queue was full: deliberate) and errors (any other status, or a failed connection). The catalog
home is built on first use (see ``full_catalog``) and shared with ``benchmarks.latency``.
``--shards N --engine ray`` serves the catalog in N shards, each a Ray Serve deployment on a
local Ray instance (``--replicas`` replicas each), whose resident memory is printed per replica.
The replicas open the shards that a publish saved, as they do for a catalog indexed with
``CLEARANCE_SERVE_SHARDS=N`` (the home is published once more, rebuilt with them, where its
generation holds none).
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import av
import httpx
import numpy as np

from benchmarks import corpus as C
from detector.audio import decode
from detector.model import DEFAULT_WEIGHTS
from detector.policy import Rights
from service.auth import Role, create_key
from index.sharded import shard_folder
from service.engine import Engine
from service.settings import Settings

HOME = Path.home() / ".cache/clearance/bench-service-home"
OUTPUT_S = 30.0


def full_catalog(home: Path = HOME) -> Engine:
    """An engine over ``home`` holding every track of the ``full`` corpus as protected. Indexes
    what is missing (all 17.9 h the first time: tens of minutes on 2 cores), and starts again
    when the model weights have changed since the home was built."""
    weights = Settings().model or Path(__file__).resolve().parents[1] / "detector" / "weights" / DEFAULT_WEIGHTS
    digest = hashlib.sha256(Path(weights).read_bytes()).hexdigest()
    stamp = home / "weights.sha256"
    if home.exists() and (not stamp.exists() or stamp.read_text() != digest):
        shutil.rmtree(home)
    home.mkdir(parents=True, exist_ok=True)
    stamp.write_text(digest)
    folder = C.music_folder("full")
    tracks = C.manifest(folder)
    engine = Engine(Settings(home=home))
    done = 0

    def progress(path: str, outcome: str, seconds: float) -> None:
        nonlocal done
        done += 1
        if outcome != "skipped" and done % 10 == 0:
            print(f"  indexed {done}/{len(tracks)}", file=sys.stderr, flush=True)

    summary = engine.catalog.index_paths([t.path for t in tracks], Rights.protected,
                                         manifest=folder / "manifest.csv", progress=progress)
    if summary.failed:
        raise SystemExit(f"indexing failed: {summary.failed}")
    return engine


def saved_shards(home: Path, count: int) -> Engine:
    """An engine over ``home`` whose published generation holds ``count`` saved shards,
    rebuilt with them where it holds none (from the stored vectors: a minute or two)."""
    engine = Engine(Settings(home=home, serve_shards=count))
    if not shard_folder(engine.catalog.vectors.folder, 0, count).exists():
        print(f"  publishing the catalog in {count} shards", file=sys.stderr, flush=True)
        engine.catalog.rebuild()
    return engine


def outputs(n: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """``n`` outputs as a generator would publish them: 30 s excerpts of distinct corpus tracks,
    loud parts, MP3 at 44.1 kHz stereo, 192 kbps."""
    rng = np.random.default_rng(seed)
    tracks = C.manifest(C.music_folder("full"))
    found = []
    for i in rng.permutation(len(tracks)):
        start = C.loud_start(C.load(tracks[i]), OUTPUT_S, rng)
        if start is not None:
            clip = decode(tracks[i].path, 44100).excerpt(start, start + OUTPUT_S)
            found.append((f"{tracks[i].track_id}-{start:.0f}s.mp3", mp3_stereo(clip.samples)))
        if len(found) == n:
            return found
    raise SystemExit(f"only {len(found)} tracks have {OUTPUT_S:.0f} s of sound")


def mp3_stereo(samples: np.ndarray, rate: int = 44100, kbps: int = 192) -> bytes:
    """Mono ``samples`` at ``rate`` Hz as a stereo MP3 file at ``kbps``."""
    pcm = np.repeat((np.clip(samples, -1, 1) * 32767).astype(np.int16), 2)[None]   # packed stereo
    frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="stereo")
    frame.sample_rate = rate
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp3") as out:
        stream = out.add_stream("libmp3lame", rate=rate, layout="stereo")
        stream.bit_rate = kbps * 1000
        resampler = av.AudioResampler(format=stream.format.name, layout="stereo", rate=rate)
        for converted in [*resampler.resample(frame), *resampler.resample(None)]:
            out.mux(stream.encode(converted))
        out.mux(stream.encode(None))
    return buf.getvalue()


@contextmanager
def running_server(home: Path, **settings):
    """A ``clearance serve`` process over ``home`` on a free loopback port, with ``settings``
    as ``CLEARANCE_*`` variables; yields (URL, a submitter key) once it is ready."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "CLEARANCE_HOME": str(home), **{f"CLEARANCE_{k.upper()}": str(v) for k, v in settings.items()}}
    with open(home / "server.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port)], env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                if proc.poll() is not None:
                    raise SystemExit(f"server exited; see {home / 'server.log'}")
                time.sleep(0.3)
        yield url, create_key(Engine(Settings(home=home)).store, Role.submitter, "benchmark")[1]
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def shard_memory() -> list[float]:
    """Resident memory (MB) of each process holding a shard (the Serve replicas of the
    ``…-shard-K-of-N`` applications), by process title."""
    out = subprocess.run(["ps", "-eo", "rss,args"], capture_output=True, text=True).stdout.splitlines()
    return sorted(int(line.split()[0]) / 1024 for line in out if re.search(r"ServeReplica:\S*-shard-\d+-of-\d+", line))


async def load(url: str, key: str, files: list[tuple[str, bytes]], clients: int, seconds: float):
    """Run the clients; returns (latencies of 200s in seconds, Counter of outcomes, wall seconds)."""
    latencies: list[float] = []
    outcomes: Counter = Counter()
    t_end = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=600,
                                 headers={"Authorization": f"Bearer {key}"}) as http:
        async def client(i: int) -> None:
            n = i
            while time.perf_counter() < t_end:
                name, data = files[n % len(files)]
                n += clients
                t0 = time.perf_counter()
                try:
                    r = await http.post("/v1/checks", files={"audio": (name, data)})
                except httpx.TransportError as exc:
                    outcomes[f"error: {type(exc).__name__}"] += 1
                    continue
                if r.status_code == 200:
                    latencies.append(time.perf_counter() - t0)
                    outcomes["200"] += 1
                elif r.status_code == 503:
                    outcomes["503"] += 1
                    await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
                else:
                    outcomes[f"error: HTTP {r.status_code}"] += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(clients)))
    return latencies, outcomes, time.perf_counter() - t0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--workers", type=int, default=Settings().check_workers, help="CLEARANCE_CHECK_WORKERS")
    ap.add_argument("--queue", type=int, default=Settings().check_queue, help="CLEARANCE_CHECK_QUEUE")
    ap.add_argument("--outputs", type=int, default=32, help="distinct outputs the clients take turns with")
    ap.add_argument("--shards", type=int, default=1, help="CLEARANCE_SERVE_SHARDS")
    ap.add_argument("--engine", choices=["local", "ray"], default="local", help="CLEARANCE_SERVE_ENGINE")
    ap.add_argument("--replicas", type=int, default=1, help="CLEARANCE_SERVE_REPLICAS")
    ap.add_argument("--home", type=Path, default=HOME)
    args = ap.parse_args(argv)

    engine = full_catalog(args.home)
    if args.shards > 1:
        engine = saved_shards(args.home, args.shards)
    vectors = engine.catalog.vectors
    n_tracks = len(vectors.tracks())
    files = outputs(args.outputs)
    t0 = time.perf_counter()
    with running_server(args.home, check_workers=args.workers, check_queue=args.queue, serve_shards=args.shards,
                        serve_engine=args.engine, serve_replicas=args.replicas) as (url, key):
        ready_s = time.perf_counter() - t0
        latencies, outcomes, wall = asyncio.run(load(url, key, files, args.clients, args.seconds))
        refused = re.search(r'^clearance_pool_refused_total\{pool="checks"\} (\S+)$', httpx.get(f"{url}/metrics").text,
                            re.M).group(1)
        held = shard_memory() if args.engine == "ray" else []

    answered = outcomes["200"]
    errors = sum(v for k, v in outcomes.items() if k.startswith("error"))
    print(f"load: {args.clients} clients for {args.seconds:.0f} s against clearance serve "
          f"(check_workers {args.workers}, check_queue {args.queue}, {args.shards} shard(s), {args.engine}"
          f"{f', {args.replicas} replica(s) each' if args.engine == 'ray' else ''}) on {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"catalog: {n_tracks} tracks, {vectors.size:,} vectors ({vectors.info.factory}); "
          f"outputs: {len(files)} × {OUTPUT_S:.0f} s MP3 (44.1 kHz stereo, 192 kbps)")
    print(f"{'server ready after':<26}{ready_s:.1f} s  (from its start to /readyz answering 200)")
    print(f"{'requests':<26}{sum(outcomes.values())}")
    print(f"{'answered 200':<26}{answered}  ({answered / wall:.2f} checks/s over {wall:.1f} s)")
    print(f"{'refused 503 (queue full)':<26}{outcomes['503']}  (server counted {float(refused):.0f})")
    print(f"{'errors':<26}{errors}  {dict((k, v) for k, v in outcomes.items() if k.startswith('error'))}")
    if held:
        print(f"{'resident memory of shards':<26}" + ", ".join(f"{mb:.0f} MB" for mb in held))
    if latencies:
        p50, p95, p99 = np.percentile(latencies, [50, 95, 99])
        print(f"{'latency of 200s, s':<26}p50 {p50:.2f}  p95 {p95:.2f}  p99 {p99:.2f}  max {max(latencies):.2f}")


if __name__ == "__main__":
    main()
