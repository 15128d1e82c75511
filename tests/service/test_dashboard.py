"""The review dashboard in headless Chromium (Debian's, driven by Playwright) and over HTTP,
against a real ``clearance serve`` process on loopback with its own small catalog.

Screenshots go to ``tests/artifacts/dashboard/`` (the README's comes from there)."""
from __future__ import annotations

import os
import re
import sqlite3
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from playwright.sync_api import expect

from detector.audio import Clip, decode, encode
from detector.policy import Rights
from index.catalog import ManifestEntry
from service.auth import Role, create_key
from service.engine import Engine
from service.settings import Settings
from tests.conftest import REPO, cut
from tests.service.conftest import Server, browser_sign_in, serve

SHOTS = REPO / "tests" / "artifacts" / "dashboard"
MARGIN_S = 4.0               # the server's review_excerpt_margin_s

# The catalog: (track, title, owner, rights).
CATALOG = [
    ("drascula-track14", "Track 14 (Drascula)", "Alcachofa Soft", Rights.protected),
    ("asc-frontiers", "Frontiers", "ASC Project", Rights.protected),
    ("sectoid-feelings-song", "Feelings", "Sectoid", Rights.protected),
    ("drascula-track29", "Track 29 (Drascula)", "Open Label", Rights.licensed),
]


@pytest.fixture(scope="module")
def home(music, tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("dashboard")
    entries = {music[t].path.resolve(): ManifestEntry(t, title, owner) for t, title, owner, _ in CATALOG}
    engine = Engine(Settings(home=home))
    for rights in Rights:
        paths = [music[t].path for t, _, _, r in CATALOG if r is rights]
        engine.catalog.index_paths(paths, rights, entries=entries)
    return home


@pytest.fixture(scope="module")
def dashboard(home, tmp_path_factory) -> Server:
    env = {**os.environ, "CLEARANCE_REVIEW_EXCERPT_MARGIN_S": str(MARGIN_S)}
    with serve(home, env, tmp_path_factory.mktemp("logs") / "dashboard.log") as s:
        yield s


@pytest.fixture(scope="module")
def url(dashboard) -> str:
    return dashboard.url


@pytest.fixture(scope="module")
def keys(dashboard) -> dict[Role, str]:
    names = {Role.submitter: "Release pipeline", Role.reviewer: "Ada Reviewer", Role.catalog_admin: "Cato Admin",
             Role.admin: "Root Admin"}
    return {role: dashboard.key(role, name) for role, name in names.items()}


@pytest.fixture(scope="module")
def checks(dashboard, keys, music, tmp_path_factory) -> dict[str, dict]:
    """Outputs submitted through the API by the pipeline's key: a clean copy of a protected
    track (blocked), a medley of two protected tracks, an original (unseen) piece and an
    excerpt of the licensed track."""
    tmp = tmp_path_factory.mktemp("outputs")
    medley = np.concatenate([decode(music[t].path, 22050).excerpt(a, a + 12.0).samples
                             for t, a in (("asc-frontiers", 100.0), ("sectoid-feelings-song", 40.0))])
    (tmp / "medley.ogg").write_bytes(encode(Clip(medley, 22050, "medley.ogg"), "ogg"))
    files = {
        "copy": cut(music["drascula-track14"], 30.0, 20.0, tmp / "copy.mp3"),
        "medley": tmp / "medley.ogg",
        "original": cut(music["drascula-track10"], 10.0, 20.0, tmp / "original.mp3"),
        "licensed": cut(music["drascula-track29"], 5.0, 15.0, tmp / "licensed.ogg", fmt="ogg"),
    }
    results = {}
    for name, path in files.items():
        r = dashboard.check(keys[Role.submitter], path.name, path.read_bytes())
        assert r.status_code == 200, r.text
        results[name] = r.json()
    assert results["copy"]["decision"] == "block"
    assert results["copy"]["matches"][0]["external_id"] == "drascula-track14"
    return results


def sign_in(client: httpx.Client, key: str) -> httpx.Response:
    """Sign in the way a browser does: fetch the form, post it with its CSRF token."""
    csrf = form_csrf(client.get("/review/sign-in").text)
    return client.post("/review/sign-in", data={"key": key, "csrf": csrf, "next": ""})


def form_csrf(page_html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page_html)[1]


def test_reviewer_hears_overrides_and_exports(browser, url, checks, keys, home, tmp_path):
    SHOTS.mkdir(parents=True, exist_ok=True)
    copy = checks["copy"]
    page = browser_sign_in(browser, url, keys[Role.reviewer])

    # The queue: every check, the counts, filters.
    expect(page).to_have_url(f"{url}/review/")
    expect(page.locator("table.queue tbody tr")).to_have_count(len(checks))
    for decision in ("block", "review", "allow"):
        n = sum(c["decision"] == decision for c in checks.values())
        expect(page.locator(f".count.{decision} b")).to_have_text(str(n))
    expect(page.locator(".count.state-unreviewed b")).to_have_text(str(len(checks)))
    page.screenshot(path=str(SHOTS / "queue.png"), full_page=True)
    page.select_option("select[name=decision]", "block")
    page.click(".filters button[type=submit]")
    blocked = [c for c in checks.values() if c["decision"] == "block"]
    expect(page.locator("table.queue tbody tr")).to_have_count(len(blocked))
    expect(page.locator("table.queue")).not_to_contain_text("original.mp3")

    # The check page: every match, its facts, output and reference drawn and aligned.
    page.click("text=copy.mp3")
    expect(page).to_have_url(f"{url}/review/checks/{copy['id']}")
    expect(page.locator("section.match")).to_have_count(len(copy["matches"]))
    top = copy["matches"][0]
    first = page.locator("#match-1")
    for text in ("Alcachofa Soft", "Track 14 (Drascula)", f"{top['score']:.6f}", top["method"],
                 f"{top['tempo_ratio']:.4f}", "protected"):
        expect(first).to_contain_text(text)
    expect(page.locator(".reasons")).to_contain_text("drascula-track14")
    expect(page.locator(".check-head")).to_contain_text(copy["model"])
    expect(page.locator(".check-head")).to_contain_text(copy["policy"])
    for lane in ("#overview", "#match-1 .lane.output", "#match-1 .lane.reference"):
        expect(page.locator(lane)).to_have_attribute("data-drawn", "true", timeout=30_000)
    track_s = decode(Engine(Settings(home=home)).store.find("drascula-track14").source_path, 8000).duration
    excerpt = max(0.0, top["ref_start"] - MARGIN_S), min(track_s, top["ref_end"] + MARGIN_S)
    out_box, ref_box = (first.locator(sel).bounding_box() for sel in (".lane.output", ".lane.reference"))
    span = first.locator(".pair .span").bounding_box()
    out_x = out_box["x"] + top["query_start"] / copy["duration_s"] * out_box["width"]
    ref_x = ref_box["x"] + (top["ref_start"] - excerpt[0]) / (excerpt[1] - excerpt[0]) * ref_box["width"]
    assert abs(out_x - span["x"]) < 3 and abs(ref_x - span["x"]) < 3, (out_x, ref_x, span)

    # Playback from the aligned positions.
    first.locator("[data-play=reference]").click()
    expect(first).to_have_attribute("data-playing", "reference")
    page.wait_for_function("s => parseFloat(s.dataset.referenceTime) > parseFloat(s.dataset.referenceStart) + 0.2",
                           arg=first.element_handle())
    first.locator("[data-play=output]").click()
    expect(first).to_have_attribute("data-playing", "output")
    page.wait_for_function("s => parseFloat(s.dataset.outputTime) > parseFloat(s.dataset.outputStart) + 0.2",
                           arg=first.element_handle())
    first.locator("[data-play=stop]").click()
    expect(first).to_have_attribute("data-playing", "")

    # An override needs a reason: the browser refuses the empty form, nothing is recorded.
    page.click("button[value=override]")
    expect(page.locator("table.audit")).to_contain_text("No verdict yet")
    page.fill("input[name=reason]", "Licence LIC-2041 from Alcachofa Soft covers this output")
    page.fill("textarea[name=note]", "Checked against the signed licence, clause 4.")
    page.click("button[value=override]")
    expect(page).to_have_url(f"{url}/review/checks/{copy['id']}#audit")
    row = page.locator("table.audit tbody tr")
    expect(row).to_have_count(1)
    for text in ("Ada Reviewer", "override", "unreviewed", "allowed", "LIC-2041", "clause 4"):
        expect(row).to_contain_text(text)
    expect(page.locator("#review-state")).to_have_text("allowed")
    for lane in ("#overview", "#match-1 .lane.output", "#match-1 .lane.reference"):
        expect(page.locator(lane)).to_have_attribute("data-drawn", "true", timeout=30_000)
    page.screenshot(path=str(SHOTS / "check.png"), full_page=True)

    # The evidence report: one self-contained file.
    with page.expect_download() as download:
        page.click("#export")
    report = tmp_path / "report.html"
    download.value.save_as(report)
    html = report.read_text()
    for text in (copy["id"], "BLOCK", copy["model"], copy["policy"], "LIC-2041", "Ada Reviewer", "drascula-track14",
                 f"{top['score']:.6f}", f"{top['query_start']:.2f}–{top['query_end']:.2f}"):
        assert text.lower() in html.lower(), text
    assert not re.search(r"<(script|link|iframe)\b|src=\"(?!data:)", html)
    images = re.findall(r'src="data:image/png;base64,', html)
    assert len(images) == 1 + 2 * len(copy["matches"])
    offline = browser.new_page(viewport={"width": 1100, "height": 900})
    offline.route("**/*", lambda route: route.abort())
    offline.set_content(html)
    assert offline.evaluate("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
    offline.screenshot(path=str(SHOTS / "report.png"), full_page=True)


def test_every_match_of_a_multi_match_output_is_shown(browser, url, checks, keys):
    medley = checks["medley"]
    assert medley["decision"] == "block"
    page = browser_sign_in(browser, url, keys[Role.admin], f"/review/checks/{medley['id']}")
    expect(page).to_have_url(f"{url}/review/checks/{medley['id']}")
    expect(page.locator("section.match")).to_have_count(len(medley["matches"]))
    expect(page.locator("#overview ~ .span")).to_have_count(len(medley["matches"]))
    for n, m in enumerate(medley["matches"], 1):
        expect(page.locator(f"#match-{n}")).to_contain_text(m["external_id"])
        expect(page.locator(f"#match-{n} .lane.reference")).to_have_attribute("data-drawn", "true", timeout=30_000)


def test_queue_filters_by_owner_track_date_and_state(url, checks, keys):
    with httpx.Client(base_url=url, timeout=60) as c:
        assert sign_in(c, keys[Role.reviewer]).status_code == 303

        def listed(**params) -> set[str]:
            r = c.get("/review/", params=params)
            assert r.status_code == 200
            return set(re.findall(r'href="/review/checks/([0-9a-f-]+)"', r.text))

        ids = {name: result["id"] for name, result in checks.items()}
        assert listed() == set(ids.values())
        assert listed(owner="Open Label") == {ids["licensed"]}
        assert listed(track="drascula-track14") == {ids["copy"]}
        assert listed(decision="allow") == {ids["original"], ids["licensed"]}
        # the days from an hour ago to now (UTC): the same day, unless the suite crossed midnight
        # after the checks were made
        since, until = (time.strftime("%Y-%m-%d", time.gmtime(t)) for t in (time.time() - 3600, time.time()))
        assert listed(since=since, until=until) == set(ids.values())
        assert listed(until="2000-01-01") == set()
        assert listed(state="escalated") == set()
        assert c.get("/review/", params={"since": "yesterday"}).status_code == 400


def test_reference_audio_is_the_matched_excerpt_plus_margin(url, checks, keys, home):
    copy = checks["copy"]
    top = copy["matches"][0]
    track_s = decode(Engine(Settings(home=home)).store.find("drascula-track14").source_path, 8000).duration
    with httpx.Client(base_url=url, timeout=60) as c:
        sign_in(c, keys[Role.reviewer])
        r = c.get(f"/review/checks/{copy['id']}/matches/1/reference")
        assert r.status_code == 200 and r.headers["content-type"] == "audio/ogg"
        served = decode(r.content, 8000).duration
        expected = min(track_s, top["ref_end"] + MARGIN_S) - max(0.0, top["ref_start"] - MARGIN_S)
        assert abs(served - expected) < 0.1, (served, expected)
        assert c.get(f"/review/checks/{copy['id']}/matches/{len(copy['matches']) + 1}/reference").status_code == 404
        output = c.get(f"/review/checks/{copy['id']}/output")
        assert output.status_code == 200 and output.headers["content-type"] == "audio/mpeg"
        assert abs(decode(output.content, 8000).duration - copy["duration_s"]) < 0.1


def test_submitter_cannot_open_any_dashboard_page_or_reference_audio(url, checks, keys):
    copy = checks["copy"]
    pages = ["/review/", f"/review/checks/{copy['id']}", f"/review/checks/{copy['id']}/output",
             f"/review/checks/{copy['id']}/matches/1/reference", f"/review/checks/{copy['id']}/report",
             "/review/catalog"]
    with httpx.Client(base_url=url, timeout=60) as c:
        refused = sign_in(c, keys[Role.submitter])
        assert refused.status_code == 403 and "submitter key may not do this" in refused.text
        assert "clearance_review" not in c.cookies
        c.cookies.set("clearance_review", "forged-or-stolen-token", domain="127.0.0.1", path="/review")
        for path in pages:
            for headers in ({}, {"Authorization": f"Bearer {keys[Role.submitter]}"}):
                r = c.get(path, headers=headers)
                assert r.status_code == 303 and r.headers["location"].startswith("/review/sign-in"), path
                assert not r.content
        verdict = c.post(f"/review/checks/{copy['id']}/verdicts", data={"action": "confirm"},
                         headers={"Authorization": f"Bearer {keys[Role.submitter]}"})
        assert verdict.status_code == 303 and verdict.headers["location"] == "/review/sign-in"


def test_forms_need_csrf_verdicts_are_append_only_and_sessions_end(url, checks, keys, home):
    check = checks["licensed"]
    with httpx.Client(base_url=url, timeout=60) as c:
        sign_in(c, keys[Role.reviewer])
        page = c.get(f"/review/checks/{check['id']}")
        csrf = form_csrf(page.text)
        verdicts = f"/review/checks/{check['id']}/verdicts"
        assert c.post(verdicts, data={"action": "escalate", "csrf": "wrong", "seen": 0}).status_code == 403
        assert c.post(verdicts, data={"action": "override", "reason": " ", "csrf": csrf, "seen": 0}).status_code == 400
        assert "No verdict yet" in c.get(f"/review/checks/{check['id']}").text
        note = "ask <b>counsel</b>"
        assert c.post(verdicts, data={"action": "escalate", "note": note, "csrf": csrf, "seen": 0}).status_code == 303
        stale = c.post(verdicts, data={"action": "confirm", "csrf": csrf, "seen": 0})
        assert stale.status_code == 409 and "Ada Reviewer" in stale.text
        after = c.get(f"/review/checks/{check['id']}").text
        assert ">escalated<" in after and "ask &lt;b&gt;counsel&lt;/b&gt;" in after and note not in after

        db = sqlite3.connect(home / "catalog.db")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute("UPDATE audit_log SET new = 'allowed'")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute("DELETE FROM audit_log")
        db.close()

        out = c.post("/review/sign-out", data={"csrf": csrf})
        assert out.status_code == 303
        assert c.get("/review/").status_code == 303

    store = Engine(Settings(home=home)).store
    key_id, key = create_key(store, Role.reviewer, "Leaving Reviewer")     # its id, to revoke it
    with httpx.Client(base_url=url, timeout=60) as c:
        assert sign_in(c, key).status_code == 303 and c.get("/review/").status_code == 200
        store.revoke_key(key_id)
        assert c.get("/review/").status_code == 303


def test_catalog_admin_changes_rights_and_the_change_is_audited(browser, url, keys, home):
    page = browser_sign_in(browser, url, keys[Role.catalog_admin], "/review/catalog")
    expect(page).to_have_url(f"{url}/review/catalog")
    page.fill("input[name=q]", "Sectoid")
    page.click(".filters button[type=submit]")
    row = page.locator("#track-sectoid-feelings-song")
    expect(page.locator("#tracks tbody tr")).to_have_count(1)
    row.locator("select[name=rights]").select_option("licensed")
    row.locator("input[name=note]").fill("Licence signed 2026-03-01")
    row.locator("button").click()
    expect(row.locator(".badge")).to_have_text("licensed")
    change = page.locator("#rights-changes tbody tr").first
    for text in ("Cato Admin", "sectoid-feelings-song", "protected", "licensed", "Licence signed"):
        expect(change).to_contain_text(text)
    assert Engine(Settings(home=home)).store.find("sectoid-feelings-song").rights is Rights.licensed
    page.click(".filters a")          # clear the search
    page.screenshot(path=str(SHOTS / "catalog.png"), full_page=True)
    assert page.request.get(f"{url}/review/").status == 403

    reviewer = browser_sign_in(browser, url, keys[Role.reviewer], "/review/catalog")
    expect(reviewer.locator("#rights-changes")).to_contain_text("Cato Admin")
    expect(reviewer.locator("table.catalog form")).to_have_count(0)
