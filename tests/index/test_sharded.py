"""A catalog searched in shards (``index/sharded.py``) finds, and decides, exactly what it does
searched whole, cut in the serving process or opened as its publish saved them."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import torchaudio.functional as AF

from detector.audio import Clip, decode
from detector.landmarks import default_calibration
from detector.version_model import shipped
from index import sharded
from index.search import Searcher
from index.sharded import LocalShards, ShardServer
from service.engine import Engine
from service.settings import Settings


def test_a_catalog_searched_in_four_shards_decides_exactly_as_one_process(engine, catalog_home, music):
    sharded = Engine(Settings(home=catalog_home))
    sharded.catalog.searcher = Searcher(sharded.catalog, shards=4)
    sr = engine.embedder.fe.sample_rate
    song = lambda track, a, b: decode(music[track].path, sr).excerpt(a, b).samples
    copy = song("drascula-track11", 40.0, 60.0)
    other = song("drascula-track10", 10.0, 30.0)
    pitched = AF.pitch_shift(torch.from_numpy(copy), sr, 3).numpy()
    faster = AF.resample(torch.from_numpy(copy), 110, 100).numpy()
    unseen = [t for t, row in music.items() if row.role == "unseen"][:2]
    outputs = {"copy": copy, "pitched": pitched, "faster": faster, "mixed": copy + 0.7 * other[:len(copy)],
               "licensed": song("drascula-track29", 5.0, 35.0),
               **{t: song(t, 20.0, 50.0) for t in unseen},
               # a whole song: 10 s of the copy inside 3 minutes of music not in the catalog
               "song": np.concatenate([np.resize(song(unseen[0], 0.0, 60.0), 100 * sr), copy[:10 * sr],
                                       np.resize(song(unseen[1], 0.0, 60.0), 70 * sr)])}
    verdicts = set()
    for name, samples in outputs.items():
        clip = Clip(samples.astype(np.float32), sr, name)
        whole, in_shards = engine.assess(clip), sharded.assess(clip)
        assert in_shards == whole, name              # every match, span and score, and the decision
        verdicts.add(whole.verdict.name)
    assert verdicts == {"block", "allow"}
    parts = sharded.catalog.searcher.index("landmark").fanout.shards
    assert len(parts) == 4 and all(len(p.indexes["landmark"]) for p in parts)
    assert sum(len(p.indexes["landmark"]) for p in parts) == len(engine.catalog.landmark_index)


def test_a_publish_saves_the_shards_that_replicas_open_instead_of_cutting_them(engine, catalog_home, music, tmp_path,
                                                                               monkeypatch):
    home = tmp_path / "home"
    shutil.copytree(catalog_home, home)
    settings = Settings(home=home, serve_shards=2)
    writer = Engine(settings)
    gone = next(t.external_id for t in writer.store.list_tracks() if t.external_id != "drascula-track11")
    writer.catalog.remove([gone])                                  # a publish, in 2 shards too
    whole = Engine(Settings(home=home))
    vectors = whole.catalog.vectors
    assert sorted(p.name for p in (vectors.folder / "shards-2").iterdir()) == ["0", "1"]
    monkeypatch.setattr(ShardServer, "_cut", lambda self: pytest.fail("a shard cut from the whole catalog"))
    shards = [ShardServer(writer.shard_source(), k, 2).shards[vectors.generation] for k in range(2)]
    assert sum(len(s.indexes["landmark"]) for s in shards) == len(whole.catalog.landmark_index)

    opened = Engine(Settings(home=home))
    opened.catalog.searcher = Searcher(opened.catalog, shards=2)
    opened.catalog.searcher._indexes = sharded.proxies(LocalShards(shards), [s.sizes() for s in shards],
                                                       vectors.info, vectors.skimmed, default_calibration(), shipped()[0])
    sr = engine.embedder.fe.sample_rate
    song = lambda track, a, b: decode(music[track].path, sr).excerpt(a, b).samples
    copy, unseen = song("drascula-track11", 40.0, 60.0), next(t for t, row in music.items() if row.role == "unseen")
    outputs = [copy, copy + 0.7 * song("drascula-track10", 10.0, 30.0), song(unseen, 20.0, 50.0),
               np.concatenate([np.resize(song(unseen, 0.0, 60.0), 100 * sr), copy[:10 * sr]])]   # searched by skim
    decisions = [whole.assess(Clip(x.astype(np.float32), sr, "output")) for x in outputs]
    assert [d.verdict.name for d in decisions] == ["block", "block", "allow", "block"]
    assert [opened.assess(Clip(x.astype(np.float32), sr, "output")) for x in outputs] == decisions
