"""The version layer's stages on real renders: public-domain works from music21's corpus played
with FluidSynth (``detector/versionset.py``), through the shipped version model and Qmax."""
from __future__ import annotations

import numpy as np
import pytest
from music21 import corpus

from detector import versionset
from detector.version import chroma, qmax
from detector.version_model import VersionModel, band_power, melody, pitch_class_power


@pytest.fixture(scope="module")
def works() -> list[versionset.Work]:
    """Two chorales and three reels (parsed from the corpus, not the cache: seconds)."""
    paths = [("bach", p) for p in corpus.getComposer("bach") if p.stem in ("bwv26.6", "bwv40.8")]
    reels = ("BanjoReel", "BanksOfEnvernessReel", "BannocksOBarleyMealJig")
    paths += [("ryans", p) for p in sorted(corpus.getComposer("ryansMammoth")) if p.stem in reels]
    return [versionset.parse(c, str(p)) for c, p in paths]


@pytest.fixture(scope="module")
def renderer() -> versionset.Renderer:
    return versionset.Renderer()


@pytest.fixture(scope="module")
def model() -> VersionModel:
    return VersionModel.load()


def test_a_performance_is_deterministic_and_changes_what_its_transform_says(works):
    work = works[2]
    ref = versionset.perform(work)
    assert versionset.perform(work) == ref
    assert ref.key_shift == 0 and ref.tempo == 1.0 and ref.soundfont in versionset.TRAIN_SOUNDFONTS
    key = versionset.perform(work, "key")
    assert key.key_shift != 0 and key.soundfont == ref.soundfont
    assert sorted(n.pitch - key.key_shift for n in key.notes) == sorted(n.pitch for n in ref.notes)
    tempo = versionset.perform(work, "tempo")
    assert abs(np.log(tempo.tempo)) >= np.log(1.05)
    assert max(n.end for n in tempo.notes) == pytest.approx(max(n.end for n in ref.notes) / tempo.tempo, rel=0.05)
    timbre = versionset.perform(work, "timbre", soundfonts=(versionset.HELDOUT_SOUNDFONT,))
    assert timbre.soundfont == versionset.HELDOUT_SOUNDFONT and timbre.programs != ref.programs
    arranged = versionset.perform(work, "arrangement")
    assert any(n.channel == versionset.DRUMS for n in arranged.notes)
    melody = lambda p: sorted((round(n.start, 3), n.pitch) for n in p.notes if n.channel == 0)
    assert melody(arranged) == melody(ref)


def test_a_transposition_leaves_the_version_vector_unchanged(works, renderer, model):
    classes = model.classes(renderer.render(versionset.perform(works[0])))
    _, plain = model.vectors(classes, 5.0)
    _, rolled = model.vectors(np.roll(classes, 5, 0), 5.0)
    np.testing.assert_allclose(plain, rolled, atol=1e-5)


def test_the_model_tells_a_re_performance_from_other_works(works, renderer, model):
    """Every work re-performed with another soundfont's instruments, in another key and tempo,
    with a new accompaniment and drums: its own reference is the nearest, clearly."""
    refs = []
    for work in works:
        _, v = model.vectors(model.classes(renderer.render(versionset.perform(work))), 2.0)
        refs.append(v)
    for k, work in enumerate(works):
        audio = renderer.render(versionset.perform(work, "all", soundfonts=(versionset.HELDOUT_SOUNDFONT,)))
        _, q = model.vectors(model.classes(audio[: 20 * versionset.SAMPLE_RATE]), 2.0)
        best = [float((q @ r.T).max()) for r in refs]
        assert int(np.argmax(best)) == k, (work.work_id, best)


def test_qmax_measures_the_key_shift_and_the_spans_of_a_re_performance(works, renderer, model):
    as_chroma = lambda audio: chroma(model.classes(audio))
    refs = [as_chroma(renderer.render(versionset.perform(w))) for w in works]
    work = works[3]
    version = versionset.perform(work, "key")
    audio = renderer.render(version)
    start = 6 * versionset.SAMPLE_RATE
    found = qmax(as_chroma(audio[start:start + 20 * versionset.SAMPLE_RATE]), refs)
    scores = [a.score for a in found]
    assert int(np.argmax(scores)) == 3 and scores[3] > 2 * sorted(scores)[-2]
    best = found[3]
    assert best.key_shift == version.key_shift % 12
    assert best.query_end - best.query_start > 10
    assert best.ref_start - best.query_start == pytest.approx(6.0, abs=1.0)


def test_pitch_classes_of_full_scale_audio_are_finite_and_name_the_note():
    t = np.arange(5 * versionset.SAMPLE_RATE) / versionset.SAMPLE_RATE
    square = np.sign(np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)        # A, as loud as audio gets
    classes = pitch_class_power(square)
    assert classes.dtype == np.float16 and np.isfinite(classes).all()
    assert (classes.astype(np.float32).argmax(0) == 9).mean() > 0.9


def test_the_melody_view_follows_the_tune_over_a_bass():
    """Four notes of a harmonic tone, a second each, over a quieter low C held throughout: the
    view names each note, ten frames a second, and not the bass."""
    t = np.arange(8000) / 8000
    tune = [60, 64, 67, 72]
    tone = np.concatenate([sum(0.5 / h * np.sin(2 * np.pi * 440 * 2 ** ((m - 69) / 12) * h * t) for h in (1, 2, 3))
                           for m in tune])
    bass = 0.3 * np.sin(2 * np.pi * 440 * 2 ** ((48 - 69) / 12) * np.arange(len(tone)) / 8000)
    notes = melody(band_power((tone + bass).astype(np.float32)))
    assert len(notes) == 40
    for k, m in enumerate(tune):
        assert (notes[10 * k + 2:10 * k + 8] == m).all(), notes


def test_a_large_version_index_is_saved_with_lists_that_its_shards_probe_alike(works, renderer, model, tmp_path,
                                                                                 monkeypatch):
    """Past ``LISTED`` vectors, a saved index scores only the vectors of the lists nearest an
    output's windows, still finds each re-performance's work first, and its shards (cut from it,
    keeping its lists) find together what it finds."""
    from detector import version

    monkeypatch.setattr(version, "LISTED", 0)
    classes = {k: pitch_class_power(renderer.render(versionset.perform(w))) for k, w in enumerate(works)}
    version.VersionIndex(classes, model).save(tmp_path)
    index = version.VersionIndex.open(tmp_path)
    assert index.lists is not None and len(index.lists.order) == len(index.vectors)
    for k, work in enumerate(works):
        audio = renderer.render(versionset.perform(work, "key"))
        query = model.classes(audio[: 20 * versionset.SAMPLE_RATE])
        starts, vectors = model.vectors(query, version.QUERY_HOP_S)
        assert len(index.lists.probed(vectors)) < len(index.vectors)
        found = version.best([index.ranked(query, starts, vectors)])
        assert found[0].track == k, (work.work_id, found)
        shards = [index.shard([t for t in classes if t % 2 != part]) for part in (0, 1)]
        assert all(s.lists is not None for s in shards)
        assert version.best([s.ranked(query, starts, vectors) for s in shards]) == found


def test_a_publish_clusters_the_version_lists_afresh_once_the_catalog_has_outgrown_them(tmp_path, monkeypatch):
    """Lists keep their centroids while their count suits the index's size; a publish that
    grows the index past it clusters the vectors afresh, and its shards keep the lists it saved."""
    from detector import version

    monkeypatch.setattr(version, "LISTED", 0)
    rng = np.random.default_rng(0)
    tracks, per = 70, 100                      # 7,000 vectors: 16 lists
    vectors = rng.standard_normal((tracks * per, 128)).astype(np.float32)
    index = version.VersionIndex.__new__(version.VersionIndex)
    index._use(np.arange(tracks, dtype=np.int64), np.arange(tracks + 1, dtype=np.int64) * per,
               (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float16),
               np.zeros(tracks + 1, np.int64), np.zeros((12, 0), np.float16), np.array([version.shipped_weights()]))
    (tmp_path / "first").mkdir()
    index.save(tmp_path / "first")
    first = version.VersionIndex.open(tmp_path / "first")
    assert len(first.lists.centroids) == 16
    # two tracks of 22 min: 1,322 vectors more, past 8,192, where 32 lists suit the index
    added = {tracks + k: rng.random((12, 13_200)).astype(np.float16) for k in range(2)}
    grown = first.updated(added, [0])
    assert grown.lists is None and len(grown.vectors) > 8192
    (tmp_path / "grown").mkdir()
    grown.save(tmp_path / "grown")
    again = version.VersionIndex.open(tmp_path / "grown")
    assert len(again.lists.centroids) == 32 and len(again.lists.order) == len(again.vectors)
    assert len(first.updated({}, [1]).lists.centroids) == 16            # a takedown keeps them
    part = again.shard(list(range(0, tracks, 2)))                       # a shard: its index's lists
    assert np.array_equal(part.lists.centroids, again.lists.centroids)
