"""Shared by the benchmarks: the corpus manifest, decoded audio, and the transforms a
generator applies to a copied recording (real DSP on the waveform, not the training
approximations)."""
from __future__ import annotations

import math
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchaudio.functional as AF

from detector.audio import Clip, decode, encode
from detector.corpus import Track, manifest      # noqa: F401  (the benchmarks read the manifest as C.manifest)

SR = 8000
REPO = Path(__file__).resolve().parents[1]


def related(track: Track, tracks: list[Track]) -> set[str]:
    """Ids of the tracks that share material with ``track`` (itself, ``related``, its stems):
    a match between them is not a false match."""
    return {track.track_id, *track.related} | {t.track_id for t in tracks
                                               if track.stem_group and t.stem_group == track.stem_group}


def related_to(parts: tuple[Track, ...], tracks: list[Track]) -> set[str]:
    """Ids of the tracks that share material with any of ``parts``, the tracks whose music an
    output is made of (a negative mixed from two)."""
    return set().union(*(related(t, tracks) for t in parts))


def music_folder(which: str = "full") -> Path:
    """Fetch (idempotently) and return the corpus folder."""
    script = REPO / "scripts" / "get-music"
    out = subprocess.run([str(script), "--set", which, "--quiet"], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def load(track: Track, cache: Path = Path.home() / ".cache/clearance/bench-audio") -> Clip:
    """A track decoded at 8 kHz, cached as float16."""
    cache.mkdir(parents=True, exist_ok=True)
    npy = cache / f"{track.track_id}-{SR}.npy"
    if not npy.exists():
        tmp = npy.with_suffix(f".{os.getpid()}.tmp.npy")      # benchmarks may run side by side
        np.save(tmp, decode(track.path, SR).samples.astype(np.float16))
        os.replace(tmp, npy)
    return Clip(np.load(npy).astype(np.float32), SR, track.track_id)


def loud_start(clip: Clip, seconds: float, rng: np.random.Generator, min_dbfs: float = -35.0) -> float | None:
    """A random start time whose excerpt of ``seconds`` is mostly sound, or None."""
    if clip.duration < max(seconds, 1.0) + 1:
        return None
    for _ in range(30):
        t = float(rng.uniform(0, clip.duration - seconds))
        x = clip.excerpt(t, t + max(seconds, 1.0)).samples
        frames = x[: len(x) // SR * SR].reshape(-1, SR)
        if np.mean(10 * np.log10((frames ** 2).mean(1) + 1e-12) > min_dbfs) > 0.8:
            return t
    return None


# --- transforms: (n,) float32 at 8 kHz → (m,) float32 -------------------------------------

def _t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, np.float32))


def codec(x: np.ndarray, name: str, kbps: int) -> np.ndarray:
    """Encode with FFmpeg (via PyAV) at ``kbps`` and decode again."""
    return decode(encode(Clip(x, SR, name), name, kbps), SR, name=f"{name}{kbps}").samples


def pitch(x: np.ndarray, semitones: float) -> np.ndarray:
    return AF.pitch_shift(_t(x)[None], SR, semitones, n_fft=1024, hop_length=256)[0].numpy()


def tempo(x: np.ndarray, ratio: float) -> np.ndarray:
    """Plays ``ratio`` times as fast, same pitch (phase vocoder)."""
    n_fft, hop = 1024, 256
    spec = torch.stft(_t(x), n_fft, hop, window=torch.hann_window(n_fft), return_complex=True)
    adv = torch.linspace(0, math.pi * hop, n_fft // 2 + 1)[:, None]
    st = AF.phase_vocoder(spec, ratio, adv)
    return torch.istft(st, n_fft, hop, window=torch.hann_window(n_fft), length=int(len(x) / ratio)).numpy()


def speed(x: np.ndarray, ratio: float) -> np.ndarray:
    """Tape-style: ``ratio`` times as fast and higher in pitch."""
    return AF.resample(_t(x), int(SR * ratio), SR).numpy()


def noise(x: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    n = rng.standard_normal(len(x)).astype(np.float32)
    n = np.cumsum(n) * 0.02 if rng.random() < 0.5 else n          # brown or white
    n -= n.mean()
    return AF.add_noise(_t(x)[None], _t(n)[None], torch.tensor([snr_db]))[0].numpy()


def reverb(x: np.ndarray, rt60: float, rng: np.random.Generator) -> np.ndarray:
    """Convolution with a room response: early reflections plus a decaying diffuse tail."""
    t = np.arange(int(rt60 * SR)) / SR
    rir = rng.standard_normal(len(t)) * np.exp(-6.9 * t / rt60)
    for d in rng.uniform(0.005, 0.05, 6):
        rir[int(d * SR)] += rng.uniform(0.3, 0.8)
    rir[0] = 1.0
    rir /= np.abs(rir).max()
    y = AF.fftconvolve(_t(x), _t(rir))[: len(x)].numpy()
    return y / (np.abs(y).max() + 1e-9) * np.abs(x).max()


def lowpass(x: np.ndarray, hz: float) -> np.ndarray:
    return AF.lowpass_biquad(_t(x), SR, hz).numpy()


def highpass(x: np.ndarray, hz: float) -> np.ndarray:
    return AF.highpass_biquad(_t(x), SR, hz).numpy()


def eq(x: np.ndarray) -> np.ndarray:
    y = AF.equalizer_biquad(_t(x), SR, 250.0, 10.0, 0.7)
    return AF.equalizer_biquad(y, SR, 2000.0, -10.0, 0.7).numpy()


def mix(x: np.ndarray, other: np.ndarray, snr_db: float) -> np.ndarray:
    """``x`` under ``other``: x is ``snr_db`` dB louder than other (negative = quieter)."""
    other = np.resize(other, len(x))
    return AF.add_noise(_t(x)[None], _t(other)[None], torch.tensor([snr_db]))[0].numpy()


def lufs(x: np.ndarray) -> float:
    """Integrated loudness of ``x`` (ITU-R BS.1770: K-weighted, gated), LUFS."""
    return float(AF.loudness(_t(x)[None], SR))


def gain_curve(target_db: np.ndarray, attack: float, release: float) -> np.ndarray:
    """Per-block gain (dB) that follows ``target_db`` (≤ 0) down with the one-pole coefficient
    ``attack`` and back up with ``release``: a compressor's or limiter's ballistics."""
    g, out = 0.0, np.empty(len(target_db), np.float32)
    for i, t in enumerate(target_db):
        g += (t - g) * (attack if t < g else release)
        out[i] = g
    return out


def master(x: np.ndarray, lufs_target: float = -14.0, threshold_db: float = -22.0, ratio: float = 4.0,
           ceiling_db: float = -1.0) -> np.ndarray:
    """What a mastering chain does to a finished mix: loudness to ``lufs_target``, an RMS compressor
    (``ratio``:1 above ``threshold_db``, attack 5 ms, release 100 ms) and make-up gain back to the
    target, then a look-ahead peak limiter (2 ms blocks, release 50 ms) holding ``ceiling_db``."""
    y = x * 10 ** ((lufs_target - lufs(x)) / 20)
    block = SR // 200                                                       # 5 ms
    n = len(y) // block * block
    rms = 10 * np.log10((y[:n].reshape(-1, block) ** 2).mean(1) + 1e-10)
    over = np.maximum(rms - threshold_db, 0.0)
    g = gain_curve(-over * (1 - 1 / ratio), attack=0.63, release=0.049)        # 5 ms, 100 ms
    gain = np.interp(np.arange(len(y)), np.arange(len(g)) * block + block / 2, 10 ** (g / 20))
    y = y * gain
    y *= 10 ** ((lufs_target - lufs(y)) / 20)
    block = SR // 500                                                       # 2 ms
    n = -(-len(y) // block) * block
    peak = np.abs(np.pad(y, (0, n - len(y)))).reshape(-1, block).max(1)
    need = np.minimum(0.0, ceiling_db - 20 * np.log10(peak + 1e-10))
    need = np.minimum(need, np.roll(need, -1))                               # look one block ahead
    g = gain_curve(need, attack=1.0, release=0.039)                             # at once, 50 ms
    gain = np.repeat(10 ** (g / 20), block)[: len(y)]
    return np.clip(y * gain, -10 ** (ceiling_db / 20), 10 ** (ceiling_db / 20)).astype(np.float32)


def produce(copy: np.ndarray, overlay: np.ndarray, snr_db: float, at: float) -> np.ndarray:
    """A producer's mix: ``copy`` placed at ``at`` seconds into ``overlay`` (which sets the output's
    length), ``snr_db`` dB louder than the overlay over the copy's span by integrated loudness,
    mastered (``master``) and encoded as MP3 at 64 kbit/s."""
    i = int(at * SR)
    under = overlay[i:i + len(copy)]
    out = overlay * 10 ** ((lufs(copy) - snr_db - lufs(under)) / 20)
    out[i:i + len(copy)] += copy
    return codec(master(out), "mp3", 64)


def heldout_catalog(engine, folder: Path, tracks: list[Track]):
    """The engine's catalog holding every held-out ``catalog`` track as protected (built once
    per engine home; indexing is idempotent)."""
    from detector.policy import Rights

    paths = [t.path for t in tracks if t.split == "heldout" and t.role == "catalog"]
    summary = engine.catalog.index_paths(paths, Rights.protected, manifest=folder / "manifest.csv")
    if summary.failed:
        raise SystemExit(f"indexing failed: {summary.failed}")
    return engine.catalog


def bench_engine(home: Path, model: Path | None = None, calibration: Path | None = None, factory: str = "auto",
                 nprobe: int = 32, **settings):
    """The engine of a benchmark's catalog ``home``; ``settings``: other ``Settings`` fields."""
    from service.engine import Engine
    from service.settings import Settings

    overrides = {"home": home, "index_factory": factory, "index_nprobe": nprobe, **settings}
    if model:
        overrides["model"] = model
    if calibration:
        overrides["calibration"] = calibration
    return Engine(Settings(**overrides))


def other_music(pool: list[Track], seconds: float, rng: np.random.Generator) -> np.ndarray:
    """A loud excerpt of a random track from ``pool`` (new material to mix or splice with)."""
    return music_from(pool, seconds, rng)[1]


def music_from(pool: list[Track], seconds: float, rng: np.random.Generator) -> tuple[Track, np.ndarray]:
    """``other_music``, with the track it comes from."""
    while True:
        track = pool[rng.integers(len(pool))]
        clip = load(track)
        s = loud_start(clip, seconds, rng)
        if s is not None:
            return track, clip.excerpt(s, s + seconds).samples


# name → f(x, rng, pool): every transform the robustness and decision benchmarks apply
TRANSFORMS = {
    "clean": lambda x, rng, pool: x,
    "mp3-32k": lambda x, rng, pool: codec(x, "mp3", 32),
    "opus-16k": lambda x, rng, pool: codec(x, "opus", 16),
    "vorbis-48k": lambda x, rng, pool: codec(x, "vorbis", 48),
    "lowpass-2k": lambda x, rng, pool: lowpass(x, 2000),
    "highpass-400": lambda x, rng, pool: highpass(x, 400),
    "eq±10dB": lambda x, rng, pool: eq(x),
    "noise-10dB": lambda x, rng, pool: noise(x, 10, rng),
    "noise-5dB": lambda x, rng, pool: noise(x, 5, rng),
    "noise-0dB": lambda x, rng, pool: noise(x, 0, rng),
    "reverb-0.5s": lambda x, rng, pool: reverb(x, 0.5, rng),
    "reverb-1.0s": lambda x, rng, pool: reverb(x, 1.0, rng),
    "reverb-1.5s": lambda x, rng, pool: reverb(x, 1.5, rng),
    **{f"pitch{k:+d}st": (lambda k: lambda x, rng, pool: pitch(x, k))(k) for k in (-7, -5, -3, -2, -1, 1, 2, 3, 5, 7)},
    **{f"tempo-{r}x": (lambda r: lambda x, rng, pool: tempo(x, r))(r) for r in (0.7, 0.8, 0.9, 1.1, 1.25, 1.4)},
    **{f"speed-{r}x": (lambda r: lambda x, rng, pool: speed(x, r))(r) for r in (0.9, 1.1)},
    "mix-0dB": lambda x, rng, pool: mix(x, other_music(pool, len(x) / SR, rng), 0.0),
    "mix-5dB": lambda x, rng, pool: mix(x, other_music(pool, len(x) / SR, rng), -5.0),
}

# what the transform does to time: output seconds → reference seconds
TEMPO_OF = {**{f"tempo-{r}x": r for r in (0.7, 0.8, 0.9, 1.1, 1.25, 1.4)}, "speed-0.9x": 0.9, "speed-1.1x": 1.1}


def splice(copy: np.ndarray, pool: list[Track], rng: np.random.Generator, before: float, after: float) -> np.ndarray:
    """``copy`` with ``before`` and ``after`` seconds of new material around it."""
    a = other_music(pool, before, rng) if before > 0.1 else np.zeros(0, np.float32)
    b = other_music(pool, after, rng) if after > 0.1 else np.zeros(0, np.float32)
    return np.concatenate([a, copy, b]).astype(np.float32)


@dataclass(frozen=True)
class Query:
    """A transformed copy: ``samples`` at 8 kHz copy ``truth``; reference time
    ``ref_at_zero + tempo * t`` plays at output time t."""

    samples: np.ndarray
    truth: Track
    ref_at_zero: float
    tempo: float


def make_query(name: str, secs: float, catalog: list[Track], songs: list[Track], new_material: list[Track],
               rng: np.random.Generator) -> Query:
    """One ``secs``-long copy of a random catalog track under transform ``name`` (a key of
    ``TRANSFORMS``, ``guitar-over-backing`` or ``splice-in-new``)."""
    if name == "guitar-over-backing":
        song = songs[rng.integers(len(songs))]
        guitar = next(t for t in manifest(song.path.parents[1]) if t.stem_group == song.stem_group and t.stem == "guitar")
        a, b = load(song), load(guitar)
        start = loud_start(a, secs, rng) or 0.0
        x, g = a.excerpt(start, start + secs).samples, b.excerpt(start, start + secs).samples
        n = min(len(x), len(g))
        return Query(x[:n] + g[:n], song, start, 1.0)
    while True:
        t = catalog[rng.integers(len(catalog))]
        clip = load(t)
        start = loud_start(clip, secs * 1.5, rng)
        if start is not None:
            break
    if name == "splice-in-new":
        copy = clip.excerpt(start, start + float(rng.uniform(3, secs))).samples
        room = max(secs - len(copy) / SR, 0.0)
        before = float(rng.uniform(0, room))
        return Query(splice(copy, new_material, rng, before, room - before), t, start - before, 1.0)
    ratio = TEMPO_OF.get(name, 1.0)
    x = clip.excerpt(start, start + secs * ratio).samples
    return Query(TRANSFORMS[name](x, rng, new_material)[: int(secs * SR)], t, start, ratio)
