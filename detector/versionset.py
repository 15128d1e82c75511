"""The version layer's development set: works re-performed from notation, with ground truth.

There are no recorded covers here, so re-performances are made: the notes of public-domain works
from music21's bundled corpus (the Bach chorales, Ryan's Mammoth Collection, Palestrina) are
arranged and rendered with FluidSynth and Debian's General MIDI soundfonts, at the product's
sample rate. A work's *reference* is its catalog recording; a *version* changes what a
re-performance changes:

========================  =====================================================================
``timbre``                another soundfont, every instrument remapped to another GM program
``key``                   transposed by 1 to 6 semitones, up or down
``tempo``                 0.75-1.33x the reference's tempo, onsets humanised
``arrangement``           the melody kept; inner voices dropped, a new accompaniment and drums
``all``                   every one of the above
``edit5`` ... ``edit50``  ``timbre``, with 5-50 % of the notes moved to other pitches
========================  =====================================================================

Works are split by melody (chorales that share one are one group) into ``train`` and
``heldout``; the soundfont ``HELDOUT_SOUNDFONT`` is never used for training. Parsing the corpus
takes minutes and is cached (``works``); renders are made on demand (``Renderer``).

music21 and pyfluidsynth are the ``versions`` extra (``scripts/setup`` installs them with
Debian's FluidSynth and soundfonts); the product never imports this module.

    python -m detector.versionset        # parse the corpus into the cache; print the split
"""
from __future__ import annotations

import argparse
import math
import pickle
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 8000                      # Hz: the fingerprint front end's rate
CACHE = Path.home() / ".cache/clearance/versions"
COLLECTIONS = {"bach": "bach", "ryans": "ryansMammoth", "palestrina": "palestrina"}
SOUNDFONTS = {
    "fluidr3": Path("/usr/share/sounds/sf3/FluidR3Mono_GM.sf3"),
    "musescore": Path("/usr/share/sounds/sf3/MuseScore_General_Lite.sf3"),
    "timgm": Path("/usr/share/sounds/sf2/TimGM6mb.sf2"),
}
TRAIN_SOUNDFONTS = ("fluidr3", "musescore")
HELDOUT_SOUNDFONT = "timgm"
TRANSFORMS = ("timbre", "key", "tempo", "arrangement", "all")
EDITS = {"edit5": 0.05, "edit15": 0.15, "edit30": 0.30, "edit50": 0.50}
MAX_QUARTERS = 96                       # notes past this are not rendered: about 50 s at the reference tempo
HELDOUT_SHARE = 0.3
DRUMS = 9                               # the General MIDI percussion channel

# General MIDI programs a reference may use, by role; a ``timbre`` version draws from all of them
PALETTE = {
    "lead": (0, 4, 11, 24, 40, 41, 56, 60, 65, 68, 71, 73, 21, 22, 52, 80),
    "inner": (0, 19, 42, 48, 49, 52, 61, 69, 70, 89, 24, 46),
    "bass": (32, 33, 35, 42, 43, 58, 70, 0),
    "chords": (0, 4, 19, 24, 25, 46, 48, 89, 16),
}


@dataclass(frozen=True)
class Work:
    """One piece of notation. ``notes``: (n, 4) float32 rows of onset and duration (quarter
    notes), MIDI pitch and part (0 is the top part: the melody); ``group``: works that share a
    melody share it (chorale harmonisations of one tune), and are versions of each other."""

    work_id: str
    collection: str
    group: str
    notes: np.ndarray
    bar_q: float                         # quarter notes per bar
    tonic: int                           # pitch class
    minor: bool
    qpm: float                           # the reference's tempo, quarter notes per minute

    @property
    def parts(self) -> int:
        return int(self.notes[:, 3].max()) + 1 if len(self.notes) else 0

    @property
    def split(self) -> str:
        return "heldout" if zlib.crc32(self.group.encode()) % 1000 < HELDOUT_SHARE * 1000 else "train"


@dataclass(frozen=True)
class Note:
    """One note of a performance, in seconds."""

    start: float
    end: float
    pitch: int
    velocity: int
    channel: int


@dataclass(frozen=True)
class Performance:
    """What a renderer plays: notes, each channel's General MIDI program, the soundfont, and
    how it relates to the work's reference (semitones, tempo ratio: reference s per version s)."""

    notes: tuple[Note, ...]
    programs: dict[int, int]
    soundfont: str
    key_shift: int
    tempo: float


# ---------------------------------------------------------------------------------------------
# works


def _melody_signature(pitches: list[int]) -> str:
    """The first dozen melodic intervals, repeated notes merged: a transposition-invariant key
    for chorale melodies shared by several harmonisations."""
    merged = [p for i, p in enumerate(pitches) if i == 0 or p != pitches[i - 1]]
    return ",".join(str(b - a) for a, b in zip(merged[:13], merged[1:13]))


def parse(collection: str, path: str) -> Work | None:
    """The work in the corpus file ``path`` of ``collection`` (a key of ``COLLECTIONS``); None
    for a file music21 cannot read or with fewer than 16 notes."""
    import music21
    from music21 import corpus, harmony

    try:
        score = corpus.parse(path)
        if isinstance(score, music21.stream.Opus):
            score = score.scores[0]
        rows = []
        for part_no, part in enumerate(score.parts):
            for n in part.flatten().notes:
                if isinstance(n, harmony.ChordSymbol) or n.quarterLength <= 0:
                    continue
                for p in n.pitches:
                    rows.append((float(n.offset), float(n.quarterLength), p.midi, part_no))
        if len(rows) < 16:
            return None
        notes = np.array(rows, np.float32)
        _, notes[:, 3] = np.unique(notes[:, 3], return_inverse=True)     # parts that hold notes, top first
        notes = notes[np.lexsort((-notes[:, 2], notes[:, 0]))]
        ts = score.flatten().getElementsByClass("TimeSignature")
        bar_q = float(ts[0].barDuration.quarterLength) if ts else 4.0
        key = score.analyze("key")
    except Exception:                    # noqa: BLE001 - a work music21 cannot read is skipped
        return None
    name = Path(path).stem
    work_id = f"{collection}/{name}"
    top = notes[notes[:, 3] == 0]
    group = f"bach-melody/{_melody_signature([int(p) for p in top[:, 2]])}" if collection == "bach" else work_id
    base = {"bach": 84, "ryans": 112, "palestrina": 100}[collection]
    qpm = base * 2 ** ((zlib.crc32(work_id.encode()) % 1000 / 1000 - 0.5) * 0.5)
    return Work(work_id, collection, group, notes, bar_q, key.tonic.pitchClass, key.mode == "minor", qpm)


def works(cache: Path = CACHE, jobs: int = 2) -> list[Work]:
    """Every usable work of the three collections (parsed once, then read from ``cache``)."""
    path = cache / "works.pkl"
    if path.exists():
        with open(path, "rb") as f:
            return [Work(**fields) for fields in pickle.load(f)]
    from music21 import corpus

    todo = [(c, str(p)) for c, name in COLLECTIONS.items() for p in sorted(corpus.getComposer(name))]
    with ProcessPoolExecutor(jobs) as pool:
        found = [w for w in pool.map(parse, *zip(*todo), chunksize=8) if w is not None]
    cache.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".tmp"), "wb") as f:
        pickle.dump([vars(w) for w in found], f)
    path.with_suffix(".tmp").replace(path)
    return found


# ---------------------------------------------------------------------------------------------
# arranging


MAJOR_TRIADS = ((0, (0, 4, 7)), (5, (5, 9, 0)), (7, (7, 11, 2)), (9, (9, 0, 4)), (2, (2, 5, 9)), (4, (4, 7, 11)))
MINOR_TRIADS = ((0, (0, 3, 7)), (5, (5, 8, 0)), (7, (7, 11, 2)), (8, (8, 0, 3)), (3, (3, 7, 10)), (10, (10, 2, 5)))
STYLES = ("block", "oompah", "arpeggio", "waltz")


def chords(work: Work) -> list[tuple[int, tuple[int, ...]]]:
    """One triad per bar, (root, pitch classes): the diatonic triad that holds most of the
    melody's duration in that bar (earlier, commoner triads win ties)."""
    melody = work.notes[work.notes[:, 3] == 0]
    bars = int(math.ceil(min(MAX_QUARTERS, float((melody[:, 0] + melody[:, 1]).max())) / work.bar_q))
    triads = MINOR_TRIADS if work.minor else MAJOR_TRIADS
    out = []
    for b in range(bars):
        inside = melody[(melody[:, 0] >= b * work.bar_q) & (melody[:, 0] < (b + 1) * work.bar_q)]
        weight = np.zeros(12)
        np.add.at(weight, (inside[:, 2].astype(int) - work.tonic) % 12, inside[:, 1])
        scores = [weight[list(pcs)].sum() - 0.01 * i for i, (_, pcs) in enumerate(triads)]
        root, pcs = triads[int(np.argmax(scores))]
        out.append(((root + work.tonic) % 12, tuple((p + work.tonic) % 12 for p in pcs)))
    return out


def _near(pc: int, low: int) -> int:
    """The MIDI pitch of pitch class ``pc`` at or just above ``low``."""
    return low + (pc - low) % 12


def accompaniment(work: Work, style: str) -> list[tuple[float, float, int, int]]:
    """(onset q, duration q, pitch, role) of a bass and chords under the melody; role 1 is the
    chords, 2 the bass."""
    bar = work.bar_q
    beat = 1.0 if bar in (2.0, 4.0, 3.0) else bar / 2
    out = []
    for b, (root, pcs) in enumerate(chords(work)):
        t0 = b * bar
        bass = _near(root, 36)
        voicing = sorted(_near(pc, 53) for pc in pcs)
        if style == "block":
            out += [(t0, bar, bass, 2)] + [(t0, bar, p, 1) for p in voicing]
        elif style == "oompah":
            for k in range(int(round(bar / beat))):
                on = t0 + k * beat
                out += [(on, beat * 0.9, bass if k % 2 == 0 else bass + 7, 2)] if k % 2 == 0 else \
                    [(on, beat * 0.6, p, 1) for p in voicing]
        elif style == "arpeggio":
            out.append((t0, bar, bass, 2))
            cycle = voicing + [voicing[1]]
            for k in range(int(round(bar / 0.5))):
                out.append((t0 + k * 0.5, 0.5, cycle[k % 4], 1))
        else:                            # waltz: bass on the downbeat, chords on every other beat
            out.append((t0, beat, bass, 2))
            for k in range(1, int(round(bar / beat))):
                out += [(t0 + k * beat, beat * 0.7, p + 12, 1) for p in voicing]
    return out


def drums(work: Work, rng: np.random.Generator) -> list[tuple[float, float, int, int]]:
    """A kit pattern over every bar: kick on the strong beats, snare on the others, hi-hat."""
    bars = int(math.ceil(min(MAX_QUARTERS, float((work.notes[:, 0] + work.notes[:, 1]).max())) / work.bar_q))
    hat = (42, 44, 46)[rng.integers(3)]
    out = []
    for b in range(bars):
        for k in range(int(round(work.bar_q))):
            on = b * work.bar_q + k
            out.append((on, 0.25, 36 if k % 2 == 0 else 38, 3))
            out += [(on, 0.25, hat, 3), (on + 0.5, 0.25, hat, 3)]
    return out


def perform(work: Work, transform: str = "reference", seed: int = 0,
            soundfonts: tuple[str, ...] = tuple(SOUNDFONTS)) -> Performance:
    """The reference performance of ``work`` (``transform="reference"``) or one of its versions
    (``TRANSFORMS``, ``EDITS``), deterministic in (work, transform, seed). A ``timbre`` change
    picks its soundfont among ``soundfonts`` (other than the reference's)."""
    ref = np.random.default_rng(zlib.crc32(work.work_id.encode()))
    rng = np.random.default_rng([zlib.crc32(f"{work.work_id}/{transform}".encode()), seed])
    single = work.parts == 1
    # the reference: the work's parts (a single line gets a bass and block chords)
    events = [(float(o), float(d), int(p), 0 if part == 0 else (1 if part < work.parts - 1 else 2))
              for o, d, p, part in work.notes if o < MAX_QUARTERS]
    if single:
        events += accompaniment(work, STYLES[ref.integers(len(STYLES))])
    programs = {role: int(ref.choice(PALETTE[name])) for role, name in enumerate(("lead", "inner", "bass"))}
    sf = TRAIN_SOUNDFONTS[ref.integers(len(TRAIN_SOUNDFONTS))]
    key, tempo, humanise = 0, 1.0, 0.0
    steps = {"all": ("timbre", "key", "tempo", "arrangement")}.get(transform, (transform,))
    if transform in EDITS:
        steps = ("timbre",)
    if "arrangement" in steps:
        melody = [e for e in events if e[3] == 0]
        style = STYLES[rng.integers(len(STYLES))]
        kept = [e for e in events if e[3] == 2] if not single and rng.random() < 0.5 else []
        events = melody + kept + accompaniment(work, style) + drums(work, rng)
    if "timbre" in steps:
        others = [s for s in soundfonts if s != sf] or [sf]
        sf = others[rng.integers(len(others))]
        programs = {role: int(rng.choice([p for p in PALETTE[name] if p != programs[role]]))
                    for role, name in enumerate(("lead", "inner", "bass"))}
    if "key" in steps:
        key = int(rng.choice([-6, -5, -4, -3, -2, -1, 1, 2, 3, 4, 5, 6]))
    if "tempo" in steps:
        tempo = math.exp(rng.uniform(math.log(0.75), math.log(1.33)))
        while abs(math.log(tempo)) < math.log(1.05):
            tempo = math.exp(rng.uniform(math.log(0.75), math.log(1.33)))
        humanise = 0.012
    if transform in EDITS:
        pitched = [i for i, e in enumerate(events) if e[3] != 3]
        moved = rng.choice(pitched, int(round(EDITS[transform] * len(pitched))), replace=False)
        for i in moved:
            o, d, p, role = events[i]
            events[i] = (o, d, p + int(rng.choice([-4, -3, -2, -1, 1, 2, 3, 4])), role)
    spq = 60.0 / (work.qpm * tempo)      # seconds per quarter note in this performance
    jitter = rng.normal(0, humanise, len(events)) if humanise else np.zeros(len(events))
    notes = []
    for (o, d, p, role), j in zip(events, jitter):
        channel = DRUMS if role == 3 else role
        pitch = p if role == 3 else min(max(p + key, 12), 115)
        start = max(0.0, o * spq + j)
        velocity = int(np.clip(rng.normal(88 if role == 0 else 70, 8 if humanise else 0), 30, 120))
        notes.append(Note(start, start + max(d * spq * 0.95, 0.05), pitch, velocity, channel))
    return Performance(tuple(sorted(notes, key=lambda n: n.start)), programs, sf, key, tempo)


# ---------------------------------------------------------------------------------------------
# rendering


class Renderer:
    """FluidSynth, one synthesiser per soundfont kept loaded (loading one takes a second;
    rendering runs several hundred times real time at 8 kHz)."""

    def __init__(self, sample_rate: int = SAMPLE_RATE):
        self.sample_rate = sample_rate
        self._synths: dict[str, tuple] = {}

    def _synth(self, soundfont: str):
        if soundfont not in self._synths:
            import fluidsynth

            path = SOUNDFONTS[soundfont]
            if not path.exists():
                raise FileNotFoundError(f"{path}: soundfont missing; run scripts/setup")
            synth = fluidsynth.Synth(samplerate=float(self.sample_rate))
            self._synths[soundfont] = (synth, synth.sfload(str(path)))
        return self._synths[soundfont]

    def render(self, performance: Performance, tail_s: float = 1.0) -> np.ndarray:
        """(samples,) float32 mono at ``sample_rate``, RMS at -20 dBFS."""
        synth, sfid = self._synth(performance.soundfont)
        synth.system_reset()
        for channel, program in performance.programs.items():
            synth.program_select(channel, sfid, 0, program)
        synth.program_select(DRUMS, sfid, 128, 0)
        events = sorted([(n.start, 1, n) for n in performance.notes] + [(n.end, 0, n) for n in performance.notes],
                        key=lambda e: (e[0], e[1]))
        blocks, done = [], 0
        for t, on, n in events:
            at = int(t * self.sample_rate)
            if at > done:
                blocks.append(synth.get_samples(at - done))
                done = at
            if on:
                synth.noteon(n.channel, n.pitch, n.velocity)
            else:
                synth.noteoff(n.channel, n.pitch)
        blocks.append(synth.get_samples(int(tail_s * self.sample_rate)))
        stereo = np.concatenate(blocks).astype(np.float32).reshape(-1, 2)
        mono = stereo.mean(1) / 32768.0
        rms = float(np.sqrt(np.mean(mono ** 2))) + 1e-9
        return (mono * min(0.1 / rms, 0.99 / (np.abs(mono).max() + 1e-9))).astype(np.float32)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=CACHE)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args(argv)
    found = works(args.cache, args.jobs)
    for collection in COLLECTIONS:
        mine = [w for w in found if w.collection == collection]
        held = sum(w.split == "heldout" for w in mine)
        groups = len({w.group for w in mine})
        print(f"{collection:<11} {len(mine):>5} works in {groups:>5} melody groups: "
              f"{len(mine) - held} train, {held} heldout")


if __name__ == "__main__":
    main()
