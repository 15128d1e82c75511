"""``--engine ray``: the same stages as Ray Data tasks on a real local Ray instance give the
catalog the local engine gives."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess

import numpy as np

from detector.policy import Rights
from service.engine import Engine
from service.settings import Settings
from tests.index.conftest import CLEARANCE, assert_complete, seen


def test_ray_engine_indexes_like_the_local_engine(excerpts, embedder, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    files = sorted(excerpts.iterdir())[:5]
    for f in files:
        shutil.copy(f, folder / f.name)
    (folder / "broken.mp3").write_bytes(b"ID3\x03\x00\x00\x00" + bytes(range(256)) * 20)
    shutil.copy(files[0], folder / "copy-of-first.ogg")
    home = tmp_path / "ray-home"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"CLEARANCE_HOME": str(home)}
    r = subprocess.run([*CLEARANCE, "index", str(folder), "--rights", "protected", "--engine", "ray", "--workers", "2"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 2, r.stderr
    assert "indexed 5 tracks" in r.stdout and "skipped 1 already present" in r.stdout and "failed 1" in r.stdout
    assert f"failed: {folder / 'broken.mp3'}:" in r.stderr
    assert f"skipped: {folder / 'copy-of-first.ogg'}: the same audio is in the catalog as '{files[0].stem}'" in r.stderr
    s = seen(home, f"sqlite:///{home / 'catalog.db'}", embedder)
    assert_complete(s, home, embedder, 5)
    assert not (home / "incoming").exists()          # the workers' shards were merged, then removed

    local = Engine(Settings(home=tmp_path / "local-home")).catalog
    local.index_paths(files, Rights.protected, workers=0)
    ray_rows = {t.external_id: t for t in s.rows.values()}
    local_rows = {t.external_id: t for t in local.store.list_tracks()}
    assert {e: t.vectors for e, t in ray_rows.items()} == {e: t.vectors for e, t in local_rows.items()}
    assert {e: t.content_sha256 for e, t in ray_rows.items()} == {e: t.content_sha256 for e, t in local_rows.items()}
    by_ray = stored_vectors(Engine(Settings(home=home)).catalog, embedder)
    by_local = stored_vectors(local, embedder)
    assert by_ray.keys() == by_local.keys()
    assert all(np.allclose(by_ray[k], by_local[k], atol=1e-4) for k in by_local)


def stored_vectors(catalog, embedder) -> dict[tuple[str, int], np.ndarray]:
    """(external id, window number) → stored vector."""
    names = {t.id: t.external_id for t in catalog.store.list_tracks()}
    return {(names[int(i) >> 22], int(i) & 0x3FFFFF): v
            for sh in catalog.shards.iter(embedder.version, embedder.dim) for i, v in zip(sh.ids, sh.vectors)}


def test_a_ray_address_that_refuses_connections_stops_the_job_with_the_reason(excerpts, tmp_path):
    with socket.socket() as closed:              # ray.init retried such an address for ever, silently
        closed.bind(("127.0.0.1", 0))
        address = "127.0.0.1:%d" % closed.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"CLEARANCE_HOME": str(tmp_path / "home")}
    r = subprocess.run([*CLEARANCE, "index", str(sorted(excerpts.iterdir())[0]), "--rights", "protected", "--engine",
                        "ray", "--ray-address", address], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode != 0 and f"no Ray cluster answers at {address}" in r.stderr
