"""Training: one seeded command gives the same weights every time, reads only ``split=train``
tracks, and writes a checkpoint that carries its own settings and loads in the product."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from detector import train
from detector.audio import Clip
from detector.features import FrontEnd, shift_bands
from detector.model import Embedder


def test_shift_bands_translates_along_frequency():
    power = torch.full((2, 64, 5), 1e-4)
    power[:, 20] = 1.0
    out = shift_bands(power, torch.tensor([3.0, -2.5]))
    assert out[0, 23].min() == 1.0 and out[0, 20].max() < 1e-3          # up 3 bands
    assert torch.allclose(out[1, 17], torch.full((5,), 0.5), atol=1e-3)  # down 2.5: half in each
    assert torch.allclose(out[1, 18], torch.full((5,), 0.5), atol=1e-3)
    assert (out[0, :3] > 0).all() and out[0, :3].max() < 1e-6           # shifted in: a floor, not 0


@pytest.fixture(scope="module")
def corpus(music, tmp_path_factory) -> Path:
    """A corpus folder whose manifest marks three sample tracks ``train`` and one ``heldout``."""
    folder = tmp_path_factory.mktemp("corpus")
    source = next(iter(music.values())).path.parents[1] / "manifest.csv"
    with open(source, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["track_id"] in music][:4]
    for i, r in enumerate(rows):
        r["split"] = "heldout" if i == 3 else "train"
        link = folder / r["path"]
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(music[r["track_id"]].path)
    with open(folder / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return folder


def run(corpus: Path, cache: Path, out: Path, seed: int, *extra: str) -> dict:
    train.main(["--music", str(corpus), "--cache", str(cache), "--out", str(out), "--steps", "3", "--batch", "16",
                "--seed", str(seed), "--version", "test-fp", *extra])
    return torch.load(out, weights_only=True)


def test_seeded_training_reproduces_and_loads(corpus, tmp_path):
    cache = tmp_path / "cache"
    a = run(corpus, cache, tmp_path / "a.pt", seed=7)
    b = run(corpus, cache, tmp_path / "b.pt", seed=7)
    c = run(corpus, cache, tmp_path / "c.pt", seed=8)

    with open(corpus / "manifest.csv", newline="") as f:
        train_ids = sorted(r["track_id"] for r in csv.DictReader(f) if r["split"] == "train")
    assert sorted(p.name for p in cache.iterdir()) == [f"{t}-8000.npy" for t in train_ids]
    for name, weights in a["state_dict"].items():
        assert torch.equal(weights, b["state_dict"][name]), name
    assert any(not torch.equal(w, c["state_dict"][n]) for n, w in a["state_dict"].items() if w.is_floating_point())

    assert a["version"] == "test-fp" and a["front_end"] == FrontEnd().to_dict()
    assert a["training"]["seed"] == 7 and a["training"]["steps"] == 3
    embedder = Embedder.load(tmp_path / "a.pt")
    assert embedder.version == "test-fp" and embedder.ref_hop_s == a["ref_hop_s"] == 0.25
    samples = np.random.default_rng(0).standard_normal(3 * 8000).astype(np.float32) * 0.1
    vectors = embedder.embed(Clip(samples, 8000, "noise"), hop_s=0.5).vectors
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_fine_tuning_keeps_the_architecture(corpus, tmp_path):
    cache = tmp_path / "cache"
    base = run(corpus, cache, tmp_path / "base.pt", 1, "--freq-groups", "2")
    tuned = run(corpus, cache, tmp_path / "tuned.pt", 2, "--init", str(tmp_path / "base.pt"), "--lr", "5e-4")
    assert base["arch"]["freq_groups"] == tuned["arch"]["freq_groups"] == 2
    assert tuned["training"]["init"] == str(tmp_path / "base.pt")
    assert Embedder.load(tmp_path / "tuned.pt").encoder.freq_groups == 2


@pytest.mark.parametrize("pitch_st", [0.0, 3.5])
def test_positives_are_pitch_shifted_within_the_range(pitch_st):
    """A tone's transformed copies keep their strongest band within ``pitch_st`` bands of the
    tone's (one band per semitone); with a range, some do move."""
    fe, sr = FrontEnd(), 8000
    band = 30
    tone = 0.3 * np.sin(2 * np.pi * fe.f_min * 2 ** (band / 12) * np.arange(10 * sr) / sr).astype(np.float32)
    rng = np.random.default_rng(3)
    sampler = train.Sampler([tone], sr, rng)
    aug = train.Augment(fe, sampler, rng, mix_p=0.0, mix_snr=(0.0, 0.0), reverb_p=0.0, noise_p=0.0, pitch_st=pitch_st)
    crops, _ = sampler.crops(64, 3.0)
    peak = aug.positives(crops, 2.0).mean(2).argmax(1).numpy()
    assert np.abs(peak - band).max() <= np.ceil(pitch_st)
    assert (peak != band).any() == (pitch_st > 0)
