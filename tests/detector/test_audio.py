"""Decoding real and hostile files, made at test time."""
from __future__ import annotations

import io

import av
import numpy as np
import pytest

from detector.audio import AudioError, Clip, DecodeLimits, audible, decode, encode, find_audio


def tone(seconds=3.0, sr=22050):
    t = np.arange(int(seconds * sr)) / sr
    return Clip((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), sr, "tone")


@pytest.mark.parametrize("fmt", ["mp3", "ogg", "opus", "flac", "wav"])
def test_round_trip_every_format(fmt, tmp_path):
    p = tmp_path / f"t.{fmt}"
    p.write_bytes(encode(tone(), fmt))
    clip = decode(p, 8000)
    assert clip.sample_rate == 8000 and abs(clip.duration - 3.0) < 0.1
    assert 0.15 < np.sqrt(np.mean(clip.samples[4000:20000] ** 2)) < 0.25


def test_corpus_track_decodes(music):
    clip = decode(music["drascula-track29"].path, 8000)
    assert abs(clip.duration - 32.09) < 0.1


@pytest.mark.parametrize("data,reason", [
    (b"", "the file is empty"),
    (np.random.default_rng(0).bytes(50_000), "not a readable audio file"),
    (b"RIFF\xff\xff\xff\x7fWAVEfmt ", "not a readable audio file"),
])
def test_bad_bytes_are_audio_errors(data, reason):
    with pytest.raises(AudioError, match=reason) as e:
        decode(data, 8000, name="up.bin")
    assert e.value.source == "up.bin" and not e.value.too_large


def test_truncated_file_keeps_what_decodes():
    data = encode(tone(10.0), "mp3")
    clip = decode(data[: len(data) // 2], 8000)
    assert 3.0 < clip.duration < 7.0


def test_caps_refuse_too_large_and_too_long():
    data = encode(tone(10.0), "wav")
    with pytest.raises(AudioError, match="over the") as e:
        decode(data, 8000, limits=DecodeLimits(max_bytes=1000))
    assert e.value.too_large
    with pytest.raises(AudioError, match="longer than the 5 s limit") as e:
        decode(data, 8000, limits=DecodeLimits(max_seconds=5))
    assert e.value.too_large


def test_missing_file_and_folder_search(tmp_path):
    with pytest.raises(AudioError, match="no such file"):
        decode(tmp_path / "nope.mp3", 8000)
    with pytest.raises(AudioError, match="a folder, not an audio file"):
        decode(tmp_path, 8000)
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ["a/x.mp3", "a/b/y.FLAC", "a/notes.txt"]:
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in find_audio([tmp_path / "a"])] == ["y.FLAC", "x.mp3"]


def music_like(seconds: float, sr: int = 22050) -> Clip:
    """A rising tone over noise: every stretch of it differs from every other."""
    t = np.arange(int(seconds * sr)) / sr
    noise = 0.05 * np.random.default_rng(0).standard_normal(len(t))
    return Clip((0.2 * np.sin(2 * np.pi * (200 + 30 * t) * t) + noise).astype(np.float32), sr, "music")


def aligned(a: np.ndarray, b: np.ndarray, lag: int = 1) -> float:
    """The best correlation of ``a`` and ``b`` shifted by at most ``lag`` samples (a start that
    falls between two samples is rounded one way or the other)."""
    n = min(len(a), len(b)) - 2 * lag
    return max(np.corrcoef(a[lag:lag + n], b[lag + d:lag + d + n])[0, 1] for d in range(-lag, lag + 1))


@pytest.mark.parametrize("fmt", ["mp3", "ogg", "opus", "flac", "wav"])
def test_a_span_is_what_the_whole_file_has_there(fmt, tmp_path):
    """A span is sought to, yet sample for sample where the whole decode has it."""
    p = tmp_path / f"long.{fmt}"
    p.write_bytes(encode(music_like(60.0), fmt))
    for rate in (8000, 22050):
        whole = decode(p, rate)
        for start in (3.7, 41.3):
            span = decode(p, rate, start=start, end=start + 15.0)
            expected = whole.excerpt(start, start + 15.0).samples
            assert abs(len(span.samples) - len(expected)) <= 1
            assert aligned(span.samples, expected) > 0.999, (rate, start)
    with pytest.raises(AudioError, match="the audio ends before 70 s"):
        decode(p, 8000, start=70.0, end=80.0)


@pytest.mark.parametrize("fmt", ["ogg", "opus", "mp3", "flac"])
def test_encoded_files_carry_their_duration(fmt):
    with av.open(io.BytesIO(encode(music_like(40.0), fmt))) as f:
        assert abs(f.duration / av.time_base - 40.0) < 0.1


def test_audible_finds_the_first_loud_window_and_refuses_silence():
    sr = 8000
    quiet = np.random.default_rng(1).standard_normal(600 * sr).astype(np.float32) * 10 ** (-60 / 20)   # -60 dBFS
    for samples, loud in [(np.zeros(600 * sr, np.float32), False), (quiet, False),
                          (np.concatenate([quiet, tone(1.0, sr).samples]), True),    # a second at the very end
                          (tone(0.5, sr).samples, True)]:                           # shorter than a window
        data = encode(Clip(samples, sr, "x"), "flac")
        assert audible(data, sr, level_dbfs=-50.0, window_s=1.0, hop_s=0.25) is loud
