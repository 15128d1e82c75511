"""The same error gets the same status over the API (problem+json) and in the dashboard (an HTML
page): both edges ask ``service.problems.status_of``."""
from __future__ import annotations

import httpx
import pytest
from fastapi.testclient import TestClient
from starlette.routing import Mount

from detector.errors import Busy, ClearanceError, Conflict, NotFound
from index.reviews import ReviewConflict
from index.store import DuplicateCheck
from service.api import create_app
from tests.service.test_dashboard import form_csrf, sign_in

ERRORS = [(NotFound("no track with external_id 'gone'"), 404),
          (Conflict("external_id 'menu' is already in the catalog"), 409),
          (ReviewConflict("check 'c' was reviewed by Ada meanwhile"), 409),
          (DuplicateCheck("a check with idempotency key 'k' is already stored"), 409),
          (Busy("the excerpts queue is full", retry_after_s=7), 503)]


@pytest.fixture(scope="module")
def edges(catalog_home):
    """A client of the service in-process (its lifespan, which loads the model, not run), with
    a route on the API and one in the dashboard that raise the error they are given."""
    from service.engine import Engine
    from service.settings import Settings

    app = create_app(Engine(Settings(home=catalog_home)))
    dashboard = next(r.app for r in app.routes if isinstance(r, Mount) and r.path == "/review")
    raised: list[ClearanceError] = []

    def fail() -> None:
        raise raised[-1]

    app.add_api_route("/v1/raise", fail)
    dashboard.add_api_route("/raise", fail)
    return TestClient(app, raise_server_exceptions=False), raised


@pytest.mark.parametrize("error,status", ERRORS, ids=lambda e: type(e).__name__ if isinstance(e, Exception) else "")
def test_one_error_one_status_at_both_edges(edges, error, status):
    client, raised = edges
    raised.append(error)
    api, page = client.get("/v1/raise"), client.get("/review/raise")
    assert api.status_code == page.status_code == status
    assert api.headers["content-type"] == "application/problem+json" and api.json()["detail"] == str(error)
    assert page.headers["content-type"].startswith("text/html") and str(error).replace("'", "&#39;") in page.text
    assert api.headers.get("retry-after") == page.headers.get("retry-after") == (
        "7" if isinstance(error, Busy) else None)


def test_unknown_track_and_check_are_404_over_api_and_dashboard(server):
    """Real requests that meet the same raise: a rights change of a track that is not in the
    catalog (``Review.change_rights``) and a check that was never made."""
    admin = server.keys["catalog-admin"]
    api = httpx.patch(f"{server.url}/v1/tracks/no-such-track", json={"rights": "licensed"}, timeout=30,
                      headers={"Authorization": f"Bearer {admin}"})
    assert api.status_code == 404 and api.json()["detail"] == "no track with external_id 'no-such-track'"
    assert server.get("/v1/checks/no-such-check", server.keys["reviewer"]).status_code == 404
    with httpx.Client(base_url=server.url, timeout=60) as c:
        sign_in(c, admin)
        csrf = form_csrf(c.get("/review/catalog").text)
        page = c.post("/review/catalog/rights", data={"external_id": "no-such-track", "rights": "licensed",
                                                      "csrf": csrf})
        assert page.status_code == 404 and "no track with external_id &#39;no-such-track&#39;" in page.text
    with httpx.Client(base_url=server.url, timeout=60) as c:
        sign_in(c, server.keys["reviewer"])
        assert c.get("/review/checks/no-such-check").status_code == 404
