"""The database and the vector index agree after a crash at any step of indexing."""
from __future__ import annotations

import numpy as np

from detector.policy import Rights
from service.engine import Engine
from service.settings import Settings


def test_reconcile_after_crash_between_steps(music, tmp_path):
    engine = Engine(Settings(home=tmp_path))
    catalog = engine.catalog
    paths = [music[t].path for t in ("drascula-track4", "drascula-track6", "drascula-track8")]
    catalog.index_paths(paths[:1], Rights.protected)
    ids = {t.external_id: t.id for t in catalog.store.list_tracks()}

    # crash 1: rows inserted as pending, vectors published, never marked indexed
    with catalog.writing() as vectors:
        clip_key = catalog.store.add_pending(external_id="ghost", title="", owner="", rights=Rights.protected,
                                             sha256="0" * 64, source_path="", duration_s=1.0, model="x",
                                             vectors=2, fingerprint=np.zeros(3, np.uint32))
        vectors.add(clip_key, np.eye(2, vectors.info.dim, dtype=np.float32), np.arange(2))
        vectors.save()
    # crash 2: a pending row whose vectors were never published
    catalog.store.add_pending(external_id="lost", title="", owner="", rights=Rights.protected, sha256="1" * 64,
                              source_path="", duration_s=1.0, model="x", vectors=5, fingerprint=np.zeros(3, np.uint32))

    summary = catalog.index_paths(paths, Rights.protected)
    assert summary.skipped == [str(paths[0])] and len(summary.indexed) == 2
    rows = {t.external_id: t for t in catalog.store.list_tracks(state=None)}
    assert set(rows) == {"track4", "track6", "track8", "ghost"}   # no manifest: ids are file names
    assert all(t.state == "indexed" for t in rows.values())
    assert catalog.vectors.tracks() == {t.id: t.vectors for t in rows.values()}
    assert rows["track4"].id == ids["track4"]


def test_failed_file_is_recorded_and_the_job_goes_on(music, tmp_path):
    bad = tmp_path / "bad.ogg"
    bad.write_bytes(b"OggS" + bytes(1000))
    catalog = Engine(Settings(home=tmp_path / "home")).catalog
    summary = catalog.index_paths([bad, music["drascula-track4"].path], Rights.protected)
    assert len(summary.indexed) == 1
    assert summary.failed[0][0] == str(bad) and "audio" in summary.failed[0][1]
