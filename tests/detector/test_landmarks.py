"""The landmark layer on real music: a copy buried under other music is found at the right
offset, unrelated music and silence are not."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from benchmarks.corpus import tempo
from detector import landmarks
from detector.audio import Clip, decode
from detector.matcher import Calibration, Match
from index.layers.landmarks import at_tempo_one, landmark_matches

CAL = Calibration(model="test", tail_start=10.0, tail_p=0.1, tail_scale=3.0)
SR = landmarks.SAMPLE_RATE


@pytest.fixture(scope="module")
def tracks(music):
    ids = ["drascula-track4", "drascula-track6", "xmoto-foxrun", "asc-frontiers"]   # the last is not indexed
    return {i: decode(music[i].path, SR) for i in ids}


@pytest.fixture(scope="module")
def index(tracks):
    return landmarks.LandmarkIndex({k: landmarks.peaks(c) for k, c in enumerate(list(tracks.values())[:3])}, CAL)


def mix(copy: np.ndarray, other: np.ndarray, snr_db: float) -> np.ndarray:
    """``copy`` ``snr_db`` dB louder than ``other`` (negative: quieter)."""
    gain = np.sqrt(np.mean(copy ** 2) / np.mean(other ** 2) / 10 ** (snr_db / 10))
    return (copy + gain * other[: len(copy)]).astype(np.float32)


def test_peaks_are_sorted_bounded_and_silence_has_none(tracks):
    clip = tracks["drascula-track4"]
    p = landmarks.peaks(clip)
    frames = p >> 8
    assert np.all(np.diff(frames.astype(np.int64)) >= 0)
    assert len(p) <= landmarks.CATALOG.per_second * (clip.duration + 1)
    assert ((p & 0xFF) < landmarks.BINS[1] - landmarks.BINS[0]).all()
    assert len(landmarks.peaks(Clip(np.zeros(10 * SR, np.float32), SR, "silence"))) == 0
    quiet = np.random.default_rng(0).normal(0, 1e-6, 10 * SR).astype(np.float32)
    fade = landmarks.peaks(Clip(np.concatenate([clip.samples[:5 * SR], quiet]), SR, "fade"))
    assert (fade >> 8).max() * landmarks.FRAME_S < 5.5     # near-silence after the music has no peaks


def test_each_pair_is_hashed_once_up_to_the_last_peak(tracks):
    # the last peaks of a clip have fewer partners after them; counted more than once, a fade-out's
    # last pair voted many times for whatever catalog track shared its hash (a whole song's end
    # was sent to review)
    for picking in (landmarks.CATALOG, landmarks.QUERY):
        p = landmarks.peaks(tracks["xmoto-foxrun"].excerpt(0.0, 20.0), picking)
        h, t = landmarks.hashes(p, picking.fan_out)
        assert len(set(zip(h.tolist(), t.tolist()))) == len(h)
        assert t.max() < (p[-1] >> 8)


@pytest.mark.parametrize("snr_db", [0.0, -5.0])
def test_copy_under_other_music_is_found_at_its_offset(tracks, index, snr_db):
    a, b = tracks["drascula-track6"], tracks["asc-frontiers"]         # b: new material, not in the catalog
    copy = a.excerpt(30.0, 50.0).samples
    other = b.excerpt(40.0, 60.0).samples
    query = np.concatenate([b.excerpt(20.0, 25.0).samples, mix(copy, other, snr_db)])   # 5 s of new material first
    found = index.search(landmarks.peaks(Clip(query, SR, "mix"), landmarks.QUERY))
    assert found[0].track == 1
    assert found[0].offset == pytest.approx(30.0 - 5.0, abs=0.1)
    assert found[0].query_start >= 4.0 and found[0].query_end <= 25.5
    assert found[0].p_false < 1e-3
    assert all(m.track == 1 or m.votes < found[0].votes / 4 for m in found)


def test_a_copy_drowned_for_seconds_in_its_middle_spans_both_its_bursts(tracks, index):
    # under new material a copy's pairs come in bursts; one 12 s copy stays one match, not its
    # longest burst (the policy blocks a copy by its length), and its evidence is that burst's
    copy = tracks["drascula-track6"].excerpt(30.0, 42.0).samples
    other = tracks["asc-frontiers"].excerpt(40.0, 52.0).samples
    drowned = slice(4 * SR, int(8.5 * SR))
    query = copy.copy()
    query[drowned] = mix(copy[drowned], other[drowned], -30.0)
    found = index.search(landmarks.peaks(Clip(query, SR, "drowned"), landmarks.QUERY))
    m = found[0]
    assert m.track == 1 and m.offset == pytest.approx(30.0, abs=0.1)
    assert m.query_start < 2.0 and m.query_end > 10.0
    bursts = [index.search(landmarks.peaks(Clip(part, SR, "burst"), landmarks.QUERY))[0].evidence
              for part in (copy[:4 * SR], copy[int(8.5 * SR):])]
    assert m.evidence <= max(bursts) + 1


def test_a_copy_10_db_under_other_music_is_found_by_dense_query_peaks(tracks, index):
    # the catalog's sparse peaks and pairs, used for the query too, give this mix 13 votes
    copy = tracks["xmoto-foxrun"].excerpt(20.0, 40.0).samples
    other = tracks["asc-frontiers"].excerpt(100.0, 120.0).samples
    found = index.search(landmarks.peaks(Clip(mix(copy, other, -10.0), SR, "mix"), landmarks.QUERY))
    assert found[0].track == 2 and found[0].p_false < 1e-3
    assert found[0].offset == pytest.approx(20.0, abs=0.1)
    dense = landmarks.peaks(tracks["xmoto-foxrun"], landmarks.QUERY)
    assert np.isin(landmarks.peaks(tracks["xmoto-foxrun"]), dense).mean() > 0.99


def test_a_long_output_is_searched_with_its_dense_peaks_where_its_sparse_ones_point(tracks, index):
    # past DENSE_S the whole output is searched with sparser peaks, which keep few of a copy's
    # under new material: enough to point at it, not to prove it; the dense peaks of the passage
    # they point at find it about as strongly as a dense search of the whole output does
    host = np.resize(tracks["asc-frontiers"].samples, 200 * SR)
    song = host.copy()
    song[150 * SR:160 * SR] = mix(tracks["drascula-track6"].excerpt(30.0, 40.0).samples, host[150 * SR:160 * SR], -10.0)
    clip = Clip(song, SR, "song")
    found, _ = at_tempo_one(index, clip)
    sparse = index.search(landmarks.peaks(clip, landmarks.LONG_QUERY), fan_out=landmarks.LONG_QUERY.fan_out)
    whole = index.search(landmarks.peaks(clip, landmarks.QUERY), track=1)
    assert found[0].track == 1 and found[0].offset == pytest.approx(30.0 - 150.0, abs=0.1)
    assert 148.0 < found[0].query_start < 151.0 and 159.0 < found[0].query_end < 166.0
    assert found[0].evidence > 0.9 * whole[0].evidence
    assert sparse[0].evidence < 0.75 * found[0].evidence


def test_unrelated_music_is_not_a_landmark_copy(music, index):
    other = decode(music["drascula-track29"].path, SR).excerpt(10.0, 30.0)
    assert all(m.p_false > 0.01 for m in index.search(landmarks.peaks(other, landmarks.QUERY)))


def test_a_match_maps_output_time_to_reference_time(index, tracks):
    copy = tracks["drascula-track4"].excerpt(12.0, 27.0)
    m = landmarks.to_match(index.search(landmarks.peaks(copy, landmarks.QUERY))[0])
    assert m.method == "landmark" and m.tempo_ratio == 1.0
    assert m.ref_start - m.query_start == pytest.approx(12.0, abs=0.1)
    assert m.duration > 10.0


def test_a_search_of_one_track_finds_there_what_the_whole_catalog_search_finds(tracks, index):
    copy = tracks["drascula-track6"].excerpt(30.0, 45.0)
    query = landmarks.peaks(copy, landmarks.QUERY)
    whole = index.search(query)
    assert whole[0].track == 1
    mine = index.search(query, track=1)
    assert mine[0] == whole[0] and {m.track for m in mine} == {1}
    chance = index.search(query, track=0)
    assert all(m.track == 0 and m.votes < whole[0].votes / 4 for m in chance)
    # each hash's pairs of one track, found by bisection, are the pairs a scan of the hash finds
    h, _ = landmarks.hashes(query, landmarks.QUERY.fan_out)
    lo, hi = index.starts[h], index.starts[h + 1]
    for rank in range(3):
        first, last = index._of_track(lo, hi, rank)
        assert [index.tracks[a:b].tolist() for a, b in zip(first, last)] == \
               [[rank] * int(np.sum(index.tracks[a:b] == rank)) for a, b in zip(lo, hi)]


def same_index(a: landmarks.LandmarkIndex, b: landmarks.LandmarkIndex) -> bool:
    return all(np.array_equal(getattr(a, name), getattr(b, name)) for name in a.arrays)


def test_an_index_saved_opened_or_updated_holds_what_one_built_from_peaks_does(tracks, index, tmp_path):
    prints = {k: landmarks.peaks(c) for k, c in enumerate(list(tracks.values())[:3])}
    index.save(tmp_path)
    opened = landmarks.LandmarkIndex.open(tmp_path, CAL)
    assert same_index(opened, index) and not isinstance(opened.times, np.memmap)   # what searches compute is no memmap
    query = landmarks.peaks(tracks["drascula-track6"].excerpt(30.0, 45.0), landmarks.QUERY)
    assert opened.search(query) == index.search(query)
    # tracks added after the others, and tracks taken down, without building it again
    assert same_index(landmarks.LandmarkIndex({0: prints[0]}, CAL).updated({1: prints[1], 2: prints[2]}), index)
    assert same_index(opened.updated({}, drop=[1]), landmarks.LandmarkIndex({0: prints[0], 2: prints[2]}, CAL))
    with pytest.raises(ValueError):
        opened.updated({1: prints[1]}, drop=[1])


def test_anchor_frames_take_two_bytes_until_a_track_runs_past_17_minutes(tracks, index):
    assert index.times.dtype == np.uint16
    # a recording that starts after 17.5 minutes of silence: its anchor frames pass 65,535
    late = Clip(np.concatenate([np.zeros(int(17.5 * 60 * SR), np.float32), tracks["drascula-track6"].samples]),
                SR, "late")
    longer = index.updated({5: landmarks.peaks(late)})
    assert longer.times.dtype == np.int32
    copy = landmarks.peaks(tracks["drascula-track6"].excerpt(30.0, 45.0), landmarks.QUERY)
    found = longer.search(copy, track=5)[0]
    assert found.offset == pytest.approx(17.5 * 60 + 30.0, abs=0.1) and found.p_false < 1e-3
    # taken down, two bytes again, as if it had never been there
    shorter = longer.updated({}, drop=[5])
    assert shorter.times.dtype == np.uint16 and same_index(shorter, index)


def test_a_confirmation_looks_where_the_match_that_measured_its_tempo_lies(tracks, index):
    # a copy played 1.1x as fast, then a minute of other music: the landmarks find it at the tempo
    # the embedding measured where the embedding found it, and nowhere when the embedding's match
    # (at that tempo, on that track) lies far away: a weak match's tempo is no licence to search
    # a whole song
    copy = tempo(tracks["drascula-track6"].excerpt(30.0, 45.0).samples, 1.1)
    song = Clip(np.concatenate([copy, tracks["asc-frontiers"].excerpt(0.0, 60.0).samples]), SR, "song")
    hint = Match(track=1, query_start=2.0, query_end=8.0, ref_start=32.2, ref_end=38.8, tempo_ratio=1.1,
                 evidence=1.0, p_false=0.5, method="embedding")
    near = [m for m in landmark_matches(index, song, [hint]) if m.tempo_ratio == 1.1]
    assert near and near[0].track == 1 and near[0].query_start < 2.0 and near[0].query_end > 10.0
    # aligned 5 s off (a repeat of the passage, as the embedding may take it for the copy): the
    # peaks put it where it lies
    elsewhere = replace(hint, ref_start=hint.ref_start + 5.0, ref_end=hint.ref_end + 5.0)
    [found] = [m for m in landmark_matches(index, song, [elsewhere]) if m.tempo_ratio == 1.1]
    assert abs(found.offset - near[0].offset) < 0.5 and found.p_false < 1e-3
    far = replace(hint, query_start=50.0, query_end=56.0)
    assert all(m.query_start >= 40.0 for m in landmark_matches(index, song, [far]) if m.tempo_ratio == 1.1)


def test_tracks_are_named_by_their_keys(tracks, index):
    # the index stores a track's rank among the keys, and answers with its key
    key = {0: 12, 1: 300, 2: 70_000}
    renamed = landmarks.LandmarkIndex({key[k]: landmarks.peaks(c) for k, c in enumerate(list(tracks.values())[:3])},
                                      CAL)
    query = landmarks.peaks(tracks["drascula-track6"].excerpt(30.0, 45.0), landmarks.QUERY)
    assert renamed.search(query) == [replace(m, track=key[m.track]) for m in index.search(query)]
    assert renamed.search(query, track=300) == [replace(m, track=300) for m in index.search(query, track=1)]
    assert renamed.search(query, track=1) == []


def _texture_piece(seconds: float, rng: np.random.Generator, phase: float = 0.0) -> Clip:
    """A hi-hat-like burst of two tones every 0.19 s (from ``phase``), under notes of random
    pitch at random times: the bursts are a texture any piece at that tempo may share."""
    def tone(hz: float, secs: float, decay_s: float) -> np.ndarray:
        t = np.arange(int(secs * SR)) / SR
        return np.sin(2 * np.pi * hz * t) * np.exp(-t / decay_s)

    x = np.zeros(int(seconds * SR))
    burst = 0.5 * (tone(900, 0.08, 0.02) + tone(1400, 0.08, 0.02))
    for at in np.arange(phase, seconds - 0.1, 0.19):
        x[int(at * SR):int(at * SR) + len(burst)] += burst
    for at in np.cumsum(rng.uniform(0.25, 0.6, int(seconds / 0.25))):
        if at > seconds - 0.5:
            break
        note = 0.3 * tone(rng.uniform(200, 500), 0.38, 0.2)
        x[int(at * SR):int(at * SR) + len(note)] += note
    return Clip(x.astype(np.float32), SR, "texture")


def test_a_shared_fast_texture_is_no_copy_but_a_copy_of_the_piece_is():
    # two pieces with the same burst every 0.19 s align at every multiple of it: hundreds of
    # votes at the best alignment, nearly as many at the next ones; a copy aligns at one only
    ref = _texture_piece(40.0, np.random.default_rng(1))
    index = landmarks.LandmarkIndex({0: landmarks.peaks(ref)}, CAL)
    other = _texture_piece(20.0, np.random.default_rng(2), phase=0.05)
    chance = index.search(landmarks.peaks(other, landmarks.QUERY))
    assert chance and chance[0].votes >= 100
    assert all(m.evidence < m.votes / 10 and m.p_false > 0.01 for m in chance)
    copy = index.search(landmarks.peaks(ref.excerpt(10.0, 30.0), landmarks.QUERY))[0]
    assert copy.offset == pytest.approx(10.0, abs=0.1) and copy.p_false < 1e-6
