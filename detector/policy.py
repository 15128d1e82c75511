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
    protected = "protected"
    licensed = "licensed"


class Verdict(str, Enum):
    block = "block"
    review = "review"
    allow = "allow"


@dataclass(frozen=True)
class TrackInfo:
    """What the catalog says about a reference track when the decision is made."""

    external_id: str
    title: str
    owner: str
    rights: Rights


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
                    **_reperformance(data.get("reperformance", {})))
        except OSError as exc:
            raise PolicyError(f"cannot read policy file {path}: {exc.strerror}") from None
        except (tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as exc:
            raise PolicyError(f"policy file {path} is malformed: {exc!r}") from None
        if not (0 <= p.review_score <= p.block_score <= 1):
            raise PolicyError(f"policy file {path}: need 0 <= review.min_score <= block.min_score <= 1")
        return p


def _reperformance(table: dict) -> dict:
    """The ``[reperformance]`` table's settings (a policy without one keeps the defaults)."""
    out = {}
    if "review_min_score" in table:
        out["version_review_score"] = float(table["review_min_score"])
    if "block_min_score" in table:
        out["version_block_score"] = float(table["block_min_score"])
    if "block_min_seconds" in table:
        out["version_block_seconds"] = float(table["block_min_seconds"])
    return out


@dataclass(frozen=True)
class Decision:
    """The verdict, the reasons a reviewer reads, the matches that count (best first) and,
    among them, those that block on their own."""

    verdict: Verdict
    reasons: tuple[str, ...]
    matches: tuple[tuple[Match, TrackInfo], ...]
    blocking: tuple[tuple[Match, TrackInfo], ...] = ()


def decide(matches: list[Match], tracks: dict[int, TrackInfo], duration: float, policy: Policy) -> Decision:
    """Apply ``policy`` to ``matches`` of an output lasting ``duration`` seconds.

    ``tracks`` maps each match's track key to its current catalog entry; matches of tracks no
    longer in the catalog (taken down meanwhile) are ignored. Re-performances (``method``
    ``version``) of a protected recording go to review, or block where the policy's
    ``[reperformance]`` thresholds say, unless the output copies that recording anyway.
    """
    blocking, reviewing, attributed, performed = [], [], [], []
    for m in sorted(matches, key=lambda m: m.method == "version"):     # copies first
        info = tracks.get(m.track)
        if info is None:
            continue
        if m.method == "version":
            # a re-performance of a recording that this output copies says nothing more
            if (info.rights is Rights.licensed or m.score < policy.version_review_score
                    or any(o.track == m.track for o, _ in blocking + reviewing)):
                continue
            if (policy.version_block_score is not None and m.score >= policy.version_block_score
                    and m.duration >= policy.version_block_seconds):
                blocking.append((m, info))
            else:
                performed.append((m, info))
            continue
        long_enough = m.duration >= policy.block_seconds or m.duration >= policy.block_fraction * duration
        if info.rights is Rights.licensed:
            if m.score >= policy.attribution_score:
                attributed.append((m, info))
        elif m.score >= policy.block_score and long_enough:
            blocking.append((m, info))
        elif m.score >= policy.review_score and m.duration >= min(policy.review_seconds, duration):
            reviewing.append((m, info))
    reasons = []
    for m, info in blocking:
        if m.method == "version":
            reasons.append(f"re-performance of protected '{info.external_id}'{_version_detail(m)}: blocked by the "
                           f"policy's [reperformance] thresholds")
            continue
        reasons.append(f"protected recording '{info.external_id}' matched for {m.duration:.1f} s "
                       f"(output {m.query_start:.1f}–{m.query_end:.1f} s = reference {m.ref_start:.1f}–{m.ref_end:.1f} s"
                       f"{_tempo(m)}, score {_fmt(m.score)}, {m.method})")
    for m, info in reviewing:
        why = "score below the block threshold" if m.score < policy.block_score else "too short to block on its own"
        reasons.append(f"possible copy of protected recording '{info.external_id}' for {m.duration:.1f} s "
                       f"(score {_fmt(m.score)}, {why}): needs a person")
    for m, info in performed:
        reasons.append(f"possible re-performance of protected '{info.external_id}'{_version_detail(m)}: "
                       f"the same music in a new sound; needs a person")
    for m, info in attributed:
        reasons.append(f"licensed recording '{info.external_id}' ({info.owner or 'owner not recorded'}) used for "
                       f"{m.duration:.1f} s: attribute it")
    if blocking:
        verdict = Verdict.block
    elif reviewing or performed:
        verdict = Verdict.review
    else:
        verdict = Verdict.allow
        if not attributed:
            reasons.append("no catalog recording matched")
    kept = sorted(blocking + reviewing + performed + attributed, key=lambda mi: (mi[0].p_false, -mi[0].duration))
    return Decision(verdict, tuple(reasons), tuple(kept), tuple(blocking))


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
