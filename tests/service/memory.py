"""How far a ``clearance serve`` process's memory rises while a block of a test runs, read from
Linux's ``/proc`` (its peak resident set, reset at the start of the block)."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator


@dataclass
class Growth:
    """Megabytes by which the peak resident memory rose above the resident memory at the start."""

    mb: float = 0.0


@contextmanager
def memory_growth(port: int) -> Iterator[Growth]:
    """Measure the server listening on ``port``; the figure is filled in when the block ends."""
    pid = _server_pid(port)
    Path(f"/proc/{pid}/clear_refs").write_text("5")      # the peak (VmHWM) starts again from now
    start = _kb(pid, "VmRSS")
    growth = Growth()
    yield growth
    growth.mb = (_kb(pid, "VmHWM") - start) / 1024


def _server_pid(port: int) -> int:
    wanted = ["serve", "--port", str(port)]
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:          # a process that ended meanwhile
            continue
        if "service.cli" in args and all(a in args for a in wanted):
            return int(cmdline.parent.name)
    raise LookupError(f"no clearance serve process on port {port}")


def _kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(f"{field} not in /proc/{pid}/status")
