"""Seeded test signals and the shipped model's embeddings of them.

    .venv/bin/python -m tests.detector.golden      # rewrite golden_embeddings.npz after retraining

The signals are synthesised (chords of harmonic tones with an envelope, and noise), so the
check needs no corpus and runs in a second.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from detector.audio import Clip
from detector.model import Embedder

GOLDEN = Path(__file__).with_name("golden_embeddings.npz")
SR = 8000


def signals() -> dict[str, Clip]:
    rng = np.random.default_rng(1234)
    t = np.arange(4 * SR) / SR
    out = {}
    for name, roots in {"chords": [220.0, 277.2, 329.6], "bass": [110.0, 164.8]}.items():
        x = sum(np.sin(2 * np.pi * f * h * t) / h for f in roots for h in range(1, 6))
        env = 0.5 + 0.5 * np.sin(2 * np.pi * 2 * t) ** 2
        out[name] = Clip((0.1 * x * env).astype(np.float32), SR, name)
    out["noise"] = Clip((0.05 * rng.standard_normal(len(t))).astype(np.float32), SR, "noise")
    return out


def embed_all(embedder: Embedder) -> dict[str, np.ndarray]:
    return {name: embedder.embed(clip).vectors for name, clip in signals().items()}


if __name__ == "__main__":
    e = Embedder.load()
    np.savez(GOLDEN, version=np.array(e.version), **embed_all(e))
    print(f"wrote {GOLDEN} for model {e.version}")
