"""The HTTP API against a real ``clearance serve`` process on loopback."""
from __future__ import annotations

import socket
import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import cut


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(env_for):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port)], env=env_for(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {proc.stdout.read()}")
            time.sleep(0.3)
    else:
        proc.kill()
        raise RuntimeError("server did not start")
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def post(url: str, name: str, data: bytes) -> httpx.Response:
    return httpx.post(f"{url}/v1/checks", files={"audio": (name, data)}, timeout=120)


def test_copy_blocked_and_stored(server, music, tmp_path):
    q = cut(music["xmoto-batcave"], 50.0, 20.0, tmp_path / "q.mp3")
    r = post(server, "q.mp3", q.read_bytes())
    assert r.status_code == 200, r.text
    result = r.json()
    assert result["decision"] == "block"
    assert result["input"] == "q.mp3"
    m = result["matches"][0]
    assert m["external_id"] == "xmoto-batcave"
    assert abs(m["ref_start"] - (50.0 + m["query_start"])) < 1.0
    again = httpx.get(f"{server}/v1/checks/{result['id']}", timeout=10)
    assert again.status_code == 200 and again.json() == result


def test_unseen_allowed(server, music, tmp_path):
    q = cut(music["xmoto-foxrun"], 30.0, 20.0, tmp_path / "q.mp3")
    result = post(server, "foxrun.mp3", q.read_bytes()).json()
    assert result["decision"] == "allow" and result["matches"] == []


@pytest.mark.parametrize("name,data,message", [
    ("empty.mp3", b"", "the file is empty"),
    ("junk.mp3", bytes(range(256)) * 64, "not a readable audio file"),
    ("notes.txt", b"this is not audio at all\n" * 20, "not a readable audio file"),
])
def test_bad_audio_is_422_problem_and_server_stays_up(server, name, data, message):
    r = post(server, name, data)
    assert r.status_code == 422
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["status"] == 422 and name in body["detail"] and message in body["detail"]
    assert httpx.get(f"{server}/healthz", timeout=5).status_code == 200


def test_unknown_check_is_404(server):
    r = httpx.get(f"{server}/v1/checks/does-not-exist", timeout=5)
    assert r.status_code == 404 and r.json()["detail"] == "no check with id 'does-not-exist'"
