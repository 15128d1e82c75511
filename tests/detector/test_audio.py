"""Decoding real and hostile files, made at test time."""
from __future__ import annotations

import numpy as np
import pytest

from detector.audio import AudioError, Clip, DecodeLimits, decode, encode, find_audio


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
