"""The review dashboard under hostile use, against a real ``clearance serve`` on loopback with a
catalog of one hour-long reference: reviewers opening its excerpt all at once, requests the
dashboard has no page for, and query values out of range."""
from __future__ import annotations

import io
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import httpx
import numpy as np
import pytest

from detector.audio import Clip, decode, encode
from detector.policy import Rights
from index.catalog import ManifestEntry
from service.auth import Role
from service.engine import Engine
from service.settings import Settings
from tests.conftest import cut
from tests.service.conftest import Server, serve
from tests.service.memory import memory_growth
from tests.service.test_dashboard import sign_in

TRACK = "drascula-track14"
AT_S = 1800.0                # where the track lies in the hour of silence around it
MARGIN_S = 5.0               # the server's review_excerpt_margin_s (its default)
REVIEWERS = 8


@pytest.fixture(scope="module")
def reference(music, tmp_path_factory) -> Path:
    """An hour of 8 kHz FLAC, silent but for ``TRACK`` at ``AT_S`` (small, and quick to make)."""
    track = decode(music[TRACK].path, 8000).samples
    samples = np.zeros(3600 * 8000, np.float32)
    samples[int(AT_S * 8000):int(AT_S * 8000) + len(track)] = track
    path = tmp_path_factory.mktemp("reference") / "hour.flac"
    path.write_bytes(encode(Clip(samples, 8000, path.name), "flac"))
    return path


@pytest.fixture(scope="module")
def dashboard(reference, tmp_path_factory) -> Server:
    home = tmp_path_factory.mktemp("dashboard-limits")
    Engine(Settings(home=home)).catalog.index_paths(
        [reference], Rights.protected, entries={reference.resolve(): ManifestEntry("hour", "An hour", "Test Records")})
    with serve(home, dict(os.environ), tmp_path_factory.mktemp("logs") / "dashboard.log") as s:
        yield s


@pytest.fixture(scope="module")
def copy(dashboard, music, tmp_path_factory) -> dict:
    """A check of 20 s copied from the hour's middle: blocked, matched at ``AT_S`` + 30 s."""
    output = cut(music[TRACK], 30.0, 20.0, tmp_path_factory.mktemp("outputs") / "copy.mp3")
    r = dashboard.check(dashboard.key(Role.submitter), output.name, output.read_bytes())
    assert r.status_code == 200, r.text
    result = r.json()
    assert result["decision"] == "block" and result["matches"][0]["external_id"] == "hour"
    assert abs(result["matches"][0]["ref_start"] - (AT_S + 30.0)) < 1.0
    return result


def test_reviewers_opening_an_hour_long_reference_at_once_get_its_excerpt_fast(dashboard, copy, reference):
    """Eight reviewers at once took 24 s each and 2.5 GB when the whole recording was decoded for
    each; now only the excerpt is decoded, in a bounded pool, and kept for the next reviewer."""
    path = f"/review/checks/{copy['id']}/matches/1/reference"
    with httpx.Client(base_url=dashboard.url, timeout=120) as c:
        sign_in(c, dashboard.key(Role.reviewer))
        assert c.get(f"/review/checks/{copy['id']}").status_code == 200
        cookies = dict(c.cookies)

    def listen(_: int) -> httpx.Response:
        return httpx.get(dashboard.url + path, cookies=cookies, timeout=120)

    t0 = time.monotonic()
    with memory_growth(dashboard.port) as grew, ThreadPoolExecutor(REVIEWERS) as pool:
        answers = list(pool.map(listen, range(REVIEWERS)))
    took = time.monotonic() - t0
    assert [a.status_code for a in answers] == [200] * REVIEWERS
    assert {a.headers["content-type"] for a in answers} == {"audio/ogg"}
    assert took < 15 and grew.mb < 100, (took, grew.mb)

    top = copy["matches"][0]
    start, end = top["ref_start"] - MARGIN_S, top["ref_end"] + MARGIN_S
    with av.open(io.BytesIO(answers[0].content)) as served:        # the container says how long it is
        assert abs(served.duration / av.time_base - (end - start)) < 0.1
    heard = decode(answers[0].content, 8000).samples
    whole = decode(reference, 8000).excerpt(start, end).samples
    n = min(len(heard), len(whole))
    assert abs(len(heard) - len(whole)) < 0.01 * 8000
    assert np.corrcoef(heard[:n], whole[:n])[0, 1] > 0.95


def test_requests_the_dashboard_has_no_page_for_get_its_error_page(dashboard, copy):
    with httpx.Client(base_url=dashboard.url, timeout=60) as c:
        signed_out = c.get("/review/no-such-page")
        assert signed_out.status_code == 404 and "<h1>404</h1>" in signed_out.text
        sign_in(c, dashboard.key(Role.reviewer))
        for method, path, status, says in [
            ("GET", "/review/no-such-page", 404, "Not Found"),
            ("POST", "/review/", 405, "Method Not Allowed"),
            ("GET", f"/review/checks/{copy['id']}/matches/first/reference", 422, "number: Input should be a valid"),
            ("GET", "/review/?until=9999-12-31", 400, "9999-12-31&#39; is out of range"),
            ("GET", "/review/?page=99999999999999999999999", 400, "page 99999999999999999999999 is out of range"),
        ]:
            r = c.request(method, path)
            assert r.status_code == status, (path, r.status_code, r.text[:200])
            assert r.headers["content-type"].startswith("text/html"), path
            assert f"<h1>{status}</h1>" in r.text and says in r.text, path
            assert "Back to the dashboard" in r.text
        assert c.post("/review/").headers["allow"] == "GET"
        assert c.get("/review/", params={"since": "0001-01-01", "until": "9999-12-30"}).status_code == 200
