"""A catalog searched in shards (``index/sharded.py``) finds, and decides, exactly what it does
searched whole."""
from __future__ import annotations

import numpy as np
import torch
import torchaudio.functional as AF

from detector.audio import Clip, decode
from index.search import Searcher
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
