"""The README's settings tables against ``service.settings.Settings``: every field is documented
once, under the environment variable that sets it, with its default; nothing documented is
missing from ``Settings``.

A settings table is any Markdown table in README.md whose header row is
``| setting | default | meaning |``; its first column names the variable without the
``CLEARANCE_`` prefix (``MAX_UPLOAD_MB``), its second column starts with the default.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from service.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"
HEADER = re.compile(r"^\|\s*setting\s*\|\s*default\s*\|\s*meaning\s*\|\s*$")
PREFIX = "CLEARANCE_"
# defaults that depend on the machine, documented in words
IN_WORDS = {"index_workers": ("one per CPU core", os.cpu_count() or 1)}


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def documented() -> list[tuple[str, str]]:
    """(variable without the prefix, default cell) of every row of every settings table."""
    rows, in_table = [], False
    for line in README.read_text().splitlines():
        if HEADER.match(line):
            in_table = True
            continue
        if in_table and line.startswith("|"):
            name, default = _cells(line)[:2]
            if not set(name) <= set("-: "):          # the |---|---| row
                rows.append((name.strip("`"), default))
        else:
            in_table = False
    return rows


def _first_word(cell: str) -> str:
    return cell.split()[0].strip("`,:;")


def default_matches(field: str, cell: str) -> bool:
    default = Settings.model_fields[field].default
    if field in IN_WORDS:
        words, value = IN_WORDS[field]
        return cell.startswith(words) and default == value
    if default is None:
        return cell.lower().startswith("none")
    word = _first_word(cell)
    if isinstance(default, bool):
        return word == str(default).lower()
    if isinstance(default, (int, float)):
        return float(word.replace(",", "")) == float(default)
    if isinstance(default, Path):        # a packaged file is documented by its path in the repository
        parts = Path(word).parts
        return default.parts[-len(parts):] == parts
    return word == str(default)


def test_env_prefix_is_documented_one() -> None:
    assert Settings.model_config["env_prefix"] == PREFIX
    assert f"`{PREFIX}*`" in README.read_text()


def test_every_documented_setting_exists_with_its_default() -> None:
    rows = documented()
    assert len(rows) > 10, "no settings table found in README.md"
    for name, default in rows:
        field = name.lower()
        assert name == name.upper() and field in Settings.model_fields, \
            f"README documents {PREFIX}{name}, which Settings does not have"
        assert Settings.model_fields[field].validation_alias is None, \
            f"{field} is read from another variable than {PREFIX}{name}"
        assert default_matches(field, default), \
            f"README gives {PREFIX}{name} the default {default!r}; Settings has " \
            f"{Settings.model_fields[field].default!r}"


def test_every_setting_is_documented_once() -> None:
    names = [name.lower() for name, _ in documented()]
    missing = [f"{PREFIX}{f.upper()}" for f in Settings.model_fields if f not in names]
    twice = sorted({n for n in names if names.count(n) > 1})
    assert not missing, f"settings missing from README.md's settings tables: {', '.join(missing)}"
    assert not twice, f"settings documented twice: {', '.join(twice)}"


@pytest.mark.parametrize("field", ["index_nprobe", "review_page_size"])
def test_documented_variable_sets_the_field(field: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PREFIX + field.upper(), "7")
    assert getattr(Settings(), field) == 7
