"""A bounded pool for the CPU work of the HTTP service (decoding, fingerprinting, indexing).

Requests take a slot once their upload has arrived (a client that stalls an upload holds none)
and keep it until their work is done; a pool has ``workers + queue`` slots, and a request that
finds none free is refused with ``Busy`` (HTTP 503 with ``Retry-After``) rather than queued
without bound.
"""
from __future__ import annotations

import asyncio
import ctypes
import math
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import AsyncIterator, Callable, TypeVar

from detector.errors import Busy

T = TypeVar("T")
M_ARENA_MAX = -8    # glibc's mallopt parameter: how many heaps the threads allocate from


def one_malloc_arena() -> bool:
    """Make every thread allocate from glibc's main heap, as the main thread does (False where the
    C library is not glibc). A worker thread otherwise gets a heap of its own, which hands the
    large arrays of a check back to the kernel after each use and takes them again, page by page:
    a 10-minute output took 0.3-0.4 s longer on a worker thread than on the main one."""
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, 1))
    except (OSError, AttributeError):
        return False


class WorkPool:
    """``workers`` threads and room for ``queue`` more requests waiting for one; ``what`` names
    the pool in messages and metrics.

    Slots are counted on the event loop's thread only, so they need no lock.
    """

    def __init__(self, what: str, workers: int, queue: int):
        self.what = what
        self.workers = workers
        self.capacity = workers + queue
        self.taken = 0
        self.refused = 0               # requests refused with Busy since start
        self.mean_run_s = 1.0          # running mean of a job's time, seconds: sets Retry-After
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix=f"clearance-{what}")

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold a slot for the body of the ``async with``; raises ``Busy`` when none is free."""
        if self.taken >= self.capacity:
            self.refused += 1
            # a slot frees when the next of the running jobs ends: on average every mean/workers s
            retry_after_s = max(1, math.ceil(self.mean_run_s / self.workers))
            raise Busy(f"the {self.what} queue is full ({self.capacity} requests running or waiting); "
                       f"try again in {retry_after_s} s", retry_after_s)
        self.taken += 1
        try:
            yield
        finally:
            self.taken -= 1

    async def run(self, fn: Callable[..., T], *args) -> T:
        """``fn(*args)`` on a worker thread (call it while holding a slot)."""
        def timed() -> T:
            t0 = time.perf_counter()
            try:
                return fn(*args)
            finally:
                self.mean_run_s += 0.2 * (time.perf_counter() - t0 - self.mean_run_s)

        return await asyncio.get_running_loop().run_in_executor(self._executor, timed)

    def close(self) -> None:
        """Wait for running jobs and stop the threads."""
        self._executor.shutdown(wait=True, cancel_futures=True)
