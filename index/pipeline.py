"""The indexing pipeline: stage functions of one file, and the engines that run them at scale.

    path ─ identify ─▶ Source ─(new content?)─ Fingerprinter ─▶ Fingerprint ─▶ added by the writer
         (sha256)                             (decode → embed → Chromaprint   (index/catalog.py)
                                               → landmarks → pitch classes)

Every engine runs the same two stage functions and yields ``Outcome`` values as files finish, in
no particular order; the one writer process adds them to the database and the index:

* ``run_local(…, workers=0)``: in the calling process, one file after another;
* ``run_local(…, workers=n)``: ``n`` worker processes on this machine, each holding the model;
* ``run_ray(…)``: Ray Data tasks on a local Ray instance or a cluster, one model per actor;
  each batch's vectors travel back as a shard file (``index/shards.py``).

A worker that dies (a decoder crash, the OOM killer) does not end the job: the files it may have
been working on are run again one at a time, and the one that kills a worker alone is recorded
as failed.
"""
from __future__ import annotations

import hashlib
import multiprocessing
import os
import signal
import socket
import sys
import time
import uuid
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from pathlib import Path
from typing import Callable, Generator, Iterable, Iterator, Union

import numpy as np

from detector import chromaprint, landmarks, version_model
from detector.audio import DecodeLimits, audible, decode
from detector.errors import ClearanceError
from detector.features import SILENCE_DBFS
from detector.model import Embedder
from index.shards import ShardStore


@dataclass(frozen=True)
class Source:
    """A file identified by its content: ``sha256`` hex digest, ``size_bytes``, and the CPU
    seconds hashing it took (``hash_s``)."""

    path: str
    sha256: str
    size_bytes: int
    hash_s: float


@dataclass(frozen=True)
class StageTimes:
    """CPU seconds of one worker's thread spent in each stage of one file (the worker runs
    torch on one thread, so this is the stage's cost on one core, however busy the machine)."""

    decode_s: float
    embed_s: float
    chromaprint_s: float
    landmarks_s: float
    version_s: float


@dataclass(frozen=True)
class Fingerprint:
    """Everything the catalog stores of one file. ``windows``: (n,) int64 numbers of the voiced
    reference windows (start = number × hop); ``vectors``: (n, dim) float32, L2-normalised;
    ``chromaprint``: (m,) uint32 sub-fingerprints; ``peaks``: (k,) uint32 landmark peaks;
    ``classes``: (12, f) float16 pitch-class power (the version layer's, ``detector/version.py``);
    ``duration_s`` seconds of audio."""

    source: Source
    duration_s: float
    windows: np.ndarray
    vectors: np.ndarray
    chromaprint: np.ndarray
    peaks: np.ndarray
    classes: np.ndarray
    model: str
    times: StageTimes


@dataclass(frozen=True)
class Failure:
    """A file that could not be indexed, and why, in words a person can act on; ``too_large``:
    refused by a size or duration cap."""

    path: str
    reason: str
    too_large: bool = False


@dataclass(frozen=True)
class Skipped:
    """A file whose content is already in the catalog."""

    source: Source


Outcome = Union[Fingerprint, Failure, Skipped]


class IndexEngine(StrEnum):
    """What runs the stages of an indexing job: ``local`` (this process or worker processes,
    ``run_local``) or ``ray`` (Ray Data tasks, ``run_ray``); the names the CLI and settings take
    (a ``StrEnum``: ``str()`` is the name, as the settings table and messages print it)."""

    local = "local"
    ray = "ray"


def identify(path: str | Path) -> Source | Failure:
    """Stage 1: the content hash of a file."""
    t0 = time.thread_time()
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as exc:
        return Failure(str(path), f"cannot read the file ({exc.strerror})")
    return Source(str(path), h.hexdigest(), os.path.getsize(path), time.thread_time() - t0)


class Fingerprinter:
    """Stage 2, decode → embed → Chromaprint → landmarks → pitch classes, with the model it holds
    (loaded once per worker).

    Reference windows are ``embedder.ref_hop_s`` apart; ``limits``: decoding caps per file."""

    def __init__(self, embedder: Embedder, limits: DecodeLimits):
        self.embedder, self.limits = embedder, limits

    def __call__(self, source: Source) -> Fingerprint | Failure:
        try:
            t0 = time.thread_time()
            fe = self.embedder.fe
            # a silent recording would cost as much as any other (gigabytes for hours) and give no
            # vectors; this pass reads it as it streams, and stops at the first audible window
            if not audible(source.path, fe.sample_rate, level_dbfs=SILENCE_DBFS, window_s=fe.window_s,
                           hop_s=self.embedder.ref_hop_s, limits=self.limits):
                return Failure(source.path, f"no audible audio: no {fe.window_s:g} s of it is louder than "
                                            f"{SILENCE_DBFS:g} dBFS, so it could never be matched")
            clip = decode(source.path, fe.sample_rate, limits=self.limits)
            t1 = time.thread_time()
            emb = self.embedder.embed(clip, hop_s=self.embedder.ref_hop_s)
            windows = np.flatnonzero(emb.voiced).astype(np.int64)
            t2 = time.thread_time()
            prints = chromaprint.fingerprint(clip)
            t3 = time.thread_time()
            peaks = landmarks.peaks(clip)
            t4 = time.thread_time()
            classes = version_model.pitch_class_power(clip.samples)
            t5 = time.thread_time()
        except (ClearanceError, OSError) as exc:
            return Failure(source.path, getattr(exc, "reason", None) or str(exc), getattr(exc, "too_large", False))
        return Fingerprint(source, clip.duration, windows, emb.vectors[windows], prints, peaks, classes,
                           self.embedder.version, StageTimes(t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4))


# --- local engine: this process or worker processes on this machine ---------------------

def run_local(files: Iterable[Path], fingerprinter: Fingerprinter, workers: int,
              is_known: Callable[[str], bool]) -> Iterator[Outcome]:
    """Outcomes of ``files``; ``is_known(sha256)`` says whether content is already indexed.
    ``workers=0`` runs in this process; otherwise that many worker processes do."""
    if workers <= 0:
        for f in files:
            found = identify(f)
            if isinstance(found, Failure):
                yield found
            elif is_known(found.sha256):
                yield Skipped(found)
            else:
                yield fingerprinter(found)
        return
    yield from _WorkerPool(fingerprinter, workers).run(files, is_known)


_WORKER: Fingerprinter | None = None


def _init_worker(fingerprinter: Fingerprinter) -> None:
    global _WORKER
    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)    # the parent decides what an interrupt means
    _die_with_parent()
    torch.set_num_threads(1)                        # one core per worker: the workers are the parallelism
    _WORKER = fingerprinter


def _die_with_parent() -> None:
    """Ask Linux to kill this worker when its parent dies (even by ``kill -9``), so that a killed
    job leaves no workers behind."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == 1:
            os._exit(1)


def _run_task(task: tuple[str, object]) -> Source | Fingerprint | Failure:
    kind, arg = task
    return identify(arg[1]) if kind == "identify" else _WORKER(arg)


class _WorkerPool:
    """Worker processes, kept busy with at most two tasks each in flight (bounded memory)."""

    def __init__(self, fingerprinter: Fingerprinter, workers: int):
        self.fingerprinter, self.workers = fingerprinter, workers

    def _start(self) -> ProcessPoolExecutor:
        # spawn, not fork: a forked child would inherit the writer lock and the parent's threads
        return ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker, initargs=(self.fingerprinter,))

    def run(self, files: Iterable[Path], is_known: Callable[[str], bool]) -> Iterator[Outcome]:
        """Identified files are taken in the files' order, whatever order the workers finish them
        in: of two identical files the first is kept, the other skipped before it is decoded."""
        todo: deque[tuple[str, object]] = deque(("identify", (i, str(f))) for i, f in enumerate(files))
        identified: dict[int, Source | Failure] = {}      # finished out of order, waiting for their turn
        taken, hashes = 0, set()
        ready: deque[tuple[str, object]] = deque()       # sources to fingerprint go first
        suspects: deque[tuple[str, object]] = deque()    # in flight when a worker died
        in_flight: dict[Future, tuple[str, object]] = {}
        alone = False                                     # a suspect is running by itself
        pool = self._start()
        finished = False
        try:
            while todo or ready or suspects or in_flight:
                broken = False
                try:        # a task leaves its queue once the pool has taken it
                    if suspects and not in_flight:
                        fut = pool.submit(_run_task, suspects[0])
                        in_flight[fut] = suspects.popleft()
                        alone = True
                    while not suspects and len(in_flight) < 2 * self.workers and (ready or todo):
                        queue = ready if ready else todo
                        fut = pool.submit(_run_task, queue[0])
                        in_flight[fut] = queue.popleft()
                except BrokenProcessPool:   # a worker died since the last wait: the pool takes no more
                    broken = True
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for fut in done:
                    task = in_flight.pop(fut)
                    try:
                        result = fut.result()
                    except BrokenProcessPool:
                        broken = True
                        if not alone:
                            suspects.append(task)
                            continue
                        path = task[1][1] if task[0] == "identify" else task[1].path
                        result = Failure(str(path), "the worker process died while reading this file "
                                                    "(a decoder crash or out of memory)")
                    if task[0] != "identify":
                        yield result
                        continue
                    identified[task[1][0]] = result
                    while taken in identified:
                        found = identified.pop(taken)
                        taken += 1
                        if isinstance(found, Failure):
                            yield found
                        elif found.sha256 in hashes or is_known(found.sha256):
                            yield Skipped(found)
                        else:
                            hashes.add(found.sha256)
                            ready.append(("fingerprint", found))
                alone = False
                if broken:
                    suspects.extend(in_flight.values())
                    in_flight.clear()
                    pool.shutdown(wait=False, cancel_futures=True)
                    pool = self._start()
            finished = True
        finally:
            pool.shutdown(wait=finished, cancel_futures=True)    # don't wait for work nobody wants


# --- Ray engine ------------------------------------------------------------------------

def run_ray(files: Iterable[Path], fingerprinter: Fingerprinter, workers: int, is_known: Callable[[str], bool],
            incoming: Path, address: str | None = None, batch_files: int = 4) -> Iterator[Outcome]:
    """Outcomes of ``files`` computed by Ray Data: hashing as Ray tasks, then decode → embed →
    Chromaprint → landmarks in ``workers`` actors (one model each, one CPU each), each batch of
    ``batch_files`` files writing its vectors as one shard under ``incoming`` (which must be
    visible to this process: a shared filesystem on a cluster).

    ``address``: a running Ray cluster (``ray://host:10001`` or ``host:6379``); None starts a
    local instance, or uses ``RAY_ADDRESS`` when set."""
    import ray

    started = not ray.is_initialized()
    if started:
        _ray_init(ray, workers, address)
    try:
        import ray.data

        import logging

        logging.getLogger("ray.data").setLevel(logging.ERROR)     # our progress bar says how it goes
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        new = yield from _ray_sources(ray, [str(f) for f in files], is_known)
        if new:
            yield from _ray_fingerprints(ray, new, fingerprinter, workers, incoming, batch_files)
    finally:
        if started:
            ray.shutdown()


def _ray_sources(ray, paths: list[str], is_known: Callable[[str], bool]) -> Generator[Outcome, None, list[Source]]:
    """Hash ``paths`` as Ray tasks; yields the failures and the skipped (known content, or content
    seen earlier in ``paths``), returns the sources to fingerprint."""
    identified = {}
    if paths:
        identified = {row["path"]: row for row in
                      ray.data.from_items([{"path": p} for p in paths]).map(_ray_identify).iter_rows()}
    new: list[Source] = []
    hashes: set[str] = set()
    for path in paths:          # in the files' order, not Ray's: of two identical files the first is kept
        row = identified[path]
        if row["error"]:
            yield Failure(row["path"], row["error"])
            continue
        source = Source(row["path"], row["sha256"], int(row["size_bytes"]), float(row["hash_s"]))
        if source.sha256 in hashes or is_known(source.sha256):
            yield Skipped(source)
        else:
            hashes.add(source.sha256)
            new.append(source)
    return new


def _ray_fingerprints(ray, new: list[Source], fingerprinter: Fingerprinter, workers: int, incoming: Path,
                      batch_files: int) -> Iterator[Outcome]:
    """Fingerprints (or failures) of ``new`` from ``workers`` Ray actors, each batch's vectors
    read back from the shard it wrote under ``incoming``."""
    items = [{"path": s.path, "sha256": s.sha256, "size_bytes": s.size_bytes, "hash_s": s.hash_s} for s in new]
    ds = ray.data.from_items(items).map_batches(
        _RayFingerprinter, fn_constructor_args=(fingerprinter, str(incoming)), batch_size=batch_files,
        batch_format="pandas", compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=1)
    shards = ShardStore(incoming)
    cached = None
    for row in ds.iter_rows():
        source = Source(row["path"], row["sha256"], int(row["size_bytes"]), float(row["hash_s"]))
        if row["error"]:
            yield Failure(source.path, row["error"])
            continue
        if cached is None or str(cached.path) != row["shard"]:
            cached = shards.read(Path(row["shard"]), fingerprinter.embedder.dim)
        a, b = int(row["offset"]), int(row["offset"]) + int(row["vectors"])
        yield Fingerprint(source, float(row["duration_s"]), cached.ids[a:b], cached.vectors[a:b],
                          np.frombuffer(row["chromaprint"], "<u4").astype(np.uint32),
                          np.frombuffer(row["peaks"], "<u4").astype(np.uint32),
                          np.frombuffer(row["classes"], "<f2").astype(np.float16).reshape(12, -1), cached.model,
                          StageTimes(*(float(row[f.name]) for f in fields(StageTimes))))


def ray_address(address: str | None) -> str | None:
    """The Ray cluster to join: ``address``, else ``RAY_ADDRESS``; None: start a local instance.
    ``ClearanceError`` where it (``host:port`` of a Ray head) refuses a connection or does not
    take one within a few seconds: ``ray.init`` would retry it for ever, silently. Client
    addresses (``ray://``) and ``auto`` are left to Ray."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if not address or "://" in address or ":" not in address:
        return address
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except (OSError, ValueError) as exc:
        raise ClearanceError(f"no Ray cluster answers at {address} ({exc}): check --ray-address (or "
                             f"CLEARANCE_RAY_ADDRESS, RAY_ADDRESS) and that `ray start --head` runs there") from None
    return address


def _ray_init(ray, workers: int, address: str | None) -> None:
    import logging

    address = ray_address(address)
    local = {} if address else {"num_cpus": max(workers, 1), "object_store_memory": 256 * 2 ** 20}
    # the model travels to each actor through the object store; Ray's core warns about that at
    # error level although the driver keeps it alive for the whole job
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
             configure_logging=True, **local)


def _ray_identify(row: dict) -> dict:
    found = identify(row["path"])
    if isinstance(found, Failure):
        return {"path": found.path, "sha256": "", "size_bytes": 0, "hash_s": 0.0, "error": found.reason}
    return {"path": found.path, "sha256": found.sha256, "size_bytes": found.size_bytes, "hash_s": found.hash_s,
            "error": ""}


class _RayFingerprinter:
    """A Ray actor: the model loaded once, then batches of sources → rows + one vector shard."""

    def __init__(self, fingerprinter: Fingerprinter, incoming: str):
        import torch

        torch.set_num_threads(1)
        self.fingerprinter, self.shards = fingerprinter, ShardStore(incoming)

    def __call__(self, batch):
        import pandas as pd

        results = [self.fingerprinter(Source(r.path, r.sha256, int(r.size_bytes), float(r.hash_s)))
                   for r in batch.itertuples()]
        done = [r for r in results if isinstance(r, Fingerprint)]
        shard = ""
        if done:
            shard = str(self.shards.write(np.concatenate([r.windows for r in done]),
                                          np.concatenate([r.vectors for r in done]), done[0].model))
        rows, offset = [], 0
        for src, r in zip(batch.itertuples(), results):
            row = {"path": src.path, "sha256": src.sha256, "size_bytes": int(src.size_bytes), "hash_s": float(src.hash_s),
                   "error": "", "shard": shard, "offset": offset, "vectors": 0, "duration_s": 0.0,
                   "chromaprint": b"", "peaks": b"", "classes": b"", **{f.name: 0.0 for f in fields(StageTimes)}}
            if isinstance(r, Failure):
                row["error"] = r.reason
            else:
                row.update(vectors=len(r.windows), duration_s=r.duration_s,
                           chromaprint=r.chromaprint.astype("<u4").tobytes(), peaks=r.peaks.astype("<u4").tobytes(),
                           classes=r.classes.astype("<f2").tobytes(), **asdict(r.times))
                offset += len(r.windows)
            rows.append(row)
        return pd.DataFrame(rows)


def new_job_folder(root: Path) -> Path:
    """A fresh folder for one job's transport shards under ``root``."""
    return root / f"job-{uuid.uuid4().hex[:12]}"
