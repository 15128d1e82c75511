"""Contrastive training of the fingerprint encoder (see detector/MODEL.md).

    python -m detector.train --music DIR [--init CHECKPOINT] [--steps N] [--seed S] [--out PATH]

``scripts/train-model`` runs the six seeded rounds (a base model and five fine-tunings) that
make the shipped model, detector/weights/clearance-fp-v7.pt.

Positive pairs are a clean 1 s window of a ``split=train`` track and a transformed copy of the
same moment: mixed under other music, noise, reverb, EQ and band limits on the waveform, then
pitch shift and tempo change as translations and scalings of the semitone spectrogram. Every
other window in the batch is a negative (NT-Xent). The training audio is decoded once into a
cache of 8 kHz float16 arrays. ``--device cuda`` moves the augmentation and the encoder to a GPU.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
import torchaudio.functional as AF
from torch import nn

from detector.audio import decode
from detector.corpus import manifest
from detector.features import FrontEnd, Spectrogram, normalise, shift_bands
from detector.model import CHECKPOINT_FORMAT, DEFAULT_WEIGHTS, REF_HOP_S, build


def load_training_audio(music: Path, sample_rate: int, cache: Path) -> list[np.ndarray]:
    """The ``split=train`` tracks of the corpus at ``sample_rate`` Hz, decoded once and cached."""
    cache.mkdir(parents=True, exist_ok=True)
    tracks = []
    for t in manifest(music):
        if t.split != "train":
            continue
        npy = cache / f"{t.track_id}-{sample_rate}.npy"
        if not npy.exists():
            clip = decode(t.path, sample_rate)
            tmp = npy.with_suffix(".tmp.npy")
            np.save(tmp, clip.samples.astype(np.float16))
            tmp.replace(npy)
        tracks.append(np.load(npy).astype(np.float32))
    return tracks


class Sampler:
    """Random crops of the training audio, skipping near-silent ones."""

    def __init__(self, tracks: list[np.ndarray], sr: int, rng: np.random.Generator):
        self.tracks = [t for t in tracks if len(t) > 8 * sr]
        lengths = np.array([len(t) for t in self.tracks], float)
        self.p = lengths / lengths.sum()
        self.sr = sr
        self.rng = rng

    def crops(self, n: int, seconds: float, min_dbfs: float = -40.0) -> tuple[np.ndarray, np.ndarray]:
        """(n, samples) crops and the track index of each."""
        length = int(seconds * self.sr)
        out = np.empty((n, length), np.float32)
        which = np.empty(n, int)
        i = 0
        while i < n:
            k = self.rng.choice(len(self.tracks), p=self.p)
            t = self.tracks[k]
            a = self.rng.integers(0, len(t) - length)
            seg = t[a:a + length]
            mid = seg[length // 2 - self.sr // 2: length // 2 + self.sr // 2]
            if 10 * np.log10(np.mean(mid ** 2) + 1e-12) < min_dbfs:
                continue
            out[i], which[i] = seg, k
            i += 1
        return out, which


def mix_at_snr(signal: torch.Tensor, other: torch.Tensor, snr_db: torch.Tensor) -> torch.Tensor:
    """signal + other scaled so that signal is ``snr_db`` dB above it (per row)."""
    return AF.add_noise(signal, other, snr_db)


def synthetic_rir(n: int, sr: int, rng: np.random.Generator) -> torch.Tensor:
    """(n, samples) room impulse responses: a direct path plus exponentially decaying noise,
    RT60 0.2–1.5 s."""
    rt60 = rng.uniform(0.2, 1.5, n)
    length = int(1.5 * sr)
    t = np.arange(length) / sr
    decay = np.exp(-6.9 * t[None, :] / rt60[:, None])
    rir = rng.standard_normal((n, length)) * decay
    rir[:, : int(0.002 * sr)] *= 0.1
    rir /= np.sqrt((rir ** 2).sum(axis=1, keepdims=True))
    direct = rng.uniform(0.3, 1.0, n)
    rir *= (1 - direct)[:, None]
    rir[:, 0] += direct
    return torch.from_numpy(rir.astype(np.float32))


class Augment:
    """Transformed copies of the moments at the centre of clean crops."""

    def __init__(self, fe: FrontEnd, sampler: Sampler, rng: np.random.Generator, mix_p: float, mix_snr: tuple,
                 bass_cut_p: float = 0.0, reverb_p: float = 0.4, noise_p: float = 0.5, noise_snr: tuple = (0.0, 25.0),
                 pitch_st: float = 7.5, device: str = "cpu"):
        self.fe, self.sampler, self.rng, self.device = fe, sampler, rng, torch.device(device)
        self.spec = Spectrogram(fe).to(self.device)
        self.mix_p, self.mix_snr, self.bass_cut_p = mix_p, mix_snr, bass_cut_p
        self.reverb_p, self.noise_p, self.noise_snr = reverb_p, noise_p, noise_snr
        self.pitch_st = pitch_st

    def tensor(self, a: np.ndarray) -> torch.Tensor:
        if a.dtype == np.float64:
            a = a.astype(np.float32)
        return torch.from_numpy(a).to(self.device)

    def waveform(self, x: torch.Tensor) -> torch.Tensor:
        n, rng, sr = len(x), self.rng, self.fe.sample_rate
        mix = self.tensor(rng.random(n) < self.mix_p)
        if mix.any():
            other, _ = self.sampler.crops(int(mix.sum()), x.shape[1] / sr, min_dbfs=-60)
            snr = self.tensor(rng.uniform(*self.mix_snr, int(mix.sum())))
            x[mix] = mix_at_snr(x[mix], self.tensor(other), snr)
        rev = self.tensor(rng.random(n) < self.reverb_p)
        if rev.any():
            rir = synthetic_rir(int(rev.sum()), sr, rng).to(self.device)
            x[rev] = AF.fftconvolve(x[rev], rir)[:, : x.shape[1]]
        noisy = self.tensor(rng.random(n) < self.noise_p)
        if noisy.any():
            m = int(noisy.sum())
            # made on the CPU, where lowpass_biquad runs a compiled loop rather than one per sample
            noise = torch.randn(m, x.shape[1])
            colour = torch.from_numpy(rng.integers(0, 3, m))
            noise[colour == 1] = torch.cumsum(noise[colour == 1], 1) * 0.05         # brown
            noise[colour == 1] -= noise[colour == 1].mean(1, keepdim=True)
            noise[colour == 2] = AF.lowpass_biquad(noise[colour == 2], sr, 1000.0)  # dull hiss
            snr = self.tensor(rng.uniform(*self.noise_snr, m))
            x[noisy] = mix_at_snr(x[noisy], noise.to(self.device), snr)
        return x

    def spectral(self, power: torch.Tensor) -> torch.Tensor:
        """EQ (smooth random gain curve) and band limits on band power (n, bands, frames)."""
        n, bands = power.shape[0], power.shape[1]
        rng = self.rng
        gain_db = np.zeros((n, bands), np.float32)
        eq = rng.random(n) < 0.5
        centres = rng.uniform(0, bands, (n, 3))
        widths = rng.uniform(3, 15, (n, 3))
        heights = rng.uniform(-12, 12, (n, 3))
        b = np.arange(bands)[None, None, :]
        bumps = (heights[..., None] * np.exp(-0.5 * ((b - centres[..., None]) / widths[..., None]) ** 2)).sum(1)
        gain_db[eq] += bumps[eq]
        lp = rng.random(n) < 0.3
        cut = rng.uniform(bands * 0.6, bands, n)
        gain_db[lp] -= np.clip((np.arange(bands)[None, :] - cut[lp, None]) * 6, 0, 60)
        hp = rng.random(n) < 0.15
        cut = rng.uniform(0, 12, n)
        gain_db[hp] -= np.clip((cut[hp, None] - np.arange(bands)[None, :]) * 6, 0, 60)
        if self.bass_cut_p:
            # a copy pitched down k semitones has lost the bass below the lowest band: the query,
            # transposed back up, has nothing in its lowest bands
            cut = rng.random(n) < self.bass_cut_p
            k = rng.integers(1, 10, n)
            gain_db[cut] -= np.where(np.arange(bands)[None, :] < k[cut, None], 80.0, 0.0)
        return power * self.tensor(10 ** (gain_db / 10))[:, :, None]

    def positives(self, crops: np.ndarray, centre_s: float) -> torch.Tensor:
        """Transformed 1 s windows (n, bands, frames) around ``centre_s`` of each crop."""
        fe, rng, n = self.fe, self.rng, len(crops)
        x = self.waveform(self.tensor(crops.copy()))
        power = self.spectral(self.spec(x))                                  # (n, bands, T)
        fps = fe.sample_rate / fe.hop_length
        nf = fe.frames_per_window
        tempo = np.where(rng.random(n) < 0.35, 1.0, np.exp(rng.uniform(math.log(0.68), math.log(1.45), n)))
        pitch = np.where(rng.random(n) < 0.35, 0.0, rng.uniform(-self.pitch_st, self.pitch_st, n))
        jitter = rng.uniform(-0.3, 0.3, n)
        # the output window covers `tempo` seconds of the original around the centre
        span = tempo * fe.window_s
        a = (centre_s + jitter * tempo - span / 2) * fps
        pos = a[:, None] + np.arange(nf)[None, :] * span[:, None] * fps / nf
        lo = np.clip(np.floor(pos).astype(int), 0, power.shape[2] - 2)
        w = self.tensor((pos - lo).clip(0, 1))[:, None, :]
        idx = self.tensor(lo)[:, None, :].expand(n, fe.n_bands, nf)
        win = power.gather(2, idx) * (1 - w) + power.gather(2, idx + 1) * w   # (n, bands, nf)
        return shift_bands(win, torch.from_numpy(pitch).to(self.device))


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> torch.Tensor:
    """Normalised-temperature cross entropy; every other view in the batch is a negative."""
    z = torch.cat([z1, z2])
    sim = z @ z.T / tau
    sim.fill_diagonal_(-1e9)
    n = len(z1)
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return nn.functional.cross_entropy(sim, target)


def _arguments(argv) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--music", type=Path, required=True, help="corpus folder laid out by get-music --set full")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache/clearance/train-audio")
    ap.add_argument("--out", type=Path, default=Path("detector/weights") / DEFAULT_WEIGHTS)
    ap.add_argument("--init", type=Path, help="start from this checkpoint (fine-tuning)")
    ap.add_argument("--version", default=Path(DEFAULT_WEIGHTS).stem)
    ap.add_argument("--ref-hop", type=float, default=REF_HOP_S,
                    help="seconds between the windows catalog tracks are indexed at with this model")
    ap.add_argument("--steps", type=int, default=1800, help="length of the learning-rate schedule")
    ap.add_argument("--stop-after", type=int, help="stop (and save) after this many steps of the schedule")
    ap.add_argument("--batch", type=int, default=256, help="anchors per step (2x views)")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--tau", type=float, default=0.05)
    ap.add_argument("--width", type=int, default=32, help="channels of the second conv block (new models)")
    ap.add_argument("--freq-groups", type=int, default=1,
                    help="pool the encoder's features over this many ranges of bands (1: all bands; new models)")
    ap.add_argument("--mix-p", type=float, default=0.5)
    ap.add_argument("--mix-snr", type=float, nargs=2, default=(-6.0, 10.0))
    ap.add_argument("--reverb-p", type=float, default=0.4, help="share of positives with room reverb")
    ap.add_argument("--noise-p", type=float, default=0.5, help="share of positives with added noise")
    ap.add_argument("--noise-snr", type=float, nargs=2, default=(0.0, 25.0), help="SNR range of the noise, dB")
    ap.add_argument("--pitch-st", type=float, default=7.5, help="largest pitch shift of the positives, semitones")
    ap.add_argument("--bass-cut-p", type=float, default=0.0, help="share of positives with their lowest 1-9 bands removed")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="torch device to train on, e.g. cuda")
    return ap.parse_args(argv)


def main(argv=None) -> None:
    args = _arguments(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    fe = FrontEnd()
    init = torch.load(args.init, map_location="cpu", weights_only=True) if args.init else None
    arch = init["arch"] if init else {"width": args.width, "dim": 128, "freq_groups": args.freq_groups}
    t0 = time.time()
    tracks = load_training_audio(args.music, fe.sample_rate, args.cache)
    print(f"training audio: {len(tracks)} tracks, {sum(map(len, tracks)) / fe.sample_rate / 3600:.1f} h "
          f"({time.time() - t0:.0f} s)", flush=True)
    sampler = Sampler(tracks, fe.sample_rate, rng)
    aug = Augment(fe, sampler, rng, mix_p=args.mix_p, mix_snr=tuple(args.mix_snr), bass_cut_p=args.bass_cut_p,
                  reverb_p=args.reverb_p, noise_p=args.noise_p, noise_snr=tuple(args.noise_snr), pitch_st=args.pitch_st,
                  device=args.device)
    model = build(arch, fe)
    if init:
        model.load_state_dict(init["state_dict"])
    model.to(aug.device)
    train(model, fe, arch, sampler, aug, args)


def train(model: nn.Module, fe: FrontEnd, arch: dict, sampler: Sampler, aug: Augment, args: argparse.Namespace) -> None:
    """Train ``model`` for ``args.steps`` steps of the schedule (or ``args.stop_after``): NT-Xent
    between each anchor window and its augmented positive; progress printed every 25 steps, the
    weights saved every 500 and at the end."""
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.05)
    spec = aug.spec
    crop_s, centre = 3.0, 2.0    # reverb needs the second before the window
    nf, fps = fe.frames_per_window, fe.sample_rate / fe.hop_length
    a0 = int(round((centre - fe.window_s / 2) * fps))
    # the anchor's frames, computed from only the samples they see: `pad` frames either side
    # keep the STFT's edge padding away from them (same values, a third of the work)
    pad = -(-fe.n_fft // 2 // fe.hop_length)
    anchor_samples = slice((a0 - pad) * fe.hop_length, (a0 + nf + pad) * fe.hop_length)
    t0 = time.time()
    last = min(args.stop_after or args.steps, args.steps)
    for step in range(1, last + 1):
        crops, _ = sampler.crops(args.batch, crop_s)
        with torch.no_grad():
            anchor = spec(aug.tensor(crops[:, anchor_samples]))[:, :, pad:pad + nf]
            positive = aug.positives(crops, centre)
        model.train()
        z1, z2 = model(normalise(anchor)), model(normalise(positive))
        loss = nt_xent(z1, z2, args.tau)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 25 == 0 or step == last:
            with torch.no_grad():
                acc = ((z1 @ z2.T).argmax(1).cpu() == torch.arange(len(z1))).float().mean().item()
            el = time.time() - t0
            print(f"step {step}/{args.steps} loss {loss.item():.3f} top1 {acc:.3f} "
                  f"{el / step:.2f} s/step eta {el / step * (last - step) / 60:.0f} min", flush=True)
        if step % 500 == 0 or step == last:
            save(model, fe, arch, args, step)


def save(model: nn.Module, fe: FrontEnd, arch: dict, args, step: int) -> None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    torch.save({"format": CHECKPOINT_FORMAT, "version": args.version, "front_end": fe.to_dict(), "arch": arch,
                "ref_hop_s": args.ref_hop,
                "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
                "training": {"steps": step, "schedule_steps": args.steps, "seed": args.seed, "batch": args.batch, "tau": args.tau,
                             "lr": args.lr, "mix_p": args.mix_p, "mix_snr": list(args.mix_snr),
                             "bass_cut_p": args.bass_cut_p, "reverb_p": args.reverb_p, "noise_p": args.noise_p,
                             "noise_snr": list(args.noise_snr), "pitch_st": args.pitch_st,
                             "init": str(args.init or "")}}, tmp)
    tmp.replace(args.out)


if __name__ == "__main__":
    main()
