"""The main job on the sample corpus, as a user would run it (called by scripts/demo).

Indexes the corpus's ``bench_role=catalog`` tracks as protected, cuts sample outputs (copies of
catalog tracks as a generator might alter them, and music that is not in the catalog), then
checks them with the ``clearance`` command and prints the decisions.
"""
from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import corpus as C  # noqa: E402
from detector.audio import Clip, encode  # noqa: E402

CLEARANCE = str(REPO / ".venv" / "bin" / "clearance")

# (output name, track, start s, seconds, transform, is it a copy?)
SAMPLES = [
    ("copy-drascula-track11.mp3", "drascula-track11", 30, 20, None, True),
    ("pitch+2-asc-frontiers.mp3", "asc-frontiers", 120, 20, lambda x: C.pitch(x, 2.0), True),
    ("speed1.1-xmoto-batcave.mp3", "xmoto-batcave", 40, 20, lambda x: C.speed(x, 1.1), True),
    ("noisy-sectoid-feelings-song.mp3", "sectoid-feelings-song", 60, 15, lambda x: C.noise(x, 10, np.random.default_rng(0)), True),
    ("original-drascula-track10.mp3", "drascula-track10", 20, 20, None, False),
    ("original-xmoto-foxrun.mp3", "xmoto-foxrun", 30, 20, None, False),
]


def run(*args: str) -> None:
    print("$ clearance " + " ".join(shlex.quote(a) for a in args), flush=True)
    subprocess.run([CLEARANCE, *args], check=True)


def main(music: Path) -> None:
    tracks = {t.track_id: t for t in C.manifest(music) if "test" in t.sets}   # the folder may hold the full corpus too
    catalog = [str(t.path) for t in tracks.values() if t.role == "catalog"]
    print(f"Indexing {len(catalog)} catalog tracks of the sample corpus as protected recordings.", flush=True)
    run("index", *catalog, "--rights", "protected", "--owner", "sample corpus", "--manifest", str(music / "manifest.csv"))
    out = Path(".clearance-demo") / "samples"       # not HOME/outputs, where checks keep what they checked
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for name, tid, start, secs, transform, copy in SAMPLES:
        x = C.load(tracks[tid]).excerpt(start, start + secs).samples
        if transform:
            x = transform(x)
        (out / name).write_bytes(encode(Clip(x, C.SR, name), "mp3", 128))
        files.append(str(out / name))
        print(f"sample output {name}: {'a copy of' if copy else 'not in the catalog:'} {tid} {start}-{start + secs} s")
    print("\nChecking the sample outputs:", flush=True)
    run("check", *files)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
