"""What a reviewer sees of a check: its matches laid out so that output and reference line up,
the reference excerpts they may hear, and the spectrogram images of the evidence report.

Alignment: a match maps reference time ``r`` to output time
``q(r) = query_start + (r − ref_start) / tempo_ratio``. Each match is drawn in a box spanning
its reference excerpt (the matched span plus a margin) mapped onto output seconds; the
reference fills the box and the output is placed in it by the same mapping, so the matched
span sits at the same horizontal position in both lanes, whatever the tempo ratio.
"""
from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torchaudio import functional as AF

from detector.audio import Clip, DecodeLimits, decode, encode
from detector.errors import NotFound
from index.reviews import AuditEntry, CheckRecord, Review
from service.dashboard import reperformance, spectrogram
from service.dashboard.errors import Refused
from service.engine import Engine

LISTEN_RATE = 22050     # Hz: what reviewers hear of reference excerpts
TRANSPOSE_BLOCK_S = 30.0    # seconds of an excerpt transposed at once ...
TRANSPOSE_FADE_S = 0.2      # ... and cross-faded with the next
EXCERPTS_KEPT = 32      # recent excerpts kept encoded (about 0.5 MB for 40 s): reviewers of a check hear the same


@dataclass(frozen=True)
class Place:
    """A horizontal placement inside a box, in percent of the box's width."""

    left: float
    width: float

    @property
    def css(self) -> str:
        return f"left: {self.left:.4f}%; width: {self.width:.4f}%"


@dataclass(frozen=True)
class MatchView:
    """One match of a check, with the reference excerpt served for it (seconds of the reference)."""

    number: int                  # 1-based, as shown to reviewers
    match: dict                  # the match as in the result JSON
    excerpt_start: float
    excerpt_end: float
    output_duration: float
    source_path: str | None      # the reference recording's file, None once taken down
    reference_duration: float | None = None

    def to_output(self, r: float) -> float:
        """Output seconds aligned with reference second ``r``."""
        m = self.match
        return m["query_start"] + (r - m["ref_start"]) / m["tempo_ratio"]

    @property
    def window(self) -> tuple[float, float]:
        """The excerpt's extent in output seconds: the box the match is drawn in."""
        return self.to_output(self.excerpt_start), self.to_output(self.excerpt_end)

    @property
    def output_segment(self) -> tuple[float, float]:
        """The part of the output inside the box, output seconds."""
        w0, w1 = self.window
        return max(0.0, w0), min(self.output_duration, w1)

    def place(self, start: float, end: float) -> Place:
        """Where output seconds ``start``–``end`` lie in the box."""
        w0, w1 = self.window
        return Place((start - w0) / (w1 - w0) * 100, (end - start) / (w1 - w0) * 100)

    @property
    def span(self) -> Place:
        """The matched span in the box: the same in the output and the reference lane."""
        return self.place(self.match["query_start"], self.match["query_end"])

    @property
    def is_reperformance(self) -> bool:
        return self.match["method"] == "version"

    @property
    def shift(self) -> int:
        """Semitones that bring the reference to the output's key (0 for copies)."""
        return int(self.match.get("key_shift_st", 0))

    @property
    def coverage(self) -> tuple[float, float | None]:
        """Fractions of the output and of the reference recording (None once taken down) that
        the matched span covers."""
        m = self.match
        return ((m["query_end"] - m["query_start"]) / self.output_duration,
                (m["ref_end"] - m["ref_start"]) / self.reference_duration if self.reference_duration else None)

    @property
    def overview(self) -> Place:
        """The matched span in the whole output."""
        start, end, d = self.match["query_start"], self.match["query_end"], self.output_duration
        return Place(start / d * 100, (end - start) / d * 100)


@dataclass(frozen=True)
class CheckView:
    record: CheckRecord
    matches: list[MatchView]
    audit: list[AuditEntry]
    output: Path | None          # the kept audio of the output, None when it was not kept

    @property
    def result(self) -> dict:
        return self.record.result


def check_view(engine: Engine, review: Review, check_id: str) -> CheckView:
    """Everything the check page and the report show about ``check_id``; 404 when unknown."""
    record = review.check_record(check_id)
    if record is None:
        raise NotFound(f"no check with id '{check_id}'")
    result = record.result
    margin = engine.settings.review_excerpt_margin_s
    views = []
    for n, m in enumerate(result["matches"], 1):
        track = engine.store.find(m["external_id"])
        end = m["ref_end"] + margin
        views.append(MatchView(n, m, max(0.0, m["ref_start"] - margin), min(end, track.duration_s) if track else end,
                               result["duration_s"], track.source_path if track else None,
                               track.duration_s if track else None))
    output = engine.output_path(result["id"], result["input"])
    return CheckView(record, views, review.audit_trail("check", check_id), output if output.is_file() else None)


def _source(view: MatchView) -> str:
    if view.source_path is None:
        raise Refused(410, f"'{view.match['external_id']}' is no longer in the catalog; its audio cannot be played")
    return view.source_path


def _reference(engine: Engine, view: MatchView, sample_rate: int) -> Clip:
    """The excerpt of the reference, decoded alone: sought to, not decoded up to."""
    return decode(_source(view), sample_rate, limits=engine.limits(engine.settings.max_reference_s),
                  start=view.excerpt_start, end=view.excerpt_end)


def reference_excerpt(engine: Engine, view: MatchView, shift: int = 0) -> bytes:
    """The matched span of the reference plus margin, as Ogg Vorbis; never more of the recording.
    ``shift``: transposed by that many semitones (a re-performance's reference played in the
    output's key), its tempo kept."""
    path = _source(view)
    return _excerpt_ogg(path, _mtime(path), view.excerpt_start, view.excerpt_end,
                        engine.limits(engine.settings.max_reference_s), shift)


def _mtime(path: str) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None             # decoding says what is wrong with it


@lru_cache(maxsize=EXCERPTS_KEPT)
def _excerpt_ogg(path: str, version: int | None, start: float, end: float, limits: DecodeLimits,
                 shift: int = 0) -> bytes:
    """Seconds ``start``–``end`` of ``path`` as Ogg Vorbis, transposed by ``shift`` semitones;
    ``version`` (its mtime) keys the cache, so a file changed in place is read again."""
    clip = decode(path, LISTEN_RATE, limits=limits, start=start, end=end)
    if shift:
        clip = Clip(np.clip(transposed(clip.samples, LISTEN_RATE, shift), -1.0, 1.0), LISTEN_RATE, clip.source)
    return encode(clip, "ogg")


def transposed(samples: np.ndarray, sample_rate: int, shift: int) -> np.ndarray:
    """``samples`` moved ``shift`` semitones, their tempo and level kept: a phase vocoder and a
    resampling (torchaudio) over ``TRANSPOSE_BLOCK_S`` at a time, the blocks cross-faded over
    ``TRANSPOSE_FADE_S``, so memory stays that of one block whatever the length (whole, ten
    minutes of audio took 1.9 GB)."""
    block, fade = int(TRANSPOSE_BLOCK_S * sample_rate), int(TRANSPOSE_FADE_S * sample_rate)
    out = np.zeros(len(samples), np.float32)
    ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
    for start in range(0, len(samples), block):
        lo = max(0, start - fade)
        piece = np.ascontiguousarray(samples[lo:start + block])
        with torch.inference_mode():
            part = AF.pitch_shift(torch.from_numpy(piece)[None], sample_rate, shift)[0].numpy()
        part *= _rms(piece) / max(_rms(part), 1e-9)       # its level kept (shifting up loses some)
        if lo < start:       # fade this block in over the end of the previous one, which fades out
            n = start - lo
            out[lo:start] = out[lo:start] * ramp[::-1][:n] + part[:n] * ramp[:n]
            part = part[n:]
        out[start:start + len(part)] = part
    return out


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0


def reperformance_view(engine: Engine, check: CheckView, view: MatchView) -> reperformance.ReperformanceView | None:
    """The melodies, chroma and agreement of a re-performance (``reperformance.py``); None when
    the output was not kept or the reference is gone."""
    if check.output is None or view.source_path is None:
        return None
    m = view.match
    return _reperformance(str(check.output), view.source_path, _mtime(view.source_path), view.excerpt_start,
                          view.excerpt_end, tuple(sorted(m.items())), engine.embedder.fe.sample_rate,
                          engine.limits(engine.settings.max_reference_s))


@lru_cache(maxsize=EXCERPTS_KEPT)
def _reperformance(output: str, reference: str, version: int | None, start: float, end: float, match: tuple,
                   sample_rate: int, limits: DecodeLimits) -> reperformance.ReperformanceView:
    m = dict(match)
    out = decode(output, sample_rate, limits=limits, start=m["query_start"], end=m["query_end"])
    ref = decode(reference, sample_rate, limits=limits, start=start, end=end)
    return reperformance.view(out, ref, m, start)


@dataclass(frozen=True)
class ReportImages:
    """Spectrograms of the evidence report as ``data:`` URIs, and the views of re-performances."""

    overview: str                # the whole output
    outputs: list[str]           # per match: the output segment in its box
    references: list[str]        # per match: the reference excerpt
    low_hz: float                # the lowest and highest band drawn
    high_hz: float
    reperformances: list[reperformance.ReperformanceView | None]     # per match (None: a copy)


def report_images(engine: Engine, view: CheckView) -> ReportImages:
    fe = engine.embedder.fe
    if view.output is None:
        raise Refused(409, "the output's audio was not kept, so the report's spectrograms cannot be drawn")
    out = decode(view.output, fe.sample_rate, limits=engine.limits(engine.settings.max_audio_s))
    return ReportImages(
        _data_uri(spectrogram.png(out, fe)),
        [_data_uri(spectrogram.png(out.excerpt(*m.output_segment), fe)) for m in view.matches],
        [_data_uri(spectrogram.png(_reference(engine, m, fe.sample_rate), fe)) if m.source_path else ""
         for m in view.matches],
        fe.f_min, fe.f_min * 2 ** ((fe.n_bands - 1) / 12),
        [reperformance_view(engine, view, m) if m.is_reperformance else None for m in view.matches])


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
