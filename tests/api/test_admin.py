"""Queues, tasks, workers, health and metrics routes."""

from __future__ import annotations

import httpx

from tests.api.conftest import Server, WorkerThread, make_app, wait_for


def test_queues__list_and_get(http: httpx.Client) -> None:
    http.post("/v1/jobs", json={"task": "add", "args": [1, 2]})
    items = http.get("/v1/queues").json()["items"]
    by_name = {q["name"]: q for q in items}
    assert {"default", "media"} <= set(by_name)
    assert by_name["default"]["queued"] == 1 and by_name["media"]["visibility_timeout"] == 60
    assert set(by_name["default"]) >= {"name", "queued", "scheduled", "running", "failed", "retention",
                                       "visibility_timeout", "max_deliveries", "paused"}
    assert http.get("/v1/queues/default").json()["queued"] == 1
    assert http.get("/v1/queues/nothing-here").status_code == 404
    assert http.get("/v1/queues/bad%20name").status_code == 404


def test_queue_patch__validated__unknown_fields_422(http: httpx.Client) -> None:
    r = http.patch("/v1/queues/default", json={"retention": 120, "paused": True})
    assert r.status_code == 200 and r.json()["retention"] == 120 and r.json()["paused"] is True
    assert http.get("/v1/queues/default").json()["paused"] is True
    for body, pointer in (({"retention": 1}, "#/retention"), ({"visibility_timeout": -1}, "#/visibility_timeout"),
                          ({"max_deliveries": 0}, "#/max_deliveries"), ({"paused": "yes"}, "#/paused"),
                          ({"colour": "red"}, "#/colour")):
        r = http.patch("/v1/queues/default", json=body)
        assert r.status_code == 422, body
        assert pointer in [e["pointer"] for e in r.json()["errors"]]
    assert http.get("/v1/queues/default").json()["retention"] == 120


def test_queue_routes__agree_on_which_queues_exist(http: httpx.Client) -> None:
    for method, path in (("GET", ""), ("PATCH", ""), ("POST", "/redrive"), ("POST", "/purge")):
        kwargs = {"json": {}} if method == "PATCH" else {}
        r = http.request(method, f"/v1/queues/never-used{path}", **kwargs)
        assert r.status_code == 404 and r.json()["detail"] == "no queue named 'never-used'", (method, path)
    # a typo is not a new queue: nothing was made, paused or not
    r = http.patch("/v1/queues/never-used", json={"paused": True})
    assert r.status_code == 404 and r.json()["detail"] == "no queue named 'never-used'"
    assert http.get("/v1/queues/never-used").status_code == 404
    assert "never-used" not in [q["name"] for q in http.get("/v1/queues").json()["items"]]
    # a queue the app declares is known before its first job, for every route
    assert http.patch("/v1/queues/media", json={"visibility_timeout": 90}).json()["visibility_timeout"] == 90
    assert http.get("/v1/queues/media").json()["visibility_timeout"] == 90
    assert http.post("/v1/queues/media/purge").json() == {"purged": 0}
    assert http.post("/v1/queues/media/redrive").json() == {"redriven": 0}


def test_redrive_and_purge(server: Server, worker: WorkerThread) -> None:
    http = server.http
    failed = [http.post("/v1/jobs", json={"task": "boom"}).json()["id"] for _ in range(3)]
    wait_for(lambda: http.get("/v1/queues/default").json()["failed"] == 3)
    worker.stop()
    r = http.post("/v1/queues/default/redrive", json={"ids": ["nope", failed[0]]})
    assert r.status_code == 422 and [e["pointer"] for e in r.json()["errors"]] == ["#/ids/0"]
    r = http.post("/v1/queues/default/redrive", json={"ids": [failed[0].upper()]})
    assert r.status_code == 200 and r.json() == {"redriven": 1}
    assert http.post("/v1/queues/default/redrive").json() == {"redriven": 2}
    assert http.get(f"/v1/jobs/{failed[2]}").json()["status"] == "queued"
    r = http.post("/v1/queues/default/purge")
    assert r.status_code == 200 and r.json() == {"purged": 3}
    assert http.get(f"/v1/jobs/{failed[0]}").json()["status"] == "cancelled"


def test_tasks__defaults_and_json_schema(http: httpx.Client) -> None:
    tasks = {t["name"]: t for t in http.get("/v1/tasks").json()["items"]}
    assert tasks["transcode"]["queue"] == "media" and tasks["transcode"]["max_retries"] == 5
    schema = tasks["transcode"]["parameters"]
    assert schema["properties"]["height"]["type"] == "integer" and set(schema["required"]) == {"path", "height"}


def test_workers__live_worker_listed(server: Server, worker: WorkerThread) -> None:
    items = wait_for(lambda: server.http.get("/v1/workers").json()["items"], timeout=5)
    assert items[0]["concurrency"] == 4 and "default" in items[0]["queues"] and items[0]["pid"]


def test_health_ready_metrics(server: Server, worker: WorkerThread) -> None:
    http = server.http
    assert http.get("/healthz").json() == {"status": "ok"}
    assert http.get("/readyz").status_code == 200
    job = http.post("/v1/jobs", json={"task": "add", "args": [1, 2]}).json()
    wait_for(lambda: http.get(f"/v1/jobs/{job['id']}").json()["status"] == "succeeded")
    text = http.get("/metrics").text
    assert 'conveyor_jobs_enqueued_total{queue="default",task="add"}' in text
    assert 'conveyor_queue_jobs{queue="default",status="queued"} 0.0' in text
    assert "conveyor_backend_up 1\n" in text


def test_metrics__queue_gauges_cover_the_queues_the_api_lists__declared_queue_with_no_job_at_0(
        any_engine: Server) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    any_engine.app.queue("emails")  # declared after the start: the engine has no record of it
    listed = {q["name"] for q in any_engine.http.get("/v1/queues").json()["items"]}
    assert "emails" in listed
    samples = {(s.name, s.labels["queue"], s.labels.get("status")): s.value
               for family in text_string_to_metric_families(any_engine.http.get("/metrics").text)
               for s in family.samples if s.name in ("conveyor_queue_jobs", "conveyor_queue_paused")}
    assert {queue for _, queue, _ in samples} == listed
    for status in ("waiting", "scheduled", "queued", "running", "retrying", "failed"):
        assert samples[("conveyor_queue_jobs", "emails", status)] == 0, status
    assert samples[("conveyor_queue_paused", "emails", None)] == 0


def test_metrics__backend_down__200_prometheus_text_with_the_counters_and_backend_up_0(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from prometheus_client.parser import text_string_to_metric_families

    from conveyor import metrics
    from conveyor.core.job import Job

    metrics.job_enqueued(Job(id="01a22233-d0de-71e6-b821-e3be6140d5a2", task="outage_probe", queue="q",
                             created_at=100.0))
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    server = Server(make_app(f"sqlite:///{blocker}/sub/conveyor.db"), tokens="", housekeeping=False)
    try:
        assert server.http.get("/readyz").status_code == 503
        r = server.http.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(r.text) for s in family.samples}
        assert samples[("conveyor_backend_up", ())] == 0
        assert samples[("conveyor_jobs_enqueued_total", (("queue", "q"), ("task", "outage_probe")))] == 1
    finally:
        server.stop()


def test_metrics__worker_hooks_count_and_time(server: Server) -> None:
    from conveyor import metrics
    from conveyor.core.job import Job, Status

    job = Job(id="01a22233-d0de-71e6-b821-e3be6140d5a1", task="metrics_probe", queue="q", created_at=100.0)
    metrics.job_started(job, now=101.5)
    metrics.job_finished(job, Status.RETRYING, 0.2)
    metrics.job_finished(job, "succeeded", 0.3)
    text = server.http.get("/metrics").text
    labels = '{queue="q",task="metrics_probe"}'
    for line in (f"conveyor_jobs_started_total{labels} 1.0", f"conveyor_jobs_retried_total{labels} 1.0",
                 f"conveyor_jobs_succeeded_total{labels} 1.0", f"conveyor_job_duration_seconds_count{labels} 2.0",
                 f"conveyor_job_wait_seconds_sum{labels} 1.5"):
        assert line in text, line
