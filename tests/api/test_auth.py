"""Bearer tokens and scopes (SPEC §6 Auth)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from conveyor import Conveyor
from conveyor.api.auth import parse_tokens
from conveyor.core.errors import ConfigurationError
from tests.api.conftest import Server

TOKENS = "reader:r-secret:read;submitter:s-secret:submit;boss:a-secret:admin"


@pytest.fixture
def secured(app: Conveyor) -> Iterator[Server]:
    s = Server(app, tokens=TOKENS)
    yield s
    s.stop()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_no_or_unknown_token__401_with_www_authenticate(secured: Server) -> None:
    for headers in ({}, bearer("wrong"), {"Authorization": "Basic abc"}, bearer("r-secretX")):
        r = secured.http.get("/v1/jobs", headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        assert r.headers["content-type"] == "application/problem+json"
    assert secured.http.get("/metrics").status_code == 401
    assert secured.http.post("/v1/jobs", content=b"{garbage").status_code == 401  # before the body is read


def test_health_stays_open(secured: Server) -> None:
    assert secured.http.get("/healthz").status_code == 200
    assert secured.http.get("/readyz").status_code == 200


def test_pages_without_job_data_stay_open__their_data_calls_do_not(secured: Server) -> None:
    # the README's stated deviation from "every GET needs read"
    for path in ("/openapi.json", "/docs", "/redoc", "/", "/dashboard.js"):
        assert secured.http.get(path).status_code == 200, path
    assert secured.http.get("/v1/queues").status_code == 401  # what the dashboard reads


def test_scopes__read_submit_admin(secured: Server) -> None:
    http = secured.http
    job = {"task": "add", "args": [1, 2]}
    assert http.get("/v1/jobs", headers=bearer("r-secret")).status_code == 200
    assert http.get("/metrics", headers=bearer("r-secret")).status_code == 200
    assert http.post("/v1/jobs", json=job, headers=bearer("r-secret")).status_code == 403
    r = http.post("/v1/jobs", json=job, headers=bearer("s-secret"))
    assert r.status_code == 202
    job_id = r.json()["id"]
    assert http.post("/v1/jobs/batch", json={"jobs": [job]}, headers=bearer("s-secret")).status_code == 202
    assert http.get(f"/v1/jobs/{job_id}", headers=bearer("s-secret")).status_code == 200  # submit implies read
    r = http.post(f"/v1/jobs/{job_id}/cancel", headers=bearer("s-secret"))
    assert r.status_code == 403 and r.json()["type"].endswith("/insufficient-scope")
    assert http.post("/v1/queues/default/purge", headers=bearer("s-secret")).status_code == 403
    assert http.post(f"/v1/jobs/{job_id}/cancel", headers=bearer("a-secret")).status_code == 202
    assert http.patch("/v1/queues/default", json={"paused": True}, headers=bearer("a-secret")).status_code == 200
    assert http.post("/v1/jobs", json=job, headers=bearer("a-secret")).status_code == 202


def test_parse_tokens__malformed__configuration_error() -> None:
    assert parse_tokens("a:b:read,submit")[0].scopes == {"read", "submit"}
    # a secret no request can carry: non-ASCII (clients refuse it in a header; the server reads
    # Latin-1), spaces or control characters
    for bad in ("a:b", "a:b:root", ":b:read", "a::read", "a:b:", "a:s\u00e9cret:read", "a:two words:read",
                "a:tab\tbed:read"):
        with pytest.raises(ConfigurationError):
            parse_tokens(bad)
