"""Real ``clearance serve`` processes on loopback, API keys for them, raw HTTP for what a
well-behaved client cannot send (bodies that never end, lying lengths), headless Chromium signed
in to the dashboard, and reels of music21's corpus rendered as catalog recordings with works of
their own (re-performances)."""
from __future__ import annotations

import csv
import json
import re
import select
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from detector import versionset
from detector.audio import Clip, encode
from detector.policy import Rights
from index.store import Store
from service.auth import Role, create_key
from service.engine import Engine
from service.settings import Settings
from tests.conftest import REPO

LIMITS = {"CLEARANCE_MAX_UPLOAD_MB": "2", "CLEARANCE_MAX_AUDIO_S": "60", "CLEARANCE_CHECK_WORKERS": "1",
          "CLEARANCE_CHECK_QUEUE": "1", "CLEARANCE_UPLOAD_TIMEOUT_S": "15", "CLEARANCE_UPLOAD_IDLE_TIMEOUT_S": "5",
          "CLEARANCE_MAX_UPLOADS_PER_KEY": "2", "CLEARANCE_HEADER_TIMEOUT_S": "2"}
"""Settings of the shared server: small caps, so tests reach them with small files."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A running server: its URL, home and log, and keys made for it by role."""

    url: str
    home: Path
    log: Path
    keys: dict[str, str] = field(default_factory=dict)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def key(self, role: Role | str, name: str = "") -> str:
        """A new active key with ``role``."""
        store = Store(Settings(home=self.home).db_url)
        return create_key(store, Role(role), name)[1]

    def check(self, key: str, name: str, data: bytes, **headers) -> httpx.Response:
        return httpx.post(f"{self.url}/v1/checks", files={"audio": (name, data)}, timeout=120,
                          headers={"Authorization": f"Bearer {key}", **headers})

    def get(self, path: str, key: str | None = None, **kw) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.get(f"{self.url}{path}", headers=headers, timeout=30, **kw)

    def metric(self, name: str) -> float:
        """The value of one sample of ``/metrics``, e.g. ``clearance_checks_total{decision="block"}``."""
        text = self.get("/metrics").text
        found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
        assert found, f"{name} not in /metrics"
        return float(found.group(1))

    def wait_for(self, name: str, value: float) -> None:
        """Wait (up to 60 s) until a metric reaches ``value``."""
        deadline = time.monotonic() + 60
        while self.metric(name) != value:
            assert time.monotonic() < deadline, f"{name} never reached {value}"
            time.sleep(0.05)

    def alive(self) -> bool:
        return self.get("/healthz").status_code == 200


@contextmanager
def serve(home: Path, env: dict, log: Path):
    """Run ``clearance serve`` on a free loopback port until the block ends; yields once
    ``/readyz`` answers 200."""
    port = free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port)],
                                env={**env, "CLEARANCE_HOME": str(home)}, stdout=out, stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}", home, log)
    deadline = time.monotonic() + 300
    while True:
        try:
            if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"server did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.3)
    try:
        yield server
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="session")
def server(env_for, catalog_home, tmp_path_factory):
    """One server over the session's catalog (20 protected tracks, 1 licensed) with ``LIMITS``,
    and a key per role in ``server.keys``."""
    with serve(catalog_home, {**env_for(), **LIMITS}, tmp_path_factory.mktemp("logs") / "server.log") as s:
        s.keys = {role.value: s.key(role, f"test {role.value}") for role in Role}
        yield s


def raw_request(port: int, head: str, body: bytes = b"", *, stream: bytes = b"", keep_open: bool = False):
    """Send a request head and ``body`` over a plain socket, then as much of ``stream`` as the
    server takes before it answers; returns (bytes of ``stream`` sent, status, JSON body), or
    the open socket without reading when ``keep_open``."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
    if keep_open:
        return sock
    sent = 0
    sock.setblocking(False)
    while sent < len(stream):
        readable, writable, _ = select.select([sock], [sock], [], 60)
        if readable:
            break
        try:
            sent += sock.send(stream[sent:sent + (1 << 16)])
        except (BrokenPipeError, ConnectionResetError):
            break
    sock.setblocking(True)
    status, payload = read_response(sock)
    sock.close()
    return sent, status, payload


def read_response(sock: socket.socket) -> tuple[int, dict]:
    """(status, JSON body) of one HTTP/1.1 response with a Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += _recv(sock)
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))
    while len(body) < length:
        body += _recv(sock)
    return int(head.split()[1]), json.loads(body)


def _recv(sock: socket.socket) -> bytes:
    chunk = sock.recv(65536)
    if not chunk:
        raise ConnectionError("the server closed the connection before answering")
    return chunk


CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def browser() -> Browser:
    """Debian's Chromium, headless, driven by Playwright (installed by the project's script when missing)."""
    if not CHROMIUM.exists():
        subprocess.run([str(REPO / "scripts" / "install-chromium")], check=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic"])
        yield b
        b.close()


def browser_sign_in(browser: Browser, url: str, key: str, path: str = "/review/") -> Page:
    """A new page signed in to the dashboard with ``key``, sent on to ``path``."""
    page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page.goto(url + path)
    expect(page).to_have_url(re.compile(r"/review/sign-in\?next="))
    page.fill("input[name=key]", key)
    page.click("button[type=submit]")
    return page


def write_wav(audio, path: Path) -> Path:
    """Mono samples at the renderer's rate (``detector.versionset``) as a WAV file."""
    path.write_bytes(encode(Clip(audio, versionset.SAMPLE_RATE, path.name), "wav"))
    return path


def render_reels(names: list[str], folder: Path) -> tuple[list, list[Path], versionset.Renderer]:
    """Tunes of music21's Ryan's Mammoth Collection (by file name) performed as catalog
    references (``versionset.perform``: melody, generated accompaniment, the training soundfonts)
    into ``folder/NAME.wav``: (their works, their files, the renderer, for versions of them)."""
    from music21 import corpus

    found = {p.stem: p for p in corpus.getComposer("ryansMammoth")}
    works = [versionset.parse("ryans", str(found[n])) for n in names]
    renderer = versionset.Renderer()
    files = [write_wav(renderer.render(versionset.perform(w)), folder / f"{n}.wav") for n, w in zip(names, works)]
    return works, files, renderer


REELS = [  # the reels the works tests index
    "BanjoReel", "BanksOfEnvernessReel", "BannocksOBarleyMealJig", "BarneyBrallagansJig"]
WORKS = {"BanksOfEnvernessReel": ("W-ENVERNESS", "protected"), "BannocksOBarleyMealJig": ("W-BANNOCKS", "licensed")}


def reels_catalog(folder: Path, home: Path) -> tuple[Engine, list, versionset.Renderer]:
    """The four reels rendered into ``folder`` and indexed in ``home`` as licensed recordings, by
    a manifest: Enverness's work protected, Bannocks' licensed, the others' not recorded.
    Returns the engine, the reels' works and the renderer."""
    works, _, renderer = render_reels(REELS, folder)
    with open(folder / "manifest.csv", "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["path", "track_id", "owner", "work_id", "work_title", "work_owner", "work_rights"])
        for name in REELS:
            work_id, rights = WORKS.get(name, ("", ""))
            out.writerow([f"{name}.wav", name, "Label", work_id, name if work_id else "",
                          "Publisher" if work_id else "", rights])
    engine = Engine(Settings(home=home))
    summary = engine.catalog.index_paths([folder], Rights.licensed, manifest=folder / "manifest.csv")
    assert len(summary.indexed) == 4
    return engine, works, renderer


def cover_of_enverness(works: list, renderer: versionset.Renderer, path: Path) -> Path:
    """25 s of Enverness played again: other instruments (a soundfont held out of training),
    another key and tempo, a new accompaniment."""
    version = versionset.perform(works[1], "all", soundfonts=(versionset.HELDOUT_SOUNDFONT,))
    return write_wav(renderer.render(version)[: 25 * versionset.SAMPLE_RATE], path)
