"""Limits and hostile input against a real server on loopback (caps from ``LIMITS``: 2 MB
uploads, 60 s of audio, one worker and one waiting place, 15 s to send an upload and pauses of
at most 5 s, 2 uploads at once per key, 2 s to send a request head): malformed files made here
are answered 4xx, caps hold while the body streams in, a full queue answers 503, stalled
clients hold only their own share, and the server keeps answering."""
from __future__ import annotations

import re
import select
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from tests.conftest import cut
from tests.service.conftest import raw_request, read_response, serve

BOUNDARY = "clearance-test-boundary"
PREAMBLE = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"audio\"; filename=\"slow.mp3\"\r\n"
            "Content-Type: audio/mpeg\r\n\r\n").encode()
END = f"\r\n--{BOUNDARY}--\r\n".encode()
CHECK_SLOTS = 'clearance_pool_slots_taken{pool="checks"}'


def wav(pcm: bytes, claimed_bytes: int | None = None, rate: int = 8000) -> bytes:
    """A 16-bit mono WAV of ``pcm`` whose header claims ``claimed_bytes`` of samples."""
    n = len(pcm) if claimed_bytes is None else claimed_bytes
    return (b"RIFF" + struct.pack("<I", (36 + n) & 0xFFFFFFFF) + b"WAVEfmt "
            + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16) + b"data" + struct.pack("<I", n) + pcm)


@pytest.fixture(scope="module")
def corpus(music, tmp_path_factory) -> dict[str, bytes]:
    """Malformed and hostile uploads, made from a real excerpt and seeded noise."""
    d = tmp_path_factory.mktemp("malformed")
    track = music["xmoto-foxrun"]
    mp3 = cut(track, 30.0, 10.0, d / "x.mp3").read_bytes()
    ogg = cut(track, 30.0, 10.0, d / "x.ogg", fmt="ogg").read_bytes()
    flac = cut(track, 30.0, 10.0, d / "x.flac", fmt="flac").read_bytes()
    rng = np.random.default_rng(12)
    tone = (np.sin(np.arange(70 * 8000) * 2 * np.pi * 440 / 8000) * 8000).astype("<i2").tobytes()
    return {
        "empty.mp3": b"",
        "random.mp3": rng.bytes(64 * 1024),
        "notes.txt": b"this is not audio at all\n" * 40,
        "truncated.mp3": mp3[:400],                  # the tag and half a frame
        "truncated.ogg": ogg[:8000],                  # the stream headers and part of the first audio page
        "truncated.flac": flac[:2000],               # the stream header and part of a frame
        "hours.wav": wav(b"", claimed_bytes=10 * 3600 * 8000 * 2),     # claims 10 h, holds nothing
        "blip.wav": wav(tone[:3200], claimed_bytes=10 * 3600 * 8000 * 2),   # claims 10 h, holds 0.2 s
        "tag-bomb.mp3": b"ID3\x04\x00\x00\x7f\x7f\x7f\x7f" + rng.bytes(4096),   # an ID3 tag claiming 256 MB
        "long.wav": wav(tone),                        # 70 s of real audio: over the 60 s cap
    }


UNREADABLE = r"not a readable audio file|no audio could be decoded"
EXPECTED = {
    "empty.mp3": (422, "the file is empty"),
    "random.mp3": (422, UNREADABLE),
    "notes.txt": (422, UNREADABLE),
    "truncated.mp3": (422, UNREADABLE),
    "truncated.ogg": (422, UNREADABLE),
    "truncated.flac": (422, UNREADABLE),
    "hours.wav": (422, UNREADABLE),
    "blip.wav": (422, "the audio is 0.20 s long; a check needs at least 1 s"),
    "tag-bomb.mp3": (422, UNREADABLE),
    "long.wav": (413, "the audio is longer than the 60 s limit"),
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_malformed_upload_is_4xx_problem_and_server_stays_up(server, corpus, name):
    status, message = EXPECTED[name]
    r = server.check(server.keys["submitter"], name, corpus[name])
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["status"] == status and body["detail"].startswith(f"{name}: ")
    assert re.search(message, body["detail"]), body["detail"]
    assert server.alive()


def test_server_still_checks_after_the_corpus(server, corpus, music, tmp_path):
    kinds = {422: 'clearance_decode_failures_total{kind="unreadable"}',
             413: 'clearance_decode_failures_total{kind="too_large"}'}
    before = {status: server.metric(name) for status, name in kinds.items()}
    for name, data in corpus.items():
        assert server.check(server.keys["submitter"], name, data).status_code == EXPECTED[name][0]
    for status, name in kinds.items():
        assert server.metric(name) == before[status] + sum(s == status for s, _ in EXPECTED.values())
    q = cut(music["xmoto-batcave"], 20.0, 15.0, tmp_path / "q.mp3")
    assert server.check(server.keys["submitter"], "q.mp3", q.read_bytes()).json()["decision"] == "block"


def upload_head(server, length: int | None, key: str | None = None, path: str = "/v1/checks") -> str:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (f"POST {path} HTTP/1.1\nHost: 127.0.0.1\nAuthorization: Bearer {key or server.keys['submitter']}\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\n{framing}\n")


def stall(server, key: str, path: str = "/v1/checks") -> socket.socket:
    """An upload that sends its head and 1 KB of a 1 MB body, then nothing."""
    return raw_request(server.port, upload_head(server, 1_000_000, key, path), PREAMBLE + bytes(1024),
                       keep_open=True)


def refused_once_stalls_count(send) -> httpx.Response:
    """``send()`` until it is answered 429: the server counts a stalled upload only once it has
    read its head, so an upload sent just after may still be taken (and answered)."""
    for _ in range(20):
        r = send()
        if r.status_code == 429:
            return r
        assert r.status_code == 422, r.text     # taken and answered: the stalled uploads were not counted yet
        time.sleep(0.1)
    raise AssertionError("the stalled uploads never counted against their key")


def test_declared_oversize_upload_is_413_before_its_body_is_sent(server):
    sent, status, body = raw_request(server.port, upload_head(server, 50_000_000))
    assert status == 413
    assert body["detail"] == "the request body is larger than the 2 MB limit for an audio upload"
    assert server.alive()


def test_streamed_upload_is_413_once_it_passes_the_cap(server):
    """Chunked, so no length is declared: the server must count while it reads, and answer
    before the client has sent everything."""
    rng = np.random.default_rng(5)
    chunks = [PREAMBLE] + [rng.bytes(1 << 16) for _ in range(512)]          # 32 MiB of 'audio'
    stream = b"".join(f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in chunks) + b"0\r\n\r\n"
    sent, status, body = raw_request(server.port, upload_head(server, None), stream=stream)
    assert status == 413 and "larger than the 2 MB limit" in body["detail"]
    assert sent < len(stream)
    assert server.alive()


def test_other_requests_are_capped_at_max_request_kb(server):
    r = httpx.patch(f"{server.url}/v1/tracks/xmoto-batcave", content=b"[" * 100_000, timeout=30,
                    headers={"Authorization": f"Bearer {server.keys['catalog-admin']}",
                             "Content-Type": "application/json"})
    assert r.status_code == 413
    assert r.json()["detail"] == "the request body is larger than the 64 KiB limit for this request"


def test_full_queue_answers_503_with_retry_after_then_recovers(server, music, tmp_path):
    """Four uploads (of four keys) whose last bytes arrive at once: two take the worker and the
    one waiting place, two are refused."""
    server.wait_for(CHECK_SLOTS, 0)
    refused = server.metric('clearance_pool_refused_total{pool="checks"}')
    q = cut(music["xmoto-foxrun"], 40.0, 10.0, tmp_path / "q.mp3").read_bytes()
    body = PREAMBLE + q + END
    all_but_last = threading.Barrier(4)

    def send(key: str) -> httpx.Response:
        def chunks():
            yield body[:-1]
            all_but_last.wait(timeout=60)
            yield body[-1:]
        return httpx.post(f"{server.url}/v1/checks", content=chunks(), timeout=120,
                          headers={"Authorization": f"Bearer {key}", "Content-Length": str(len(body)),
                                   "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(send, [server.key("submitter") for _ in range(4)]))
    assert sorted(r.status_code for r in answers) == [200, 200, 503, 503], [r.text for r in answers]
    for r in answers:
        if r.status_code == 503:
            assert int(r.headers["Retry-After"]) >= 1
            assert r.headers["content-type"].startswith("application/problem+json")
            assert "the checks queue is full (2 requests running or waiting)" in r.json()["detail"]
    assert server.metric('clearance_pool_refused_total{pool="checks"}') == refused + 2
    assert server.alive()
    server.wait_for(CHECK_SLOTS, 0)
    assert server.check(server.keys["submitter"], "q.mp3", q).status_code == 200


def test_stalled_uploads_hold_only_their_own_keys_share(server, music, tmp_path):
    """A key that opens uploads and stalls them reaches its own limit (429), holds no work
    slot, and another key's check is answered meanwhile."""
    staller = server.key("submitter", "stalling platform")
    stalled = [stall(server, staller) for _ in range(2)]
    try:
        r = refused_once_stalls_count(lambda: server.check(staller, "q.mp3", b""))
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["detail"] == ("this key is already sending 2 uploads, the most it may send at once; "
                                      "wait for one to finish")
        assert server.metric(CHECK_SLOTS) == 0
        q = cut(music["xmoto-batcave"], 20.0, 10.0, tmp_path / "q.mp3").read_bytes()
        served = server.check(server.key("submitter", "patient platform"), "q.mp3", q)
        assert served.status_code == 200 and served.json()["decision"] == "block"
    finally:
        for sock in stalled:
            sock.close()


def test_stalled_track_uploads_hold_only_their_own_keys_share(server):
    """The same on the catalog's upload route: a third upload of the stalling key is 429,
    another key's upload is read (and found to lack its fields)."""
    staller = server.key("catalog-admin", "stalling label")

    def add(key: str) -> httpx.Response:
        return httpx.post(f"{server.url}/v1/tracks", files={"audio": ("t.mp3", b"")}, timeout=60,
                          headers={"Authorization": f"Bearer {key}"})

    stalled = [stall(server, staller, "/v1/tracks") for _ in range(2)]
    try:
        assert refused_once_stalls_count(lambda: add(staller)).status_code == 429
        other = add(server.keys["catalog-admin"])
        assert other.status_code == 422 and other.json()["detail"].startswith("body.external_id: Field required")
    finally:
        for sock in stalled:
            sock.close()


def test_upload_that_stops_sending_is_408_after_the_idle_limit(server):
    started = time.monotonic()
    sock = stall(server, server.keys["submitter"])
    status, body = read_response(sock)
    sock.close()
    assert status == 408 and body["detail"] == "no data of the upload arrived for 5 s"
    assert time.monotonic() - started < 15
    assert server.alive()


def test_upload_that_trickles_is_408_after_the_upload_limit(server):
    """A byte a second never pauses 5 s, but the upload is not complete after 15 s."""
    sock = stall(server, server.keys["submitter"])
    for _ in range(30):
        if select.select([sock], [], [], 1.0)[0]:
            break
        sock.sendall(b"x")
    status, body = read_response(sock)
    sock.close()
    assert status == 408 and body["detail"] == "the upload was not complete after 15 s"


def test_connections_that_never_finish_their_head_are_closed(server):
    """uvicorn itself would keep these open for ever; the server closes them after 2 s."""
    silent = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(25)]
    partial = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(25)]
    for sock in partial:
        sock.sendall(b"POST /v1/checks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-da")
    for sock in silent + partial:
        sock.settimeout(15)
        try:
            assert sock.recv(1024) == b""
        except ConnectionResetError:
            pass
        sock.close()
    assert server.alive()


def test_decoding_past_its_time_limit_is_413(env_for, music, tmp_path_factory, tmp_path):
    """A server whose decoder may take no time at all refuses any real file, as it would a file
    built to decode slowly."""
    home = tmp_path_factory.mktemp("no-decode-time")
    q = cut(music["xmoto-foxrun"], 30.0, 10.0, tmp_path / "q.mp3").read_bytes()
    with serve(home, {**env_for(home), "CLEARANCE_DECODE_TIMEOUT_S": "0"}, home / "server.log") as s:
        r = s.check(s.key("submitter"), "q.mp3", q)
        assert r.status_code == 413 and r.json()["detail"] == "q.mp3: decoding took longer than 0 s"
        assert s.alive()
