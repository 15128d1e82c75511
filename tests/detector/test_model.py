"""The shipped fingerprint model: what it computes is pinned, and what it must ignore it ignores."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from detector.audio import Clip
from detector.errors import ModelError
from detector.model import DEFAULT_WEIGHTS, Embedder
from detector.version_model import VersionModel
from tests.detector.golden import GOLDEN, SR, embed_all, signals


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder.load()


def test_golden_embeddings(embedder):
    golden = np.load(GOLDEN)
    assert str(golden["version"]) == embedder.version, "retrained? run python -m tests.detector.golden"
    for name, vectors in embed_all(embedder).items():
        np.testing.assert_allclose(vectors, golden[name], atol=2e-3, err_msg=name)


def test_shape_norm_and_silence(embedder):
    clip = signals()["chords"]
    quiet = Clip(np.concatenate([clip.samples, np.zeros(3 * SR, np.float32)]), SR, "x")
    e = embedder.embed(quiet, hop_s=0.5)
    assert e.vectors.shape == (len(e.starts), embedder.dim) and e.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e.vectors, axis=1), 1.0, atol=1e-5)
    assert e.voiced[:5].all() and not e.voiced[-3:].any()       # digital silence is never evidence


def test_gain_does_not_matter_and_other_audio_is_far(embedder):
    s = signals()
    a = embedder.embed(s["chords"]).vectors
    louder = embedder.embed(Clip(s["chords"].samples * 4, SR, "loud")).vectors
    other = embedder.embed(s["bass"]).vectors
    same = np.sum(a * louder, axis=1)
    assert same.min() > 0.99
    assert np.sum(a * other, axis=1).max() < same.min() - 0.1


def test_transposing_the_query_recovers_bass_that_fell_below_the_lowest_band(embedder, music):
    """A copy pitched down 7 semitones, analysed 6 semitones up, is close to the original window
    by window: the bass that the pitch shift moved below the lowest band (98 Hz) is analysed."""
    import torch
    import torchaudio.functional as AF

    from detector.audio import decode

    track = decode(music["drascula-track11"].path, SR)
    original = track.excerpt(40.0, 50.0).samples
    down = AF.pitch_shift(torch.from_numpy(original)[None], SR, -7, n_fft=1024, hop_length=256)[0].numpy()
    a = embedder.embed(Clip(original, SR, "original")).vectors
    b = embedder.embed(Clip(down, SR, "down"), transpose=6.0).vectors
    other = embedder.embed(Clip(track.excerpt(100.0, 110.0).samples, SR, "other")).vectors
    same = np.median(np.sum(a * b, axis=1))
    assert same > 0.85, same                  # 0.82 when the shifted spectrogram left the bass bands empty
    assert same > np.median(np.sum(other * b, axis=1)) + 0.2


def test_the_checkpoint_names_its_reference_hop(embedder, tmp_path):
    assert embedder.ref_hop_s == 0.25
    ckpt = torch.load(Path(__file__).parents[2] / "detector" / "weights" / DEFAULT_WEIGHTS, weights_only=True)
    del ckpt["ref_hop_s"]
    torch.save(ckpt, tmp_path / "older.pt")
    assert Embedder.load(tmp_path / "older.pt").ref_hop_s == 0.5     # indexed every 0.5 s before it was stored


def test_an_unreadable_or_foreign_checkpoint_is_a_clear_error(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot load model weights .*junk.pt"):
        Embedder.load(junk)
    with pytest.raises(ModelError, match="cannot load version model weights .*junk.pt"):
        VersionModel.load(junk)
    other = tmp_path / "other.pt"
    torch.save({"format": 99}, other)
    with pytest.raises(ModelError, match="format 99, expected 1"):
        Embedder.load(other)
