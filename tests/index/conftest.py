"""Fixtures of the indexing tests: short catalog files cut from the test corpus, a private
PostgreSQL server, and helpers that read a catalog home the way a reader process would."""
from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from detector.errors import StorageError
from detector.model import Embedder
from index.shards import ShardStore
from index.schema import tracks
from index.store import Store, connect
from index.vectors import VectorIndex, split_ids
from tests.conftest import REPO, cut

CLEARANCE = [sys.executable, "-m", "service.cli"]


@pytest.fixture(scope="session")
def excerpts(music, tmp_path_factory) -> Path:
    """A folder of 40 catalog files: excerpts of 20–40 s of distinct corpus tracks, as MP3 and
    OGG (seeded, so every run cuts the same ones)."""
    folder = tmp_path_factory.mktemp("excerpts")
    rng = random.Random(40)
    rows = sorted(music.values(), key=lambda r: r.track_id)[:40]
    for i, row in enumerate(rows):
        seconds = rng.uniform(20, 40)
        fmt = "mp3" if i % 2 else "ogg"
        cut(row, rng.uniform(0, 20), seconds, folder / f"{row.track_id}.{fmt}", fmt=fmt)
    return folder


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    return Embedder.load()


@pytest.fixture(scope="session")
def pg_url():
    """A PostgreSQL server of its own on loopback (Debian's postgresql is installed when missing)."""
    folder = Path(tempfile.mkdtemp(prefix="clearance-pg-"))
    script = REPO / "scripts" / "pg-test-server"
    out = subprocess.run([str(script), "start", str(folder)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    yield out.stdout.strip().splitlines()[-1]
    subprocess.run([str(script), "stop", str(folder)], capture_output=True, timeout=120)
    shutil.rmtree(folder, ignore_errors=True)


@dataclass(frozen=True)
class Seen:
    """A catalog home as a reader sees it: rows by key and the published index's vector counts."""

    rows: dict
    in_index: dict[int, int]


def seen(home: Path, db_url: str, embedder: Embedder) -> Seen:
    rows = {t.id: t for t in Store(db_url).list_tracks(state=None)}
    index = VectorIndex.open(home / "index", embedder.version, embedder.dim, embedder.ref_hop_s)
    return Seen(rows, index.tracks())


def assert_readers_agree(s: Seen) -> None:
    """What a reader may rely on at any moment, crash or not: every indexed track has all its
    vectors in the published index, and every vector there belongs to a track row."""
    for key, t in s.rows.items():
        if t.state == "indexed":
            assert s.in_index.get(key, 0) == t.vectors, (t.external_id, s.in_index.get(key), t.vectors)
    assert set(s.in_index) <= set(s.rows)


def assert_complete(s: Seen, home: Path, embedder: Embedder, n: int) -> None:
    """After a finished job: ``n`` tracks, each once, all indexed, the index and the stored
    vectors holding exactly their vectors."""
    assert len(s.rows) == n
    assert all(t.state == "indexed" for t in s.rows.values())
    assert len({t.content_sha256 for t in s.rows.values()}) == n
    assert len({t.external_id for t in s.rows.values()}) == n
    assert s.in_index == {k: t.vectors for k, t in s.rows.items() if t.vectors}
    stored: dict[int, int] = {}
    for shard in ShardStore(home / "vectors").iter(embedder.version, embedder.dim):
        keys, counts = np.unique(split_ids(shard.ids)[0], return_counts=True)
        for k, c in zip(keys.tolist(), counts.tolist()):
            if k in s.rows:
                assert k not in stored, f"track {k} stored twice"
                stored[k] = c
    assert stored == s.in_index


def job(folder: Path, env: dict, *extra) -> subprocess.Popen:
    return subprocess.Popen([*CLEARANCE, "index", str(folder), "--rights", "protected", *map(str, extra)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def indexed(db_url: str) -> int:
    engine = connect(db_url)
    try:
        with engine.connect() as c:
            return c.execute(sa.select(sa.func.count()).where(tracks.c.state == "indexed")).scalar_one()
    except (sa.exc.DBAPIError, StorageError):     # the job has not made the home or the tables yet
        return 0
    finally:
        engine.dispose()


def kill_at_random_points(folder: Path, home: Path, db_url: str, embedder, rounds: int, seed: int, *extra) -> int:
    """Start the job ``rounds`` times and ``kill -9`` it at a random point each time: after a
    random number of tracks are in, plus a random fraction of a second. Checks what a reader
    sees after each kill; returns how many runs were killed before finishing."""
    env = {**os.environ, "CLEARANCE_HOME": str(home), "CLEARANCE_DB": db_url, "CLEARANCE_INDEX_WORKERS": "2",
           "CLEARANCE_INDEX_PUBLISH_S": "0.2"}
    rng = random.Random(seed)
    killed = 0
    for r in range(rounds):
        target = rng.randint(r * 30 // rounds, (r + 1) * 30 // rounds)
        p = job(folder, env, *extra)
        deadline = time.monotonic() + 240
        while p.poll() is None and indexed(db_url) < target and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.6))
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            killed += 1
        p.wait()
        assert_readers_agree(seen(home, db_url, embedder))
    return killed
