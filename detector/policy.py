"""Stage 5, matches + rights → ``Decision``: a pure function of its inputs and the policy.

Rights are looked up by the caller at decision time, so a rights change applies to the next
check without re-indexing.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from detector.errors import PolicyError
from detector.matcher import TEMPO_TOLERANCE, Match

DEFAULT_POLICY = Path(__file__).with_name("policies") / "default.toml"


class Rights(str, Enum):
    """The rights in a recording."""

    protected = "protected"
    licensed = "licensed"


class WorkRights(str, Enum):
    """The rights in a work (the song a recording records): ``unknown`` where the catalog
    records the work but not whether it is licensed."""

    protected = "protected"
    licensed = "licensed"
    unknown = "unknown"


class Verdict(str, Enum):
    block = "block"
    review = "review"
    allow = "allow"


@dataclass(frozen=True)
class WorkInfo:
    """What the catalog says about a work when the decision is made."""

    external_id: str            # an ISWC or the catalog's own id
    title: str
    owner: str
    rights: WorkRights


@dataclass(frozen=True)
class TrackInfo:
    """What the catalog says about a reference track, and the work it records (None where the
    catalog names none), when the decision is made."""

    external_id: str
    title: str
    owner: str
    rights: Rights
    work: WorkInfo | None = None


@dataclass(frozen=True)
class Policy:
    version: str
    block_score: float
    block_seconds: float
    block_fraction: float
    review_score: float
    review_seconds: float
    attribution_score: float
    version_review_score: float = 0.999
    version_block_score: float | None = None     # None: a re-performance never blocks
    version_block_seconds: float = 60.0
    version_unknown_work: Verdict = Verdict.review     # a re-performance of a work whose rights are unknown
    licensed_protected_work: Verdict = Verdict.review  # a copy of a licensed recording of a protected work
    licensed_unknown_work: Verdict = Verdict.review    # … of a work whose rights are unknown

    @classmethod
    def load(cls, path: str | Path = DEFAULT_POLICY) -> "Policy":
        try:
            data = tomllib.loads(Path(path).read_text())
            p = cls(version=str(data["version"]),
                    block_score=float(data["block"]["min_score"]),
                    block_seconds=float(data["block"]["min_seconds"]),
                    block_fraction=float(data["block"]["min_fraction"]),
                    review_score=float(data["review"]["min_score"]),
                    review_seconds=float(data["review"]["min_seconds"]),
                    attribution_score=float(data["attribution"]["min_score"]),
                    **_reperformance(data.get("reperformance", {})), **_works(data.get("works", {})))
        except OSError as exc:
            raise PolicyError(f"cannot read policy file {path}: {exc.strerror}") from None
        except (tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as exc:
            raise PolicyError(f"policy file {path} is malformed: {exc!r}") from None
        if not (0 <= p.review_score <= p.block_score <= 1):
            raise PolicyError(f"policy file {path}: need 0 <= review.min_score <= block.min_score <= 1")
        if p.version_unknown_work is Verdict.block:
            raise PolicyError(f"policy file {path}: reperformance.unknown_work is review or allow (a re-performance "
                              "blocks only by block_min_score)")
        return p

    def copy_of_licensed(self, work: WorkInfo | None) -> Verdict:
        """What a copy of a licensed recording gets by the rights of the ``work`` it records."""
        if work is None or work.rights is WorkRights.licensed:
            return Verdict.allow
        return self.licensed_protected_work if work.rights is WorkRights.protected else self.licensed_unknown_work


def _reperformance(table: dict) -> dict:
    """The ``[reperformance]`` table's settings (a policy without one keeps the defaults)."""
    out = {}
    if "review_min_score" in table:
        out["version_review_score"] = float(table["review_min_score"])
    if "block_min_score" in table:
        out["version_block_score"] = float(table["block_min_score"])
    if "block_min_seconds" in table:
        out["version_block_seconds"] = float(table["block_min_seconds"])
    if "unknown_work" in table:
        out["version_unknown_work"] = Verdict(table["unknown_work"])
    return out


def _works(table: dict) -> dict:
    """The ``[works]`` table's settings: what copies of licensed recordings get by their work's rights."""
    out = {}
    if "licensed_recording_of_protected_work" in table:
        out["licensed_protected_work"] = Verdict(table["licensed_recording_of_protected_work"])
    if "licensed_recording_of_unknown_work" in table:
        out["licensed_unknown_work"] = Verdict(table["licensed_recording_of_unknown_work"])
    return out


RECORDING, WORK = "recording", "work"      # the right a match is decided by


@dataclass(frozen=True)
class Decision:
    """The verdict, the reasons a reviewer reads, the matches that count (best first) and,
    among them, those that block on their own. ``decided_by``, per match of ``matches``: the
    right that decided it, ``recording`` or ``work``."""

    verdict: Verdict
    reasons: tuple[str, ...]
    matches: tuple[tuple[Match, TrackInfo], ...]
    blocking: tuple[tuple[Match, TrackInfo], ...] = ()
    decided_by: tuple[str, ...] = ()


def decide(matches: list[Match], tracks: dict[int, TrackInfo], duration: float, policy: Policy) -> Decision:
    """Apply ``policy`` to ``matches`` of an output lasting ``duration`` seconds.

    ``tracks`` maps each match's track key to its current catalog entry; matches of tracks no
    longer in the catalog (taken down meanwhile) are ignored. A signal copy uses the recording
    and the work it records: a protected recording is decided by its own rights, a licensed one
    by its work's as the policy's ``[works]`` table says. A re-performance (``method``
    ``version``) uses the work only: of a protected work it goes to review, or blocks where the
    ``[reperformance]`` thresholds say; of a licensed work it is attributed; a track that names
    no work is decided by its recording's rights. A re-performance of a track, or of a work, that
    the output also copies adds nothing.
    """
    kept: dict[str, list[tuple[Match, TrackInfo, str]]] = {k: [] for k in ("block", "review", "attribute")}
    reasons: dict[str, list[str]] = {k: [] for k in kept}

    def keep(kind: str, m: Match, info: TrackInfo, right: str, reason: str) -> None:
        kept[kind].append((m, info, right))
        reasons[kind].append(reason)

    for m in sorted(matches, key=lambda m: m.method == "version"):     # copies first
        info = tracks.get(m.track)
        if info is None:
            continue
        if m.method == "version":
            _reperformed(m, info, policy, kept, keep)
        else:
            _copied(m, info, duration, policy, keep)
    if kept["block"]:
        verdict = Verdict.block
    elif kept["review"]:
        verdict = Verdict.review
    else:
        verdict = Verdict.allow
        if not kept["attribute"]:
            reasons["attribute"].append("no catalog recording matched")
    ordered = sorted(kept["block"] + kept["review"] + kept["attribute"], key=lambda k: (k[0].p_false, -k[0].duration))
    return Decision(verdict, tuple(reasons["block"] + reasons["review"] + reasons["attribute"]),
                    tuple((m, i) for m, i, _ in ordered), tuple((m, i) for m, i, _ in kept["block"]),
                    tuple(r for _, _, r in ordered))


def _copied(m: Match, info: TrackInfo, duration: float, policy: Policy, keep) -> None:
    """A signal copy of ``info``'s recording: by the recording's rights where it is protected,
    else by its work's. ``keep(kind, match, info, right, reason)`` keeps what counts."""
    long_enough = m.duration >= policy.block_seconds or m.duration >= policy.block_fraction * duration
    blocks = m.score >= policy.block_score and long_enough
    reviews = m.score >= policy.review_score and m.duration >= min(policy.review_seconds, duration)
    work = info.work
    if info.rights is Rights.protected:
        if blocks:
            keep("block", m, info, RECORDING,
                 f"protected recording '{info.external_id}' matched for {m.duration:.1f} s (output "
                 f"{m.query_start:.1f}–{m.query_end:.1f} s = reference {m.ref_start:.1f}–{m.ref_end:.1f} s"
                 f"{_tempo(m)}, score {_fmt(m.score)}, {m.method})")
        elif reviews:
            why = "score below the block threshold" if m.score < policy.block_score else "too short to block on its own"
            keep("review", m, info, RECORDING,
                 f"possible copy of protected recording '{info.external_id}' for {m.duration:.1f} s "
                 f"(score {_fmt(m.score)}, {why}): needs a person")
        return
    used = policy.copy_of_licensed(work)
    if used is Verdict.allow:
        if m.score >= policy.attribution_score:
            of_work = f", of {_work(work)}" if work else ""
            keep("attribute", m, info, WORK if work else RECORDING,
                 f"licensed recording '{info.external_id}' ({info.owner or 'owner not recorded'}){of_work} used for "
                 f"{m.duration:.1f} s: attribute it")
        return
    copy = (f"licensed recording '{info.external_id}' copied for {m.duration:.1f} s (score {_fmt(m.score)}), but "
            f"{_work(work)}, the song it records, {_work_state(work)}: the recording's licence does not cover the song")
    if used is Verdict.block and blocks:
        keep("block", m, info, WORK, f"{copy}; blocked by the policy's [works] table")
    elif reviews:
        keep("review", m, info, WORK, f"{copy}; needs a person")


def _reperformed(m: Match, info: TrackInfo, policy: Policy, kept: dict, keep) -> None:
    """A re-performance of ``info``'s work (of its recording's rights where it names no work);
    ``kept``, what is already kept, by kind."""
    work = info.work
    copies = kept["block"] + kept["review"] + kept["attribute"]
    if m.score < policy.version_review_score or any(
            o.track == m.track or (work is not None and i.work == work) for o, i, _ in copies):
        return
    if work is None:
        if info.rights is Rights.licensed:
            return
        what, right = f"protected recording '{info.external_id}' (no work recorded: its rights decide)", RECORDING
    elif work.rights is WorkRights.licensed:
        keep("attribute", m, info, WORK, f"licensed {_work(work)} re-performed{_version_detail(m)} (recording "
                                         f"'{info.external_id}'): attribute it")
        return
    elif work.rights is WorkRights.unknown and policy.version_unknown_work is Verdict.allow:
        return
    else:
        what, right = f"{_work(work)}, recorded as '{info.external_id}', which {_work_state(work)}", WORK
    if (work is None or work.rights is WorkRights.protected) and policy.version_block_score is not None \
            and m.score >= policy.version_block_score and m.duration >= policy.version_block_seconds:
        keep("block", m, info, right, f"re-performance of {what}{_version_detail(m)}: blocked by the policy's "
                                      f"[reperformance] thresholds")
    else:
        keep("review", m, info, right, f"possible re-performance of {what}{_version_detail(m)}: the same music in "
                                       f"a new sound; needs a person")


def _work(work: WorkInfo) -> str:
    """"work 'T-345.246.800-1' ('Yesterday', Northern Songs)"."""
    about = ", ".join(x for x in (f"'{work.title}'" if work.title and work.title != work.external_id else "",
                                  work.owner) if x)
    return f"work '{work.external_id}'" + (f" ({about})" if about else "")


def _work_state(work: WorkInfo) -> str:
    return "is protected" if work.rights is WorkRights.protected else "has rights the catalog does not know"


def _version_detail(m: Match) -> str:
    """': melody and harmony of reference 0:40-1:05 in output 0:00-0:25, 3 semitones up, at
    1.10× tempo, score 0.999'."""
    clock = lambda s: f"{int(s) // 60}:{int(s) % 60:02d}"
    key = "in the same key" if m.key_shift == 0 else \
        f"{abs(m.key_shift)} semitone{'s' if abs(m.key_shift) != 1 else ''} {'up' if m.key_shift > 0 else 'down'}"
    return (f": melody and harmony of reference {clock(m.ref_start)}–{clock(m.ref_end)} in output "
            f"{clock(m.query_start)}–{clock(m.query_end)}, {key}, at {m.tempo_ratio:.2f}× its tempo, "
            f"score {_fmt(m.score)}")


def _tempo(m: Match) -> str:
    """' at 1.25× the recording's tempo' where the copy plays at another tempo, else ''."""
    return "" if abs(m.tempo_ratio - 1.0) <= TEMPO_TOLERANCE else f" at {m.tempo_ratio:.2f}× the recording's tempo"


def _fmt(score: float) -> str:
    """0.97 → '0.97'; 0.99999 → '0.99999': enough digits to show how far from 1."""
    for digits in range(2, 7):
        if round(score, digits) < 1.0 or digits == 6:
            return f"{score:.{digits}f}"
    return f"{score:.6f}"
