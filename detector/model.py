"""Stage 3, ``Clip`` → ``Embeddings``: one L2-normalised vector per 1 s window.

The encoder is a small CNN over the semitone spectrogram. Max-pooling over wide ranges of the
frequency axis (the whole axis, or each half in the shipped model) makes it insensitive to pitch
shifts; contrastive training (``detector/train.py``) teaches it to ignore noise, reverb, codecs,
tempo changes and new material mixed on top.
"""
from __future__ import annotations

import copy
import pickle
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from detector.audio import Clip
from detector.errors import ModelError
from detector.features import FrontEnd, Spectrogram, normalise, voiced, window_loudness, window_starts

CHECKPOINT_FORMAT = 1
DEFAULT_WEIGHTS = "clearance-fp-v7.pt"
REF_HOP_S = 0.25          # seconds between reference windows, of new checkpoints


@dataclass(frozen=True)
class Embeddings:
    """Fingerprints of one clip.

    ``starts``: (n,) float64 window start times in seconds; ``vectors``: (n, dim) float32,
    L2-normalised; ``voiced``: (n,) bool, False for silent windows, which are never evidence.
    """

    starts: np.ndarray
    vectors: np.ndarray
    voiced: np.ndarray
    window_s: float


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Pool2(nn.Module):
    """2×2 max pooling, odd rows and columns dropped: what ``nn.MaxPool2d(2)`` computes, about
    eight times faster on CPU, where ``MaxPool2d`` also works out the argmax of every cell."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
        rows = torch.maximum(x[..., 0:h:2, :w], x[..., 1:h:2, :w])
        return torch.maximum(rows[..., 0::2], rows[..., 1::2])


class Encoder(nn.Module):
    """(batch, n_bands, frames) normalised log power → (batch, dim) L2-normalised.

    ``freq_groups``: the conv features are max-pooled over this many equal ranges of bands
    (1: the whole axis; 2: the low and high half, which tells more windows apart).
    """

    def __init__(self, n_bands: int = 64, frames: int = 50, width: int = 32, dim: int = 128, freq_groups: int = 1):
        super().__init__()
        self.freq_groups = freq_groups
        self.conv = nn.Sequential(
            _block(1, width // 2), Pool2(),
            _block(width // 2, width), Pool2(),
            _block(width, width * 2), Pool2(),
            _block(width * 2, width * 4),
        )
        t = frames // 8
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(width * 4 * freq_groups * t, 256), nn.ReLU(inplace=True),
                                  nn.Linear(256, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x.unsqueeze(1))          # (b, c, bands/8, frames/8)
        b, c, f, t = h.shape
        # pitch shift = translation along bands: max over each of `freq_groups` equal ranges of bands
        h = h.reshape(b, c, self.freq_groups, f // self.freq_groups, t).amax(dim=3)
        return nn.functional.normalize(self.head(h), dim=1)


def build(arch: dict, fe: FrontEnd) -> Encoder:
    return Encoder(n_bands=fe.n_bands, frames=fe.frames_per_window, **arch)


def for_inference(encoder: Encoder) -> Encoder:
    """A copy of ``encoder`` in eval mode with each batch norm folded into the convolution before
    it, its weights laid out channels-last: the same function (to float rounding), in about half
    the time per window on CPU."""
    enc = copy.deepcopy(encoder).eval()
    for block in enc.conv:
        if isinstance(block, nn.Sequential):
            block[0] = fuse_conv_bn_eval(block[0], block[1])
            block[1] = nn.Identity()
    return enc.to(memory_format=torch.channels_last)


def load_checkpoint(path: str | Path, fmt: int, what: str) -> dict:
    """The checkpoint at ``path`` (tensors and plain values only), of checkpoint format ``fmt``;
    ``ModelError`` naming ``what`` it is of when it cannot be read or has another format."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise ModelError(f"cannot load {what} weights {path}: {exc}") from None
    if ckpt.get("format") != fmt:
        raise ModelError(f"{what} checkpoint {path}: format {ckpt.get('format')!r}, expected {fmt}")
    return ckpt


class Embedder:
    """A loaded checkpoint: front end + encoder + version, ready to fingerprint clips.

    ``ref_hop_s``: seconds between the windows a catalog track is indexed at with this model;
    part of what its ``version`` names, since vectors at another hop cannot share an index.
    """

    def __init__(self, encoder: Encoder, fe: FrontEnd, version: str, ref_hop_s: float = REF_HOP_S,
                 threads: int | None = None):
        self.encoder = for_inference(encoder)
        self.fe = fe
        self.version = version
        self.ref_hop_s = ref_hop_s
        self.dim = encoder.head[-1].out_features
        self.spectrogram = Spectrogram(fe)
        self._transposed: dict[float, Spectrogram] = {}
        if threads:
            torch.set_num_threads(threads)

    def _spectrogram(self, transpose: float) -> Spectrogram:
        if not transpose:
            return self.spectrogram
        if transpose not in self._transposed:
            fe = replace(self.fe, f_min=self.fe.f_min * 2.0 ** (-transpose / 12))
            self._transposed[transpose] = Spectrogram(fe)
        return self._transposed[transpose]

    @classmethod
    def load(cls, path: str | Path | None = None) -> "Embedder":
        """Load a checkpoint; by default the weights shipped in this package."""
        if path is None:
            with resources.as_file(resources.files("detector") / "weights" / DEFAULT_WEIGHTS) as p:
                ckpt = load_checkpoint(p, CHECKPOINT_FORMAT, "model")
        else:
            ckpt = load_checkpoint(path, CHECKPOINT_FORMAT, "model")
        fe = FrontEnd(**ckpt["front_end"])
        enc = build(ckpt["arch"], fe)
        enc.load_state_dict(ckpt["state_dict"])
        # checkpoints before the reference hop was stored were indexed every 0.5 s
        return cls(enc, fe, ckpt["version"], ckpt.get("ref_hop_s", 0.5))

    @torch.inference_mode()
    def embed(self, clip: Clip, hop_s: float = 0.5, batch: int = 64, transpose: float = 0.0) -> Embeddings:
        """Fingerprint every window of ``clip`` (window ``fe.window_s``, hop ``hop_s`` seconds):
        ``(n_windows, dim)`` float32 vectors, L2-normalised, with each window's start and voicing.

        Callers that index or search pass ``hop_s``: catalog tracks are embedded every
        ``self.ref_hop_s`` (0.25 s for the shipped model), outputs every 0.25 s (the query hop
        of ``index/catalog.py``). The default of 0.5 s is not the model's hop; it is what the
        golden embeddings (``tests/detector/golden.py``) and the model tests were made with.

        ``transpose`` shifts the clip's spectrum by that many semitones first: a query
        transposed back towards the original pitch undoes a large pitch shift. The bands are
        moved, not the spectrogram: transposed up k semitones, the query is analysed from
        ``f_min`` / 2^(k/12), so a copy pitched down keeps the bass that fell below ``f_min``.
        ``batch`` windows go through the encoder at a time: at 64 its buffers are reused from the heap, while
        batches of several hundred are mapped fresh from the kernel each time and spend a third
        of their time in page faults.
        """
        if clip.sample_rate != self.fe.sample_rate:
            raise ModelError(f"clip at {clip.sample_rate} Hz, model expects {self.fe.sample_rate} Hz")
        fe = self.fe
        starts = window_starts(clip.duration, fe.window_s, hop_s)
        is_voiced = voiced(window_loudness(clip.samples, fe.sample_rate, starts, fe.window_s))
        wave = torch.from_numpy(clip.samples)
        need = int(round((starts[-1] + fe.window_s) * fe.sample_rate)) + 1
        if len(wave) < need:
            wave = nn.functional.pad(wave, (0, need - len(wave)))
        power = self._spectrogram(transpose).of_long(wave)             # (bands, frames)
        nf = fe.frames_per_window
        first = np.round(starts * fe.sample_rate / fe.hop_length).astype(int)
        idx = torch.from_numpy(first[:, None] + np.arange(nf)[None, :])
        idx = idx.clamp(max=power.shape[1] - 1)
        out = np.empty((len(starts), self.dim), np.float32)
        for i in range(0, len(starts), batch):
            windows = power[:, idx[i:i + batch]].permute(1, 0, 2)    # (batch, bands, nf)
            out[i:i + batch] = self.encoder(normalise(windows)).numpy()
        return Embeddings(starts, out, is_voiced, fe.window_s)
