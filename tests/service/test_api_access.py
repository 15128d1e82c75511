"""Who may do what: every /v1 route needs an active key, each role reaches only its routes, and
a submitter never sees another submitter's checks. Against a real server on loopback."""
from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from tests.conftest import cut

V1_ROUTES = [("POST", "/v1/checks"), ("GET", "/v1/checks"), ("GET", "/v1/checks/some-id"),
             ("GET", "/v1/tracks"), ("POST", "/v1/tracks"), ("GET", "/v1/tracks/xmoto-batcave"),
             ("PATCH", "/v1/tracks/xmoto-batcave"), ("DELETE", "/v1/tracks/xmoto-batcave")]


@pytest.mark.parametrize("method,path", V1_ROUTES)
@pytest.mark.parametrize("authorization", [None, "Bearer clr_000000000000_not-a-key", "Bearer", "Basic dXNlcjpwYXNz"])
def test_every_v1_route_refuses_a_missing_or_unknown_key(server, method, path, authorization):
    headers = {"Authorization": authorization} if authorization else {}
    r = httpx.request(method, f"{server.url}{path}", headers=headers, timeout=30)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == "Bearer"
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["status"] == 401 and "key" in r.json()["detail"]


# (role, method, path, status): a route answers 403 to roles it is not for; for the roles it is
# for, the request passes the key check and fails later for lack of a body or of the track.
ROLE_TABLE = [
    ("submitter", "POST", "/v1/checks", 422), ("submitter", "GET", "/v1/checks", 200),
    ("submitter", "GET", "/v1/tracks", 403), ("submitter", "POST", "/v1/tracks", 403),
    ("submitter", "PATCH", "/v1/tracks/no-such-track", 403), ("submitter", "DELETE", "/v1/tracks/no-such-track", 403),
    ("reviewer", "POST", "/v1/checks", 403), ("reviewer", "GET", "/v1/checks", 200),
    ("reviewer", "GET", "/v1/checks/no-such-check", 404),
    ("reviewer", "GET", "/v1/tracks", 403), ("reviewer", "POST", "/v1/tracks", 403),
    ("reviewer", "DELETE", "/v1/tracks/no-such-track", 403),
    ("catalog-admin", "POST", "/v1/checks", 403), ("catalog-admin", "GET", "/v1/checks", 403),
    ("catalog-admin", "GET", "/v1/checks/no-such-check", 403),
    ("catalog-admin", "GET", "/v1/tracks", 200), ("catalog-admin", "POST", "/v1/tracks", 422),
    ("catalog-admin", "GET", "/v1/tracks/no-such-track", 404),
    ("catalog-admin", "PATCH", "/v1/tracks/no-such-track", 422), ("catalog-admin", "DELETE", "/v1/tracks/no-such-track", 404),
    ("admin", "POST", "/v1/checks", 422), ("admin", "GET", "/v1/checks", 200), ("admin", "GET", "/v1/tracks", 200),
    ("admin", "POST", "/v1/tracks", 422), ("admin", "DELETE", "/v1/tracks/no-such-track", 404),
]


@pytest.mark.parametrize("role,method,path,status", ROLE_TABLE)
def test_roles_reach_only_their_routes(server, role, method, path, status):
    r = httpx.request(method, f"{server.url}{path}", headers={"Authorization": f"Bearer {server.keys[role]}"},
                      timeout=30)
    assert r.status_code == status, r.text
    if status == 403:
        assert r.headers["content-type"].startswith("application/problem+json")
        assert f"a {role} key may not do this" in r.json()["detail"]


def test_submitter_sees_only_its_own_checks(server, music, tmp_path):
    alice, bob = server.key("submitter", "alice"), server.key("submitter", "bob")
    q = cut(music["xmoto-foxrun"], 60.0, 10.0, tmp_path / "q.mp3").read_bytes()
    mine = server.check(alice, "alice.mp3", q).json()["id"]
    theirs = server.check(bob, "bob.mp3", q).json()["id"]

    assert server.get(f"/v1/checks/{mine}", alice).status_code == 200
    hidden = server.get(f"/v1/checks/{theirs}", alice)
    assert hidden.status_code == 404 and hidden.json()["detail"] == f"no check with id '{theirs}'"
    assert [c["result"]["id"] for c in server.get("/v1/checks", alice).json()["checks"]] == [mine]
    assert [c["result"]["id"] for c in server.get("/v1/checks", bob).json()["checks"]] == [theirs]

    for role in ("reviewer", "admin"):
        assert server.get(f"/v1/checks/{theirs}", server.keys[role]).status_code == 200
        everyone = {c["result"]["id"] for c in server.get("/v1/checks", server.keys[role],
                                                          params={"limit": 500}).json()["checks"]}
        assert {mine, theirs} <= everyone


def test_keys_from_the_cli_work_until_revoked(server, env_for):
    env = env_for(server.home)

    def cli(*args) -> str:
        r = subprocess.run([sys.executable, "-m", "service.cli", "keys", *args], capture_output=True, text=True,
                           env=env, timeout=300)
        assert r.returncode == 0, r.stderr
        return r.stdout

    created = cli("create", "--role", "reviewer", "--name", "night shift")
    key = created.split()[-1]
    key_id = key.split("_")[1]
    assert server.get("/v1/checks", key).status_code == 200
    listed = [line.split("\t") for line in cli("list").splitlines()]
    assert [key_id, "reviewer", "active", "night shift"] in listed
    assert key not in cli("list")                         # only hashes are stored

    cli("revoke", key_id)
    r = server.get("/v1/checks", key)
    assert r.status_code == 401 and r.json()["detail"] == "the API key is unknown or revoked"
