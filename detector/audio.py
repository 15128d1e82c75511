"""Stage 1, bytes → ``Clip``: decode any audio file with PyAV (bundled FFmpeg) under caps.

Inputs are untrusted: decoding stops with an ``AudioError`` as soon as a size, duration or
wall-clock cap is exceeded, instead of reading everything first.
"""
from __future__ import annotations

import io
import os
import time
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from detector.errors import AudioError

AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".aif", ".aiff"})


@dataclass(frozen=True)
class Clip:
    """Mono audio. ``samples``: (n,) float32 in [-1, 1]; ``sample_rate`` in Hz."""

    samples: np.ndarray
    sample_rate: int
    source: str

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return len(self.samples) / self.sample_rate

    def excerpt(self, start: float, end: float) -> "Clip":
        """The part between ``start`` and ``end`` seconds."""
        a, b = int(start * self.sample_rate), int(end * self.sample_rate)
        return Clip(self.samples[max(a, 0):max(b, 0)], self.sample_rate, self.source)


@dataclass(frozen=True)
class DecodeLimits:
    """Caps applied while decoding: bytes of input, seconds of audio, seconds of wall time."""

    max_bytes: int = 200 * 1024 * 1024
    max_seconds: float = 3 * 3600.0
    max_wall_seconds: float = 120.0


def decode(source: str | os.PathLike | bytes, sample_rate: int, *, name: str | None = None,
           limits: DecodeLimits = DecodeLimits()) -> Clip:
    """Decode a file path or in-memory bytes to a mono ``Clip`` at ``sample_rate`` Hz.

    Raises ``AudioError`` (with ``too_large`` set for cap violations) for anything that is not
    decodable audio with at least one sample.
    """
    if isinstance(source, (bytes, bytearray)):
        label = name or "upload"
        size = len(source)
        opener = io.BytesIO(source)
    else:
        label = name or str(source)
        path = Path(source)
        if not path.is_file():
            raise AudioError(label, "a folder, not an audio file" if path.is_dir() else
                             "no such file" if not path.exists() else "not a regular file")
        size = path.stat().st_size
        opener = str(path)
    if size == 0:
        raise AudioError(label, "the file is empty (0 bytes)")
    if size > limits.max_bytes:
        raise AudioError(label, f"the file is {size / 1e6:.1f} MB, over the {limits.max_bytes / 1e6:.0f} MB limit",
                         too_large=True)
    try:
        container = av.open(opener, mode="r", metadata_errors="ignore")
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        raise AudioError(label, f"not a readable audio file ({_why(exc)})") from None
    try:
        return _decode_container(container, label, sample_rate, limits)
    finally:
        container.close()


def _decode_container(container, label: str, sample_rate: int, limits: DecodeLimits) -> Clip:
    if not container.streams.audio:
        raise AudioError(label, "the file has no audio stream")
    stream = container.streams.audio[0]
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
    max_samples = int(limits.max_seconds * sample_rate)
    deadline = time.monotonic() + limits.max_wall_seconds
    chunks: list[np.ndarray] = []
    total = 0
    errors = 0
    try:
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.error.FFmpegError:
                errors += 1  # a damaged packet: keep what decodes, as players do
                if errors > 50 and not chunks:
                    break
                continue
            for frame in frames:
                for out in resampler.resample(frame):
                    chunk = out.to_ndarray().reshape(-1)
                    chunks.append(chunk)
                    total += len(chunk)
            if total > max_samples:
                raise AudioError(label, f"the audio is longer than the {limits.max_seconds:.0f} s limit",
                                 too_large=True)
            if time.monotonic() > deadline:
                raise AudioError(label, f"decoding took longer than {limits.max_wall_seconds:.0f} s", too_large=True)
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    except av.error.FFmpegError as exc:
        if not chunks:
            raise AudioError(label, f"not a readable audio file ({_why(exc)})") from None
    samples = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    if len(samples) == 0:
        raise AudioError(label, "no audio could be decoded (truncated or corrupt file)")
    np.clip(samples, -1.0, 1.0, out=samples)
    return Clip(samples, sample_rate, label)


def _why(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return text.split(":")[-1].strip() or type(exc).__name__


def find_audio(paths: list[str | os.PathLike]) -> list[Path]:
    """Audio files named by ``paths``: files as given, folders searched recursively, sorted."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in AUDIO_SUFFIXES))
        else:
            found.append(p)
    return found


ENCODERS = {  # format → (container, codec, sample rate, channel layout)
    "mp3": ("mp3", "libmp3lame", 22050, "mono"),
    "ogg": ("ogg", "vorbis", 22050, "stereo"),       # FFmpeg's own Vorbis encoder is stereo only
    "vorbis": ("ogg", "vorbis", 22050, "stereo"),
    "opus": ("ogg", "libopus", 48000, "mono"),
    "flac": ("flac", "flac", None, "mono"),
    "wav": ("wav", "pcm_s16le", None, "mono"),
}


def encode(clip: Clip, fmt: str, bit_rate_kbps: int | None = None) -> bytes:
    """The clip as a file in ``fmt`` (a key of ``ENCODERS``), e.g. to play an excerpt."""
    container, codec, rate, layout = ENCODERS[fmt]
    rate = rate or clip.sample_rate
    pcm = (np.clip(clip.samples, -1, 1) * 32767).astype(np.int16)[None]
    frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
    frame.sample_rate = clip.sample_rate
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        stream.codec_context.options = {"strict": "experimental"}
        if bit_rate_kbps:
            stream.bit_rate = bit_rate_kbps * 1000
        resampler = av.AudioResampler(format=stream.format.name, layout=layout, rate=rate)
        for converted in [*resampler.resample(frame), *resampler.resample(None)]:
            for packet in stream.encode(converted):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()
