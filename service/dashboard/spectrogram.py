"""``Clip`` → PNG spectrogram for the evidence report: the detector's own front end (one band
per semitone, ``detector/features.py``), so the picture shows what the detector compared."""
from __future__ import annotations

import struct
import zlib

import numpy as np
import torch

from detector.audio import Clip
from detector.features import FrontEnd, Spectrogram

MAX_COLUMNS = 900        # time columns of an image; longer clips are averaged down
ROWS_PER_BAND = 2        # image rows per semitone band
DYNAMIC_RANGE_DB = 70.0

# A dark-to-light colour ramp (anchors of matplotlib's "magma"), interpolated linearly.
_RAMP = np.array([(0, 0, 4), (59, 15, 112), (140, 41, 129), (222, 73, 104), (254, 159, 109), (252, 253, 191)],
                 np.float32)


def png(clip: Clip, fe: FrontEnd) -> bytes:
    """The clip's semitone spectrogram as an RGB PNG: (n_bands × ROWS_PER_BAND) rows, low
    pitches at the bottom; at most ``MAX_COLUMNS`` columns spread evenly over the clip.
    ``clip`` must be at ``fe.sample_rate`` Hz and last at least ``fe.n_fft`` samples."""
    with torch.no_grad():
        power = Spectrogram(fe)(torch.from_numpy(clip.samples)[None])[0].numpy()   # (n_bands, frames)
    db = 10 * np.log10(power + 1e-12)
    level = np.clip((db - (db.max() - DYNAMIC_RANGE_DB)) / DYNAMIC_RANGE_DB, 0.0, 1.0)
    frames = level.shape[1]
    if frames > MAX_COLUMNS:
        edges = np.linspace(0, frames, MAX_COLUMNS + 1).astype(int)
        level = np.add.reduceat(level, edges[:-1], axis=1) / np.diff(edges)
    image = colour(np.repeat(level[::-1], ROWS_PER_BAND, axis=0))
    return encode_png(image)


def colour(level: np.ndarray) -> np.ndarray:
    """(h, w) in [0, 1] → (h, w, 3) uint8 along the ramp."""
    x = level * (len(_RAMP) - 1)
    i = np.minimum(x.astype(int), len(_RAMP) - 2)
    t = (x - i)[..., None]
    return np.round(_RAMP[i] * (1 - t) + _RAMP[i + 1] * t).astype(np.uint8)


def encode_png(rgb: np.ndarray) -> bytes:
    """(h, w, 3) uint8 → PNG bytes (8-bit RGB, no filtering)."""
    h, w, _ = rgb.shape
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rgb.reshape(h, w * 3)], axis=1).tobytes()

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))
