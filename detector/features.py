"""Stage 2, ``Clip`` → log-frequency spectrogram, one band per semitone.

With one band per semitone a pitch shift of k semitones is a translation by k bands, which a
convolutional encoder with pooling over frequency absorbs; a tempo change is a scaling of the
time axis. Both are what generators do to a recording.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

SILENCE_DBFS = -50.0      # windows quieter than this are silence, whatever the clip
FADE_DB = 45.0            # ... and so are windows this far below the clip's loud passages


@dataclass(frozen=True)
class FrontEnd:
    """Front-end settings; stored in every model checkpoint so vectors are always comparable."""

    sample_rate: int = 8000
    n_fft: int = 1024
    hop_length: int = 160          # samples: 20 ms frames, 50 per second
    f_min: float = 98.0            # Hz, G2
    n_bands: int = 64              # semitones: 98 Hz … 3.7 kHz
    window_s: float = 1.0          # seconds of audio per fingerprint

    @property
    def frames_per_window(self) -> int:
        return round(self.window_s * self.sample_rate / self.hop_length)

    def to_dict(self) -> dict:
        return asdict(self)


def semitone_filterbank(fe: FrontEnd) -> torch.Tensor:
    """(n_fft // 2 + 1, n_bands) float32: triangular filters one semitone apart.

    Low bands are narrower than an FFT bin; their triangles are widened to 1.5 bins so every
    band sees energy (neighbouring low bands then overlap, which keeps the shift structure).
    """
    freqs = np.linspace(0, fe.sample_rate / 2, fe.n_fft // 2 + 1)
    bin_hz = freqs[1]
    centres = fe.f_min * 2.0 ** (np.arange(fe.n_bands) / 12.0)
    half = np.maximum(centres * (2 ** (1 / 12) - 1), 1.5 * bin_hz)
    fb = np.clip(1.0 - np.abs(freqs[:, None] - centres[None, :]) / half[None, :], 0.0, None)
    fb /= np.maximum(fb.sum(axis=0, keepdims=True), 1e-12)     # bands above Nyquist stay empty
    return torch.from_numpy(fb.astype(np.float32))


class Spectrogram(torch.nn.Module):
    """Waveform (batch, samples) → power in semitone bands (batch, n_bands, frames)."""

    def __init__(self, fe: FrontEnd):
        super().__init__()
        self.fe = fe
        self.register_buffer("window", torch.hann_window(fe.n_fft), persistent=False)
        self.register_buffer("fb", semitone_filterbank(fe), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(wave, self.fe.n_fft, self.fe.hop_length, window=self.window, center=True,
                          return_complex=True)
        return self._bands(spec)

    def _bands(self, spec: torch.Tensor) -> torch.Tensor:
        """Complex STFT (batch, bins, frames) → power in semitone bands (batch, n_bands, frames)."""
        return torch.einsum("bft,fn->bnt", spec.real ** 2 + spec.imag ** 2, self.fb)

    def of_long(self, wave: torch.Tensor, block_frames: int = 6000) -> torch.Tensor:
        """``forward`` of one waveform (samples,), ``block_frames`` frames (2 minutes) at a time:
        the same band power (n_bands, frames), without ever holding the complex spectrum of the
        whole (n_fft / 2 + 1 values a frame: 1 GB an hour), so an hour-long recording costs the
        bands it keeps, about 46 MB."""
        n_fft, hop = self.fe.n_fft, self.fe.hop_length
        padded = torch.nn.functional.pad(wave[None, None], (n_fft // 2, n_fft // 2), mode="reflect")[0, 0]
        frames = len(wave) // hop + 1
        blocks = []
        for f0 in range(0, frames, block_frames):
            f1 = min(frames, f0 + block_frames)
            spec = torch.stft(padded[f0 * hop:(f1 - 1) * hop + n_fft], n_fft, hop, window=self.window, center=False,
                              return_complex=True)
            blocks.append(self._bands(spec[None])[0])
        return torch.cat(blocks, 1)


def normalise(power: torch.Tensor) -> torch.Tensor:
    """Band power (batch, n_bands, frames) of one window each → log scale, zero mean, unit
    variance per window, so that gain and overall loudness carry no information."""
    logp = torch.log10(power + 1e-8)
    top = logp.amax(dim=(1, 2), keepdim=True)
    logp = torch.maximum(logp, top - 8.0)  # 80 dB of dynamic range
    mean = logp.mean(dim=(1, 2), keepdim=True)
    std = logp.std(dim=(1, 2), keepdim=True)
    return (logp - mean) / (std + 1e-3)


def window_starts(duration: float, window_s: float, hop_s: float) -> np.ndarray:
    """Start times (seconds) of the windows covering ``duration``; one window at least."""
    n = max(1, int(math.floor((duration - window_s) / hop_s)) + 1)
    return np.arange(n) * hop_s


def window_loudness(samples: np.ndarray, sample_rate: int, starts: np.ndarray, window_s: float) -> np.ndarray:
    """RMS level in dBFS of each window (starts in seconds)."""
    sq = np.concatenate([[0.0], np.cumsum(samples.astype(np.float64) ** 2)])
    a = np.minimum((starts * sample_rate).astype(int), len(samples))
    b = np.minimum(a + int(window_s * sample_rate), len(samples))
    energy = (sq[b] - sq[a]) / np.maximum(b - a, 1)
    return 10 * np.log10(energy + 1e-12)


def voiced(loudness: np.ndarray) -> np.ndarray:
    """Windows that carry evidence: neither silence, nor fade tails far below the loud parts."""
    if len(loudness) == 0:
        return np.zeros(0, bool)
    return loudness > max(SILENCE_DBFS, float(np.quantile(loudness, 0.95)) - FADE_DB)


def shift_bands(power: torch.Tensor, semitones: torch.Tensor) -> torch.Tensor:
    """Translate band power (batch, bands, frames) by a (fractional) number of semitone bands per
    row; bands shifted in from outside get a floor 30 dB below the row's weakest cell."""
    n, bands, frames = power.shape
    src = torch.arange(bands, dtype=torch.float64, device=power.device)[None, :] - semitones[:, None].double()
    lo = torch.floor(src)
    w = (src - lo).float()[:, :, None]
    lo = lo.long()
    out = 0
    for k, weight in ((lo, 1 - w), (lo + 1, w)):
        valid = ((k >= 0) & (k < bands))[:, :, None]
        rows = power.gather(1, k.clamp(0, bands - 1)[:, :, None].expand(n, bands, frames))
        out = out + rows * valid * weight
    floor = power.amin(dim=(1, 2), keepdim=True) * 1e-3 + 1e-10
    return torch.maximum(out, floor)
