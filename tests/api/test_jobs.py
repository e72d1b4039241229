"""Every /v1/jobs route through a real server: codes, headers, bodies (SPEC §6)."""

from __future__ import annotations

import httpx

from conveyor.core.job import Status
from tests.api.conftest import Server, WorkerThread, make_app, wait_for

PROBLEM = "application/problem+json"


def submit(http: httpx.Client, task: str = "add", **body: object) -> dict:
    body.setdefault("args", [1, 2]) if task == "add" else None
    r = http.post("/v1/jobs", json={"task": task, **body})
    assert r.status_code == 202, r.text
    return r.json()


def test_submit__accepted__202_with_location_and_retry_after(http: httpx.Client) -> None:
    r = http.post("/v1/jobs", json={"task": "transcode", "args": ["in/cat.mp4"], "kwargs": {"height": 480}})
    assert r.status_code == 202
    job = r.json()
    assert job["status"] == "queued" and job["queue"] == "media" and job["max_retries"] == 5
    assert r.headers["location"] == r.headers["content-location"] == f"/v1/jobs/{job['id']}"
    assert int(r.headers["retry-after"]) >= 1
    assert r.headers["content-type"] == "application/json"


def test_submit__options__are_applied(http: httpx.Client) -> None:
    job = submit(http, priority=7, queue="other", delay=60, max_retries=0, timeout=5, metadata={"who": "me"})
    assert (job["priority"], job["queue"], job["status"], job["max_retries"], job["timeout"]) == (
        7, "other", "scheduled", 0, 5.0)
    assert job["metadata"] == {"who": "me"} and job["scheduled_at"] is not None


def test_get__etag_and_if_none_match__304(http: httpx.Client) -> None:
    job = submit(http)
    r = http.get(f"/v1/jobs/{job['id']}")
    assert r.status_code == 200 and r.json()["id"] == job["id"]
    etag = r.headers["etag"]
    assert etag.startswith('"') and not etag.startswith("W/")
    assert http.get(f"/v1/jobs/{job['id']}", headers={"If-None-Match": etag}).status_code == 304
    assert http.get(f"/v1/jobs/{job['id']}", headers={"If-None-Match": '"999"'}).status_code == 200


def test_get__etag_changes_when_the_job_changes(http: httpx.Client) -> None:
    job = submit(http)
    etag = http.get(f"/v1/jobs/{job['id']}").headers["etag"]
    http.post(f"/v1/jobs/{job['id']}/cancel")
    r = http.get(f"/v1/jobs/{job['id']}", headers={"If-None-Match": etag})
    assert r.status_code == 200 and r.json()["status"] == "cancelled" and r.headers["etag"] != etag


def test_ids__in_upper_case__name_the_same_job(http: httpx.Client) -> None:
    job = http.post("/v1/jobs", json={"task": "add", "args": [1, 2]}).json()
    upper = job["id"].upper()
    r = http.get(f"/v1/jobs/{upper}")
    assert r.status_code == 200 and r.json()["id"] == job["id"]
    child = http.post("/v1/jobs", json={"task": "add", "args": [3, 4], "depends_on": [upper]})
    assert child.status_code == 202 and child.json()["depends_on"] == [job["id"]]
    assert http.post(f"/v1/jobs/{upper}/cancel").json()["id"] == job["id"]


def test_get__unknown_or_malformed_id__404_problem(http: httpx.Client) -> None:
    for job_id in ("01a22233-d0de-71e6-b821-e3be6140d5a1", "nope", "💥", "1" * 300):
        r = http.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 404 and r.headers["content-type"] == PROBLEM
        assert r.json()["status"] == 404


def test_list__filters_limit_and_cursor(http: httpx.Client) -> None:
    ids = [submit(http)["id"] for _ in range(5)]
    submit(http, "transcode", args=["x"], kwargs={"height": 1})
    page = http.get("/v1/jobs", params={"task": "add", "limit": 2}).json()
    assert len(page["items"]) == 2 and page["next_cursor"]
    seen = [j["id"] for j in page["items"]]
    while page["next_cursor"]:
        page = http.get("/v1/jobs", params={"task": "add", "limit": 2, "cursor": page["next_cursor"]}).json()
        seen += [j["id"] for j in page["items"]]
    assert seen == ids[::-1]  # newest first, each once
    assert [j["task"] for j in http.get("/v1/jobs", params={"queue": "media"}).json()["items"]] == ["transcode"]
    assert http.get("/v1/jobs", params={"status": "running"}).json() == {"items": [], "next_cursor": None}
    bad = http.get("/v1/jobs", params={"cursor": "!!!"})
    assert bad.status_code == 422
    assert [(e["parameter"], e["in"]) for e in bad.json()["errors"]] == [("cursor", "query")]


def test_list__bad_parameters__each_named_as_a_query_parameter(http: httpx.Client) -> None:
    for name, value in (("limit", "0"), ("cursor", "!!!"), ("status", "done"), ("task", "x" * 201)):
        r = http.get("/v1/jobs", params={name: value})
        assert r.status_code == 422, (name, r.text)
        assert [(e["parameter"], e["in"]) for e in r.json()["errors"]] == [(name, "query")]


def test_list__an_empty_filter__422_not_an_empty_list(http: httpx.Client) -> None:
    """``?queue=`` filtered on the queue named "", which no job has: a list as empty as a quiet queue's."""
    submit(http)
    for name in ("task", "queue", "cursor"):
        r = http.get(f"/v1/jobs?{name}=")
        assert r.status_code == 422 and r.headers["content-type"] == PROBLEM, (name, r.text)
        [error] = r.json()["errors"]
        assert (error["parameter"], error["in"]) == (name, "query") and "at least 1 character" in error["detail"]


def test_list__a_filter_given_twice__422_naming_it_not_the_last_one_alone(http: httpx.Client) -> None:
    for name, values in (("status", ["failed", "succeeded"]), ("task", ["add", "boom"]), ("queue", ["a", "b"]),
                         ("limit", ["1", "2"])):
        r = http.get("/v1/jobs", params=[(name, v) for v in values])
        assert r.status_code == 422, (name, r.text)
        assert r.json()["errors"] == [{"parameter": name, "in": "query", "detail": "give one value, not several"}]


def test_list__unknown_parameter__422_naming_it_not_every_job(http: httpx.Client) -> None:
    """A misspelt filter listed every job, as if no filter was given."""
    submit(http)
    for params in ({"stauts": "failed"}, {"status": "queued", "queues": "media"}, {"page": "2"}):
        r = http.get("/v1/jobs", params=params)
        assert r.status_code == 422 and r.headers["content-type"] == PROBLEM, (params, r.text)
        [unknown] = [name for name in params if name not in ("status", "queue")]
        assert r.json()["errors"] == [{"parameter": unknown, "in": "query",
                                       "detail": "unknown parameter: use status, task, queue, limit, cursor"}]


def test_list__nul_in_a_name_filter__422_on_every_engine(any_engine: Server) -> None:
    http = any_engine.http
    submit(http)
    for name in ("task", "queue"):
        r = http.get("/v1/jobs", params={name: "a\x00b"})
        assert r.status_code == 422 and r.headers["content-type"] == PROBLEM, (name, r.text)
        assert r.json()["errors"] == [{"parameter": name, "in": "query", "detail": "must not contain U+0000"}]
    assert len(http.get("/v1/jobs", params={"task": "add"}).json()["items"]) == 1  # the engine is fine


def test_list__cursor_is_stable_under_concurrent_inserts(http: httpx.Client) -> None:
    first = [submit(http)["id"] for _ in range(7)]
    page = http.get("/v1/jobs", params={"limit": 3}).json()
    seen = [j["id"] for j in page["items"]]
    while page["next_cursor"]:
        submit(http)  # new jobs arrive while the client pages
        page = http.get("/v1/jobs", params={"limit": 3, "cursor": page["next_cursor"]}).json()
        seen += [j["id"] for j in page["items"]]
    assert seen == first[::-1]  # every job that existed appears exactly once, none of the newcomers


def test_list__bad_parameters__422_or_400_never_500(http: httpx.Client) -> None:
    for params in ({"limit": 501}, {"limit": 0}, {"limit": "x"}, {"status": "done"}):
        r = http.get("/v1/jobs", params=params)
        assert r.status_code == 422, (params, r.text)
        assert r.headers["content-type"] == PROBLEM and r.json()["errors"]


def test_batch__accepted_in_order(http: httpx.Client) -> None:
    body = {"jobs": [{"task": "add", "args": [i, i]} for i in range(50)]}
    r = http.post("/v1/jobs/batch", json=body)
    assert r.status_code == 202
    jobs = r.json()["jobs"]
    assert [j["args"] for j in jobs] == [[i, i] for i in range(50)]


def test_batch__one_bad_job__nothing_stored_and_pointers_name_each(http: httpx.Client) -> None:
    body = {"jobs": [{"task": "add", "args": [1, 2]}, {"task": "add", "args": [1, 2]},
                     {"task": "nope"}, {"task": "transcode", "args": ["x"], "kwargs": {"height": "tall"}}]}
    r = http.post("/v1/jobs/batch", json=body)
    assert r.status_code == 422
    pointers = [e["pointer"] for e in r.json()["errors"]]
    assert pointers == ["#/jobs/2/task", "#/jobs/3/kwargs/height"]
    assert http.get("/v1/jobs").json()["items"] == []


def test_batch__unknown_tasks_alone__the_unknown_task_problem_as_for_one_job(http: httpx.Client) -> None:
    """A batch named its unknown tasks as a plain validation error, one job as ``unknown-task``."""
    r = http.post("/v1/jobs/batch", json={"jobs": [{"task": "add", "args": [1, 2]}, {"task": "nope"}]})
    assert r.status_code == 422 and r.json()["type"].endswith("/unknown-task"), r.text
    assert r.json()["errors"] == [{"pointer": "#/jobs/1/task", "detail": "no task named 'nope'"}]
    mixed = http.post("/v1/jobs/batch", json={"jobs": [{"task": "nope"}, {"task": "add", "args": ["x", 2]}]})
    assert mixed.status_code == 422 and mixed.json()["type"].endswith("/validation-error"), mixed.text


def test_batch__over_1000__422(http: httpx.Client) -> None:
    r = http.post("/v1/jobs/batch", json={"jobs": [{"task": "add", "args": [1, 2]}] * 1001})
    assert r.status_code == 422 and r.json()["errors"][0]["pointer"] == "#/jobs"


def test_cancel__queued__202_cancelled_then_again_202(http: httpx.Client) -> None:
    job = submit(http)
    r = http.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 202 and r.json()["status"] == "cancelled"
    assert http.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202  # idempotent


def test_cancel__succeeded_job__409(http: httpx.Client, worker: WorkerThread) -> None:
    job = submit(http)
    wait_for(lambda: http.get(f"/v1/jobs/{job['id']}").json()["status"] == "succeeded")
    r = http.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 409 and r.json()["type"].endswith("/invalid-state-transition")


def test_cancel__running_job__cooperative(http: httpx.Client, worker: WorkerThread) -> None:
    job = submit(http, "sleepy", args=[10])
    wait_for(lambda: http.get(f"/v1/jobs/{job['id']}").json()["status"] == "running")
    r = http.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 202 and r.json()["cancel_requested"] is True
    wait_for(lambda: http.get(f"/v1/jobs/{job['id']}").json()["status"] == "cancelled", timeout=10)


def test_cancel_and_retry__unknown__404(http: httpx.Client) -> None:
    for action in ("cancel", "retry"):
        assert http.post(f"/v1/jobs/01a22233-d0de-71e6-b821-e3be6140d5a1/{action}").status_code == 404
        assert http.post(f"/v1/jobs/garbage/{action}").status_code == 404


def test_retry__failed_or_cancelled__202_queued__else_409(http: httpx.Client, server: Server) -> None:
    queued = submit(http)
    assert http.post(f"/v1/jobs/{queued['id']}/retry").status_code == 409
    http.post(f"/v1/jobs/{queued['id']}/cancel")
    r = http.post(f"/v1/jobs/{queued['id']}/retry")
    assert r.status_code == 202 and r.json()["status"] == "queued"
    assert r.headers["location"] == f"/v1/jobs/{queued['id']}"
    w = WorkerThread(make_app(server.app.url), concurrency=2)
    try:
        failing = submit(http, "boom", args=[])
        wait_for(lambda: http.get(f"/v1/jobs/{failing['id']}").json()["status"] == Status.FAILED)
        r = http.post(f"/v1/jobs/{failing['id']}/retry")
        assert r.status_code == 202 and r.json()["attempt"] == 1
    finally:
        w.stop()



def test_retry__id_in_upper_case__retries_that_job(http: httpx.Client) -> None:
    job = submit(http, delay=60)
    http.post(f"/v1/jobs/{job['id'].upper()}/cancel")

    r = http.post(f"/v1/jobs/{job['id'].upper()}/retry")

    assert r.status_code == 202 and r.json()["status"] == "queued" and r.json()["id"] == job["id"]


def test_retry__dependent_of_pending_parent__202_waiting(http: httpx.Client) -> None:
    parent = submit(http, delay=60)
    child = submit(http, depends_on=[parent["id"]])
    http.post(f"/v1/jobs/{child['id']}/cancel")

    r = http.post(f"/v1/jobs/{child['id']}/retry")

    assert r.status_code == 202 and r.json()["status"] == "waiting"


def test_retry__dependent_of_failed_parent__409_naming_the_parent(http: httpx.Client, worker: WorkerThread) -> None:
    parent = submit(http, "boom", args=[])
    child = submit(http, depends_on=[parent["id"]])
    wait_for(lambda: http.get(f"/v1/jobs/{child['id']}").json()["status"] == "cancelled")

    r = http.post(f"/v1/jobs/{child['id']}/retry")

    assert r.status_code == 409 and r.headers["content-type"] == PROBLEM
    assert parent["id"] in r.json()["detail"] and "failed" in r.json()["detail"]
    assert http.get(f"/v1/jobs/{child['id']}").json()["status"] == "cancelled"
