"""What a reviewer sees of a re-performance (a ``version`` match): the two melodies as a piano
roll and the two chroma sequences, one above the other over the matched span, the reference
transposed by the measured key shift and mapped onto output time at the measured tempo; and
how well they agree, beside how well they agree at the eleven other transpositions (what chance
gives for this pair).

Both come from the version layer's own views (``detector/version.py``): ``melody``, the
predominant pitch ten times a second, and ``chroma``, which its search aligned.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass

import numpy as np

from detector import version, version_model
from detector.audio import Clip
from service.dashboard.spectrogram import colour, encode_png

COLUMN_PX = 3                # image columns per tenth of a second of output
NOTE_PX = 4                  # image rows per semitone of the piano roll
CLASS_PX = 8                 # image rows per pitch class of the chroma
GAP_PX = 6                   # rows between the output's panel and the reference's
OUTPUT_RGB = (44, 61, 99)    # the check page's output and reference colours
REFERENCE_RGB = (125, 79, 29)
GHOST_RGB = (214, 220, 232)  # the output's notes drawn faintly under the reference's
PAPER_RGB = (255, 255, 255)
C_ROW_RGB = (240, 242, 246)


@dataclass(frozen=True)
class Agreement:
    """Agreement of two aligned views over the matched span: at the measured key shift, and the
    mean over the other eleven transpositions (what unrelated music in another key gets)."""

    aligned: float
    elsewhere: float


@dataclass(frozen=True)
class ReperformanceView:
    melody_png: bytes            # the piano roll
    chroma_png: bytes
    melody: Agreement            # fraction of frames where both have a melody that share its pitch class
    harmony: Agreement           # mean cosine of the two chroma frames
    frames: int                  # tenths of a second compared

    @property
    def melody_uri(self) -> str:
        return _uri(self.melody_png)

    @property
    def chroma_uri(self) -> str:
        return _uri(self.chroma_png)


def view(output: Clip, reference: Clip, match: dict, reference_start: float) -> ReperformanceView:
    """The view of ``match`` (as in the result JSON) from the output's matched span, ``output``
    (its first sample at the span's start), and the reference excerpt ``reference`` starting at
    reference second ``reference_start``; both clips at the front end's rate."""
    fps = version.CHROMA_FPS
    (out_melody, out_chroma), (ref_melody, ref_chroma) = (_views(clip.samples) for clip in (output, reference))
    n = min(len(out_melody), out_chroma.shape[1], round((match["query_end"] - match["query_start"]) * fps))
    # the reference frame heard at each output frame of the span, at the measured tempo
    at = np.round((match["ref_start"] - reference_start + np.arange(n) / fps * match["tempo_ratio"]) * fps).astype(int)
    inside = (at >= 0) & (at < min(len(ref_melody), ref_chroma.shape[1]))
    at = np.clip(at, 0, max(0, min(len(ref_melody), ref_chroma.shape[1]) - 1))
    shift = int(match.get("key_shift_st", 0))
    out_m, out_c = out_melody[:n], out_chroma[:, :n]
    ref_m = np.where(inside & (ref_melody[at] >= 0), ref_melody[at] + shift, -1)
    ref_c = np.where(inside, ref_chroma[:, at], 0.0)
    return ReperformanceView(_piano_roll(out_m, ref_m), _chroma_image(out_c, np.roll(ref_c, shift, 0)),
                             _agreement(lambda k: _melody_agreement(out_m, ref_m, k)),
                             _agreement(lambda k: _harmony_agreement(out_c, np.roll(ref_c, shift + k, 0))), n)


def _views(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(melody, chroma) of mono samples at the front end's rate, from one semitone spectrogram."""
    power = version_model.band_power(samples)
    return version_model.melody(power), version.chroma(version_model.stored_pitch_classes(power))


def _agreement(at_shift) -> Agreement:
    return Agreement(at_shift(0), float(np.mean([at_shift(k) for k in range(1, 12)])))


def _melody_agreement(a: np.ndarray, b: np.ndarray, extra_shift: int) -> float:
    both = (a >= 0) & (b >= 0)
    return float(np.mean((a[both] - b[both] - extra_shift) % 12 == 0)) if both.any() else 0.0


def _harmony_agreement(a: np.ndarray, b: np.ndarray) -> float:
    norms = np.linalg.norm(a, axis=0) * np.linalg.norm(b, axis=0)
    both = norms > 0
    return float(np.mean((a * b).sum(0)[both] / norms[both])) if both.any() else 0.0


def _piano_roll(output: np.ndarray, reference: np.ndarray) -> bytes:
    """Two panels of notes over time, the output's above the reference's (transposed), the
    output's drawn faintly under the reference's; rows from the lowest note either plays."""
    played = np.concatenate([output[output >= 0], reference[reference >= 0]])
    low, high = (int(played.min()) - 2, int(played.max()) + 2) if len(played) else version_model.MELODY_MIDI
    rows = high - low + 1

    def panel(notes: np.ndarray, rgb, ghost: np.ndarray | None = None) -> np.ndarray:
        image = np.empty((rows, len(notes), 3), np.uint8)
        image[:] = PAPER_RGB
        image[(high - np.arange(rows)) % 12 == 0] = C_ROW_RGB          # the C of every octave, a guide
        for drawn, ink in (((ghost, GHOST_RGB),) if ghost is not None else ()) + ((notes, rgb),):
            t = np.flatnonzero((drawn >= low) & (drawn <= high))
            image[high - drawn[t], t] = ink
        return np.repeat(np.repeat(image, NOTE_PX, 0), COLUMN_PX, 1)

    top, bottom = panel(output, OUTPUT_RGB), panel(reference, REFERENCE_RGB, ghost=output)
    return encode_png(np.concatenate([top, _gap(top.shape[1]), bottom]))


def _chroma_image(output: np.ndarray, reference: np.ndarray) -> bytes:
    """Two 12-row chroma panels (C at the bottom), the output's above the reference's."""
    def panel(c: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(colour(np.clip(c[::-1], 0, 1)), CLASS_PX, 0), COLUMN_PX, 1)

    top = panel(output)
    return encode_png(np.concatenate([top, _gap(top.shape[1]), panel(reference)]))


def _gap(width: int) -> np.ndarray:
    return np.full((GAP_PX, width, 3), 255, np.uint8)


def _uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()
