"""Checks over HTTP against a real ``clearance serve`` process on loopback: decisions, stored
results, idempotent resubmission, and the paged list of checks."""
from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

from tests.conftest import cut
from tests.service.conftest import serve


def test_copy_blocked_and_stored(server, music, tmp_path):
    q = cut(music["xmoto-batcave"], 50.0, 20.0, tmp_path / "q.mp3")
    r = server.check(server.keys["submitter"], "q.mp3", q.read_bytes())
    assert r.status_code == 200, r.text
    result = r.json()
    assert result["decision"] == "block"
    assert result["input"] == "q.mp3"
    m = result["matches"][0]
    assert m["external_id"] == "xmoto-batcave"
    assert abs(m["ref_start"] - (50.0 + m["query_start"])) < 1.0
    again = server.get(f"/v1/checks/{result['id']}", server.keys["submitter"])
    assert again.status_code == 200 and again.json() == result


def test_unseen_allowed(server, music, tmp_path):
    q = cut(music["xmoto-foxrun"], 30.0, 20.0, tmp_path / "q.mp3")
    result = server.check(server.keys["submitter"], "foxrun.mp3", q.read_bytes()).json()
    assert result["decision"] == "allow" and result["matches"] == []


def test_licensed_copy_allowed_with_attribution(server, music, tmp_path):
    q = cut(music["drascula-track29"], 5.0, 20.0, tmp_path / "lic.ogg", fmt="ogg")
    result = server.check(server.keys["submitter"], "lic.ogg", q.read_bytes()).json()
    assert result["decision"] == "allow"
    assert result["matches"][0]["external_id"] == "drascula-track29"
    assert result["matches"][0]["rights"] == "licensed"


def test_idempotency_key_returns_the_stored_result(server, music, tmp_path):
    key = server.key("submitter", "idempotent platform")
    q = cut(music["xmoto-batcave"], 10.0, 12.0, tmp_path / "q.mp3").read_bytes()
    first = server.check(key, "q.mp3", q, **{"Idempotency-Key": "release-42"})
    assert first.status_code == 200 and "Idempotent-Replayed" not in first.headers
    repeat = server.check(key, "q.mp3", q, **{"Idempotency-Key": "release-42"})
    assert repeat.status_code == 200 and repeat.headers["Idempotent-Replayed"] == "true"
    assert repeat.json() == first.json()
    listed = server.get("/v1/checks", key).json()["checks"]
    assert [c["result"]["id"] for c in listed] == [first.json()["id"]]    # checked once

    other = server.check(server.key("submitter"), "q.mp3", q, **{"Idempotency-Key": "release-42"})
    assert other.status_code == 200 and other.json()["id"] != first.json()["id"]   # keys are per API key
    fresh = server.check(key, "q.mp3", q, **{"Idempotency-Key": "release-43"})
    assert fresh.json()["id"] != first.json()["id"]


def test_idempotency_key_sent_twice_at_once_is_checked_once(server, music, tmp_path):
    key = server.key("submitter", "impatient platform")
    q = cut(music["xmoto-foxrun"], 50.0, 12.0, tmp_path / "q.mp3").read_bytes()
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: server.check(key, "q.mp3", q, **{"Idempotency-Key": "twice"}), range(2)))
    assert [a.status_code for a in answers] == [200, 200]
    assert answers[0].json() == answers[1].json()
    assert sorted("Idempotent-Replayed" in a.headers for a in answers) == [False, True]
    assert [c["result"]["id"] for c in server.get("/v1/checks", key).json()["checks"]] == [answers[0].json()["id"]]


def test_idempotency_key_sent_six_times_at_once_keeps_one_output(env_for, music, tmp_path_factory, tmp_path):
    """The checks that lose the race to store under the key leave no audio behind: the outputs
    folder holds the one file the stored check refers to."""
    home = tmp_path_factory.mktemp("six-at-once")
    q = cut(music["xmoto-foxrun"], 60.0, 12.0, tmp_path / "q.mp3").read_bytes()
    with serve(home, {**env_for(home), "CLEARANCE_CHECK_QUEUE": "8", "CLEARANCE_MAX_UPLOADS_PER_KEY": "8"},
               home / "server.log") as s:
        key = s.key("submitter", "impatient platform")
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda _: s.check(key, "q.mp3", q, **{"Idempotency-Key": "six"}), range(6)))
        assert [a.status_code for a in answers] == [200] * 6
        [check_id] = {a.json()["id"] for a in answers}
        assert [c["result"]["id"] for c in s.get("/v1/checks", key).json()["checks"]] == [check_id]
        assert [p.name for p in (home / "outputs").iterdir()] == [f"{check_id}.mp3"]


def test_idempotency_key_longer_than_256_characters_is_422(server):
    r = server.check(server.keys["submitter"], "q.mp3", b"x", **{"Idempotency-Key": "k" * 257})
    assert r.status_code == 422 and "idempotency-key" in r.json()["detail"]


def test_list_filters_by_decision_and_time_and_pages_newest_first(server, music, tmp_path):
    key = server.key("submitter", "lister")
    copy = cut(music["xmoto-batcave"], 30.0, 12.0, tmp_path / "copy.mp3").read_bytes()
    unseen = cut(music["xmoto-foxrun"], 30.0, 12.0, tmp_path / "unseen.mp3").read_bytes()
    made = [server.check(key, name, data).json() for name, data in
            [("a.mp3", copy), ("b.mp3", unseen), ("c.mp3", copy), ("d.mp3", unseen), ("e.mp3", copy)]]
    assert [m["decision"] for m in made] == ["block", "allow", "block", "allow", "block"]

    pages, cursor = [], None
    while True:
        page = server.get("/v1/checks", key, params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
        pages.append([c["result"]["id"] for c in page["checks"]])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == [[made[4]["id"], made[3]["id"]], [made[2]["id"], made[1]["id"]], [made[0]["id"]]]

    blocked = server.get("/v1/checks", key, params={"decision": "block"}).json()["checks"]
    assert [c["result"]["id"] for c in blocked] == [made[4]["id"], made[2]["id"], made[0]["id"]]
    assert all(c["submitter"] and c["result"]["decision"] == "block" for c in blocked)

    newest = datetime.fromisoformat(blocked[0]["created_at"])
    since = server.get("/v1/checks", key, params={"since": newest.isoformat()}).json()["checks"]
    assert [c["result"]["id"] for c in since] == [made[4]["id"]]
    in_paris = newest.astimezone(timezone(timedelta(hours=2))).isoformat()   # the same instant, another offset
    assert [c["result"]["id"] for c in server.get("/v1/checks", key, params={"since": in_paris}).json()["checks"]] \
        == [made[4]["id"]]
    later = (newest + timedelta(seconds=1)).isoformat()
    assert server.get("/v1/checks", key, params={"since": later}).json() == {"checks": [], "next_cursor": None}


def test_list_refuses_bad_parameters(server):
    key = server.keys["submitter"]
    for params, where in [({"limit": 0}, "query.limit"), ({"limit": 501}, "query.limit"),
                          ({"decision": "maybe"}, "query.decision"), ({"since": "yesterday"}, "query.since"),
                          ({"since": "2026-05-01T00:00:00"}, "query.since")]:
        r = server.get("/v1/checks", key, params=params)
        assert r.status_code == 422 and r.json()["detail"].startswith(where), (params, r.text)
    forged = server.get("/v1/checks", key, params={"cursor": "not-a-cursor"})
    assert forged.status_code == 422 and "cursor" in forged.json()["detail"]


def test_list_refuses_times_past_the_range_of_dates_in_utc(server):
    """Valid times whose offset takes them past year 9999 or before year 1 in UTC."""
    key = server.keys["submitter"]
    late = server.get("/v1/checks", key, params={"since": "9999-12-31T23:59:59-23:59"})
    assert late.status_code == 422 and late.headers["content-type"] == "application/problem+json"
    assert late.json()["detail"] == ("query.since: Value error, 9999-12-31T23:59:59-23:59 is out of the range of "
                                     "dates in UTC")
    cursor = base64.urlsafe_b64encode(b"0001-01-01T00:00:00+23:59|someid").decode()
    early = server.get("/v1/checks", key, params={"cursor": cursor})
    assert early.status_code == 422 and early.headers["content-type"] == "application/problem+json"
    assert early.json()["detail"] == f"cursor {cursor!r} is not one this service gave out"


def test_unknown_check_is_404(server):
    r = server.get("/v1/checks/does-not-exist", server.keys["reviewer"])
    assert r.status_code == 404 and r.json()["detail"] == "no check with id 'does-not-exist'"
