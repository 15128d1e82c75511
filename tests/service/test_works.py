"""Recordings and works end to end: reels from music21's corpus rendered with FluidSynth are
indexed as licensed recordings whose works (songs) have rights of their own, named by the
manifest. A copy of a recording is decided by its work's rights where the recording is licensed,
as the policy says; a re-performance by its work's alone; a change of a work's rights applies to
the next check and is audited."""
from __future__ import annotations

import pytest

from detector.policy import DEFAULT_POLICY, Rights, WorkRights
from index.reviews import Actor, Review
from service.engine import Engine
from service.settings import Settings
from tests.service.conftest import cover_of_enverness, reels_catalog

@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reels")
    return (*reels_catalog(folder, tmp_path_factory.mktemp("home")), folder)


def test_the_manifest_names_each_recordings_work(catalog):
    engine, *_ = catalog
    assert [(w.external_id, w.rights.value, recordings) for w, recordings in engine.store.list_works()] == [
        ("W-BANNOCKS", "licensed", ["BannocksOBarleyMealJig"]), ("W-ENVERNESS", "protected", ["BanksOfEnvernessReel"])]
    assert engine.store.find("BanjoReel").work is None


def test_a_copy_of_a_licensed_recording_of_a_protected_work_is_decided_as_the_policy_says(catalog, tmp_path):
    engine, _, _, folder = catalog
    result = engine.check(folder / "BanksOfEnvernessReel.wav", "copy.wav")
    assert result["decision"] == "review"
    top = result["matches"][0]
    assert (top["external_id"], top["kind"], top["decided_by"], top["work_id"], top["work_rights"]) == (
        "BanksOfEnvernessReel", "copy", "work", "W-ENVERNESS", "protected")
    assert result["reasons"][0].startswith("licensed recording 'BanksOfEnvernessReel' copied for ")
    assert "but work 'W-ENVERNESS' ('BanksOfEnvernessReel', Publisher), the song it records, is protected" \
        in result["reasons"][0]
    # a licensed recording of a licensed work, and one that names no work: attributed
    for name in ("BannocksOBarleyMealJig", "BanjoReel"):
        allowed = engine.check(folder / f"{name}.wav", "copy.wav")
        assert allowed["decision"] == "allow" and allowed["matches"][0]["external_id"] == name
    # a stricter policy blocks the first
    strict = tmp_path / "strict.toml"
    strict.write_text(DEFAULT_POLICY.read_text().replace('licensed_recording_of_protected_work = "review"',
                                                         'licensed_recording_of_protected_work = "block"'))
    blocking = Engine(Settings(home=engine.settings.home, policy=strict))
    blocked = blocking.check(folder / "BanksOfEnvernessReel.wav", "copy.wav")
    assert blocked["decision"] == "block" and blocked["reasons"][0].endswith("blocked by the policy's [works] table")


def test_a_re_performance_is_decided_by_its_works_rights_and_a_change_applies_to_the_next_check(catalog, tmp_path):
    engine, works, renderer, _ = catalog
    cover = cover_of_enverness(works, renderer, tmp_path / "cover.wav")
    result = engine.check(cover, "cover.wav")
    assert result["decision"] == "review", result["reasons"]
    [mine] = [m for m in result["matches"] if m["external_id"] == "BanksOfEnvernessReel"]
    assert (mine["kind"], mine["method"], mine["decided_by"], mine["work_id"]) == (
        "reperformance", "version", "work", "W-ENVERNESS")
    assert any(r.startswith("possible re-performance of work 'W-ENVERNESS' ('BanksOfEnvernessReel', Publisher), "
                            "recorded as 'BanksOfEnvernessReel', which is protected: melody and harmony")
               for r in result["reasons"])

    review = Review(engine.store)
    review.put_work("W-ENVERNESS", rights=WorkRights.licensed, actor=Actor("k1", "Ada Admin"), note="sync licence S-9")
    after = engine.check(cover, "cover.wav")
    assert after["decision"] == "allow", after["reasons"]
    assert any(r.startswith("licensed work 'W-ENVERNESS' ('BanksOfEnvernessReel', Publisher) re-performed")
               for r in after["reasons"])
    [entry] = [e for e in review.audit_trail("work", "W-ENVERNESS") if e.note == "sync licence S-9"]
    assert (entry.actor.name, entry.action, entry.previous, entry.new) == ("Ada Admin", "rights", "protected",
                                                                           "licensed")
    review.put_work("W-ENVERNESS", rights=WorkRights.protected, actor=Actor("k1", "Ada Admin"))
    assert engine.check(cover, "cover.wav")["decision"] == "review"


def test_a_manifest_that_describes_a_catalog_work_otherwise_changes_nothing_and_says_so(catalog, tmp_path):
    engine, works, renderer, _ = catalog
    live = cover_of_enverness(works, renderer, tmp_path / "live.wav")       # another recording of the work
    (tmp_path / "manifest.csv").write_text("path,track_id,work_id,work_rights\nlive.wav,LIVE-1,W-ENVERNESS,licensed\n")
    summary = engine.catalog.index_paths([live], Rights.licensed, manifest=tmp_path / "manifest.csv")
    [(said, kept)] = summary.works_kept
    assert (said.rights, kept.rights) == (WorkRights.licensed, WorkRights.protected)
    assert engine.store.find_work("W-ENVERNESS").rights is WorkRights.protected
    assert engine.store.find("LIVE-1").work == kept
    engine.catalog.remove(["LIVE-1"])


def test_a_recording_the_catalog_refuses_leaves_no_work_behind(catalog, tmp_path):
    engine, works, renderer, _ = catalog
    take = cover_of_enverness(works, renderer, tmp_path / "take.wav")
    # the id is another recording's: the track is refused, and the new work it names with it
    (tmp_path / "manifest.csv").write_text("path,track_id,work_id\ntake.wav,BanjoReel,W-NEW\n")
    summary = engine.catalog.index_paths([take], Rights.licensed, manifest=tmp_path / "manifest.csv")
    assert [reason for _, reason in summary.failed] == ["external_id 'BanjoReel' is already used by another "
                                                        "recording; remove it first or give this file another id"]
    assert engine.store.find_work("W-NEW") is None
