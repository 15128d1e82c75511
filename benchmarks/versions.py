"""Re-performances: does the version layer find a catalog work played again in a new sound?

    python -m benchmarks.versions [--catalog 300] [--negatives 2000] [--baseline 60] [--model PATH]
                                  [--product N] [--calibrate PATH]

The development set is ``detector/versionset.py``'s ``heldout`` works (never trained on). The
catalog holds the reference renders of ``--catalog`` of them, one per melody group. Each catalog
work is re-performed once per transform (``timbre`` and ``all`` through the held-out soundfont,
which training never heard), and 20 s of it is the query, from a random point; ``excerpt_mix`` is
10 s of its ``all`` version mixed at 0 dB (integrated loudness) under 20 s of held-out corpus
music of another kind (``unseen`` game tracks), mastered and MP3-encoded as a producer would.
``edit5`` ... ``edit50`` change 5-50 % of the notes of a ``timbre`` version: the score should fall
as the copy gets looser. Negatives are versions of the other held-out works, through the same
transforms, soundfonts and mixing: the threshold of each method is its highest score on any of
them, so every recall is at zero false flags. 300 loud 20 s excerpts of held-out game music are
negatives too.

Prints, per transform, for the version layer (``VersionIndex.search``: the references whose 20 s
windows, every 2 s, come nearest the query's, aligned by Qmax; evidence their cosine times the
square root of the Qmax score) and for the untrained chroma + Qmax baseline (on the first
``--baseline`` queries of each row, its threshold the highest of an even sample of
``--baseline-negatives`` negatives, as it costs about a second a query against 300 references): recall at zero false flags, top-1 accuracy and mean average precision
over the whole catalog. Renders are cached in ``~/.cache/clearance/versions/bench``.

``--product N`` then indexes the catalog's references as protected recordings through the real
pipeline (every layer) and checks the first N queries of each row and 5 N negatives with the
whole product (``Engine.assess``), counting the queries that the signal layers block or send to
review and those the version layer sends to review, naming the right work or another.
``--calibrate PATH`` fits the version layer's calibration to the negatives' evidence.
"""
from __future__ import annotations

import argparse
import time
import zlib
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from benchmarks import corpus as C
from benchmarks.calibrate import tail
from detector import versionset
from detector.matcher import Calibration
from detector.version import VersionIndex, chroma, qmax
from detector.version_model import VersionModel, pitch_class_power

QUERY_S = 20.0
MIX_S = 10.0
ROWS = (*versionset.TRANSFORMS, "excerpt_mix", *versionset.EDITS)
NEGATIVE_KINDS = (*versionset.TRANSFORMS, "excerpt_mix")
HOP_S = 2.0

_renderer: versionset.Renderer | None = None
_unseen: list[C.Track] = []             # held-out corpus music that copies are mixed under


def _start_worker(unseen: list[C.Track]) -> None:
    global _unseen
    _unseen = unseen


def audio(task: tuple[versionset.Work, str, int]) -> np.ndarray:
    """The 8 kHz audio of one query, (work, kind, seed): the work's whole reference, or 20 s of
    a version."""
    global _renderer
    if _renderer is None:
        _renderer = versionset.Renderer()
    work, kind, seed = task
    rng = np.random.default_rng([zlib.crc32(f"{work.work_id}/{kind}".encode()), seed])
    if kind == "reference":
        return _renderer.render(versionset.perform(work))
    transform = "all" if kind == "excerpt_mix" else kind
    whole = _renderer.render(versionset.perform(work, transform, seed, soundfonts=(versionset.HELDOUT_SOUNDFONT,)))
    sr = versionset.SAMPLE_RATE
    if kind != "excerpt_mix":
        start = rng.uniform(0, max(0.0, len(whole) / sr - QUERY_S - 1.0))
        return whole[int(start * sr):int((start + QUERY_S) * sr)]
    start = rng.uniform(0, max(0.0, len(whole) / sr - MIX_S - 1.0))
    copy = whole[int(start * sr):int((start + MIX_S) * sr)]
    _, under = C.music_from(_unseen, QUERY_S, rng)
    return C.produce(copy, under, 0.0, rng.uniform(0, QUERY_S - MIX_S))


def _query(task: tuple[versionset.Work, str, int]) -> np.ndarray:
    """Pitch-class power of one query: (work, kind, seed) → (12, frames) float16."""
    torch.set_num_threads(1)
    return pitch_class_power(audio(task))


def rendered(tasks: list[tuple[versionset.Work, str, int]], cache: Path, jobs: int,
             unseen: list[C.Track]) -> list[np.ndarray]:
    """Each task's pitch-class power, rendered once into ``cache``."""
    out: list[np.ndarray | None] = []
    todo = []
    for i, (work, kind, seed) in enumerate(tasks):
        path = cache / f"{work.work_id.replace('/', '--')}--{kind}--{seed}.npy"
        out.append(np.load(path) if path.exists() else None)
        if out[-1] is None:
            todo.append(i)
    if todo:
        cache.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        with ProcessPoolExecutor(jobs, initializer=_start_worker, initargs=(unseen,)) as pool:
            for k, (i, classes) in enumerate(zip(todo, pool.map(_query, [tasks[i] for i in todo], chunksize=4))):
                work, kind, seed = tasks[i]
                np.save(cache / f"{work.work_id.replace('/', '--')}--{kind}--{seed}.npy", classes)
                out[i] = classes
                if (k + 1) % 500 == 0:
                    print(f"  rendered {k + 1}/{len(todo)} in {time.time() - t0:.0f} s", flush=True)
    return out


def corpus_negatives(tracks: list[C.Track], n: int, cache: Path) -> list[np.ndarray]:
    """Pitch-class power of ``n`` loud 20 s excerpts of real recordings (cached)."""
    path = cache / f"corpus-{n}.npz"
    if path.exists():
        return list(np.load(path).values())
    rng = np.random.default_rng(7)
    out = [pitch_class_power(C.music_from(tracks, QUERY_S, rng)[1]) for _ in range(n)]
    np.savez(path, *out)
    return out


def layer_scores(model: VersionModel, refs: list[np.ndarray], queries: list[np.ndarray]) -> np.ndarray:
    """(queries, refs): the version layer's evidence (``VersionIndex.search``) for the tracks it
    verified, below them (minus 100) the best cosine between a query's vectors and the other
    references' windows, so every reference is ranked."""
    index = VersionIndex(dict(enumerate(refs)), model)
    windows = index.vectors.astype(np.float32)
    out = np.full((len(queries), len(refs)), -101.0, np.float32)
    for i, classes in enumerate(queries):
        classes = classes.astype(np.float32)
        _, q = model.vectors(classes, HOP_S)
        if len(q):
            out[i] = np.maximum.reduceat((q @ windows.T).max(0), index.vector_starts[:-1]) - 100
        for m in index.search(classes):
            out[i, m.track] = m.evidence
    return out


def qmax_scores(refs: list[np.ndarray], queries: list[np.ndarray]) -> np.ndarray:
    as_chroma = chroma
    ref_chroma = [as_chroma(r) for r in refs]
    return np.array([[a.score for a in qmax(as_chroma(q), ref_chroma)] for q in queries], np.float32)


def row(scores: np.ndarray, truth: np.ndarray, threshold: float) -> tuple[float, float, float]:
    """Recall at zero false flags, top-1 accuracy and MAP (one relevant reference per query)."""
    if len(scores) == 0:
        return float("nan"), float("nan"), float("nan")
    top = scores.argmax(1)
    right = scores[np.arange(len(scores)), truth]
    rank = 1 + (scores > right[:, None]).sum(1)
    return (float(np.mean((top == truth) & (right > threshold))), float(np.mean(top == truth)), float(np.mean(1 / rank)))


def product_rows(catalog: list[versionset.Work], positives: list, negatives: list, n: int, home: Path,
                 unseen: list[C.Track]) -> None:
    """The product end to end: the catalog works' references indexed as protected recordings
    (the real pipeline, every layer), then ``n`` queries of each row and ``5 n`` negatives
    checked (``Engine.assess``): what each layer flags."""
    from detector.audio import Clip, encode
    from detector.policy import Rights
    from service.engine import Engine
    from service.settings import Settings

    global _unseen
    _unseen = unseen
    files = home / "references"
    files.mkdir(parents=True, exist_ok=True)
    paths = []
    for w in catalog:
        path = files / f"{w.work_id.replace('/', '--')}.wav"
        if not path.exists():
            path.write_bytes(encode(Clip(audio((w, "reference", 0)), versionset.SAMPLE_RATE, path.name), "wav"))
        paths.append(path)
    engine = Engine(Settings(home=home / "home"))
    engine.catalog.index_paths(paths, Rights.protected)
    external = {w.work_id: p.stem for w, p in zip(catalog, paths)}

    def flags(tasks: list) -> tuple[Counter, float]:
        out, t0 = Counter(), time.perf_counter()
        for work, kind, seed in tasks:
            decision = engine.assess(Clip(audio((work, kind, seed)), versionset.SAMPLE_RATE, "query"))
            flagged = set()
            for m, info in decision.matches:
                right = info.external_id == external.get(work.work_id)
                layer = "version" if m.method == "version" else "signal"
                verdict = "block" if (m, info) in decision.blocking else "review"
                flagged.add(f"{layer} {verdict} {'right' if right else 'wrong'}")
            out.update(flagged)
        return out, (time.perf_counter() - t0) / max(len(tasks), 1)

    print(f"\nthe product, every layer ({len(catalog)} references indexed as protected recordings): "
          "queries with a flag naming the right / another work")
    print(f"{'queries':<12} {'n':>4}  {'signal block':>13} {'signal review':>14} {'version review':>15}  s/check")
    kinds = [k for _, k, _ in positives]
    for kind in ROWS:
        picked = [t for t, k in zip(positives, kinds) if k == kind][:n]
        c, per = flags(picked)
        cell = lambda what: f"{c[what + ' right']}/{c[what + ' wrong']}"
        print(f"{kind:<12} {len(picked):>4}  {cell('signal block'):>13} {cell('signal review'):>14} "
              f"{cell('version review'):>15}  {per:.2f}")
    picked = negatives[::max(1, len(negatives) // (5 * n))]
    c, per = flags(picked)
    print(f"{'negatives':<12} {len(picked):>4}  {c['signal block wrong']:>13} {c['signal review wrong']:>14} "
          f"{c['version review wrong']:>15}  {per:.2f}")


def _arguments(argv) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catalog", type=int, default=300, help="held-out works in the catalog")
    ap.add_argument("--negatives", type=int, default=2000, help="queries of works not in the catalog")
    ap.add_argument("--baseline", type=int, default=60, help="queries per row for the Qmax baseline (0: none)")
    ap.add_argument("--baseline-negatives", type=int, default=460,
                    help="negatives that set the Qmax baseline's threshold (an even sample of them)")
    ap.add_argument("--model", type=Path, default=None, help="version checkpoint (default: the shipped one)")
    ap.add_argument("--product", type=int, default=0,
                    help="also check this many queries a row (and 5x as many negatives) with the whole product")
    ap.add_argument("--corpus", type=int, default=300, help="negatives of held-out game music (20 s excerpts)")
    ap.add_argument("--calibrate", type=Path, help="fit the version calibration to the negatives; write it here")
    ap.add_argument("--cache", type=Path, default=versionset.CACHE)
    ap.add_argument("--jobs", type=int, default=2)
    return ap.parse_args(argv)


def main(argv=None) -> None:
    args = _arguments(argv)
    works = sorted((w for w in versionset.works(args.cache, args.jobs) if w.split == "heldout"),
                   key=lambda w: zlib.crc32(w.work_id.encode()))
    catalog, groups = [], set()
    for w in works:
        if len(catalog) < args.catalog and w.group not in groups:
            catalog.append(w)
            groups.add(w.group)
    others = [w for w in works if w.group not in groups]
    negatives = [(others[i % len(others)], NEGATIVE_KINDS[(i + i // len(others)) % len(NEGATIVE_KINDS)], 0)
                 for i in range(args.negatives)]
    positives = [(w, kind, 0) for kind in ROWS for w in catalog]
    cache = args.cache / "bench"
    t0 = time.time()
    unseen = [t for t in C.manifest(C.music_folder()) if t.split == "heldout" and t.role == "unseen"]
    refs = rendered([(w, "reference", 0) for w in catalog], cache, args.jobs, unseen)
    queries = rendered(positives, cache, args.jobs, unseen)
    negs = rendered(negatives, cache, args.jobs, unseen)
    heldout_music = [t for t in C.manifest(C.music_folder()) if t.split == "heldout"]
    negs += corpus_negatives(heldout_music, args.corpus, cache)
    print(f"{len(catalog)} catalog works ({len({w.collection for w in catalog})} collections), "
          f"{len(positives)} re-performances of them, {len(negatives)} negatives of {len(others)} other works "
          f"and {args.corpus} of held-out game music ({time.time() - t0:.0f} s to render)", flush=True)

    model = VersionModel.load(args.model)
    t0 = time.perf_counter()
    learned = layer_scores(model, refs, queries + negs)
    per_query = (time.perf_counter() - t0) / (len(queries) + len(negs))
    l_pos, l_neg = learned[:len(queries)], learned[len(queries):]
    l_thr = float(l_neg.max())
    if args.calibrate:
        best = l_neg.max(1)
        cal = Calibration(model=model.version, **tail(best), negatives=len(best), shortest_s=QUERY_S)
        cal.save(args.calibrate)
        print(f"calibration: {len(best)} negatives, null median {np.median(best):.3f}, max {best.max():.3f}: "
              f"p_false 0.01 at {cal.tail_start + cal.tail_scale * np.log(cal.tail_p / 0.01):.3f}; wrote {args.calibrate}")
    truth = np.array([catalog.index(w) for w, _, _ in positives])
    kinds = np.array([k for _, k, _ in positives])

    base = None
    if args.baseline:
        picked = np.concatenate([np.flatnonzero(kinds == k)[:args.baseline] for k in ROWS])
        t0 = time.perf_counter()
        b_negs = negs[::max(1, len(negs) // args.baseline_negatives)]
        b = qmax_scores(refs, [queries[i] for i in picked] + b_negs)
        b_per_query = (time.perf_counter() - t0) / len(b)
        base = (picked, b[:len(picked)], float(b[len(picked):].max()), len(b_negs))

    print(f"\nversion model {model.version}: threshold {l_thr:.3f} (highest of {len(negs)} negatives), "
          f"{per_query * 1000:.1f} ms a query against {len(catalog)} works")
    if base:
        print(f"chroma + Qmax baseline: threshold {base[2]:.1f} (highest of {base[3]} negatives: every "
              f"{len(negs) // base[3]}th), {b_per_query * 1000:.0f} ms a query, first {args.baseline} queries a row")
    head = f"{'transform':<12} {'n':>4}  {'recall@0FP':>10} {'top-1':>6} {'MAP':>6}"
    print("\n" + head + ("   " + f"{'Qmax recall':>11} {'top-1':>6} {'MAP':>6}" if base else ""))
    for kind in ROWS:
        mine = kinds == kind
        r, t1, ap = row(l_pos[mine], truth[mine], l_thr)
        line = f"{kind:<12} {int(mine.sum()):>4}  {r:>10.1%} {t1:>6.1%} {ap:>6.3f}"
        if base:
            picked, scores, thr, _ = base
            sel = kinds[picked] == kind
            br, bt1, bap = row(scores[sel], truth[picked][sel], thr)
            line += f"   {br:>11.1%} {bt1:>6.1%} {bap:>6.3f}"
        print(line)
    main_rows = np.isin(kinds, versionset.TRANSFORMS)
    r, t1, ap = row(l_pos[main_rows], truth[main_rows], l_thr)
    print(f"{'(5 main)':<12} {int(main_rows.sum()):>4}  {r:>10.1%} {t1:>6.1%} {ap:>6.3f}")
    if args.product:
        product_rows(catalog, positives, negatives, args.product, args.cache / "bench-product", unseen)
    right = np.maximum(l_pos[np.arange(len(l_pos)), truth], 0)       # 0: not among the works verified
    print("\nevidence for the right work, median (0 where it was not verified): " + ", ".join(
        f"{k} {np.median(right[kinds == k]):.2f}" for k in ("timbre", *versionset.EDITS)))


if __name__ == "__main__":
    main()
