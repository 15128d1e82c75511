"""The command-line contract, through the installed ``clearance`` command in a subprocess."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from index.store import Review, Store
from tests.conftest import cut

CLEARANCE = [sys.executable, "-m", "service.cli"]


def clearance(*args, env) -> subprocess.CompletedProcess:
    return subprocess.run([*CLEARANCE, *map(str, args)], capture_output=True, text=True, env=env, timeout=300)


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
    assert none.returncode == 0 and "indexed 0 tracks" in none.stdout
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
    assert clearance("remove", Path(track.path).stem, env=env).returncode == 0
    gone = decision()
    assert gone["decision"] == "allow" and gone["matches"] == []
    missing = clearance("remove", "no-such-track", env=env)
    assert missing.returncode == 1 and "no track with external_id 'no-such-track'" in missing.stderr
