"""The sample corpus's manifest: ``manifest.csv`` beside the audio that ``scripts/get-music``
fetches (its columns are those of ``scripts/music-manifest.csv``), read here for training, the
tests and the benchmarks alike."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Track:
    """One recording of the corpus."""

    track_id: str
    path: Path                     # the audio file, under the corpus folder
    split: str                     # train (the model learns from it) or heldout
    role: str                      # its part in the benchmarks (column bench_role): catalog, unseen, ...
    package: str                   # the Debian package it comes from
    stem_group: str                # tracks that are stems of one song share it ('' for none)
    stem: str
    related: frozenset[str]        # ids of tracks that share material with it
    sets: frozenset[str]           # the get-music sets that hold it: test, full


def manifest(folder: Path) -> list[Track]:
    """Every track of the manifest in ``folder``, in its order (the folder may hold only some of
    their files: see ``sets``)."""
    with open(folder / "manifest.csv", newline="") as f:
        return [Track(r["track_id"], folder / r["path"], r["split"], r["bench_role"], r["deb_package"],
                      r["stem_group"], r["stem"], frozenset(r["related"].split()), frozenset(r["sets"].split()))
                for r in csv.DictReader(f)]
