"""Contrastive training of the version encoder (see detector/VERSION.md).

    python -m detector.train_version [--music DIR] [--init CHECKPOINT] [--steps N] [--seed S] [--out PATH]

``scripts/train-version`` runs it to make the shipped model, detector/weights/clearance-ver-v1.pt.

Training material is the ``train`` split of the development set (``detector/versionset.py``):
every work rendered ``--versions`` times (its reference and re-performances with other
instruments, keys, tempi and arrangements) through the training soundfonts only. Renders are
reduced once to pitch-class power at 10 frames a second and cached. A positive pair is 20 s of
two versions of one work around the same moment of the score; every other pair in the batch is
a negative, except works that share a melody. Augmentations act on pitch-class power: time
stretch, other music mixed under it (training-split corpus tracks from ``--music`` and other
works), the copy filling only part of the window, a coloured noise floor.
"""
from __future__ import annotations

import argparse
import math
import pickle
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from detector.train import nt_xent
from detector.version import CHROMA_FPS, SEGMENT_S, chroma
from detector.version_model import CHECKPOINT_FORMAT, VersionNet, pitch_class_power
from detector import versionset

VERSION = "clearance-ver-v1"


@dataclass(frozen=True)
class Rendered:
    """One version as training sees it: ``classes`` (12, frames) float16 pitch-class power at
    ``CHROMA_FPS``; ``spq`` seconds per quarter note."""

    classes: np.ndarray
    spq: float


_renderer: versionset.Renderer | None = None


def _render_work(args: tuple[versionset.Work, int]) -> list[Rendered]:
    global _renderer
    torch.set_num_threads(1)
    if _renderer is None:
        _renderer = versionset.Renderer()
    work, count = args
    out = []
    for k in range(count):
        transform = "reference" if k == 0 else versionset.TRANSFORMS[(k - 1 + zlib.crc32(work.work_id.encode())) % 5]
        perf = versionset.perform(work, transform, seed=k, soundfonts=versionset.TRAIN_SOUNDFONTS)
        out.append(Rendered(pitch_class_power(_renderer.render(perf)), 60.0 / (work.qpm * perf.tempo)))
    return out


def training_set(works: list[versionset.Work], versions: int, cache: Path, jobs: int) -> list[list[Rendered]]:
    """Each work's versions, rendered and reduced (cached in ``cache``)."""
    path = cache / f"train-{len(works)}x{versions}.pkl"
    if path.exists():
        with open(path, "rb") as f:
            return pickle.load(f)
    t0, done, out = time.time(), 0, []
    with ProcessPoolExecutor(jobs) as pool:
        for rendered in pool.map(_render_work, [(w, versions) for w in works], chunksize=4):
            out.append(rendered)
            done += 1
            if done % 200 == 0:
                print(f"rendered {done}/{len(works)} works in {time.time() - t0:.0f} s", flush=True)
    with open(path.with_suffix(".tmp"), "wb") as f:
        pickle.dump(out, f)
    path.with_suffix(".tmp").replace(path)
    return out


def overlays(music: Path | None, cache: Path) -> list[np.ndarray]:
    """Pitch-class power of the corpus's ``split=train`` tracks, music to mix under versions."""
    if music is None:
        return []
    path = cache / "overlays.pkl"
    if path.exists():
        with open(path, "rb") as f:
            return pickle.load(f)
    from detector.audio import decode
    from detector.corpus import manifest

    out = [pitch_class_power(decode(t.path, 8000).samples) for t in manifest(music) if t.split == "train" and t.path.exists()]
    with open(path, "wb") as f:
        pickle.dump(out, f)
    return out


class Pairs:
    """Batches of two augmented 20 s views of the same moment of two versions of a work."""

    def __init__(self, works: list[versionset.Work], rendered: list[list[Rendered]], music: list[np.ndarray],
                 rng: np.random.Generator, mix_p: float = 0.4, part_p: float = 0.2):
        self.works, self.rendered, self.music, self.rng = works, rendered, music, rng
        self.mix_p, self.part_p = mix_p, part_p
        self.frames = int(SEGMENT_S * CHROMA_FPS)

    def _crop(self, classes: np.ndarray, centre: float, stretch: float) -> np.ndarray:
        """``frames`` frames covering ``SEGMENT_S * stretch`` seconds around ``centre`` frames."""
        span = self.frames * stretch
        pos = centre - span / 2 + np.arange(self.frames) * stretch
        lo = np.floor(pos).astype(int)
        w = (pos - lo)[None, :]
        n = classes.shape[1]
        pick = lambda k: np.where((k >= 0) & (k < n), classes[:, np.clip(k, 0, n - 1)].astype(np.float32), 0.0)
        return pick(lo) * (1 - w) + pick(lo + 1) * w

    def _other(self) -> np.ndarray:
        """Pitch-class power of 20 s of other music: a corpus track or another work."""
        rng = self.rng
        if self.music and rng.random() < 0.6:
            src = self.music[rng.integers(len(self.music))]
        else:
            versions = self.rendered[rng.integers(len(self.rendered))]
            src = versions[rng.integers(len(versions))].classes
        return self._crop(src, rng.uniform(0, src.shape[1]), 1.0)

    def _augment(self, x: np.ndarray) -> np.ndarray:
        rng = self.rng
        level = x.sum(0).mean() + 1e-9
        if rng.random() < self.part_p:
            keep = int(self.frames * rng.uniform(0.4, 0.8))
            at = rng.integers(0, self.frames - keep + 1)
            mask = np.zeros(self.frames)
            mask[at:at + keep] = 1
            x = x * mask
        if rng.random() < self.mix_p:
            other = self._other()
            snr_db = rng.uniform(-6, 6)
            x = x + other * (level / (other.sum(0).mean() + 1e-9)) * 10 ** (-snr_db / 10)
        if rng.random() < 0.3:
            x = x + level * 10 ** (-rng.uniform(15, 35) / 10) * rng.random((12, 1)) / 12
        return x

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """(size, 12, frames) chroma twice, and each pair's melody group index."""
        rng = self.rng
        picked, groups = [], set()
        while len(picked) < size:
            i = int(rng.integers(len(self.works)))
            if self.works[i].group not in groups:
                groups.add(self.works[i].group)
                picked.append(i)
        a, b = [], []
        for i in picked:
            versions = self.rendered[i]
            va, vb = rng.choice(len(versions), 2, replace=False)
            ra, rb = versions[va], versions[vb]
            quarters = min(ra.classes.shape[1] / CHROMA_FPS / ra.spq, rb.classes.shape[1] / CHROMA_FPS / rb.spq)
            q = rng.uniform(0, quarters)
            sa, sb = np.exp(rng.uniform(math.log(0.87), math.log(1.15), 2))
            a.append(self._augment(self._crop(ra.classes, q * ra.spq * CHROMA_FPS, sa)) if rng.random() < 0.5
                     else self._crop(ra.classes, q * ra.spq * CHROMA_FPS, sa))
            b.append(self._augment(self._crop(rb.classes, q * rb.spq * CHROMA_FPS, sb)))
        as_chroma = lambda xs: torch.from_numpy(chroma(np.stack(xs)))
        return as_chroma(a), as_chroma(b), np.array(picked)


def _arguments(argv) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--music", type=Path, help="corpus folder (get-music --set full): music to mix under versions")
    ap.add_argument("--cache", type=Path, default=versionset.CACHE)
    ap.add_argument("--versions", type=int, default=4, help="renders per work, its reference included")
    ap.add_argument("--init", type=Path, help="a checkpoint to start from (a fine-tuning round)")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=96, help="pairs per step")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--tau", type=float, default=0.1)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--save-every", type=int, default=250, help="steps between checkpoints")
    ap.add_argument("--out", type=Path, default=Path("detector/weights") / f"{VERSION}.pt")
    return ap.parse_args(argv)


def main(argv=None) -> None:
    args = _arguments(argv)
    torch.manual_seed(args.seed)
    works = [w for w in versionset.works(args.cache, args.jobs) if w.split == "train"]
    print(f"{len(works)} training works, {args.versions} versions each", flush=True)
    rendered = training_set(works, args.versions, args.cache, args.jobs)
    music = overlays(args.music, args.cache)
    pairs = Pairs(works, rendered, music, np.random.default_rng(args.seed))
    model = VersionNet(args.width)
    if args.init:
        model.load_state_dict(torch.load(args.init, map_location="cpu", weights_only=True)["state"])
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=args.steps, pct_start=0.05)
    t0, running = time.time(), None
    for step in range(1, args.steps + 1):
        a, b, _ = pairs.batch(args.batch)
        loss = nt_xent(model(a), model(b), args.tau)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 50 == 0 or step == args.steps:
            print(f"step {step} loss {running:.3f} {time.time() - t0:.0f} s", flush=True)
        if step % args.save_every == 0 or step == args.steps:
            save(model, args, step)
    print(f"saved {args.out}")


def save(model: VersionNet, args: argparse.Namespace, step: int) -> None:
    """The checkpoint so far, written beside ``--out`` and moved over it."""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    tmp = args.out.with_suffix(".tmp")
    torch.save({"format": CHECKPOINT_FORMAT, "version": VERSION, "width": args.width, "dim": model.head.out_features,
                "segment_s": SEGMENT_S, "steps": step, "seed": args.seed, "state": state}, tmp)
    tmp.replace(args.out)


if __name__ == "__main__":
    main()
