"""Garbage in, problem+json out: never a 500, always the right 4xx with pointers."""

from __future__ import annotations

import gzip
import json
import time
import uuid

import httpx
import pytest

from conveyor.core.errors import ConfigurationError, ConveyorError
from tests.api.conftest import Server, drop_namespace, make_app
from tests.e2e.tcp_proxy import TcpProxy

PROBLEM = "application/problem+json"
HUGE = "x" * 600_000

GARBAGE = [
    # (body, expected status, expected pointer or None)
    ({"task": 5}, 422, "#/task"),
    ({"task": None}, 422, "#/task"),
    ({"task": ""}, 422, "#/task"),
    ({"task": "add", "args": "1,2"}, 422, "#/args"),
    ({"task": "add", "args": {"a": 1}}, 422, "#/args"),
    ({"task": "add", "kwargs": [1, 2]}, 422, "#/kwargs"),
    ({"task": "add", "args": [1, 2], "queue": 7}, 422, "#/queue"),
    ({"task": "add", "args": [1, 2], "queue": "bad queue!"}, 422, "#/queue"),
    ({"task": "add", "args": [1, 2], "priority": 42}, 422, "#/priority"),
    ({"task": "add", "args": [1, 2], "priority": -1}, 422, "#/priority"),
    ({"task": "add", "args": [1, 2], "priority": "5"}, 422, "#/priority"),
    ({"task": "add", "args": [1, 2], "priority": 1.5}, 422, "#/priority"),
    ({"task": "add", "args": [1, 2], "priority": True}, 422, "#/priority"),
    ({"task": "add", "args": [1, 2], "delay": -1}, 422, "#/delay"),
    ({"task": "add", "args": [1, 2], "delay": "soon"}, 422, "#/delay"),
    ({"task": "add", "args": [1, 2], "delay": 1e300}, 422, "#/delay"),
    ({"task": "add", "args": [1, 2], "eta": "tomorrow"}, 422, "#/eta"),
    ({"task": "add", "args": [1, 2], "eta": 12}, 422, "#/eta"),
    ({"task": "add", "args": [1, 2], "eta": "9999-12-31T23:59:59Z"}, 422, "#/eta"),
    ({"task": "add", "args": [1, 2], "delay": 1, "eta": "2030-01-01T00:00:00Z"}, 422, "#/eta"),
    ({"task": "add", "args": [1, 2], "max_retries": -3}, 422, "#/max_retries"),
    ({"task": "add", "args": [1, 2], "timeout": 0}, 422, "#/timeout"),
    ({"task": "add", "args": [1, 2], "depends_on": "abc"}, 422, "#/depends_on"),
    ({"task": "add", "args": [1, 2], "depends_on": ["not-a-uuid"]}, 422, "#/depends_on/0"),
    ({"task": "add", "args": [1, 2], "depends_on": ["01a22233-d0de-71e6-b821-e3be6140d5a1"]}, 422, None),
    ({"task": "add", "args": [1, 2], "metadata": [1]}, 422, "#/metadata"),
    ({"task": "add", "args": [1, 2], "metadata": {"big": HUGE[:70_000]}}, 422, "#/metadata"),
    ({"task": "add", "args": [1, 2], "webhook": "ftp://x"}, 422, "#/webhook"),
    ({"task": "add", "args": [1, 2], "webhook": 3}, 422, "#/webhook"),
    ({"task": "add", "args": [1, 2], "webhook": "http://[::1"}, 422, "#/webhook"),
    ({"task": "add", "args": [1, 2], "webhook": "http://[zz]/"}, 422, "#/webhook"),
    ({"task": "add", "args": [1, 2], "webhook": "https://example.com:99999/hook"}, 422, "#/webhook"),
    ({"task": "add", "args": [1, 2], "webhook": "http://127.0.0.1:8/hook\t"}, 422, "#/webhook"),  # urlsplit drops \t
    ({"task": "add", "args": [1, 2], "webhook": "http://127.0.0.1:8/a b"}, 422, "#/webhook"),
    ({"task": "add", "args": [1, 2], "webhook": "http://\u2603.com/hook"}, 422, "#/webhook"),  # not an IDNA host
    ({"task": "add", "args": [1, 2], "surprise": 1}, 422, "#/surprise"),
    ({"task": "nope"}, 422, "#/task"),
    ({"task": "ünïcødé 🎉"}, 422, "#/task"),
    ({"task": "add", "args": [1]}, 422, None),
    ({"task": "add", "args": [1, 2, 3]}, 422, None),
    ({"task": "add", "args": [1, "two"]}, 422, "#/args/1"),
    ({"task": "add", "kwargs": {"a": 1, "b": "two"}}, 422, "#/kwargs/b"),
    ({"task": "add", "kwargs": {"a": 1, "b": 2, "c": 3}}, 422, None),
    ({"task": "transcode", "args": ["x"], "kwargs": {"height": 4.5}}, 422, "#/kwargs/height"),
    ({"task": "transcode", "args": [HUGE], "kwargs": {"height": 1}}, 202, None),
    ({"task": "transcode", "args": ["ünïcødé 🎉"], "kwargs": {"height": 1}}, 202, None),
    ({"task": "transcode", "args": ["a \u0000 NUL"], "kwargs": {"height": 1}}, 422, "#/args/0"),  # not storable
    ({"task": "add", "args": [2**70, 1]}, 202, None),  # Python ints are unbounded
    ([1, 2, 3], 422, "#"),
    ("just a string", 422, "#"),
    (None, 422, "#"),
    (12, 422, "#"),
]


@pytest.mark.parametrize(("body", "status", "pointer"), GARBAGE, ids=[str(i) for i in range(len(GARBAGE))])
def test_submit__garbage__problem_with_pointer(http: httpx.Client, body: object, status: int,
                                               pointer: str | None) -> None:
    r = http.post("/v1/jobs", content=json.dumps(body), headers={"content-type": "application/json"})
    assert r.status_code == status, r.text[:500]
    if status >= 400:
        problem = r.json()
        assert r.headers["content-type"] == PROBLEM
        assert {"type", "title", "status", "detail"} <= set(problem) and problem["status"] == status
        if pointer is not None:
            assert pointer in [e.get("pointer") for e in problem["errors"]], problem


def test_submit__deep_nesting__never_500(http: httpx.Client) -> None:
    for depth in (50, 500, 5000, 100_000):
        nested = "[" * depth + "]" * depth
        body = '{"task": "transcode", "args": ["x"], "kwargs": {"height": 1, "extra": ' + nested + "}}"
        r = http.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
        assert r.status_code in (400, 413, 422), (depth, r.status_code, r.text[:300])
        assert r.headers["content-type"] == PROBLEM


def test_malformed_json__400(http: httpx.Client) -> None:
    for raw in (b"{", b'{"task": }', b"\xff\xfe", b"{'task': 'add'}"):
        r = http.post("/v1/jobs", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400, (raw, r.text)
        assert r.headers["content-type"] == PROBLEM and r.json()["type"].endswith("/bad-request")


@pytest.mark.parametrize(("path", "raw", "detail"), [
    ("/v1/jobs", b'{"task":', "the body is not valid JSON: EOF while parsing a value (at line 1 column 8)"),
    ("/v1/jobs", b'{"task": "add", "args": [1, }', "the body is not valid JSON: expected value (at line 1 column 29)"),
    ("/v1/jobs/batch", b'{"jobs": [', "the body is not valid JSON: Expecting value (at character 10)"),
    ("/v1/jobs", b'{"task": "add", "args": ["\\ud800", 1]}',
     "a \\u escape in the body is a lone UTF-16 surrogate, not a character (at line 1 column 33)"),
    ("/v1/jobs", b'{"task": "add", "args": [' + b"9" * 5000 + b", 1]}",
     "a number in the body is too large: more than 4300 digits (at line 1 column 4327)"),
    ("/v1/jobs/batch", b'{"jobs": [{"task": "add", "args": [' + b"9" * 5000 + b", 1]}]}",
     "a number in the body is too large: more than 4300 digits"),
])
def test_unreadable_body__400_saying_why_and_where(http: httpx.Client, path: str, raw: bytes, detail: str) -> None:
    r = http.post(path, content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.headers["content-type"] == PROBLEM, r.text
    assert r.json()["detail"] == detail
    assert r.json()["errors"] == [{"pointer": "#", "detail": detail}]


@pytest.mark.parametrize(("method", "path", "raw", "pointer"), [
    ("POST", "/v1/jobs", b'{"task": "add", "args": [1, 2], "delay": NaN}', "#/delay"),
    ("POST", "/v1/jobs", b'{"task": "add", "args": [1, 2], "timeout": Infinity}', "#/timeout"),
    ("POST", "/v1/jobs/batch", b'{"jobs": [{"task": "add", "args": [1, 2], "delay": NaN}]}', "#/jobs/0/delay"),
    ("PATCH", "/v1/queues/default", b'{"visibility_timeout": -Infinity}', "#/visibility_timeout"),
])
def test_seconds_not_finite__422_saying_so(http: httpx.Client, method: str, path: str, raw: bytes,
                                          pointer: str) -> None:
    """NaN and Infinity (which both JSON parsers take) are no durations: the problem says so,
    not "Input should be less than or equal to 1209600"."""
    r = http.request(method, path, content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM, r.text
    assert r.json()["errors"] == [{"pointer": pointer, "detail": "Input should be a finite number"}]


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/v1/jobs"), ("POST", "/v1/jobs/batch"), ("PATCH", "/v1/queues/default"),
])
def test_empty_body__400_saying_so(http: httpx.Client, method: str, path: str) -> None:
    """No body where one is needed: one answer everywhere, not a 422 "#: Field required" (batch,
    queue settings) next to a 400 "EOF while parsing a value" (submit)."""
    r = http.request(method, path, content=b"", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.headers["content-type"] == PROBLEM, r.text
    assert r.json()["detail"] == "the body is empty: send a JSON object"
    assert r.json()["errors"] == [{"pointer": "#", "detail": "the body is empty: send a JSON object"}]


@pytest.mark.parametrize(("job", "pointer"), [
    ({"task": "add", "args": ["\\ud800", 1]}, "#/jobs/0/args/0"),
    ({"task": "transcode", "args": ["in.mp4"], "kwargs": {"height": 1}, "metadata": {"by": "\\udc80"}},
     "#/jobs/0/metadata"),
])
def test_batch__lone_surrogate__422_naming_where(http: httpx.Client, job: dict, pointer: str) -> None:
    """A batch's body is read by the standard library, which lets a lone surrogate through: the
    problem said '#/jobs/0/kwargs/' and ': Invalid JSON: unexpected end of hex escape'."""
    raw = json.dumps({"jobs": [job]}).replace("\\\\", "\\").encode()
    r = http.post("/v1/jobs/batch", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    [error] = r.json()["errors"]
    assert error["pointer"] == pointer and "lone UTF-16 surrogate" in error["detail"]


def test_batch__lone_surrogate_as_a_kwargs_key__422_pointing_at_it(http: httpx.Client) -> None:
    """The pointer quotes the key, which UTF-8 cannot encode: the problem could not be sent (a 500,
    with a traceback in the server's log). It goes out escaped, as the client wrote it."""
    raw = b'{"jobs": [{"task": "add", "kwargs": {"a": 1, "b": 2, "\\ud800": 3}}]}'
    r = http.post("/v1/jobs/batch", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM, r.text
    assert b"\\ud800" in r.content
    assert r.json()["errors"] == [{"pointer": "#/jobs/0/kwargs/\ud800", "detail": "unexpected argument '\\ud800'"}]
    assert http.get("/v1/jobs").json()["items"] == []  # nothing was submitted


def test_compressed_body__415_saying_so(http: httpx.Client) -> None:
    """A gzip body was parsed as it came: 400 "not valid JSON: expected value" or "not UTF-8 text"."""
    raw = gzip.compress(b'{"task": "add", "args": [1, 2]}')
    for method, path in (("POST", "/v1/jobs"), ("PATCH", "/v1/queues/default"), ("POST", "/v1/jobs/batch")):
        r = http.request(method, path, content=raw, headers={"content-type": "application/json",
                                                             "content-encoding": "gzip"})
        assert r.status_code == 415 and r.headers["content-type"] == PROBLEM, r.text
        assert r.json()["detail"] == "send the body uncompressed: Content-Encoding 'gzip' is not supported"
        assert r.headers["accept-encoding"] == "identity"
    r = http.post("/v1/jobs", json={"task": "add", "args": [1, 2]}, headers={"content-encoding": "identity"})
    assert r.status_code == 202


@pytest.mark.parametrize(("method", "path", "params", "body"), [
    ("POST", "/v1/jobs", {"priority": "9"}, {"task": "add", "args": [1, 2]}),  # submitted at priority 0
    ("POST", "/v1/jobs/batch", {"queue": "media"}, {"jobs": [{"task": "add", "args": [1, 2]}]}),
    ("PATCH", "/v1/queues/default", {"paused": "true"}, {}),  # 200, nothing changed
    ("POST", "/v1/queues/default/redrive", {"ids": "01a22233-d0de-71e6-b821-e3be6140d5a1"}, None),  # redrove all
    ("POST", "/v1/queues/default/purge", {"dry_run": "1"}, None),
    ("POST", "/v1/jobs/01a22233-d0de-71e6-b821-e3be6140d5a1/cancel", {"force": "1"}, None),
])
def test_write_route_with_query_parameters__422_naming_them(http: httpx.Client, method: str, path: str,
                                                            params: dict, body: object) -> None:
    """These routes take no query parameters: options sent there were dropped without a word."""
    queued = http.get("/v1/queues/default").json()["queued"]
    r = http.request(method, path, params=params, json=body)
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM, r.text
    assert r.json()["errors"] == [{"parameter": name, "in": "query", "detail": "unknown parameter: this route "
                                   "takes none (options go in the JSON body)"} for name in params]
    assert http.get("/v1/queues/default").json()["queued"] == queued  # nothing was done
    assert http.get("/v1/queues/default").json()["paused"] is False


def test_validation_detail__says_what_and_where(http: httpx.Client) -> None:
    """For a reader of ``detail`` alone (curl, logs): it said "1 part(s) of the request are invalid"."""
    r = http.post("/v1/jobs", json={"task": "add", "args": [1, 2], "priority": 10})
    assert r.json()["detail"] == "#/priority: Input should be less than or equal to 9"
    r = http.get("/v1/jobs", params={"limit": 0})
    assert r.json()["detail"] == "?limit: Input should be greater than or equal to 1"
    r = http.post("/v1/jobs", json={"task": 1, "queue": 2, "priority": "x", "delay": "y", "extra": 1})
    assert r.status_code == 422 and len(r.json()["errors"]) == 5
    assert r.json()["detail"] == ("#/task: Input should be a valid string; #/queue: Input should be a valid string; "
                                  "#/priority: Input should be a valid integer (and 2 more)")


def test_body_without_content_type__taken_as_json(http: httpx.Client) -> None:
    assert http.post("/v1/jobs", content=b'{"task": "add", "args": [1, 2]}').status_code == 202


def test_body_with_a_utf8_byte_order_mark__read_alike_on_every_route(http: httpx.Client) -> None:
    """A file saved by Notepad (``curl --data-binary @job.json``): the batch took it, POST /v1/jobs
    said 400 "not valid JSON: expected value (at line 1 column 1)"."""
    job = {"task": "add", "args": [1, 2]}
    for path, body in (("/v1/jobs", job), ("/v1/jobs/batch", {"jobs": [job]})):
        r = http.post(path, content=json.dumps(body).encode("utf-8-sig"), headers={"content-type": "application/json"})
        assert r.status_code == 202, (path, r.text)
    r = http.post("/v1/jobs", content=b"\xef\xbb\xbf", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["detail"] == "the body is empty: send a JSON object"


@pytest.mark.parametrize("headers", [[("content-type", "")], [("content-type", ";")],
                                     [("content-type", "; charset=utf-8")]])
def test_body_with_an_empty_content_type__taken_as_json_on_every_route(http: httpx.Client, headers: list) -> None:
    """Like no Content-Type at all: POST /v1/jobs took it, the other routes said 422 "#: Input should
    be a valid dictionary" of a JSON object."""
    job = {"task": "add", "args": [1, 2]}
    for method, path, body, status in (("POST", "/v1/jobs", job, 202), ("POST", "/v1/jobs/batch", {"jobs": [job]}, 202),
                                       ("PATCH", "/v1/queues/default", {"paused": True}, 200),
                                       ("POST", "/v1/queues/default/redrive", {"ids": []}, 200)):
        r = http.request(method, path, content=json.dumps(body).encode(), headers=headers)
        assert r.status_code == status, (method, path, r.text)
    assert http.get("/v1/queues/default").json()["paused"] is True


def test_two_content_types__the_first_is_judged_on_every_route(http: httpx.Client) -> None:
    """The routes read the first; the check read the last: text/plain then application/json was
    a 202 on POST /v1/jobs and a 422 "not a valid dictionary" on PATCH."""
    headers = [("content-type", "text/plain"), ("content-type", "application/json")]
    for method, path, body in (("POST", "/v1/jobs", {"task": "add", "args": [1, 2]}),
                               ("PATCH", "/v1/queues/default", {"paused": True})):
        r = http.request(method, path, content=json.dumps(body).encode(), headers=headers)
        assert r.status_code == 415, (method, path, r.text)
        assert r.json()["detail"] == "send JSON (Content-Type: application/json), not 'text/plain'"
    assert http.get("/v1/jobs").json()["items"] == []


def test_non_json_content_type__415(http: httpx.Client) -> None:
    r = http.post("/v1/jobs", content=b"task=add", headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415 and r.headers["content-type"] == PROBLEM


def test_body_over_limit__413_by_content_length_and_by_stream(app) -> None:  # type: ignore[no-untyped-def]
    server = Server(app, tokens="", max_body=1000)
    try:
        big = json.dumps({"task": "transcode", "args": ["x" * 2000], "kwargs": {"height": 1}}).encode()
        r = server.http.post("/v1/jobs", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.headers["content-type"] == PROBLEM

        def chunks():  # type: ignore[no-untyped-def]
            for _ in range(20):  # chunked: no Content-Length, so the limit is counted while reading
                yield b" " * 100
        r = server.http.post("/v1/jobs", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413, r.text
        ok = server.http.post("/v1/jobs", json={"task": "add", "args": [1, 2]})
        assert ok.status_code == 202
    finally:
        server.stop()


def test_unknown_route_and_method__problem(http: httpx.Client) -> None:
    r = http.get("/v2/nothing")
    assert r.status_code == 404 and r.headers["content-type"] == PROBLEM
    r = http.delete("/v1/jobs")
    assert r.status_code == 405 and r.headers["content-type"] == PROBLEM


def test_wrong_method__405_allow_names_every_method_of_the_path(http: httpx.Client) -> None:
    for method, path, allow in (("DELETE", "/v1/queues/default", "GET, HEAD, PATCH"),
                                ("DELETE", "/v1/jobs", "GET, HEAD, POST"),
                                ("PUT", "/v1/queues/default/purge", "POST"),
                                ("HEAD", "/v1/queues/default/redrive", "POST")):
        r = http.request(method, path)
        assert r.status_code == 405 and r.headers["allow"] == allow, (method, path)
        for other in allow.split(", "):  # each method named is one the path answers
            assert http.request(other, path, json={}).status_code != 405, (other, path)


def test_head__every_get_route__the_get_status_and_headers_without_a_body(http: httpx.Client) -> None:
    job_id = http.post("/v1/jobs", json={"task": "add", "args": [1, 2], "delay": 600}).json()["id"]
    for path in ("/", "/healthz", "/readyz", "/metrics", "/v1/jobs", f"/v1/jobs/{job_id}", "/v1/queues",
                 "/v1/queues/default", "/v1/tasks", "/v1/workers", "/v1/jobs/01a22233-d0de-71e6-b821-e3be6140d5a1"):
        got, head = http.get(path), http.head(path)
        assert (head.status_code, head.content) == (got.status_code, b""), path
        for name in ("content-type", "etag"):
            assert head.headers.get(name) == got.headers.get(name), (path, name)
    # a stream's HEAD ends with its headers (the job is far from done: a GET would stream on)
    started = time.monotonic()
    head = http.head(f"/v1/jobs/{job_id}/events")
    assert head.status_code == 200 and head.headers["content-type"].startswith("text/event-stream")
    assert time.monotonic() - started < 2
    assert http.head("/v1/queues/default/purge").status_code == 405  # POST-only routes stay so


def test_backend_down__503_with_retry_after(tmp_path) -> None:  # type: ignore[no-untyped-def]
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    server = Server(make_app(f"sqlite:///{blocker}/sub/conveyor.db"), tokens="", housekeeping=False)
    try:
        for method, path in (("GET", "/readyz"), ("GET", "/v1/jobs"), ("POST", "/v1/jobs")):
            r = server.http.request(method, path, json={"task": "add", "args": [1, 2]} if method == "POST" else None)
            assert r.status_code == 503, (path, r.text)
            assert r.headers["retry-after"] and r.headers["content-type"] == PROBLEM
        assert server.http.get("/healthz").status_code == 200
    finally:
        server.stop()


@pytest.mark.parametrize("error", [RuntimeError, ConveyorError, ConfigurationError])
def test_internal_bug__generic_500_without_traceback(app, monkeypatch, error) -> None:  # type: ignore[no-untyped-def]
    """One problem for every 500, whatever raised: one type has one title (RFC 9457 §3.1.3); a
    ConfigurationError said "Server misconfigured" under the same type as "Internal error"."""
    server = Server(app, tokens="")
    try:
        def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
            raise error("secret internals")
        monkeypatch.setattr(app.tasks["add"], "describe", broken)
        r = server.http.get("/v1/tasks")
        assert r.status_code == 500 and r.headers["content-type"] == PROBLEM
        assert "secret" not in r.text and "Traceback" not in r.text
        assert r.json() == {"type": "https://conveyor.dev/problems/internal", "title": "Internal error", "status": 500,
                            "detail": "the server failed to process the request"}
    finally:
        server.stop()


@pytest.mark.parametrize("engine", ["redis", "postgresql"])
def test_engine_silent_after_start__requests_get_a_503_problem_in_time(engine: str) -> None:
    """The engine went silent (hung, or behind a proxy that still accepts and answers keepalives):
    a submit waited forever, with no answer at all."""
    namespace = f"api_{uuid.uuid4().hex[:12]}"
    target = {"redis": 6379, "postgresql": 5432}[engine]
    with TcpProxy("127.0.0.1", target) as proxy:
        host = proxy.address
        url = {"redis": f"redis://{host}/0?prefix={namespace}",
               "postgresql": f"postgresql://postgres@{host}/test?schema={namespace}"}[engine]
        server = Server(make_app(url), tokens="", answer_within=1.0, housekeeping=False)
        try:
            assert server.http.post("/v1/jobs", json={"task": "add", "args": [1, 2]}).status_code == 202
            proxy.freeze()
            submit = {"task": "add", "args": [1, 2]}
            for method, path, body in (("POST", "/v1/jobs", submit), ("GET", "/v1/queues", None)):
                started = time.monotonic()
                r = server.http.request(method, path, json=body)
                assert time.monotonic() - started < 6, path
                assert r.status_code == 503, path
                assert r.headers["content-type"] == PROBLEM
                assert r.headers["retry-after"] == "5"
                assert r.json()["detail"].startswith("the engine did not answer within 1 s")
            with pytest.raises(httpx.ReadTimeout):  # a whole queue's purge may rightly take longer: not cut off
                server.http.post("/v1/queues/default/purge", timeout=2.5)
        finally:
            proxy.thaw()
            server.stop()
            drop_namespace(url.replace(host, f"127.0.0.1:{target}"))


def wait_for_declared_settings(server: Server) -> None:
    """Wait (bounded) until the server's engine holds the app's ``app.queue("media", visibility_timeout=60)``."""
    deadline = time.monotonic() + 15
    while (r := server.http.get("/v1/queues/media")).status_code != 200 or r.json()["visibility_timeout"] != 60:
        assert time.monotonic() < deadline, r.text
        time.sleep(0.1)


def test_engine_silent_at_start__server_serves_at_once_and_applies_the_queue_settings_once_it_answers() -> None:
    """A server started while the engine does not answer (its connect takes 5 s to give up) waited
    for it before serving even /healthz, and never applied the app's queue settings afterwards."""
    namespace = f"api_{uuid.uuid4().hex[:12]}"
    with TcpProxy("127.0.0.1", 6379) as proxy:
        url = f"redis://{proxy.address}/0?prefix={namespace}"
        proxy.freeze()
        started = time.monotonic()
        server = Server(make_app(url), tokens="", housekeeping=False)
        try:
            assert time.monotonic() - started < 3
            assert server.http.get("/healthz").status_code == 200
            proxy.thaw()
            wait_for_declared_settings(server)
        finally:
            proxy.thaw()
            server.stop()
            drop_namespace(f"redis://127.0.0.1:6379/0?prefix={namespace}")


def test_engine_down_at_start__the_queue_settings_are_applied_once_it_is_back() -> None:
    """Refused at start, the server served 503s and never applied the app's queue settings once
    the engine was back (only a worker's start did)."""
    namespace = f"api_{uuid.uuid4().hex[:12]}"
    with TcpProxy("127.0.0.1", 6379) as proxy:
        url = f"redis://{proxy.address}/0?prefix={namespace}"
        proxy.cut()
        server = Server(make_app(url), tokens="", housekeeping=False)
        try:
            assert server.http.get("/v1/queues/media").status_code == 503
            proxy.restore()
            wait_for_declared_settings(server)
        finally:
            proxy.restore()
            server.stop()
            drop_namespace(f"redis://127.0.0.1:6379/0?prefix={namespace}")
