"""Stage 1, bytes → ``Clip``: decode any audio file with PyAV (bundled FFmpeg) under caps.

Inputs are untrusted: decoding stops with an ``AudioError`` as soon as a size, duration or
wall-clock cap is exceeded, instead of reading everything first.
"""
from __future__ import annotations

import io
import itertools
import os
import time
from fractions import Fraction
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

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


SEEK_PREROLL_S = 0.5   # seconds decoded before a span and dropped: decoders need audio before a seek point (Opus 80 ms)
# decoded frames are resampled once this many samples a channel have come (57 MP3 frames: 1.5 s at
# 44.1 kHz), not one by one: resampling a 240 s MP3 frame by frame cost 0.24 s of calls, more
# than decoding it (0.18 s). Counted in samples, not frames, so that a file of large frames (FLAC
# allows 65,535 samples a frame) holds no more: at most two such blocks, 8 MB at 8 channels.
BATCH_SAMPLES = 1 << 16


@dataclass(frozen=True)
class DecodeLimits:
    """Caps applied while decoding: bytes of input, seconds of audio, seconds of wall time."""

    max_bytes: int = 200 * 1024 * 1024
    max_seconds: float = 3 * 3600.0
    max_wall_seconds: float = 120.0


def decode(source: str | os.PathLike | bytes, sample_rate: int, *, name: str | None = None,
           limits: DecodeLimits = DecodeLimits(), start: float = 0.0, end: float | None = None) -> Clip:
    """Decode a file path or in-memory bytes to a mono ``Clip`` at ``sample_rate`` Hz: the whole
    of it, or the span from ``start`` to ``end`` seconds. A span is sought to, not decoded up to,
    and decoding stops at its end: a span of a long recording costs the span's time and memory.

    Raises ``AudioError`` (with ``too_large`` set for cap violations; the duration cap counts the
    seconds decoded) for anything that is not decodable audio with at least one sample.
    """
    container, label = _open(source, name, limits)
    want = None if end is None else max(0, round((end - start) * sample_rate))
    chunks: list[np.ndarray] = []
    total = 0
    try:
        for chunk in _blocks(container, label, sample_rate, limits, start):
            chunks.append(chunk)
            total += len(chunk)
            if want is not None and total >= want:
                break
    finally:
        container.close()
    samples = np.concatenate(chunks)[:want] if chunks else np.zeros(0, np.float32)
    if len(samples) == 0:
        raise AudioError(label, f"the audio ends before {start:g} s" if start > 0 else
                         "no audio could be decoded (truncated or corrupt file)")
    np.clip(samples, -1.0, 1.0, out=samples)
    return Clip(samples, sample_rate, label)


def audible(source: str | os.PathLike | bytes, sample_rate: int, *, level_dbfs: float, window_s: float,
            hop_s: float, name: str | None = None, limits: DecodeLimits = DecodeLimits()) -> bool:
    """Whether a window of ``window_s`` seconds (one every ``hop_s`` from the start; one window of
    all of it when shorter) is louder than ``level_dbfs`` (RMS, dBFS) at ``sample_rate`` Hz.

    Read as the file streams, stopping at the first such window: a long silent file costs a
    block of memory and the time to decode it, never its samples. Raises ``AudioError`` as
    ``decode`` does.
    """
    container, label = _open(source, name, limits)
    win, hop = int(window_s * sample_rate), max(1, round(hop_s * sample_rate))
    level = 10 ** (level_dbfs / 10)              # mean square of audio at level_dbfs
    squares = np.zeros(0)                        # from the next window's start on
    whole = False                                # a whole window was seen
    try:
        for chunk in _blocks(container, label, sample_rate, limits):
            squares = np.concatenate([squares, chunk.astype(np.float64) ** 2])
            if len(squares) >= win:
                whole = True
                sums = np.concatenate([[0.0], np.cumsum(squares)])
                starts = np.arange(0, len(squares) - win + 1, hop)
                if np.any(sums[starts + win] - sums[starts] > level * win):
                    return True
                squares = squares[starts[-1] + hop:]
    finally:
        container.close()
    return not whole and bool(squares.mean() > level)


def _open(source: str | os.PathLike | bytes, name: str | None, limits: DecodeLimits):
    """(the opened container, the name errors give it), under the size cap."""
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
        return av.open(opener, mode="r", metadata_errors="ignore"), label
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        raise AudioError(label, f"not a readable audio file ({_why(exc)})") from None


def _blocks(container, label: str, sample_rate: int, limits: DecodeLimits, start: float = 0.0) -> Iterator[np.ndarray]:
    """Mono float32 blocks of the audio from ``start`` seconds on, under ``limits`` (the duration
    cap counts from ``start``)."""
    if not container.streams.audio:
        raise AudioError(label, "the file has no audio stream")
    stream = container.streams.audio[0]
    frames = _frames(container, stream, label, whole=start <= 0)
    if start > 0:
        origin = float((stream.start_time or 0) * stream.time_base)     # seconds of the stream's first sample
        sought = _seek(container, stream, origin + max(0.0, start - SEEK_PREROLL_S))
        frames = _cut(frames, start, origin if sought else None, label)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
    max_samples = int(limits.max_seconds * sample_rate)
    deadline = time.monotonic() + limits.max_wall_seconds
    total = 0
    for frame in itertools.chain(_batched(frames), [None]):      # None: the resampler's last samples
        for out in resampler.resample(frame):
            chunk = out.to_ndarray().reshape(-1)
            total += len(chunk)
            yield chunk
        if total > max_samples:
            raise AudioError(label, f"the audio is longer than the {limits.max_seconds:.0f} s limit", too_large=True)
        if time.monotonic() > deadline:
            raise AudioError(label, f"decoding took longer than {limits.max_wall_seconds:.0f} s", too_large=True)


def _frames(container, stream, label: str, whole: bool = True) -> Iterator[av.AudioFrame]:
    """The decoded frames of ``stream``. A damaged packet is skipped, keeping what decodes, as
    players do; a ``whole`` file of which nothing decodes is an ``AudioError`` (after a seek past
    its end nothing decodes either: ``decode`` says so)."""
    decoded = errors = 0
    try:
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.error.FFmpegError:
                errors += 1
                if errors > 50 and not decoded:
                    break
                continue
            for frame in frames:
                decoded += 1
                yield frame
    except av.error.FFmpegError as exc:
        if not decoded:
            raise AudioError(label, f"not a readable audio file ({_why(exc)})") from None
    if whole and not decoded:
        raise AudioError(label, "no audio could be decoded (truncated or corrupt file)")


def _batched(frames: Iterator[av.AudioFrame], size: int = BATCH_SAMPLES) -> Iterator[av.AudioFrame]:
    """``frames`` joined into frames of at least ``size`` samples a channel (but the last), as long
    as they share their sample format, channel layout and rate (a stream that changes them starts
    a new frame there)."""
    batch: list[np.ndarray] = []
    held, kind = 0, None
    for frame in frames:
        this = (frame.format.name, frame.layout.name, frame.sample_rate)
        if batch and (this != kind or held >= size):
            yield _joined(batch, kind)
            batch, held = [], 0
        kind = this
        batch.append(frame.to_ndarray())
        held += frame.samples
    if batch:
        yield _joined(batch, kind)


def _joined(arrays: list[np.ndarray], kind: tuple[str, str, int]) -> av.AudioFrame:
    """One frame of the samples of ``arrays`` (``to_ndarray`` of frames of one ``kind``)."""
    fmt, layout, rate = kind
    frame = av.AudioFrame.from_ndarray(np.concatenate(arrays, axis=1), format=fmt, layout=layout)
    frame.sample_rate = rate
    return frame


def _cut(frames: Iterator[av.AudioFrame], start: float, origin: float | None, label: str) -> Iterator[av.AudioFrame]:
    """``frames`` from ``start`` seconds on, as mono float frames at the file's own rate: cut
    there, not after resampling, so the samples kept fall where the whole file's do.

    ``origin``: seconds of the stream's first sample when ``frames`` follow a seek (their
    timestamps say where they are); None when they are the file's from its beginning.
    """
    mono = av.AudioResampler(format="flt", layout="mono")
    at = None if origin is not None else 0.0          # seconds of the next sample
    for frame in frames:
        if at is None:
            if frame.time is None:
                raise AudioError(label, "a span cannot be read from this file (its frames carry no timestamps)")
            at = frame.time - origin
        for out in mono.resample(frame):
            samples = out.to_ndarray().reshape(-1)
            drop = max(0, round((start - at) * out.sample_rate))
            at += len(samples) / out.sample_rate
            if drop < len(samples):
                kept = av.AudioFrame.from_ndarray(samples[None, drop:], format="flt", layout="mono")
                kept.sample_rate = out.sample_rate
                yield kept


def _seek(container, stream, seconds: float) -> bool:
    """Seek ``stream`` to the last keyframe at or before ``seconds``; False where it cannot seek."""
    try:
        container.seek(int(seconds / stream.time_base), stream=stream)
    except (av.error.FFmpegError, OverflowError):
        return False
    return True


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


ENCODE_BLOCK = 8192          # samples per frame given to an encoder

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
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        stream.codec_context.options = {"strict": "experimental"}
        if bit_rate_kbps:
            stream.bit_rate = bit_rate_kbps * 1000
        resampler = av.AudioResampler(format=stream.format.name, layout=layout, rate=rate)
        for frame in itertools.chain(_pcm_frames(pcm, clip.sample_rate), [None]):     # None: the last samples
            for converted in resampler.resample(frame):
                for packet in stream.encode(converted):
                    out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def _pcm_frames(pcm: np.ndarray, sample_rate: int) -> Iterator[av.AudioFrame]:
    """(1, n) int16 samples as frames of ``ENCODE_BLOCK``: fed a whole clip as one frame, the
    encoders hold tens of MB more. Timestamped, else Ogg's granule positions (its duration) are wrong."""
    for i in range(0, pcm.shape[1], ENCODE_BLOCK):
        frame = av.AudioFrame.from_ndarray(pcm[:, i:i + ENCODE_BLOCK], format="s16", layout="mono")
        frame.sample_rate = sample_rate
        frame.pts, frame.time_base = i, Fraction(1, sample_rate)
        yield frame
