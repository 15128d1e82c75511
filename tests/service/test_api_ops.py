"""Operating the service: liveness, readiness, Prometheus metrics, the OpenAPI description, and
one error shape for every failure, the framework's own included. Against a real server."""
from __future__ import annotations

import httpx
import pytest

from index.vectors import VectorIndex
from tests.conftest import PROTECTED, cut
from tests.service.conftest import serve


def test_healthz_and_readyz(server):
    assert server.get("/healthz").json() == {"status": "ok"}
    ready = server.get("/readyz").json()
    assert ready["status"] == "ready" and ready["tracks"] == PROTECTED + 1 and ready["vectors"] > 0


def test_metrics_count_checks_by_decision_latency_failures_and_index_size(server, music, tmp_path):
    text = server.get("/metrics")
    assert text.headers["content-type"].startswith("text/plain")
    assert server.metric("clearance_index_tracks") == PROTECTED + 1
    assert server.metric("clearance_index_vectors") == server.get("/readyz").json()["vectors"]
    assert server.metric('clearance_pool_slots{pool="checks"}') == 2
    before = {name: server.metric(name) for name in
              ('clearance_checks_total{decision="block"}', 'clearance_checks_total{decision="allow"}',
               "clearance_check_seconds_count", 'clearance_decode_failures_total{kind="unreadable"}')}
    key = server.keys["submitter"]
    server.check(key, "copy.mp3", cut(music["xmoto-batcave"], 70.0, 10.0, tmp_path / "a.mp3").read_bytes())
    server.check(key, "new.mp3", cut(music["xmoto-foxrun"], 70.0, 10.0, tmp_path / "b.mp3").read_bytes())
    server.check(key, "junk.mp3", b"junk" * 100)
    after = {name: server.metric(name) for name in before}
    assert {name: after[name] - before[name] for name in before} == {
        'clearance_checks_total{decision="block"}': 1, 'clearance_checks_total{decision="allow"}': 1,
        "clearance_check_seconds_count": 2, 'clearance_decode_failures_total{kind="unreadable"}': 1}
    assert server.metric('clearance_check_seconds_bucket{le="+Inf"}') == after["clearance_check_seconds_count"]


@pytest.mark.parametrize("method,path,body,status,detail", [
    ("GET", "/no/such/route", None, 404, "Not Found"),
    ("DELETE", "/healthz", None, 405, "Method Not Allowed"),
    ("POST", "/v1/checks", None, 422, "body.audio: Field required"),
    ("POST", "/v1/checks", {"data": {"audio": "a text field, not a file"}}, 422, "body.audio: Value error, Expected UploadFile"),
    ("POST", "/v1/checks", {"content": b"--x\r\nnot multipart", "headers": {"Content-Type": "multipart/form-data"}},
     400, "Missing boundary in multipart."),
    ("GET", "/v1/checks", {"params": {"limit": "many"}}, 422, "query.limit: Input should be a valid integer"),
])
def test_every_error_has_the_problem_shape(server, method, path, body, status, detail):
    body = body or {}
    headers = {"Authorization": f"Bearer {server.keys['admin']}", **body.pop("headers", {})}
    r = httpx.request(method, f"{server.url}{path}", headers=headers, timeout=30, **body)
    assert r.status_code == status
    assert r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert set(problem) >= {"type", "title", "status", "detail"} and problem["status"] == status
    assert problem["detail"].startswith(detail), problem["detail"]


def test_openapi_documents_the_api_and_its_key_scheme(server):
    spec = server.get("/openapi.json").json()
    upload = spec["paths"]["/v1/checks"]["post"]
    assert "audio" in upload["requestBody"]["content"]["multipart/form-data"]["schema"]["required"]
    assert any("HTTPBearer" in s for s in upload["security"])
    assert spec["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http", "scheme": "bearer", "description": "an API key from `clearance keys create --role ROLE`"}
    tracks = spec["paths"]["/v1/tracks"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert tracks["properties"]["rights"]["enum"] == ["protected", "licensed"]
    assert {"/healthz", "/readyz", "/metrics", "/v1/checks/{check_id}", "/v1/tracks/{external_id}"} <= set(spec["paths"])
    assert server.get("/docs").status_code == 200


def test_readyz_fails_while_the_published_index_is_unusable(env_for, tmp_path_factory):
    """An index published by another model (a rebuild half done by hand, a wrong copy) makes
    the server unready, with the reason, while it stays alive."""
    home = tmp_path_factory.mktemp("unready")
    with serve(home, env_for(home), home / "server.log") as s:
        VectorIndex.open(home / "index", "another-model", 128, 0.5).save()
        r = s.get("/readyz")
        assert r.status_code == 503 and r.headers["content-type"] == "application/problem+json"
        assert r.json()["detail"].startswith("not ready: index at ") and "model another-model" in r.json()["detail"]
        assert s.alive()
