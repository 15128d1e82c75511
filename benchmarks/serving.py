"""What a serving process holds per layer, and how soon it answers: against the whole ``full``
corpus indexed (301 tracks, 17.9 h; ``benchmarks.load.full_catalog``).

    python -m benchmarks.serving [--home ~/.cache/clearance/bench-service-home] [--runs 3]

Prints, per layer, what its index takes on disk and in memory, and per hour of catalog audio:
the vectors (FAISS files of the published generation, read whole), the Chromaprint and landmark
indexes (saved beside them and memory-mapped: the pages checks read are held as file pages,
shared and reclaimable; built in memory where the catalog was published without them) and the
database file. Then, ``--runs`` times, a fresh process (``Engine``, as ``clearance serve`` and
``clearance check`` hold it): seconds from its start to the model and vectors loaded (imports
included), its first 30 s MP3 check (decode included; the layers' indexes are opened or built on
first use) and its second; its resident memory after the first check, anonymous (its own) and file-backed (mapped
files: model, libraries, the landmark index).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.load import HOME, full_catalog, outputs
from index.layers import SavedLayer
from index.search import LAYERS


def child(home: Path, started: float, files: list[Path]) -> None:
    """One fresh process's timeline (``started``: when its parent started it, ``time.time()``)
    checking ``files``, as JSON on stdout."""
    from service.engine import Engine
    from service.settings import Settings
    engine = Engine(Settings(home=home))
    engine.embedder, engine.catalog.vectors
    out = {"loaded_s": time.time() - started}
    for k, path in enumerate(files):
        t1 = time.time()
        engine.check(path.read_bytes(), path.name)
        out[f"check{k}_s"] = time.time() - t1
        if k == 0:
            out.update(_rss())
    print(json.dumps(out))


def _rss() -> dict[str, float]:
    """Resident memory of this process, GB: in all, anonymous and file-backed (Linux)."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {k: int(status[k].split()[0]) / 1e6 for k in ("VmRSS", "RssAnon", "RssFile")}


def layer_rows(engine) -> list[str]:
    hours = sum(t.duration_s for t in engine.store.list_tracks()) / 3600
    folder = engine.catalog.vectors.folder
    rows = [("vectors (FAISS, read whole)", sum(f.stat().st_size for f in folder.glob("*.faiss")), "in memory")]
    for layer in LAYERS:
        if isinstance(layer, SavedLayer):
            files = list(folder.glob(f"{layer.index_type.saved_as}-*.npy"))
            rows.append((f"{layer.name} (memory-mapped)" if files else f"{layer.name} (not saved: built)",
                         sum(f.stat().st_size for f in files) or engine.catalog.searcher.index(layer.name).nbytes,
                         "mapped, paged in by checks" if files else "in memory"))
    rows.append(("database (SQLite file)", (engine.settings.home / "catalog.db").stat().st_size, "read per check"))
    out = [f"catalog: {len(engine.store.list_tracks())} tracks, {hours:.1f} h; index generation {folder.name}",
           f"{'layer':<36} {'MB':>8} {'MB/h':>6}  held",
           "-" * 70]
    out += [f"{name:<36} {size / 1e6:>8.1f} {size / 1e6 / hours:>6.2f}  {held}" for name, size, held in rows]
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path, default=HOME)
    ap.add_argument("--runs", type=int, default=3, help="fresh processes timed")
    ap.add_argument("--child", type=float, help=argparse.SUPPRESS)     # when the parent started it
    ap.add_argument("--files", nargs="*", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.home, args.child, args.files)
        return
    print("\n".join(layer_rows(full_catalog(args.home))), flush=True)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for name, data in outputs(2, seed=1):
            files.append(Path(tmp) / name)
            files[-1].write_bytes(data)
        for _ in range(args.runs):
            done = subprocess.run([sys.executable, "-m", "benchmarks.serving", "--home", str(args.home),
                                   "--child", str(time.time()), "--files", *map(str, files)],
                                  capture_output=True, text=True, check=True)
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"\nA fresh process, {args.runs} runs (median): seconds from its start, and its memory after the first check")
    head = f"{'loaded s':>8} {'1st 30 s check s':>16} {'2nd s':>6} {'RSS GB':>7} {'anon GB':>8} {'file GB':>8}"
    print(head)
    print("-" * len(head))
    m = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
    print(f"{m['loaded_s']:>8.2f} {m['check0_s']:>16.2f} {m['check1_s']:>6.2f} {m['VmRSS']:>7.2f} "
          f"{m['RssAnon']:>8.2f} {m['RssFile']:>8.2f}")


if __name__ == "__main__":
    main()
