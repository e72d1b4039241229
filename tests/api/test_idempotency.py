"""Idempotency-Key on POST /v1/jobs: replay 200, mismatch 422, in flight 409, one job under a storm."""

from __future__ import annotations

import asyncio
import datetime
import time

import httpx

from tests.api.conftest import Server

BODY = {"task": "add", "args": [1, 2]}


def soon(days: int, plus: int = 0) -> str:
    """An RFC 3339 time ``days`` days (and ``plus`` seconds) ahead, on a whole second."""
    at = datetime.datetime.now(datetime.UTC).replace(microsecond=0) + datetime.timedelta(days=days, seconds=plus)
    return at.isoformat().replace("+00:00", "Z")


def test_same_key_same_body__same_job_200(http: httpx.Client) -> None:
    first = http.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": "k1"})
    again = http.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": "k1"})
    assert first.status_code == 202 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"] and again.json()["idempotency_key"] == "k1"
    assert again.headers["idempotent-replayed"] == "true"


def test_same_key_different_body__422(http: httpx.Client) -> None:
    assert http.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": "k2"}).status_code == 202
    for other in ({"task": "add", "args": [1, 3]}, {**BODY, "priority": 5}, {**BODY, "queue": "q2"}):
        r = http.post("/v1/jobs", json=other, headers={"Idempotency-Key": "k2"})
        assert r.status_code == 422 and r.json()["type"].endswith("/idempotency-key-reused")


def test_same_key__schedule_compared__delay_from_each_request_eta_as_given(http: httpx.Client) -> None:
    delayed = {**BODY, "delay": 100}
    first = http.post("/v1/jobs", json=delayed, headers={"Idempotency-Key": "k3"})
    assert first.status_code == 202 and first.json()["status"] == "scheduled"
    time.sleep(0.05)  # a repeat comes later: the same delay still names the same request
    assert http.post("/v1/jobs", json=delayed, headers={"Idempotency-Key": "k3"}).status_code == 200
    for other in (BODY, {**BODY, "delay": 200}, {**BODY, "eta": soon(3)}):
        r = http.post("/v1/jobs", json=other, headers={"Idempotency-Key": "k3"})
        assert r.status_code == 422, other

    at = {**BODY, "eta": soon(2)}
    assert http.post("/v1/jobs", json=at, headers={"Idempotency-Key": "k4"}).status_code == 202
    time.sleep(0.05)
    assert http.post("/v1/jobs", json=at, headers={"Idempotency-Key": "k4"}).status_code == 200
    for other in (BODY, {**BODY, "eta": soon(2, plus=1)}, {**BODY, "delay": 100}):
        assert http.post("/v1/jobs", json=other, headers={"Idempotency-Key": "k4"}).status_code == 422, other

    assert http.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": "k5"}).status_code == 202
    assert http.post("/v1/jobs", json=delayed, headers={"Idempotency-Key": "k5"}).status_code == 422


def test_same_key__eta_repeated_after_it_passed__same_job_200(http: httpx.Client) -> None:
    at = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=1)).isoformat()
    first = http.post("/v1/jobs", json={**BODY, "eta": at}, headers={"Idempotency-Key": "k6"})
    time.sleep(1.5)  # a client retrying after a timeout: the eta it sends again has passed

    again = http.post("/v1/jobs", json={**BODY, "eta": at}, headers={"Idempotency-Key": "k6"})

    assert first.status_code == 202 and again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]


def test_key_on_a_batch__400_rather_than_ignored(http: httpx.Client) -> None:
    r = http.post("/v1/jobs/batch", json={"jobs": [BODY]}, headers={"Idempotency-Key": "k7"})
    assert r.status_code == 400 and "not deduplicated" in r.json()["detail"]


def test_bad_key__400(http: httpx.Client) -> None:
    for key in ("", "x" * 256, "tab\there"):
        r = http.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": key})
        assert r.status_code in (400, 422), (key, r.status_code)


def test_parallel_identical_requests__exactly_one_job(server: Server) -> None:
    async def storm() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            return await asyncio.gather(*[
                client.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": "storm"}) for _ in range(30)
            ])

    responses = asyncio.run(storm())
    codes = [r.status_code for r in responses]
    assert codes.count(202) == 1 and set(codes) <= {200, 202, 409}, codes
    ids = {r.json()["id"] for r in responses if r.status_code in (200, 202)}
    assert len(ids) == 1
    in_flight = [r for r in responses if r.status_code == 409]
    assert all(r.headers["retry-after"] == "1" for r in in_flight)
    assert len(server.http.get("/v1/jobs").json()["items"]) == 1


def test_two_servers_one_backend__still_one_job(server: Server) -> None:
    other = Server(server.app.__class__(server.app.url), tokens="")
    other.app.tasks = server.app.tasks
    try:
        a = server.http.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": "shared"})
        b = other.http.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": "shared"})
        assert (a.status_code, b.status_code) == (202, 200) and a.json()["id"] == b.json()["id"]
    finally:
        other.stop()


def test_two_idempotency_key_headers__400(http: httpx.Client) -> None:
    """The first alone was used: a retry sending them in the other order made a second job."""
    body = {"task": "add", "args": [1, 2]}
    r = http.post("/v1/jobs", json=body, headers=[("Idempotency-Key", "k-one"), ("Idempotency-Key", "k-two")])
    assert r.status_code == 400 and r.headers["content-type"] == "application/problem+json", r.text
    assert r.json()["detail"] == "give one Idempotency-Key header, not several"
    assert http.get("/v1/jobs").json()["items"] == []


def test_quoted_key__the_same_key_as_bare(http: httpx.Client) -> None:
    """The IETF draft sends the key as a quoted Structured Field String, Stripe bare: a client that
    switched form made a second job."""
    first = http.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": '"k-\\"q\\"-1"'})
    again = http.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": 'k-"q"-1'})
    assert (first.status_code, again.status_code) == (202, 200), again.text
    assert again.json()["id"] == first.json()["id"] and first.json()["idempotency_key"] == 'k-"q"-1'
    for bad in ('"unterminated', '"a"b"', '"bad \\x escape"', '""'):
        r = http.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": bad})
        assert r.status_code == 400 and "quoted string" in r.json()["detail"], (bad, r.text)
    assert len(http.get("/v1/jobs").json()["items"]) == 1
    longest = http.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": '"' + '\\"' * 255 + '"'})
    assert longest.status_code == 202 and longest.json()["idempotency_key"] == '"' * 255, longest.text
