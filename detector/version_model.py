"""The version layer's model: semitone bands → pitch-class power (what the catalog stores of a
track) → version vectors, and the melody view that reviewers see.

A re-performance keeps a work's melody, harmony and rhythm and changes everything else: sound,
key, tempo, arrangement. The front end keeps what survives, the energy of each of the 12 pitch
classes ten times a second (``detector.version.chroma``); the encoder (``VersionNet``) pads and
convolves the pitch-class axis circularly and then takes the maximum over it, so a
transposition, a rotation of that axis, leaves its vector exactly unchanged. Tempo, timbre and
arrangement it learns to ignore from rendered versions (``detector/train_version.py``).

The index and its Qmax verifier are ``detector/version.py``'s, which needs no torch: a shard's
replica searches the version index without loading the model.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from detector.features import FrontEnd, Spectrogram
from detector.matcher import Calibration
from detector.model import load_checkpoint
from detector.version import CALIBRATION, CHROMA_FPS, DEFAULT_WEIGHTS, SEGMENT_S, chroma, weights_of

PITCH_CLASSES = "pc-v2"         # how ``pitch_class_power`` is computed, stored with every track
PITCH_CLASS_SCALE = 256.0       # stored pitch-class power is divided by it (float16's range)
MIN_FRAMES = 20                 # chroma frames (2 s) a version vector needs at least
CHECKPOINT_FORMAT = 1


def pitch_classes(power: torch.Tensor, f_min_midi: int, frames_per_second: float) -> torch.Tensor:
    """Semitone band power (bands, frames) → power of each pitch class (12, frames at
    ``CHROMA_FPS``); row k is pitch class k (0 = C). Powers add when recordings are mixed."""
    pooled = _at_chroma_rate(power, frames_per_second)
    classes = (torch.arange(len(pooled)) + f_min_midi) % 12
    return torch.zeros(12, pooled.shape[1], dtype=pooled.dtype).index_add_(0, classes, pooled)


def _at_chroma_rate(power: torch.Tensor, frames_per_second: float) -> torch.Tensor:
    """Band power (bands, frames) averaged down to ``CHROMA_FPS`` frames a second."""
    bands, frames = power.shape
    step = max(1, round(frames_per_second / CHROMA_FPS))
    n = frames // step
    return power[:, : n * step].reshape(bands, n, step).mean(2)


@functools.cache
def _spectrogram() -> Spectrogram:
    return Spectrogram(FrontEnd())


def band_power(samples: np.ndarray) -> torch.Tensor:
    """Mono samples at the fingerprint front end's rate (8 kHz) → their power in its semitone
    bands (bands, frames at its 50 a second): what ``pitch_class_power`` and ``melody`` reduce."""
    with torch.inference_mode():
        return _spectrogram().of_long(torch.from_numpy(np.ascontiguousarray(samples, np.float32)))


def _band0_midi(fe: FrontEnd) -> int:
    """The MIDI note of the front end's lowest band."""
    return round(69 + 12 * math.log2(fe.f_min / 440))


def pitch_class_power(samples: np.ndarray) -> np.ndarray:
    """Mono samples at the fingerprint front end's rate (8 kHz) → (12, frames) float16 power of
    each pitch class at ``CHROMA_FPS``: what the catalog stores of a track for this layer (240
    bytes a second), computed from the same semitone bands as the fingerprints."""
    return stored_pitch_classes(band_power(samples))


def stored_pitch_classes(power: torch.Tensor) -> np.ndarray:
    """``pitch_class_power`` of samples whose ``band_power`` is ``power``."""
    fe = _spectrogram().fe
    with torch.inference_mode():
        classes = pitch_classes(power, _band0_midi(fe), fe.sample_rate / fe.hop_length)
    # float16 holds up to 65,504: full-scale music reaches about 300,000 before this scaling, and
    # the model sees power only relative to the window's loudest frame
    return np.minimum(classes.numpy() / PITCH_CLASS_SCALE, 6e4).astype(np.float16)


MELODY_MIDI = (55, 84)          # the melody view's range: G3 to C6
MELODY_QUIET_DB = 30.0          # frames this far below the clip's loudest have no melody
_HARMONICS = ((0, 1.0), (12, 0.5), (19, 0.33), (24, 0.25))      # semitones above a note, weight


def melody(power: torch.Tensor) -> np.ndarray:
    """The layer's melody view, drawn for reviewers (the search does not use it): from the
    ``band_power`` of mono samples, the predominant pitch of each ``CHROMA_FPS`` frame as a MIDI
    note number (-1 where the frame is quiet). Each semitone band of ``MELODY_MIDI`` is scored by
    harmonic summation of the compressed band power at its first harmonics; the best wins."""
    fe = _spectrogram().fe
    pooled = _at_chroma_rate(power, fe.sample_rate / fe.hop_length).numpy()
    notes = np.arange(MELODY_MIDI[0], MELODY_MIDI[1] + 1)
    magnitude = np.sqrt(pooled)
    salience = np.zeros((len(notes), pooled.shape[1]), np.float32)
    for offset, weight in _HARMONICS:
        bands = notes - _band0_midi(fe) + offset
        inside = bands < len(pooled)
        salience[inside] += weight * magnitude[bands[inside]]
    level = pooled.sum(0)
    loud = level > level.max(initial=0) * 10 ** (-MELODY_QUIET_DB / 10)
    return np.where(loud & (level > 0), notes[salience.argmax(0)], -1)


class CircularConv(nn.Module):
    """A 2-d convolution over (pitch class, time) whose pitch axis wraps around."""

    def __init__(self, cin: int, cout: int, time_kernel: int = 3, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, (3, time_kernel), stride=(1, stride), dilation=(1, dilation), bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.time_pad = dilation * (time_kernel - 1) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x[:, :, -1:], x, x[:, :, :1]], 2)
        x = F.pad(x, (self.time_pad, self.time_pad))
        return F.relu(self.bn(self.conv(x)))


class VersionNet(nn.Module):
    """Chroma (batch, 12, frames) → (batch, dim) L2-normalised version vectors, the same for
    every transposition of the input."""

    def __init__(self, width: int = 32, dim: int = 128):
        super().__init__()
        w = width
        self.body = nn.Sequential(
            CircularConv(1, w // 2, 5, stride=2), CircularConv(w // 2, w, 3, stride=2), CircularConv(w, w),
            CircularConv(w, 2 * w, 3, stride=2), CircularConv(2 * w, 4 * w, 3, dilation=2),
            CircularConv(4 * w, 4 * w, 3, dilation=4))
        self.head = nn.Linear(8 * w, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x[:, None]).amax(2)                    # (batch, channels, time): max over pitch
        pooled = torch.cat([h.mean(2), h.amax(2)], 1)
        return F.normalize(self.head(pooled), dim=1)


class VersionModel:
    """The version encoder with its settings, ``load``\\ed from a checkpoint of
    ``detector/train_version.py``."""

    def __init__(self, net: VersionNet, version: str, segment_s: float = SEGMENT_S, weights: str = ""):
        self.net, self.version, self.segment_s = net.eval(), version, segment_s
        self.weights = weights          # sha256 of the checkpoint: vectors of other weights are never mixed

    @classmethod
    def load(cls, path: str | Path | None = None) -> VersionModel:
        path = Path(path) if path else DEFAULT_WEIGHTS
        ckpt = load_checkpoint(path, CHECKPOINT_FORMAT, "version model")
        net = VersionNet(ckpt["width"], ckpt["dim"])
        net.load_state_dict(ckpt["state"])
        return cls(net, ckpt["version"], ckpt["segment_s"], weights_of(path))

    @property
    def dim(self) -> int:
        return self.net.head.out_features

    @staticmethod
    def classes(samples: np.ndarray) -> np.ndarray:
        """8 kHz mono samples → (12, frames) float32 pitch-class power at ``CHROMA_FPS``."""
        return pitch_class_power(samples).astype(np.float32)

    def vectors(self, classes: np.ndarray, hop_s: float, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """Version vectors of ``segment_s`` windows every ``hop_s`` seconds of pitch-class power
        (12, frames): ``(starts, vectors)``, (n,) seconds and (n, dim) float32 L2-normalised.
        Audio shorter than a window is one window of its length; shorter than ``MIN_FRAMES``, none."""
        size, hop = round(self.segment_s * CHROMA_FPS), max(1, round(hop_s * CHROMA_FPS))
        frames = classes.shape[1]
        if frames < MIN_FRAMES:
            return np.zeros(0), np.zeros((0, self.dim), np.float32)
        starts = np.arange(0, max(frames - size, 0) + 1, hop)
        windows = torch.from_numpy(chroma(np.stack([classes[:, s:s + size] for s in starts])))
        with torch.inference_mode():
            out = [self.net(windows[i:i + batch]) for i in range(0, len(windows), batch)]
        return starts / CHROMA_FPS, torch.cat(out).numpy()


@functools.cache
def shipped() -> tuple[VersionModel, Calibration]:
    """The shipped version model and its calibration, loaded once per process."""
    return VersionModel.load(), Calibration.load(DEFAULT_WEIGHTS.with_name(CALIBRATION))
