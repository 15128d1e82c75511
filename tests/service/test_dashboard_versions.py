"""A reviewer's view of a re-performance, in headless Chromium against a real server: the check
page of a cover of a catalog reel (its work protected) shows the work and the right that decided,
the key shift, coverage and agreement, the two melodies and chroma aligned; both play in step,
and the reference is heard transposed to the output's key on demand. The screenshot is the
README's."""
from __future__ import annotations

import os

import httpx
import numpy as np
import pytest
from playwright.sync_api import expect

from detector import version, version_model
from detector.audio import decode
from service.auth import Role
from service.dashboard.evidence import TRANSPOSE_BLOCK_S, transposed
from tests.service.conftest import browser_sign_in, cover_of_enverness, reels_catalog, serve
from tests.service.test_dashboard import SHOTS, sign_in


@pytest.fixture(scope="module")
def cover_check(tmp_path_factory):
    """A server over the reels' catalog, a reviewer's key and the stored check of the cover."""
    home = tmp_path_factory.mktemp("reperformance")
    folder = tmp_path_factory.mktemp("reels")
    _, works, renderer = reels_catalog(folder, home)
    cover = cover_of_enverness(works, renderer, folder / "cover.wav")
    with serve(home, {**os.environ}, home / "server.log") as server:
        result = server.check(server.key(Role.submitter, "pipeline"), "cover.wav", cover.read_bytes()).json()
        assert result["decision"] == "review", result
        number = next(n for n, m in enumerate(result["matches"], 1) if m["kind"] == "reperformance")
        server.cover = cover
        yield server, server.key(Role.reviewer, "Ada Reviewer"), result, number


def test_a_reviewer_sees_hears_and_transposes_a_re_performance(browser, cover_check, tmp_path):
    server, key, result, number = cover_check
    m = result["matches"][number - 1]
    assert m["key_shift_st"] != 0
    page = browser_sign_in(browser, server.url, key, f"/review/checks/{result['id']}")
    section = page.locator(f"#match-{number}")
    for text in ("re-performance", "W-ENVERNESS", "protected", "the work's rights", f"{m['key_shift_st']:+d} semitone",
                 "% of the output", "Melody agreement", "Harmony agreement"):
        expect(section).to_contain_text(text)
    for picture in ("img.melody", "img.chroma"):
        assert section.locator(picture).evaluate("i => i.complete && i.naturalWidth > 0")
    for lane in (".lane.output", ".lane.reference"):
        expect(section.locator(lane)).to_have_attribute("data-drawn", "true", timeout=30_000)

    # both in step, the reference as recorded, then transposed to the output's key
    section.locator("[data-play=both]").click()
    expect(section).to_have_attribute("data-playing", "both")
    page.wait_for_function("s => parseFloat(s.dataset.outputTime) > parseFloat(s.dataset.outputStart) + 0.2",
                           arg=section.element_handle())
    key_button = section.locator("[data-play=key]")
    key_button.click()
    expect(section).to_have_attribute("data-key", "output")
    expect(key_button).to_contain_text("in the output's key")
    expect(section.locator(".lane.reference")).to_have_attribute(
        "data-src", f"/review/checks/{result['id']}/matches/{number}/reference?shift={m['key_shift_st']}")
    expect(section.locator(".lane.reference")).to_have_attribute("data-drawn", "true", timeout=30_000)
    section.locator("[data-play=both]").click()
    expect(section).to_have_attribute("data-playing", "both")
    page.wait_for_function("s => parseFloat(s.dataset.referenceTime) > parseFloat(s.dataset.referenceStart) + 0.2",
                           arg=section.element_handle())
    section.locator("[data-play=stop]").click()
    section.scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / "reperformance.png"), full_page=True)
    key_button.click()
    expect(section).to_have_attribute("data-key", "recorded")

    # the evidence report carries the same pictures and figures
    with page.expect_download() as download:
        page.click("#export")
    download.value.save_as(tmp_path / "report.html")
    html = (tmp_path / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == 1 + 2 * len(result["matches"]) + 2
    for text in ("W-ENVERNESS", "re-performance, the work's rights", "Melody agreement", "Harmony agreement"):
        assert text in html, text


def test_the_transposed_reference_is_in_the_outputs_key_and_agreement_is_measured(cover_check):
    """What the key button plays: the reference excerpt moved by the measured key shift, so that
    its pitch classes line up with the output's; and the page's agreement beats other keys."""
    server, key, result, number = cover_check
    m = result["matches"][number - 1]
    with httpx.Client(base_url=server.url, timeout=120) as c:
        assert sign_in(c, key).status_code == 303
        base = f"/review/checks/{result['id']}/matches/{number}/reference"
        recorded, moved = (decode(c.get(base, params=p).content, 8000) for p in ({}, {"shift": m["key_shift_st"]}))
        assert abs(recorded.duration - moved.duration) < 0.1          # the tempo is kept
        a, b = (version_model.pitch_class_power(x.samples).astype(np.float32) for x in (recorded, moved))
        assert version.transposition(b, a) == m["key_shift_st"] % 12
        assert c.get(base, params={"shift": 12}).status_code == 422
        page = c.get(f"/review/checks/{result['id']}").text

        def listed(**params) -> bool:
            return result["id"] in c.get("/review/", params=params).text

        assert listed(kind="reperformance") and listed(work="W-ENVERNESS") and listed(work_owner="Publisher")
        assert not listed(work="W-OTHER") and not listed(work_owner="Someone Else")
    melody = page.split("Melody agreement</dt><dd>")[1]
    aligned, elsewhere = (float(x) for x in (melody.split(" %")[0], melody.split("(")[1].split(" %")[0]))
    assert aligned > 2 * elsewhere, (aligned, elsewhere)


def test_a_catalog_admin_changes_a_works_rights_audited_and_the_next_check_uses_them(browser, cover_check):
    server, _, result, _ = cover_check
    page = browser_sign_in(browser, server.url, server.key(Role.catalog_admin, "Cato Admin"), "/review/catalog")
    row = page.locator("#work-W-ENVERNESS")
    expect(row).to_contain_text("BanksOfEnvernessReel")
    expect(page.locator("#track-BanksOfEnvernessReel")).to_contain_text("W-ENVERNESS")
    row.locator("select[name=rights]").select_option("licensed")
    row.locator("input[name=note]").fill("Sync licence S-9")
    row.locator("button").click()
    expect(page.locator("#work-W-ENVERNESS .badge")).to_have_text("licensed")
    change = page.locator("#rights-changes tbody tr").first
    for text in ("Cato Admin", "work W-ENVERNESS", "protected", "licensed", "Sync licence S-9"):
        expect(change).to_contain_text(text)
    after = server.check(server.key(Role.submitter), "cover.wav", server.cover.read_bytes()).json()
    assert after["decision"] == "allow" and any(r.startswith("licensed work 'W-ENVERNESS'") for r in after["reasons"])

    # a new work, named as the one a track records
    form = page.locator("#add-work")
    form.locator("input[name=work_id]").fill("W-BANJO")
    form.locator("input[name=title]").fill("Banjo Reel")
    form.locator("select[name=rights]").select_option("protected")
    form.locator("input[name=recordings]").fill("BanjoReel")
    form.locator("button").click()
    expect(page.locator("#work-W-BANJO")).to_contain_text("BanjoReel")
    expect(page.locator("#track-BanjoReel")).to_contain_text("W-BANJO")
    expect(page.locator("#rights-changes tbody tr").first).to_contain_text("track BanjoReel")


def test_a_long_excerpt_is_transposed_block_by_block_keeping_its_length_and_level():
    sr = 22050
    t = np.arange(int(sr * 2.5 * TRANSPOSE_BLOCK_S)) / sr        # blocks, and a part of one
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    up = transposed(tone, sr, 3)
    assert len(up) == len(tone)
    for at in (0.3, 0.995, 2.2):                                 # inside blocks and across a boundary
        piece = up[int(at * TRANSPOSE_BLOCK_S * sr):][:8192]
        spectrum = np.abs(np.fft.rfft(piece * np.hanning(len(piece))))
        assert np.argmax(spectrum) * sr / len(piece) == pytest.approx(440 * 2 ** (3 / 12), rel=0.01)
        assert np.abs(piece).max() == pytest.approx(0.3, rel=0.05)
