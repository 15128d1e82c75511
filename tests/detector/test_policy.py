"""The policy is a pure function: matches, rights and thresholds in, verdict and reasons out."""
from __future__ import annotations

import pytest

from detector.errors import PolicyError
from detector.matcher import Match
from detector.policy import DEFAULT_POLICY, Policy, Rights, TrackInfo, Verdict, WorkInfo, WorkRights, decide

POLICY = Policy.load()


def match(track=1, start=0.0, end=20.0, p_false=1e-6, method="embedding", tempo=1.0):
    return Match(track=track, query_start=start, query_end=end, ref_start=10 + tempo * start, ref_end=10 + tempo * end,
                 tempo_ratio=tempo, evidence=50.0, p_false=p_false, method=method)


def info(rights: Rights, eid="t1", work: WorkRights | None = None):
    return TrackInfo(eid, eid.title(), "Owner", rights,
                     WorkInfo("W-1", "The Song", "Publisher", work) if work else None)


def test_protected_match_blocks_with_reason():
    d = decide([match()], {1: info(Rights.protected)}, 30.0, POLICY)
    assert d.verdict is Verdict.block
    assert d.reasons[0].startswith("protected recording 't1' matched for 20.0 s")
    assert d.matches[0][1].external_id == "t1"
    assert "reference 10.0–30.0 s, score" in d.reasons[0]


def test_the_reason_names_the_tempo_a_copy_plays_at():
    slowed = decide([match(end=8.0, tempo=0.72)], {1: info(Rights.protected)}, 8.0, POLICY)
    assert "(output 0.0–8.0 s = reference 10.0–15.8 s at 0.72× the recording's tempo, score" in slowed.reasons[0]
    near = decide([match(tempo=1.02)], {1: info(Rights.protected)}, 30.0, POLICY)     # within the tolerance
    assert "tempo" not in near.reasons[0]


def test_licensed_match_allows_with_attribution():
    d = decide([match()], {1: info(Rights.licensed)}, 30.0, POLICY)
    assert d.verdict is Verdict.allow
    assert "attribute" in d.reasons[0] and len(d.matches) == 1


def test_nothing_matched_allows():
    d = decide([], {}, 30.0, POLICY)
    assert d.verdict is Verdict.allow and d.matches == () and d.reasons == ("no catalog recording matched",)


def test_uncertain_goes_to_review_and_weak_is_ignored():
    between = 1 - (POLICY.block_score + POLICY.review_score) / 2
    d = decide([match(p_false=between)], {1: info(Rights.protected)}, 30.0, POLICY)
    assert d.verdict is Verdict.review and "needs a person" in d.reasons[0] and d.blocking == ()
    both = decide([match(p_false=between), match(2)], {1: info(Rights.protected), 2: info(Rights.protected, "t2")},
                  30.0, POLICY)
    assert both.verdict is Verdict.block and len(both.matches) == 2
    assert [i.external_id for _, i in both.blocking] == ["t2"]        # what blocked, not what was seen
    d = decide([match(p_false=0.2)], {1: info(Rights.protected)}, 30.0, POLICY)
    assert d.verdict is Verdict.allow and d.matches == ()


def test_short_copy_blocks_only_when_it_is_most_of_the_output():
    short = match(end=POLICY.block_seconds - 1)
    assert decide([short], {1: info(Rights.protected)}, 60.0, POLICY).verdict is Verdict.review
    assert decide([short], {1: info(Rights.protected)}, short.duration, POLICY).verdict is Verdict.block


def test_collage_lists_every_match_and_taken_down_tracks_are_ignored():
    ms = [match(1, 0, 10), match(2, 10, 25, p_false=1e-8), match(3, 0, 30)]
    d = decide(ms, {1: info(Rights.protected, "a"), 2: info(Rights.licensed, "b")}, 30.0, POLICY)
    assert d.verdict is Verdict.block
    assert [i.external_id for _, i in d.matches] == ["b", "a"]


def test_malformed_policy_is_a_clear_error(tmp_path):
    bad = tmp_path / "p.toml"
    bad.write_text('version = "x"\n[block]\nmin_score = 0.5\n')
    with pytest.raises(PolicyError, match="malformed"):
        Policy.load(bad)


def version_match(track=1, p_false=1e-5, end=25.0, key_shift=3, tempo=1.1):
    return Match(track=track, query_start=0.0, query_end=end, ref_start=40.0, ref_end=40.0 + tempo * end,
                 tempo_ratio=tempo, evidence=0.9, p_false=p_false, method="version", key_shift=key_shift)


def test_a_re_performance_of_a_protected_recording_goes_to_review_in_words():
    d = decide([version_match()], {1: info(Rights.protected)}, 25.0, POLICY)
    assert d.verdict is Verdict.review and not d.blocking
    assert d.reasons[0] == ("possible re-performance of protected recording 't1' (no work recorded: its rights decide): "
                            "melody and harmony of reference 0:40–1:07 in "
                            "output 0:00–0:25, 3 semitones up, at 1.10× its tempo, score 0.99999: the same music in "
                            "a new sound; needs a person")
    assert decide([version_match(p_false=0.05)], {1: info(Rights.protected)}, 25.0, POLICY).verdict is Verdict.allow
    # a licensed recording's work is not known to be licensed or not: not this layer's call yet
    assert decide([version_match()], {1: info(Rights.licensed)}, 25.0, POLICY).verdict is Verdict.allow


def test_a_policy_may_block_long_overwhelming_re_performances(tmp_path):
    path = tmp_path / "strict.toml"
    path.write_text(DEFAULT_POLICY.read_text() + "block_min_score = 0.9999\nblock_min_seconds = 60\n")
    strict = Policy.load(path)
    long = decide([version_match(end=90.0)], {1: info(Rights.protected)}, 90.0, strict)
    assert long.verdict is Verdict.block and "re-performance of protected recording 't1'" in long.reasons[0]
    assert decide([version_match(end=30.0)], {1: info(Rights.protected)}, 30.0, strict).verdict is Verdict.review
    assert decide([version_match(end=90.0)], {1: info(Rights.protected)}, 90.0, POLICY).verdict is Verdict.review


def test_a_re_performance_of_a_recording_the_output_copies_adds_no_reason():
    d = decide([version_match(), match()], {1: info(Rights.protected)}, 30.0, POLICY)
    assert d.verdict is Verdict.block and len(d.reasons) == 1 and d.reasons[0].startswith("protected recording 't1'")


# --- recordings and works: the policy decides by the right that is used -------------------------

def test_a_copy_of_a_licensed_recording_of_a_protected_work_goes_to_review_naming_the_work():
    d = decide([match()], {1: info(Rights.licensed, work=WorkRights.protected)}, 30.0, POLICY)
    assert d.verdict is Verdict.review and d.decided_by == ("work",)
    assert d.reasons[0] == ("licensed recording 't1' copied for 20.0 s (score 0.999999), but work 'W-1' ('The Song', "
                            "Publisher), the song it records, is protected: the recording's licence does not cover the "
                            "song; needs a person")
    unknown = decide([match()], {1: info(Rights.licensed, work=WorkRights.unknown)}, 30.0, POLICY)
    assert unknown.verdict is Verdict.review and "has rights the catalog does not know" in unknown.reasons[0]
    both = decide([match()], {1: info(Rights.licensed, work=WorkRights.licensed)}, 30.0, POLICY)
    assert both.verdict is Verdict.allow and both.reasons[0].endswith("of work 'W-1' ('The Song', Publisher) used "
                                                                      "for 20.0 s: attribute it")


def test_a_copy_of_a_protected_recording_is_decided_by_the_recording_whatever_its_work():
    for work in WorkRights:
        d = decide([match()], {1: info(Rights.protected, work=work)}, 30.0, POLICY)
        assert d.verdict is Verdict.block and d.decided_by == ("recording",)
        assert d.reasons[0].startswith("protected recording 't1'")


def test_the_works_table_says_what_a_licensed_recording_of_a_protected_work_gets(tmp_path):
    path = tmp_path / "strict.toml"
    path.write_text(DEFAULT_POLICY.read_text().replace('licensed_recording_of_protected_work = "review"',
                                                       'licensed_recording_of_protected_work = "block"')
                    .replace('licensed_recording_of_unknown_work = "review"',
                             'licensed_recording_of_unknown_work = "allow"'))
    strict = Policy.load(path)
    d = decide([match()], {1: info(Rights.licensed, work=WorkRights.protected)}, 30.0, strict)
    assert d.verdict is Verdict.block and d.reasons[0].endswith("blocked by the policy's [works] table")
    weak = 1 - (strict.block_score + strict.review_score) / 2        # below the block threshold: review
    assert decide([match(p_false=weak)], {1: info(Rights.licensed, work=WorkRights.protected)}, 30.0,
                  strict).verdict is Verdict.review
    d = decide([match()], {1: info(Rights.licensed, work=WorkRights.unknown)}, 30.0, strict)
    assert d.verdict is Verdict.allow and d.reasons[0].endswith("attribute it")
    path.write_text(DEFAULT_POLICY.read_text().replace('licensed_recording_of_protected_work = "review"',
                                                       'licensed_recording_of_protected_work = "ban"'))
    with pytest.raises(PolicyError, match="malformed"):
        Policy.load(path)


def test_a_re_performance_is_decided_by_its_work_only():
    protected_work = decide([version_match()], {1: info(Rights.licensed, work=WorkRights.protected)}, 25.0, POLICY)
    assert protected_work.verdict is Verdict.review and protected_work.decided_by == ("work",)
    assert protected_work.reasons[0].startswith(
        "possible re-performance of work 'W-1' ('The Song', Publisher), recorded as 't1', which is protected: melody "
        "and harmony of reference 0:40–1:07")
    licensed_work = decide([version_match()], {1: info(Rights.protected, work=WorkRights.licensed)}, 25.0, POLICY)
    assert licensed_work.verdict is Verdict.allow and licensed_work.reasons[0].startswith(
        "licensed work 'W-1' ('The Song', Publisher) re-performed: melody")
    assert licensed_work.reasons[0].endswith("(recording 't1'): attribute it")
    unknown = decide([version_match()], {1: info(Rights.licensed, work=WorkRights.unknown)}, 25.0, POLICY)
    assert unknown.verdict is Verdict.review and "which has rights the catalog does not know" in unknown.reasons[0]


def test_a_re_performance_of_a_work_whose_recording_the_output_copies_adds_nothing():
    works = {1: info(Rights.licensed, "a", WorkRights.protected), 2: info(Rights.licensed, "b", WorkRights.protected)}
    d = decide([match(1), version_match(2)], works, 30.0, POLICY)      # another recording of the same work
    assert d.verdict is Verdict.review and len(d.reasons) == 1 and d.reasons[0].startswith("licensed recording 'a'")
