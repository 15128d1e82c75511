"""Recordings and works end to end: reels from music21's corpus rendered with FluidSynth are
indexed as licensed recordings whose works (songs) have rights of their own, named by the
manifest. A copy of a recording is decided by its work's rights where the recording is licensed,
as the policy says; a re-performance by its work's alone; a change of a work's rights applies to
the next check and is audited."""
from __future__ import annotations

import csv

import numpy as np
import pytest
from music21 import corpus

from detector import versionset
from detector.audio import Clip, encode
from detector.policy import DEFAULT_POLICY, Rights, WorkRights
from index.reviews import Actor, Review
from service.engine import Engine
from service.settings import Settings

REELS = ["BanjoReel", "BanksOfEnvernessReel", "BannocksOBarleyMealJig", "BarneyBrallagansJig"]
WORKS = {"BanksOfEnvernessReel": ("W-ENVERNESS", "protected"), "BannocksOBarleyMealJig": ("W-BANNOCKS", "licensed")}


def _wav(audio: np.ndarray, path):
    path.write_bytes(encode(Clip(audio, versionset.SAMPLE_RATE, path.name), "wav"))
    return path


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    """The four reels as licensed recordings; Enverness's work protected, Bannocks' licensed, the
    others' not recorded. Returns the engine, the reels' works and a renderer."""
    folder = tmp_path_factory.mktemp("reels")
    found = {p.stem: p for p in corpus.getComposer("ryansMammoth")}
    works = [versionset.parse("ryans", str(found[n])) for n in REELS]
    renderer = versionset.Renderer()
    with open(folder / "manifest.csv", "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["path", "track_id", "owner", "work_id", "work_title", "work_owner", "work_rights"])
        for name, work in zip(REELS, works):
            _wav(renderer.render(versionset.perform(work)), folder / f"{name}.wav")
            work_id, rights = WORKS.get(name, ("", ""))
            out.writerow([f"{name}.wav", name, "Label", work_id, name if work_id else "",
                          "Publisher" if work_id else "", rights])
    engine = Engine(Settings(home=tmp_path_factory.mktemp("home")))
    summary = engine.catalog.index_paths([folder], Rights.licensed, manifest=folder / "manifest.csv")
    assert len(summary.indexed) == 4
    return engine, works, renderer, folder


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
    version = versionset.perform(works[1], "all", soundfonts=(versionset.HELDOUT_SOUNDFONT,))
    cover = _wav(renderer.render(version)[: 25 * versionset.SAMPLE_RATE], tmp_path / "cover.wav")
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
