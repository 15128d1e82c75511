"""Shared fixtures: the sample corpus (fetched once), excerpts cut at test time, and a catalog
of 20 protected catalog tracks built once per session through the real indexing code."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from detector.audio import Clip, decode, encode
from detector.corpus import Track, manifest
from service.engine import Engine
from service.settings import Settings

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def music() -> dict[str, Track]:
    """The ``test`` corpus by track id (``scripts/get-music --set test``; the folder may
    also hold the full corpus, whose extra tracks are left out)."""
    script = REPO / "scripts" / "get-music"
    out = subprocess.run([str(script), "--set", "test", "--quiet"], check=True, capture_output=True, text=True)
    folder = Path(out.stdout.strip().splitlines()[-1])
    return {t.track_id: t for t in manifest(folder) if "test" in t.sets}


def cut(row: Track, start: float, seconds: float, dest: Path, fmt: str = "mp3") -> Path:
    """Write an excerpt of a corpus track, re-encoded to ``fmt``, and return its path."""
    clip = decode(row.path, 22050)
    part = clip.excerpt(start, start + seconds)
    dest.write_bytes(encode(Clip(part.samples, part.sample_rate, dest.name), fmt))
    return dest


PROTECTED = 20


@pytest.fixture(scope="session")
def catalog_home(music, tmp_path_factory) -> Path:
    """A catalog home with the first 20 ``catalog`` tracks indexed as protected and
    ``drascula-track29`` indexed as licensed."""
    home = tmp_path_factory.mktemp("catalog")
    engine = Engine(Settings(home=home))
    catalog = [r for r in music.values() if r.role == "catalog" and r.track_id != "drascula-track29"]
    from detector.policy import Rights

    manifest = next(iter(music.values())).path.parents[1] / "manifest.csv"
    engine.catalog.index_paths([r.path for r in catalog[:PROTECTED]], Rights.protected, owner="Test Records",
                               manifest=manifest)
    engine.catalog.index_paths([music["drascula-track29"].path], Rights.licensed, owner="Open Label",
                               manifest=manifest)
    return home


@pytest.fixture(scope="session")
def protected_ids(music) -> list[str]:
    return [r.track_id for r in music.values() if r.role == "catalog" and r.track_id != "drascula-track29"][:PROTECTED]


@pytest.fixture
def engine(catalog_home) -> Engine:
    return Engine(Settings(home=catalog_home))


@pytest.fixture(scope="session")
def env_for(catalog_home):
    def make(home: Path = catalog_home) -> dict:
        return {**os.environ, "CLEARANCE_HOME": str(home)}
    return make
