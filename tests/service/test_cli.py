"""The command-line contract, through the installed ``clearance`` command in a subprocess."""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

from index import migrate
from index.reviews import Review
from index.store import Store
from service.auth import Role, create_key
from service.pool import one_malloc_arena
from tests.conftest import cut
from tests.service.conftest import free_port

CLEARANCE = [sys.executable, "-m", "service.cli"]


def clearance(*args, env, user=()) -> subprocess.CompletedProcess:
    """Run ``clearance ARGS``, under the ``user`` command prefix where given."""
    return subprocess.run([*user, *CLEARANCE, *map(str, args)], capture_output=True, text=True, env=env, timeout=300)


def test_check_blocks_copy_allows_unseen_and_reports_bad_inputs(music, env_for, tmp_path):
    copy = cut(music["drascula-track11"], 40.0, 20.0, tmp_path / "copy.mp3")
    unseen = cut(music["drascula-track10"], 10.0, 20.0, tmp_path / "unseen.mp3")
    corrupt = tmp_path / "corrupt.mp3"
    corrupt.write_bytes(b"ID3\x03\x00\x00\x00" + bytes(range(256)) * 40)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")

    r = clearance("check", "--json", corrupt, copy, empty, unseen, env=env_for())
    assert r.returncode == 2, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["input"] for x in lines] == [str(copy), str(unseen)]
    blocked, allowed = lines
    assert blocked["decision"] == "block"
    top = blocked["matches"][0]
    assert top["external_id"] == "drascula-track11" and top["rights"] == "protected"
    assert abs(top["ref_start"] - (40.0 + top["query_start"])) < 1.0
    assert "drascula-track11" in blocked["reasons"][0]
    assert allowed["decision"] == "allow" and allowed["matches"] == []
    assert f"{corrupt}: not a readable audio file" in r.stderr or f"{corrupt}: no audio could be decoded" in r.stderr
    assert f"{empty}: the file is empty" in r.stderr
    # a folder: its audio files in path order; an empty folder is an input that could not be read
    (tmp_path / "nothing").mkdir()
    r = clearance("check", "--json", tmp_path, tmp_path / "nothing", tmp_path / "missing.mp3", env=env_for())
    assert r.returncode == 2, r.stderr
    assert [(x["input"], x["decision"]) for x in map(json.loads, r.stdout.splitlines())] == [
        (str(copy), "block"), (str(unseen), "allow")]
    assert f"{tmp_path / 'nothing'}: no audio files in this folder" in r.stderr
    assert f"{tmp_path / 'missing.mp3'}: no such file" in r.stderr


def test_licensed_excerpt_allowed_with_attribution(music, env_for, tmp_path):
    q = cut(music["drascula-track29"], 5.0, 20.0, tmp_path / "lic.ogg", fmt="ogg")
    r = clearance("check", "--json", q, env=env_for())
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["decision"] == "allow"
    assert result["matches"][0]["external_id"] == "drascula-track29"
    assert result["matches"][0]["rights"] == "licensed"
    assert result["matches"][0]["owner"] == "Open Label"
    assert any("attribute" in reason for reason in result["reasons"])


def test_index_twice_does_not_duplicate_and_manifest_names_tracks(music, tmp_path):
    env = {**__import__("os").environ, "CLEARANCE_HOME": str(tmp_path / "home")}
    manifest = music["xmoto-menu"].path.parents[1] / "manifest.csv"
    paths = [music["xmoto-menu"].path, music["xmoto-speeditup"].path]
    first = clearance("index", *paths, "--rights", "protected", "--manifest", manifest, env=env)
    assert first.returncode == 0, first.stderr
    assert "indexed 2 tracks" in first.stdout
    again = clearance("index", music["xmoto-menu"].path.parent, "--rights", "protected", "--manifest", manifest, env=env)
    assert again.returncode == 0, again.stderr
    assert "skipped 2 already present" in again.stdout
    (tmp_path / "no-audio").mkdir()
    (tmp_path / "no-audio" / "song.wma").write_bytes(b"0" * 100)
    none = clearance("index", tmp_path / "no-audio", "--rights", "protected", env=env)
    assert none.returncode == 2 and "indexed 0 tracks" in none.stdout     # as `check` of that folder
    assert f"{tmp_path / 'no-audio'}: no audio files in this folder (looked for .aac" in none.stderr
    listed = [json.loads(x) for x in clearance("tracks", "--json", env=env).stdout.splitlines()]
    in_folder = [r.track_id for r in music.values() if r.path.parent == music["xmoto-menu"].path.parent]
    assert len(in_folder) > 2
    assert sorted(t["external_id"] for t in listed) == sorted(in_folder)


def test_rights_change_and_remove_apply_to_next_check(music, tmp_path):
    env = {**__import__("os").environ, "CLEARANCE_HOME": str(tmp_path / "home")}
    track = music["drascula-track22"]
    assert clearance("index", track.path, "--rights", "protected", env=env).returncode == 0
    q = cut(track, 20.0, 15.0, tmp_path / "q.mp3")

    def decision():
        r = clearance("check", "--json", q, env=env)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    assert decision()["decision"] == "block"
    assert clearance("rights", Path(track.path).stem, "--rights", "licensed", "--note", "deal 12", env=env).returncode == 0
    [audited] = Review(Store(f"sqlite:///{tmp_path / 'home' / 'catalog.db'}")).audit_trail("track", Path(track.path).stem)
    assert (audited.actor.key_id, audited.previous, audited.new, audited.note) == ("cli", "protected", "licensed", "deal 12")
    assert audited.actor.name.endswith("(command line)")
    after = decision()
    assert after["decision"] == "allow" and after["matches"][0]["rights"] == "licensed"
    # the song it records: a work of its own, protected; a licensed recording of it goes to review
    made = clearance("work", "T-345.246.800-1", "--title", "Track 22", "--owner", "Publisher", "--rights", "protected",
                     "--track", Path(track.path).stem, "--note", "cue sheet", env=env)
    assert made.returncode == 0 and made.stdout == "work T-345.246.800-1: protected, Publisher; recorded by track22\n"
    listed = clearance("works", "--json", env=env)
    assert json.loads(listed.stdout) == {"work_id": "T-345.246.800-1", "title": "Track 22", "owner": "Publisher",
                                         "rights": "protected", "recordings": ["track22"]}
    reviewed = decision()
    assert reviewed["decision"] == "review" and reviewed["matches"][0]["work_id"] == "T-345.246.800-1"
    assert clearance("rights", "--work", "T-345.246.800-1", "--rights", "licensed", env=env).returncode == 0
    assert decision()["decision"] == "allow"
    wrong = clearance("rights", Path(track.path).stem, "--rights", "unknown", env=env)
    assert wrong.returncode == 1 and "use --work for a work's rights" in wrong.stderr
    unknown = clearance("rights", "--work", "W-NONE", "--rights", "licensed", env=env)
    assert unknown.returncode == 1 and "no work with id 'W-NONE'" in unknown.stderr
    assert clearance("remove", Path(track.path).stem, env=env).returncode == 0
    gone = decision()
    assert gone["decision"] == "allow" and gone["matches"] == []
    missing = clearance("remove", "no-such-track", env=env)
    assert missing.returncode == 1 and "no track with external_id 'no-such-track'" in missing.stderr


@pytest.fixture(scope="module")
def bound_by_permissions(tmp_path_factory) -> list[str]:
    """A command prefix under which file permissions bind the command. Root (the user in CI
    containers) writes whatever it likes through CAP_DAC_OVERRIDE; ``setpriv`` runs the command
    as root without it (and without CAP_DAC_READ_SEARCH), so a folder of mode 0555 is read-only
    to it. Skips where neither that nor being another user makes a read-only folder."""
    user = [] if os.geteuid() else ["setpriv", "--inh-caps=-dac_override,-dac_read_search",
                                    "--bounding-set=-dac_override,-dac_read_search"]
    locked = tmp_path_factory.mktemp("locked")
    locked.chmod(0o555)
    probe = f"try:\n open({str(locked / 'probe')!r}, 'w')\nexcept PermissionError:\n print('refused')"
    try:
        out = subprocess.run([*user, sys.executable, "-c", probe], capture_output=True, text=True).stdout
    except FileNotFoundError as exc:
        out = str(exc)
    if out.strip() != "refused":
        pytest.skip(f"cannot make a folder read-only to a command run by uid {os.geteuid()} "
                    f"({' '.join(user) or 'no prefix'}: {out.strip() or 'it could write'})")
    return user


def read_only(folder: Path) -> None:
    for p in [folder, *folder.rglob("*")]:
        p.chmod(p.stat().st_mode & ~0o222)


def copy_of_catalog(catalog_home: Path, dest: Path) -> Path:
    """A copy of the session's catalog home (database, index, vectors) that no process has open:
    the database copied through SQLite, as the session's engine may hold it open."""
    shutil.copytree(catalog_home, dest, ignore=shutil.ignore_patterns("catalog.db*", "outputs"))
    with closing(sqlite3.connect(catalog_home / "catalog.db")) as src, closing(sqlite3.connect(dest / "catalog.db")) as db:
        src.backup(db)
    return dest


def refusals(home_line: str, env: dict, user: list[str], track: Path) -> list[str]:
    """Run every command that changes the catalog; each must exit 2 with one line on stderr that
    starts with ``home_line``. Returns those lines."""
    lines = []
    for args in [("index", track, "--rights", "protected"), ("check", track), ("remove", "some-track"),
                 ("rights", "some-track", "--rights", "licensed"), ("keys", "create", "--role", "reviewer"),
                 ("keys", "revoke", "some-key"), ("serve", "--port", free_port())]:
        r = clearance(*args, env=env, user=user)
        assert (r.returncode, len(r.stderr.splitlines())) == (2, 1), (args, r.returncode, r.stderr[-3000:])
        assert r.stderr.startswith(f"clearance: {home_line}"), (args, r.stderr)
        lines.append(r.stderr.strip())
    return lines


def test_read_only_catalog_is_listed_and_changes_are_refused_in_one_line(catalog_home, bound_by_permissions, music,
                                                                        tmp_path):
    home = copy_of_catalog(catalog_home, tmp_path / "home")
    store = Store(f"sqlite:///{home / 'catalog.db'}")
    key_id, _ = create_key(store, Role.reviewer, "Ann")
    store.record_failure("/music/broken.mp3", "not a readable audio file")
    indexed = [t.external_id for t in store.list_tracks()]
    store.engine.dispose()
    read_only(home)
    files = sorted(home.rglob("*"))
    env, user = {**os.environ, "CLEARANCE_HOME": str(home)}, bound_by_permissions

    listed = clearance("tracks", "--json", env=env, user=user)
    assert listed.returncode == 0, listed.stderr
    assert [json.loads(x)["external_id"] for x in listed.stdout.splitlines()] == indexed and len(indexed) > 20
    failures = clearance("failures", env=env, user=user)
    assert failures.returncode == 0 and "/music/broken.mp3: not a readable audio file" in failures.stdout, failures
    keys = clearance("keys", "list", env=env, user=user)
    assert keys.returncode == 0 and f"{key_id}\treviewer\tactive\tAnn" in keys.stdout, keys
    assert clearance("settings", env=env, user=user).returncode == 0

    lines = refusals(str(home), env, user, music["xmoto-menu"].path)
    assert all("may not write" in line for line in lines), lines
    assert sorted(home.rglob("*")) == files          # reading left nothing beside the database


def test_home_in_read_only_folder_is_one_line_for_every_command(bound_by_permissions, music, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    read_only(locked)
    home = locked / "home"
    env, user = {**os.environ, "CLEARANCE_HOME": str(home)}, bound_by_permissions
    for args in [("tracks",), ("failures",), ("keys", "list")]:
        r = clearance(*args, env=env, user=user)
        assert (r.returncode, r.stderr) == (2, f"clearance: {home / 'catalog.db'}: no such catalog database (nothing "
                                                "has been indexed into this home, or --home or --db names another "
                                                "place)\n"), (args, r.stderr[-3000:])
    assert clearance("settings", env=env, user=user).returncode == 0
    lines = refusals(str(home), env, user, music["xmoto-menu"].path)
    assert set(lines) == {f"clearance: {home}: Permission denied"}
    assert not home.exists()


def test_read_only_catalog_whose_schema_needs_an_upgrade_is_one_line(catalog_home, bound_by_permissions, tmp_path):
    home = copy_of_catalog(catalog_home, tmp_path / "home")
    with closing(sqlite3.connect(home / "catalog.db")) as db, db:
        db.execute("UPDATE alembic_version SET version_num = '0001'")
    read_only(home)
    r = clearance("tracks", env={**os.environ, "CLEARANCE_HOME": str(home)}, user=bound_by_permissions)
    assert r.returncode == 2 and r.stderr.startswith(f"clearance: {home / 'catalog.db'}: the schema is at revision "
                                                     f"0001, this version of Clearance reads {migrate.head()};"), r.stderr
    assert len(r.stderr.splitlines()) == 1


def test_worker_threads_can_share_the_main_heap():
    """``clearance serve`` asks glibc for one malloc arena (``service.pool.one_malloc_arena``);
    the machines this runs on have glibc, where the call must succeed."""
    assert one_malloc_arena()
