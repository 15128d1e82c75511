"""The policy is a pure function: matches, rights and thresholds in, verdict and reasons out."""
from __future__ import annotations

import pytest

from detector.errors import PolicyError
from detector.matcher import Match
from detector.policy import Policy, Rights, TrackInfo, Verdict, decide

POLICY = Policy.load()


def match(track=1, start=0.0, end=20.0, p_false=1e-6, method="embedding", tempo=1.0):
    return Match(track=track, query_start=start, query_end=end, ref_start=10 + tempo * start, ref_end=10 + tempo * end,
                 tempo_ratio=tempo, evidence=50.0, p_false=p_false, method=method)


def info(rights: Rights, eid="t1"):
    return TrackInfo(eid, eid.title(), "Owner", rights)


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
