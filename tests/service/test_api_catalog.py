"""Catalog administration over HTTP against a real server with a catalog of its own: add a
reference recording, change its rights, take it down, and the refusals."""
from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from detector.audio import Clip, encode
from index.reviews import Review
from index.store import Store
from service.settings import Settings
from tests.conftest import cut
from tests.service.conftest import serve
from tests.service.memory import memory_growth


@pytest.fixture(scope="module")
def catalog_server(env_for, tmp_path_factory):
    """A server over an empty catalog, with a catalog-admin and a submitter key."""
    home = tmp_path_factory.mktemp("http-catalog")
    with serve(home, env_for(home), home / "server.log") as s:
        s.keys = {"catalog-admin": s.key("catalog-admin", "label"), "submitter": s.key("submitter", "platform")}
        yield s


def add(server, path: Path, **fields) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/tracks", files={"audio": (path.name, path.read_bytes())}, data=fields,
                      headers={"Authorization": f"Bearer {server.keys['catalog-admin']}"}, timeout=300)


def admin(server, method: str, path: str, **kw) -> httpx.Response:
    return httpx.request(method, f"{server.url}{path}", timeout=300,
                         headers={"Authorization": f"Bearer {server.keys['catalog-admin']}"}, **kw)


def test_add_change_rights_and_take_down(catalog_server, music, tmp_path):
    s = catalog_server
    reference = cut(music["drascula-track22"], 0.0, 60.0, tmp_path / "track22.mp3")
    output = cut(music["drascula-track22"], 20.0, 15.0, tmp_path / "output.mp3").read_bytes()
    assert s.check(s.keys["submitter"], "output.mp3", output).json()["decision"] == "allow"

    r = add(s, reference, external_id="ISRC-22", rights="protected", owner="Alcachofa Soft", title="Track 22")
    assert r.status_code == 201, r.text
    assert r.headers["Location"] == "/v1/tracks/ISRC-22"
    track = r.json()
    assert {k: track[k] for k in ("external_id", "title", "owner", "rights")} == {
        "external_id": "ISRC-22", "title": "Track 22", "owner": "Alcachofa Soft", "rights": "protected"}
    assert "source_path" not in track and track["source_file"] == f"{track['sha256']}.mp3"     # no server paths
    kept = s.home / "references" / track["source_file"]            # the dashboard plays excerpts of it
    assert kept.read_bytes() == reference.read_bytes()
    assert admin(s, "GET", "/v1/tracks").json()["tracks"] == [track]
    assert admin(s, "GET", "/v1/tracks/ISRC-22").json() == track
    assert s.metric("clearance_index_tracks") == 1

    blocked = s.check(s.keys["submitter"], "output.mp3", output).json()
    assert blocked["decision"] == "block" and blocked["matches"][0]["external_id"] == "ISRC-22"

    changed = admin(s, "PATCH", "/v1/tracks/ISRC-22", json={"rights": "licensed", "note": "licence L-7"})
    assert changed.status_code == 200 and changed.json()["rights"] == "licensed"
    [audited] = Review(Store(Settings(home=s.home).db_url)).audit_trail("track", "ISRC-22")
    assert (audited.actor.name, audited.action, audited.previous, audited.new, audited.note) == (
        "label", "rights", "protected", "licensed", "licence L-7")
    licensed = s.check(s.keys["submitter"], "output.mp3", output).json()
    assert licensed["decision"] == "allow" and licensed["matches"][0]["rights"] == "licensed"

    gone = admin(s, "DELETE", "/v1/tracks/ISRC-22")
    assert gone.status_code == 204
    assert not kept.exists()
    assert admin(s, "GET", "/v1/tracks/ISRC-22").status_code == 404
    after = s.check(s.keys["submitter"], "output.mp3", output).json()
    assert after["decision"] == "allow" and after["matches"] == []
    assert s.metric("clearance_index_tracks") == 0


def test_works_over_http_name_the_song_and_its_rights_audited(catalog_server, music, tmp_path):
    s = catalog_server
    reference = cut(music["drascula-track22"], 0.0, 60.0, tmp_path / "track22.mp3")
    output = cut(music["drascula-track22"], 20.0, 15.0, tmp_path / "output.mp3").read_bytes()
    r = add(s, reference, external_id="ISRC-22", rights="licensed", work_id="T-345.246.800-1", work_title="The Song",
            work_owner="Publisher", work_rights="protected")
    assert r.status_code == 201, r.text
    assert r.json()["work"] == {"work_id": "T-345.246.800-1", "title": "The Song", "owner": "Publisher",
                                "rights": "protected"}
    checked = s.check(s.keys["submitter"], "output.mp3", output).json()
    assert checked["decision"] == "review" and checked["matches"][0]["decided_by"] == "work"

    changed = admin(s, "PUT", "/v1/works/T-345.246.800-1", json={"rights": "licensed", "note": "publishing deal P-3"})
    assert changed.status_code == 200 and changed.json() == {
        "work_id": "T-345.246.800-1", "title": "The Song", "owner": "Publisher", "rights": "licensed",
        "recordings": ["ISRC-22"]}
    [entry] = Review(Store(Settings(home=s.home).db_url)).audit_trail("work", "T-345.246.800-1")[-1:]
    assert (entry.actor.name, entry.previous, entry.new, entry.note) == ("label", "protected", "licensed",
                                                                         "publishing deal P-3")
    assert s.check(s.keys["submitter"], "output.mp3", output).json()["decision"] == "allow"
    assert admin(s, "GET", "/v1/works").json()["works"] == [changed.json()]

    unlinked = admin(s, "PATCH", "/v1/tracks/ISRC-22", json={"work_id": None, "note": "wrong cue sheet"})
    assert unlinked.status_code == 200 and unlinked.json()["work"] is None
    assert admin(s, "PATCH", "/v1/tracks/ISRC-22", json={"work_id": "W-NONE"}).status_code == 404
    too_long = admin(s, "PUT", "/v1/works/" + "W" * 40, json={"rights": "protected"})
    assert too_long.status_code == 422 and "1 to 32 characters" in too_long.json()["detail"]
    assert admin(s, "DELETE", "/v1/tracks/ISRC-22").status_code == 204


def test_refusals(catalog_server, music, tmp_path):
    s = catalog_server
    reference = cut(music["xmoto-menu"], 0.0, 30.0, tmp_path / "menu.ogg", fmt="ogg")
    assert add(s, reference, external_id="menu", rights="protected").status_code == 201

    taken = add(s, cut(music["xmoto-foxrun"], 0.0, 30.0, tmp_path / "fox.mp3"), external_id="menu", rights="licensed")
    assert taken.status_code == 409 and "external_id 'menu' is already in the catalog" in taken.json()["detail"]
    again = add(s, reference, external_id="menu-again", rights="protected")
    assert again.status_code == 409 and again.json()["detail"] == "this recording is already in the catalog as 'menu'"

    junk = tmp_path / "junk.flac"
    junk.write_bytes(b"fLaC" + bytes(3000))
    unreadable = add(s, junk, external_id="junk", rights="protected")
    assert unreadable.status_code == 422 and unreadable.json()["detail"].startswith("junk.flac: ")
    assert sorted(p.name for p in (s.home / "references").iterdir()) == [f"{admin(s, 'GET', '/v1/tracks/menu').json()['sha256']}.ogg"]

    for fields, where in [({"rights": "protected"}, "body.external_id"), ({"external_id": "x"}, "body.rights"),
                          ({"external_id": "x", "rights": "public-domain"}, "body.rights"),
                          ({"external_id": "", "rights": "protected"}, "body.external_id")]:
        r = add(s, reference, **fields)
        assert r.status_code == 422 and r.json()["detail"].startswith(where), r.text

    for method, kw in [("GET", {}), ("PATCH", {"json": {"rights": "licensed"}}), ("DELETE", {})]:
        r = admin(s, method, "/v1/tracks/no-such-track", **kw)
        assert r.status_code == 404 and r.json()["detail"] == "no track with external_id 'no-such-track'"
    assert admin(s, "PATCH", "/v1/tracks/menu", json={"rights": "borrowed"}).status_code == 422
    assert [t["external_id"] for t in admin(s, "GET", "/v1/tracks").json()["tracks"]] == ["menu"]


def test_busy_catalog_is_a_conflict(catalog_server, music, tmp_path):
    """While an indexing job holds the catalog (its writer lock), an upload is refused with 409
    and a reason, and succeeds once the job is done."""
    s = catalog_server
    reference = cut(music["xmoto-foxrun"], 30.0, 30.0, tmp_path / "fox.ogg", fmt="ogg")
    kept = sorted((s.home / "references").iterdir())
    with open(s.home / "writer.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        busy = add(s, reference, external_id="fox", rights="protected")
        assert busy.status_code == 409, busy.text
        assert busy.json()["detail"] == f"another indexing job is writing to {s.home.resolve()}; wait for it to finish"
    assert admin(s, "GET", "/v1/tracks/fox").status_code == 404
    assert sorted((s.home / "references").iterdir()) == kept      # the refused upload is not kept
    assert add(s, reference, external_id="fox", rights="protected").status_code == 201


def test_silent_reference_is_refused_as_it_streams(catalog_server, tmp_path):
    """Two hours of silence are a megabyte of FLAC; indexing them took 80 s and 4.2 GB for a track
    that could never match. Refused as the file streams, over HTTP and by ``clearance index``."""
    s = catalog_server
    silent = tmp_path / "silence.flac"
    silent.write_bytes(encode(Clip(np.zeros(2 * 3600 * 8000, np.float32), 8000, silent.name), "flac"))
    assert silent.stat().st_size < 2e6
    t0 = time.monotonic()
    with memory_growth(s.port) as grew:
        refused = add(s, silent, external_id="silence", rights="protected")
    took = time.monotonic() - t0
    assert refused.status_code == 422, refused.text
    assert refused.json()["detail"] == ("silence.flac: no audible audio: no 1 s of it is louder than -50 dBFS, "
                                        "so it could never be matched")
    assert took < 30 and grew.mb < 100, (took, grew.mb)
    assert admin(s, "GET", "/v1/tracks/silence").status_code == 404

    env = {**os.environ, "CLEARANCE_HOME": str(tmp_path / "home")}
    cli = [sys.executable, "-m", "service.cli"]
    indexed = subprocess.run([*cli, "index", str(silent), "--rights", "protected", "--workers", "0"], env=env,
                             capture_output=True, text=True, timeout=300)
    assert indexed.returncode == 2 and "failed 1" in indexed.stdout, indexed
    failures = subprocess.run([*cli, "failures"], env=env, capture_output=True, text=True, timeout=300)
    assert f"{silent}: no audible audio" in failures.stdout, failures


def test_reference_longer_than_its_cap_is_too_large(catalog_server, tmp_path):
    """413, as a check over its cap is, not 422 'Unreadable audio'."""
    s = catalog_server
    rate = 1000                      # Hz: three hours of it are small, and decoded at the model's rate all the same
    t = np.arange(5 * rate) / rate
    samples = np.zeros((3 * 3600 + 60) * rate, np.float32)
    samples[:len(t)] = 0.3 * np.sin(2 * np.pi * 200 * t)
    long = tmp_path / "long.flac"
    long.write_bytes(encode(Clip(samples, rate, long.name), "flac"))
    r = add(s, long, external_id="long", rights="protected")
    assert r.status_code == 413, r.text
    assert r.json()["title"] == "Audio too large"
    assert r.json()["detail"] == "long.flac: the audio is longer than the 10800 s limit"
