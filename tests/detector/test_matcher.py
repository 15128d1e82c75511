"""Alignment of nearest-neighbour hits into matches, on seeded synthetic hits."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from detector.matcher import (Calibration, Hits, Match, Matcher, confirm, fisher, fisher_combined, merge,
                              window_background)

CAL = Calibration(model="test", tail_start=5.0, tail_p=0.1, tail_scale=2.0)


def hits_for(track, q, ref_offset, tempo, rng, weight=0.3, noise_hits=6, n_tracks=50):
    """True hits on the line ref = offset + tempo * q, plus random hits to other tracks."""
    qs, ts, rs, ss = [], [], [], []
    for t in q:
        qs.append(t), ts.append(track), rs.append(ref_offset + tempo * t + rng.normal(0, 0.1)), ss.append(weight)
        for _ in range(noise_hits):
            qs.append(t), ts.append(int(rng.integers(100, 100 + n_tracks))), rs.append(rng.uniform(0, 300))
            ss.append(rng.uniform(0.0, 0.2))
    return Hits(np.array(qs), np.array(ts), np.array(rs), np.array(ss))


@pytest.mark.parametrize("tempo", [0.8, 1.0, 1.1, 1.25])
def test_recovers_offset_and_tempo(tempo):
    rng = np.random.default_rng(1)
    q = np.arange(0, 20, 0.25)
    found = Matcher(CAL, ref_hop_s=0.25).match(hits_for(7, q, 61.0, tempo, rng), 0.25)
    top = found[0]
    assert top.track == 7
    assert abs(top.tempo_ratio - tempo) / tempo < 0.03
    assert abs(top.ref_start - (61.0 + tempo * top.query_start)) < 0.5
    assert top.query_start == 0 and top.query_end == pytest.approx(20.0 - 0.25 + 1.0)
    assert top.p_false < 1e-3
    assert all(m.track == 7 for m in found)          # chance alignments of other tracks are not reported


def overlapping_window_hits(q, at, rng, hop=0.25, track=7):
    """Hits of query windows that copy reference time ``at`` (per window): every reference window
    within 0.5 s, its similarity falling with its distance, as overlapping 1 s windows' does."""
    qs, rs, ws = [], [], []
    for t, a in zip(q, at):
        for k in range(int(a / hop) - 2, int(a / hop) + 3):
            qs.append(t), rs.append(k * hop), ws.append(0.4 - 0.3 * abs(k * hop - a) + rng.normal(0, 0.01))
    return Hits(np.array(qs), np.full(len(qs), track), np.array(rs), np.array(ws))


@pytest.mark.parametrize("tempo", [0.7, 0.8, 1.0, 1.25, 1.4])
def test_a_copy_of_a_few_seconds_measures_its_tempo(tempo):
    # 3.25 s of output (window starts over 2.25 s): slowed to 0.7, its reference positions drift
    # by 0.7 s from those of tempo 1.0, under three reference windows: the tempo is measured from
    # where each window falls between two reference windows, and a copy at tempo 1.0 is called so
    rng = np.random.default_rng(4)
    q = np.arange(0, 2.3, 0.25)
    (m,) = Matcher(CAL, ref_hop_s=0.25).match(overlapping_window_hits(q, 40.0 + tempo * q, rng), 0.25,
                                              max_p_false=1.0)
    assert m.tempo_ratio == (1.0 if tempo == 1.0 else pytest.approx(tempo, rel=0.03))
    assert m.ref_start == pytest.approx(40.0, abs=0.1)


def test_slowed_alignment_counts_the_reference_time_it_covers():
    # query windows every 0.25 s against reference windows every 0.5 s: at half speed each
    # reference window answers four query windows, so 10 s of output quote 5 s of reference
    q = np.arange(0, 10, 0.25)
    matches = {}
    for tempo in (1.0, 0.5):
        ref = np.floor((40.0 + tempo * q) / 0.5) * 0.5
        hits = Hits(q, np.full(len(q), 7), ref, np.full(len(q), 0.3))
        (matches[tempo],) = Matcher(CAL, ref_hop_s=0.5).match(hits, 0.25, max_p_false=1.0)
    assert matches[0.5].tempo_ratio == pytest.approx(0.5, rel=0.03)
    assert matches[1.0].windows == matches[0.5].windows == len(q)
    assert matches[0.5].evidence == pytest.approx(matches[1.0].evidence * 0.5, rel=0.05)


def test_collage_of_two_tracks_gives_two_matches():
    rng = np.random.default_rng(2)
    a = hits_for(1, np.arange(0, 12, 0.25), 30.0, 1.0, rng)
    b = hits_for(2, np.arange(12, 25, 0.25), 100.0, 1.0, rng)
    both = Hits(*(np.concatenate([getattr(a, f), getattr(b, f)]) for f in ("query_t", "track", "ref_t", "weight")))
    found = {m.track: m for m in Matcher(CAL, ref_hop_s=0.25).match(both, 0.25)}
    assert set(found) == {1, 2}
    assert found[1].query_end <= 13.5 and found[2].query_start >= 11.5
    assert abs(found[2].ref_start - (100.0 + found[2].query_start)) < 0.5


def test_scattered_hits_are_no_confident_match():
    rng = np.random.default_rng(3)
    n = 400
    hits = Hits(rng.uniform(0, 30, n), rng.integers(0, 20, n), rng.uniform(0, 300, n), rng.uniform(0.0, 0.2, n))
    found = Matcher(CAL, ref_hop_s=0.25).match(hits, 0.25)
    assert all(m.p_false > 0.1 and m.windows <= 6 for m in found)


def test_merge_names_both_methods_for_the_same_alignment():
    emb = Match(3, 2.0, 20.0, 12.0, 30.0, 1.0, 40.0, 1e-6, "embedding")
    chroma = Match(3, 0.0, 18.0, 10.0, 28.0, 1.0, 0.9, 1e-12, "chromaprint")
    repeat = Match(3, 4.0, 16.0, 90.0, 102.0, 1.0, 10.0, 1e-4, "embedding")   # same stretch, a repeat in the song
    later = Match(3, 25.0, 35.0, 150.0, 160.0, 1.0, 10.0, 1e-4, "embedding")   # quoted again later
    merged = merge([emb, chroma, repeat, later])
    assert len(merged) == 2 and merged[1] == later
    assert merged[0].method == "chromaprint+embedding"
    assert (merged[0].query_start, merged[0].query_end, merged[0].ref_start) == (0.0, 20.0, 10.0)


def test_merge_keeps_a_weaker_alignment_that_covers_more_of_the_output():
    """A loop's repeat matched the first seconds of a spliced copy better than the copy's own
    passage, which the landmarks found over all of it: both are kept, the longer evidence too."""
    repeat = Match(8, 7.5, 11.6, 54.1, 58.2, 1.0, 35.0, 1e-13, "embedding+landmark")
    copy = Match(8, 7.8, 17.6, 43.7, 53.5, 1.0, 43.0, 1e-7, "landmark")
    assert merge([repeat, copy]) == [repeat, copy]
    inside = Match(8, 8.0, 11.0, 20.0, 23.0, 1.0, 20.0, 1e-5, "landmark")       # within the stronger one's span
    assert merge([repeat, inside]) == [repeat]


def test_merge_keeps_the_embedding_mapping_of_a_tempo_changed_copy():
    """Chromaprint aligned a 1.4x copy at tempo 1.0 over part of it; the embedding measured the
    tempo: the merged match maps like the embedding, as strong as the Chromaprint match."""
    chroma = Match(5, 2.0, 10.3, 40.0, 48.3, 1.0, 0.8, 1e-20, "chromaprint")
    emb = Match(5, 0.0, 14.0, 30.0, 49.6, 1.4, 12.0, 1e-8, "embedding")
    [merged] = merge([chroma, emb])
    assert (merged.tempo_ratio, merged.ref_start, merged.query_end) == (1.4, 30.0, 14.0)
    assert merged.p_false == fisher([1e-20, 1e-8]) < 1e-20 and merged.method == "chromaprint+embedding"
    same_tempo = Match(5, 0.0, 14.0, 90.0, 104.0, 1.01, 12.0, 1e-8, "embedding")   # a repeat, not a tempo change
    assert merge([chroma, same_tempo]) == [chroma]
    slower = Match(5, 0.0, 25.0, 37.5, 60.0, 0.9, 12.0, 1e-8, "embedding")        # nearly Chromaprint's alignment
    [merged] = merge([chroma, slower])
    assert (merged.tempo_ratio, merged.query_start, merged.query_end, merged.ref_start) == (0.9, 0.0, 25.0, 37.5)


def test_a_chance_alignment_at_another_tempo_does_not_displace_a_full_tempo_one_match():
    landmark = Match(4, 5.0, 25.0, 45.0, 65.0, 1.0, 120.0, 1e-6, "landmark")
    chance = Match(4, 5.75, 19.25, 61.6, 72.0, 0.77, 0.8, 0.3, "embedding")
    assert merge([landmark, chance]) == [landmark]


def test_layers_that_agree_combine_their_false_match_probabilities():
    assert fisher([0.01, 0.01]) == pytest.approx(0.01 ** 2 * (1 - math.log(0.01 ** 2)))
    assert fisher([1e-6, 0.9]) == 1e-6                      # a weak second layer takes nothing away
    emb = Match(6, 0.0, 20.0, 30.0, 50.0, 1.0, 2.5, 0.01, "embedding")
    peaks = Match(6, 1.0, 19.0, 31.0, 49.0, 1.0, 30.0, 0.01, "landmark")
    other = Match(7, 0.0, 20.0, 5.0, 25.0, 1.0, 30.0, 0.01, "landmark")        # another track: not combined
    merged = merge([emb, peaks, other])
    assert merged[0].method == "embedding+landmark" and merged[0].p_false == pytest.approx(fisher([0.01, 0.01]))
    assert merged[1] == other


def test_a_confirmation_strengthens_the_match_that_asked_and_is_counted_once():
    emb = Match(6, 0.0, 20.0, 30.0, 50.0, 1.0, 1.2, 0.3, "embedding")
    # the landmarks asked at that alignment alone: a strong agreement there is a copy ...
    confirmed = confirm(emb, Match(6, 2.0, 18.0, 32.1, 48.1, 1.0, 25.0, 1e-7, "landmark"))
    assert confirmed.method == "embedding+landmark" and confirmed.p_false == fisher_combined([0.3, 1e-7]) < 1e-5
    assert (confirmed.query_start, confirmed.query_end) == (0.0, 20.0) and confirmed.ref_start == pytest.approx(30.1)
    # ... a weak one leaves a weak chance alignment weak (no review for a few agreeing peaks)
    assert confirm(emb, Match(6, 2.0, 18.0, 32.1, 48.1, 1.0, 9.0, 0.009, "landmark")).p_false > 0.01
    # merged with the embedding's own match and the same peaks found by the search at tempo 1.0:
    # nothing counted twice
    peaks = Match(6, 1.0, 19.0, 31.0, 49.0, 1.0, 25.0, 1e-3, "landmark")
    [merged] = merge([emb, peaks, confirmed])
    assert merged == confirmed
    assert merge([replace(emb, p_false=1e-8), confirmed])[0].p_false == 1e-8


def test_background_looks_past_the_repeats_of_a_looping_track():
    # a window of a track that plays its passage six times, 40 s apart (near-equal similarities),
    # then one window of each of ten other tracks
    sims = np.array([[0.9, 0.895, 0.89, 0.89, 0.885, 0.885] + [0.5 - 0.01 * i for i in range(10)]], np.float32)
    tracks = np.array([[7] * 6 + list(range(10, 20))])
    windows = np.array([[12, 172, 332, 492, 652, 812] + [50] * 10])
    # the loop counts twice: the 8th countable neighbour is the 6th other track
    assert window_background(sims, tracks, windows) == pytest.approx(0.45)
    # a sustained texture: the same six windows of track 7 side by side count in full
    texture = np.array([[12, 14, 13, 15, 11, 17] + [50] * 10])
    assert window_background(sims, tracks, texture) == pytest.approx(0.49)
    # far apart but not alike: windows of one track that resemble the query to different degrees
    # are no verbatim repeats, and count in full
    graded = np.array([[0.9, 0.8, 0.7, 0.6, 0.55, 0.52] + [0.5 - 0.01 * i for i in range(10)]], np.float32)
    assert window_background(graded, tracks, windows) == pytest.approx(0.49)


def test_background_without_enough_neighbours():
    sims = np.array([[0.9, 0.8, 0.7, 0.0], [0.6, 0.0, 0.0, 0.0]], np.float32)
    tracks = np.array([[1, 2, 3, -1], [2, -1, -1, -1]])
    windows = np.array([[5, 9, 3, -1], [4, -1, -1, -1]])
    # fewer countable windows than the rank: the last neighbour found, which the missing one would not exceed
    assert window_background(sims, tracks, windows, rank=8).tolist() == pytest.approx([0.7, 0.6])
    assert window_background(np.zeros((2, 0), np.float32), np.zeros((2, 0), int), np.zeros((2, 0), int)).tolist() == [0.0, 0.0]
    assert window_background(np.zeros((0, 64), np.float32), np.zeros((0, 64), int), np.zeros((0, 64), int)).shape == (0,)


def test_a_texture_that_answers_every_window_somewhere_weighs_far_less_than_a_copy():
    # a sustained texture: each output window's 8 hits land anywhere in 10 s of one track. Only
    # hits within a reference hop of an alignment line count, so chance lines through such a
    # cloud collect less than half of what a copy's line does (a band of 0.6 s collected ~2/3)
    q = np.arange(0, 10, 0.25)
    matcher = Matcher(CAL, ref_hop_s=0.25)
    copy = matcher.match(Hits(q, np.full(len(q), 3), 70.0 + q, np.full(len(q), 0.3)), 0.25, max_p_false=1.0)[0]
    texture = []
    for seed in range(10):
        rng = np.random.default_rng(seed)
        ref = np.round(rng.uniform(50, 60, 8 * len(q)) / 0.25) * 0.25
        found = matcher.match(Hits(np.repeat(q, 8), np.full(len(ref), 3), ref, np.full(len(ref), 0.3)), 0.25,
                              max_p_false=1.0)
        texture.append(max((m.evidence for m in found), default=0.0))
    assert copy.windows == len(q)
    assert np.mean(texture) < 0.5 * copy.evidence


def test_a_calibration_counts_fewer_chances_in_an_output_shorter_than_its_negatives(tmp_path):
    cal = Calibration(model="test", tail_start=5.0, tail_p=0.1, tail_scale=2.0, shortest_s=8.0)
    assert [cal.length_factor(s) for s in (30.0, 8.0, 4.0, 2.0, 0.0)] == [1.0, 1.0, 0.5, 0.25, 0.125]
    assert cal.p_false(7.0, 30.0) == cal.p_false(7.0) == pytest.approx(0.1 * math.exp(-1.0))
    assert cal.p_false(7.0, 4.0) == pytest.approx(cal.p_false(7.0) * 0.5)      # no shorter tails: Bonferroni
    # tails fitted to the negatives cut to 2 s and 4 s: each at its length, log-interpolated between
    # them and up to the full tail at shortest_s, scaled by the count below the shortest
    fitted = replace(cal, shorter=({"seconds": 4.0, "tail_start": 3.0, "tail_p": 0.1, "tail_scale": 1.0},
                                   {"seconds": 2.0, "tail_start": 2.0, "tail_p": 0.1, "tail_scale": 1.0}))
    at2, at4 = 0.1 * math.exp(-5.0), 0.1 * math.exp(-4.0)
    assert [t["seconds"] for t in fitted.shorter] == [2.0, 4.0]
    assert fitted.p_false(7.0, 2.0) == pytest.approx(at2) and fitted.p_false(7.0, 4.0) == pytest.approx(at4)
    assert fitted.p_false(7.0, 3.0) == pytest.approx(math.sqrt(at2 * at4))
    assert fitted.p_false(7.0, 1.0) == pytest.approx(at2 / 2)
    assert fitted.p_false(7.0, 6.0) == pytest.approx(math.sqrt(at4 * cal.p_false(7.0)))
    assert fitted.p_false(7.0, 8.0) == cal.p_false(7.0)
    # a shorter tail never makes an output more suspect than the count of its alignments does
    loose = replace(cal, shorter=({"seconds": 4.0, "tail_start": 6.0, "tail_p": 0.5, "tail_scale": 5.0},))
    assert loose.p_false(7.0, 4.0) == pytest.approx(cal.p_false(7.0) * 0.5)
    fitted.save(tmp_path / "fitted.json")
    assert Calibration.load(tmp_path / "fitted.json") == fitted
    # a calibration written before outputs' lengths counted was fitted on negatives of 10 s and more
    (tmp_path / "old.json").write_text('{"model": "m", "tail_start": 1.0, "tail_p": 0.1, "tail_scale": 0.3}')
    assert Calibration.load(tmp_path / "old.json").length_factor(3.0) == pytest.approx(0.3)


def test_a_line_through_a_whole_song_is_weighed_by_its_strongest_stretch():
    # a 10 s copy at output 100 s, and on the same line single chance hits every 12 s of a 7 min
    # output: minutes of weak hits neither add to the copy's evidence nor stretch its span
    q = np.arange(100.0, 110.0, 0.25)
    scattered = np.arange(0.0, 420.0, 12.0)
    times = np.concatenate([q, scattered[(scattered < 90) | (scattered > 120)]])
    weights = np.where((times >= 100.0) & (times < 110.0), 0.3, 0.25)
    hits = Hits(times, np.full(len(times), 7), 50.0 + times, weights)
    (m, *rest) = Matcher(CAL, ref_hop_s=0.25).match(hits, 0.25, max_p_false=1.0)
    assert m.query_start == 100.0 and m.query_end == pytest.approx(110.75)
    assert m.evidence == pytest.approx(40 * 0.3 * 2)           # per 0.5 s: its own 40 windows
    assert m.ref_start == pytest.approx(150.0, abs=0.1)


def test_evidence_of_a_long_copy_is_that_of_its_best_30_seconds():
    # a whole-song copy is overwhelming anyway; its evidence is what chance is calibrated against
    q = np.arange(0.0, 240.0, 0.25)
    weights = np.where(q < 200.0, 0.2, 0.4)
    (m,) = Matcher(CAL, ref_hop_s=0.25).match(Hits(q, np.full(len(q), 3), 10.0 + q, weights), 0.25,
                                              max_p_false=1.0)
    assert m.query_start == 0.0 and m.query_end == pytest.approx(240.75)
    assert m.evidence == pytest.approx(2 * 120 * 0.4)           # per 0.5 s: the 120 windows of 200-230 s


def test_a_longer_output_is_held_to_more_chances():
    cal = Calibration(model="test", tail_start=5.0, tail_p=0.1, tail_scale=2.0)
    assert cal.p_false(9.0, 30.0) == cal.p_false(9.0) == cal.p_false(9.0, 20.0)
    assert cal.p_false(9.0, 300.0) == pytest.approx(10 * cal.p_false(9.0))
    assert cal.p_false(5.0, 600.0) == 1.0
