"""Indexing jobs through the ``clearance index`` command: killed at random points and run again,
they finish with every track exactly once, and readers never see the database and the index
disagree."""
from __future__ import annotations

import json
import os
import shutil
import subprocess

from index.store import Store
from tests.index.conftest import CLEARANCE, assert_complete, job, kill_at_random_points, seen


def test_kill_9_at_random_points_then_rerun_finishes_every_track_once(excerpts, embedder, tmp_path):
    home = tmp_path / "home"
    db_url = f"sqlite:///{home / 'catalog.db'}"
    killed = kill_at_random_points(excerpts, home, db_url, embedder, rounds=4, seed=9)
    assert killed >= 3
    env = {**os.environ, "CLEARANCE_HOME": str(home), "CLEARANCE_INDEX_WORKERS": "2"}
    p = job(excerpts, env)
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    assert "failed 0" in out
    assert_complete(seen(home, db_url, embedder), home, embedder, 40)
    # a third run finds nothing to do
    again = job(excerpts, env)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0 and "indexed 0 tracks" in out and "skipped 40 already present" in out, out + err
    assert "skipped:" not in err      # the same files under the same ids: nothing to tell


def test_failed_files_are_recorded_with_reasons_and_the_job_goes_on(excerpts, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for f in sorted(excerpts.iterdir())[:3]:
        shutil.copy(f, folder / f.name)
    (folder / "empty.mp3").write_bytes(b"")
    (folder / "noise.ogg").write_bytes(b"OggS" + bytes(range(256)) * 8)
    original = folder / sorted(p.name for p in folder.iterdir() if p.suffix == ".mp3" and p.stat().st_size)[0]
    shutil.copy(original, folder / "same-content-other-name.mp3")
    home = tmp_path / "home"
    env = {**os.environ, "CLEARANCE_HOME": str(home), "CLEARANCE_INDEX_WORKERS": "2"}
    p = job(folder, env)
    out, err = p.communicate(timeout=600)
    assert p.returncode == 2
    assert "indexed 3 tracks" in out and "skipped 1 already present" in out and "failed 2" in out, out
    assert f"failed: {folder / 'empty.mp3'}: the file is empty" in err
    assert (f"skipped: {folder / 'same-content-other-name.mp3'}: the same audio is in the catalog as "
            f"'{original.stem}', so 'same-content-other-name' was not added") in err
    assert f"failed: {folder / 'noise.ogg'}: " in err
    store = Store(f"sqlite:///{home / 'catalog.db'}")
    # of two identical files the first in the folder's order is kept, whichever worker finished first
    assert original.stem in {t.external_id for t in store.list_tracks()}
    recorded = store.list_failures()
    assert sorted(path for path, _, _ in recorded) == [str(folder / "empty.mp3"), str(folder / "noise.ogg")]
    assert all(reason for _, reason, _ in recorded)
    listed = subprocess.run([*CLEARANCE, "failures", "--json"], capture_output=True, text=True, env=env, timeout=300)
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert listed.returncode == 0 and [(r["path"], r["reason"]) for r in rows] == [(p, why) for p, why, _ in recorded]
    assert f"{folder / 'empty.mp3'}: the file is empty" in subprocess.run(
        [*CLEARANCE, "failures"], capture_output=True, text=True, env=env, timeout=300).stdout
