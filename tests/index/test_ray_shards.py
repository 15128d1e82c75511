"""``serve_engine = ray``: a catalog's shards as Ray Serve deployments on a real local Ray
instance decide every check as the whole catalog does, go on while a shard has a replica
running, fail a check (HTTP 503) rather than decide it without a shard, and are answered again
once Serve has replaced the replicas that died."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import ray
from ray import serve

from detector import landmarks
from detector.audio import Clip, decode
from detector.errors import Unavailable
from index.pipeline import IndexEngine
from service.engine import Engine
from service.problems import status_of
from service.settings import Settings


@pytest.fixture
def local_ray(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    yield
    serve.shutdown()
    ray.shutdown()


def replicas(shards, shard: int) -> list:
    """The replica actors of ``shard`` that Ray knows of now."""
    prefix = f"SERVE_REPLICA::{shards.apps[shard]}#"
    return [ray.get_actor(a["name"], namespace=a["namespace"]) for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith(prefix)]


def test_shards_on_ray_decide_as_one_process_and_a_check_fails_without_a_shard(engine, catalog_home, music, local_ray,
                                                                               caplog):
    on_ray = Engine(Settings(home=catalog_home, serve_engine=IndexEngine.ray, serve_shards=2, serve_replicas=2))
    sr = engine.embedder.fe.sample_rate
    song = lambda track, a, b: decode(music[track].path, sr).excerpt(a, b).samples
    copy, other = song("drascula-track11", 40.0, 60.0), song("drascula-track10", 10.0, 30.0)
    unseen = next(t for t, row in music.items() if row.role == "unseen")
    outputs = [Clip(x.astype(np.float32), sr, "output") for x in (copy, copy + 0.7 * other, song(unseen, 20.0, 50.0))]
    want = [engine.assess(c) for c in outputs]
    assert [d.verdict.name for d in want] == ["block", "block", "allow"]
    # the service loads its indexes on a worker thread that ends when idle: Ray, started there,
    # must outlive it (its local instance died with the thread, and every shard with it)
    first = []
    loading = threading.Thread(target=lambda: first.append(on_ray.assess(outputs[0])))
    loading.start()
    loading.join()
    time.sleep(1)
    assert first == want[:1] and [on_ray.assess(c) for c in outputs] == want
    # published without shard files: the replicas cut theirs, and the operator is told how to save them
    assert "published without its 2 shards" in caplog.text and "CLEARANCE_SERVE_SHARDS=2" in caplog.text

    shards = on_ray.ray_shards
    pids = {shards.handles[k].load.remote(0).result()["pid"] for k in range(2) for _ in range(24)}
    assert len(pids) == 4 and os.getpid() not in pids     # four replicas, none of them this process
    ray.kill(replicas(shards, 0)[0], no_restart=True)     # one replica of shard 0 dies: the other answers
    assert [on_ray.assess(c) for c in outputs * 2] == want * 2
    for replica in replicas(shards, 0):                   # none left: no decision without the shard
        ray.kill(replica, no_restart=True)
    with pytest.raises(Unavailable, match="shard 0 of 2 of the catalog has no replica running") as failed:
        on_ray.assess(outputs[0])
    assert status_of(failed.value)[0] == 503
    deadline = time.monotonic() + 120                     # Serve starts new replicas: checks are answered again
    while shards.running(0) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert shards.running(0) == 2 and [on_ray.assess(c) for c in outputs] == want
    on_ray.release()                                      # the shards' applications are taken down
    assert not replicas(shards, 0) and not replicas(shards, 1)



def test_a_check_keeps_the_shards_it_started_with_while_a_takedown_is_published(catalog_home, music, tmp_path,
                                                                               local_ray, caplog):
    home = tmp_path / "home"
    shutil.copytree(catalog_home, home)
    saving = Settings(home=home, serve_shards=2)             # its publishes save the shards that replicas open
    writer = Engine(saving)
    writer.catalog.remove([next(t.external_id for t in writer.store.list_tracks() if t.external_id != "drascula-track11")])
    on_ray = Engine(Settings(home=home, serve_engine=IndexEngine.ray, serve_shards=2))
    sr = on_ray.embedder.fe.sample_rate
    copy = Clip(decode(music["drascula-track11"].path, sr).excerpt(40.0, 60.0).samples, sr, "copy")
    key = next(t.id for t in on_ray.store.list_tracks() if t.external_id == "drascula-track11")
    started = on_ray.catalog.searcher.indexes()              # what a check takes at its start
    writer.catalog.remove(["drascula-track11"])              # published meanwhile
    now = on_ray.assess(copy)
    assert now.verdict.name == "allow" and not any(m.track == key for m, _ in now.matches)
    # the questions of a check that started before are answered by the shards of its generation
    _, ids = started["embedding"].search(on_ray.embedder.embed(copy, hop_s=0.25).vectors[:8], 8)
    assert (ids[:, 0] >> 22 == key).all()
    assert started["landmark"].search(landmarks.peaks(copy, landmarks.QUERY))[0].track == key
    # once a second publish has reached the shards, its generation is gone: 503, never an answer of another
    writer.catalog.remove([next(t.external_id for t in writer.store.list_tracks())])
    assert on_ray.assess(copy).verdict.name == "allow"                # the shards hold the newest two
    with pytest.raises(Unavailable, match="published over twice during this check") as failed:
        started["landmark"].search(landmarks.peaks(copy, landmarks.QUERY))
    assert status_of(failed.value)[0] == 503
    # replicas that open their saved shards search without the fingerprint model: torch is never loaded there
    pids = {on_ray.ray_shards.handles[k].load.remote(0).result()["pid"] for k in range(2)}
    assert len(pids) == 2 and not any("libtorch" in Path(f"/proc/{pid}/maps").read_text() for pid in pids)
    assert "published without its" not in caplog.text


def test_a_ray_address_that_does_not_answer_stops_the_service_with_the_reason(tmp_path):
    # ray.init retries such an address for ever: the service waited, silent, and ignored SIGTERM
    def serve(address: str) -> str:
        run = subprocess.run(
            [sys.executable, "-c", "import sys, index.sharded as s; s.RAY_START_S = 5; from service.cli import main; "
                                   "main(sys.argv[1:])", "--home", str(tmp_path), "serve", "--engine", "ray",
             "--shards", "2", "--ray-address", address, "--port", "0"],
            capture_output=True, text=True, timeout=120, env={**os.environ, "RAY_ADDRESS": ""})
        assert run.returncode != 0
        return run.stdout + run.stderr

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    assert f"no Ray cluster answers at 127.0.0.1:{port}" in serve(f"127.0.0.1:{port}")
    with socket.socket() as mute:                          # takes connections, never speaks Ray
        mute.bind(("127.0.0.1", 0))
        mute.listen()
        address = "127.0.0.1:%d" % mute.getsockname()[1]
        assert f"the Ray cluster at {address} did not answer within 5 s: check --ray-address" in serve(address)
