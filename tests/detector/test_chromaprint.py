import warnings

import numpy as np
import pytest

from detector.chromaprint import ChromaIndex, bits


def _flip(prints: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """``prints`` with each of their bits flipped with probability ``rate``."""
    flipped = bits(prints) ^ (rng.random((len(prints), 32)) < rate).astype(np.uint8)
    return np.packbits(flipped, axis=1).reshape(-1).view(np.uint32)


def test_a_changing_passage_copied_with_bit_errors_is_overwhelming_evidence():
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 2**32, 200, dtype=np.uint64).astype(np.uint32)
    found = ChromaIndex({7: ref}).search(_flip(ref[50:130], 0.05, rng))
    assert found and found[0].track == 7 and found[0].ref_item - found[0].query_item == 50
    assert found[0].p_false < 1e-50


def test_a_held_chord_is_no_evidence_however_well_its_bits_agree():
    # a sustained chord: the sub-fingerprint hardly changes; another recording holding a similar
    # chord agrees on nearly every bit of every item, which says little about a copy
    held = np.full(80, 0x856CF977, np.uint32)
    held[40:] ^= np.uint32(1 << 7)
    query = held[10:70].copy()
    query[::2] ^= np.uint32(1 << 20)
    found = ChromaIndex({3: held}).search(query)
    assert found and found[0].bit_error_rate < 0.02           # 1 bit in 64 differs
    assert all(m.p_false > 1e-3 for m in found)               # not enough to block (score 0.999)


def test_a_passage_whose_bits_never_change_is_no_evidence_and_no_warning():
    # no bit varies: nothing to compare at the shifted alignments either (their mean was taken
    # over no bits, a NaN with a RuntimeWarning, then discarded)
    still = np.full(80, 0x856CF977, np.uint32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        found = ChromaIndex({3: still}).search(still[10:70].copy())
    assert found and all(m.p_false > 1e-3 for m in found)


def test_a_slowly_changing_texture_is_weak_evidence_where_a_nearby_alignment_agrees_too():
    # a texture that drifts a few bits an item (a pad, a fade): another recording of a similar
    # texture agrees at its alignment, but nearly as well a fraction of a second either side
    rng = np.random.default_rng(0)
    texture = [np.uint32(rng.integers(0, 2**32))]
    for _ in range(299):
        texture.append(_flip(np.array([texture[-1]], np.uint32), 0.03, rng)[0])
    ref = np.array(texture, np.uint32)
    found = ChromaIndex({3: ref}).search(_flip(ref[100:200], 0.04, rng))
    assert found and found[0].ref_item - found[0].query_item == 100
    assert found[0].shifted_error_rate < 0.2                  # a fair coin would be 0.5
    assert found[0].p_false > 1e-3                            # not enough to block (score 0.999)


def test_an_index_saved_opened_or_updated_holds_what_one_built_from_fingerprints_does(tmp_path):
    rng = np.random.default_rng(2)
    prints = {k: rng.integers(0, 2**32, 300, dtype=np.uint64).astype(np.uint32) for k in (3, 5, 9)}
    prints[9][:100] = prints[3][:100]              # equal values in two tracks stay in track order
    index = ChromaIndex(prints)
    index.save(tmp_path)
    opened = ChromaIndex.open(tmp_path)

    def same(a: ChromaIndex, b: ChromaIndex) -> bool:
        return all(np.array_equal(getattr(a, name), getattr(b, name)) for name in a.arrays)

    assert same(opened, index)
    query = _flip(prints[5][40:140], 0.03, rng)
    assert opened.search(query) == index.search(query) and index.search(query)[0].track == 5
    assert same(ChromaIndex({3: prints[3]}).updated({5: prints[5], 9: prints[9]}), index)
    assert same(opened.updated({}, drop=[5]), ChromaIndex({3: prints[3], 9: prints[9]}))
    with pytest.raises(ValueError):
        opened.updated({4: prints[5]})
