"""``--api URL``: the commands work through a real ``conveyor server`` instead of opening the backend.

One server and one worker (subprocesses, over their own SQLite file) serve the whole module; tests
keep out of each other's way with their own queues. Jobs on queue ``held`` are never run (the worker
serves only the app's queues). A second server has tokens configured.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from conveyor.cli import main
from conveyor.serialization import SURROGATE_REFUSED
from tests.cli.conftest import APP, Result, one_error_line

HELD = "held"  # a queue no worker serves


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Api:
    url: str
    db: str
    procs: list[subprocess.Popen[bytes]]

    def get(self, path: str, token: str | None = None) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = httpx.get(self.url + path, headers=headers, timeout=10)
        response.raise_for_status()
        return response.json()


def _env(app_dir: Path, db: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env.update(CONVEYOR_URL=db, CONVEYOR_APP=APP, PYTHONPATH=str(app_dir), **extra)
    return env


def _start(tmp: Path, app_dir: Path, with_worker: bool, **extra_env: str) -> Api:
    db = f"sqlite:///{tmp}/conveyor.db"
    port = free_port()
    env = _env(app_dir, db, **extra_env)
    log = open(tmp / "server.log", "wb")  # noqa: SIM115
    server = subprocess.Popen([sys.executable, "-m", "conveyor.cli", "server", "--port", str(port)],
                              env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT)
    log.close()  # the child has its own copy
    api = Api(f"http://127.0.0.1:{port}", db, [server])
    deadline = time.monotonic() + 15
    while True:
        assert server.poll() is None, (tmp / "server.log").read_text()
        try:
            if httpx.get(api.url + "/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "server did not start within 15 s"
        time.sleep(0.05)
    if with_worker:
        wlog = open(tmp / "worker.log", "wb")  # noqa: SIM115
        api.procs.append(subprocess.Popen(
            [sys.executable, "-m", "conveyor.cli", "worker", "--no-scheduler", "--concurrency", "4"],
            env=env, cwd=tmp, stdout=wlog, stderr=subprocess.STDOUT,
        ))
        wlog.close()  # the child has its own copy
    return api


def _stop(api: Api) -> None:
    for proc in api.procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in api.procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, app_dir: Path) -> Iterator[Api]:
    running = _start(tmp_path_factory.mktemp("api_mode"), app_dir, with_worker=True)
    yield running
    _stop(running)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, app_dir: Path) -> Iterator[Api]:
    running = _start(tmp_path_factory.mktemp("api_tokens"), app_dir, with_worker=False,
                     CONVEYOR_API_TOKENS="ci:s3cret:admin;viewer:r3ad:read")
    yield running
    _stop(running)


class Remote:
    """Runs ``conveyor ... --api URL`` in-process, with no backend URL and no app in sight."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def __call__(self, *args: str) -> Result:
        self.capsys.readouterr()
        code = main(list(args))
        out, err = self.capsys.readouterr()
        assert "Traceback" not in err, err
        return Result(code, out, err)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Remote:
    for name in [k for k in os.environ if k.startswith("CONVEYOR_")]:
        monkeypatch.delenv(name)
    return Remote(capsys)


def _submit(cli: Remote, api: Api, *args: str) -> str:
    result = cli("submit", *args, "--api", api.url)
    assert result.code == 0, result.err
    return result.out.strip()


def _wait_status(cli: Remote, api: Api, job_id: str, statuses: set[str], timeout: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        result = cli("status", job_id, "--json", "--api", api.url)
        assert result.code == 0, result.err
        job: dict[str, Any] = result.json()
        if job["status"] in statuses:
            return job
        assert time.monotonic() < deadline, f"job still {job['status']} after {timeout} s"
        time.sleep(0.05)


# -- jobs -----------------------------------------------------------------------------------
def test_submit_then_status_json__exactly_the_servers_job(cli: Remote, api: Api) -> None:
    job_id = _submit(cli, api, "add", "2", "3")
    job = _wait_status(cli, api, job_id, {"succeeded", "failed"})
    assert job["status"] == "succeeded" and job["result"] == 5
    assert job == api.get(f"/v1/jobs/{job_id}")
    shown = cli("status", job_id, "--api", api.url)
    assert shown.code == 0 and "succeeded" in shown.out and job_id in shown.out


def test_submit_wait__prints_the_result(cli: Remote, api: Api) -> None:
    result = cli("submit", "add", "20", "22", "--wait", "--timeout", "15", "--api", api.url)
    assert result.code == 0, result.err
    assert json.loads(result.out) == 42


def test_submit_wait__failed_job__exit_1_one_line(cli: Remote, api: Api) -> None:
    result = cli("submit", "boom", "--wait", "--timeout", "15", "--api", api.url)
    assert result.code == 1
    assert "boom" in one_error_line(result.err)


def test_submit_wait__failed_job__same_line_as_without_the_api(
    cli: Remote, api: Api, app_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(app_dir))
    remote = cli("submit", "boom", "--wait", "--timeout", "15", "--api", api.url)
    direct = cli("submit", "boom", "--wait", "--timeout", "15", "--url", api.db, "--app", APP)
    assert remote.code == direct.code == 1
    lines = [re.sub(r"job \S+ ", "job ID ", one_error_line(r.err)) for r in (remote, direct)]
    assert lines[0] == lines[1] == "conveyor: error: job ID (boom) failed: ValueError: boom"


def test_watch__follows_to_the_end(cli: Remote, api: Api) -> None:
    job_id = _submit(cli, api, "steps", "--kwargs", '{"n": 3, "pause": 0.05}')
    result = cli("watch", job_id, "--timeout", "15", "--api", api.url)
    assert result.code == 0, result.err
    assert "succeeded" in result.out and '"done"' in result.out


def test_watch__timeout__exit_1(cli: Remote, api: Api) -> None:
    job_id = _submit(cli, api, "add", "1", "1", "--queue", HELD)
    started = time.monotonic()
    result = cli("watch", job_id, "--timeout", "0.5", "--api", api.url)
    assert result.code == 1
    assert "still queued" in one_error_line(result.err)
    assert time.monotonic() - started < 5


def test_submit__unknown_task__exit_2_one_line(cli: Remote, api: Api) -> None:
    result = cli("submit", "nope", "--api", api.url)
    assert result.code == 2
    line = one_error_line(result.err)
    assert "#/task" in line and "nope" in line


def test_submit__bad_argument__exit_2_names_the_pointer(cli: Remote, api: Api) -> None:
    result = cli("submit", "add", "1", '"x"', "--api", api.url)
    assert result.code == 2
    assert "#/args/1" in one_error_line(result.err)
    result = cli("submit", "add", "1", "--api", api.url)
    assert result.code == 2
    assert "#/kwargs/b" in one_error_line(result.err)


def test_submit__no_app_needed_but_json_still_checked_locally(cli: Remote, api: Api) -> None:
    result = cli("submit", "add", "oops", "--api", api.url)
    assert result.code == 2
    assert "not valid JSON" in one_error_line(result.err)


def test_submit__lone_surrogate__same_line_as_without_the_api(cli: Remote, api: Api) -> None:
    """Checked before sending: the server's 400 said "HTTP 400: a \\u escape in the body ...", exit 1."""
    result = cli("submit", "add", "1", '"\\ud800"', "--queue", HELD, "--api", api.url)
    assert result.code == 2
    assert one_error_line(result.err) == f"conveyor: error: argument 2 ('\"\\\\ud800\"'): {SURROGATE_REFUSED}"


def test_status__unknown_id__exit_1(cli: Remote, api: Api) -> None:
    for job_id in ("0193b6c2-8f5e-7c3a-9d1e-3f2a1b4c5d6e", "not-an-id"):
        result = cli("status", job_id, "--api", api.url)
        assert result.code == 1
        assert job_id in one_error_line(result.err)


def test_id_that_is_a_path__not_found_without_reaching_another_route(cli: Remote, api: Api) -> None:
    """Sent as given, "../queues" read the queue list as a job ("unexpected KeyError"), and "a/b" was
    taken for a wrong --api (a 404 without a route)."""
    job_id = _submit(cli, api, "add", "1", "2", "--queue", "pathy")
    for command, text in (("status", "../queues"), ("status", "a/b"), ("watch", "../queues"),
                          ("retry", "../queues/pathy"), ("cancel", "../queues/pathy/purge"), ("status", "x?y")):
        result = cli(command, text, "--api", api.url)
        assert (result.code, one_error_line(result.err)) == (1, f"conveyor: error: no job has id {text!r}")
    assert api.get(f"/v1/jobs/{job_id}")["status"] == "queued"


def test_jobs_json__the_servers_page(cli: Remote, api: Api) -> None:
    ids = [_submit(cli, api, "add", "1", str(i), "--queue", "listed") for i in range(3)]
    result = cli("jobs", "--queue", "listed", "--limit", "2", "--json", "--api", api.url)
    assert result.code == 0, result.err
    page = result.json()
    assert page == api.get("/v1/jobs?queue=listed&limit=2")
    assert [j["id"] for j in page["items"]] == ids[::-1][:2]
    assert page["next_cursor"]
    rest = cli("jobs", "--queue", "listed", "--cursor", page["next_cursor"], "--json", "--api", api.url).json()
    assert [j["id"] for j in rest["items"]] == ids[:1]
    table = cli("jobs", "--queue", "listed", "--status", "queued", "--api", api.url)
    assert table.code == 0 and all(i in table.out for i in ids)


@pytest.mark.parametrize(("argv", "expected"), [
    # argv bytes that are not UTF-8 could not go into the query: "the server at ... did not answer
    # like a Conveyor API", exit 1
    (["--cursor", "\udcff"], "argument --cursor: invalid cursor '\\udcff': pass the next_cursor of a previous page"),
    (["--cursor", "x" * 501], "argument --cursor: invalid cursor 'xxxx"),
    (["--task", "\udcff"], "argument --task: invalid task name '\\udcff'"),
])
def test_jobs__cursor_or_task_no_page_can_have__usage_error(
    cli: Remote, api: Api, argv: list[str], expected: str
) -> None:
    result = cli("jobs", *argv, "--api", api.url)
    assert (result.code, result.out) == (2, "")
    assert expected in one_error_line(result.err)


def test_cancel_then_retry(cli: Remote, api: Api) -> None:
    job_id = _submit(cli, api, "add", "1", "1", "--queue", HELD)
    result = cli("cancel", job_id, "--json", "--api", api.url)
    assert result.code == 0, result.err
    assert result.json()["status"] == "cancelled"
    result = cli("retry", job_id, "--api", api.url)
    assert result.code == 0, result.err
    assert result.out.strip() == f"{job_id} queued"
    result = cli("retry", job_id, "--api", api.url)  # queued: nothing to retry
    assert result.code == 1
    one_error_line(result.err)


def test_cancel__unknown_id__exit_1(cli: Remote, api: Api) -> None:
    result = cli("cancel", "0193b6c2-8f5e-7c3a-9d1e-3f2a1b4c5d6e", "--api", api.url)
    assert result.code == 1
    one_error_line(result.err)


# -- queues ---------------------------------------------------------------------------------
def test_schedules__the_servers_list_without_the_app(cli: Remote, api: Api) -> None:
    """It needed the app (--app) even with --api: "no app given"."""
    result = cli("schedules", "--json", "--api", api.url)
    assert result.code == 0, result.err
    assert result.json() == api.get("/v1/schedules")
    assert [(s["task"], s["cron"]) for s in result.json()["items"]] == [("leap_day", "0 0 29 2 *")]
    table = cli("schedules", "--api", api.url)
    assert table.code == 0, table.err
    assert "leap_day" in table.out and "0 0 29 2 *" in table.out


def test_queues_json__the_servers_list(cli: Remote, api: Api) -> None:
    result = cli("queues", "--json", "--api", api.url)
    assert result.code == 0, result.err
    body = result.json()
    assert {"default", "media"} <= {q["name"] for q in body["items"]}
    table = cli("queues", "--api", api.url)
    assert table.code == 0 and "default" in table.out


def test_queue__pause_resume_and_settings(cli: Remote, api: Api) -> None:
    _submit(cli, api, "add", "1", "1", "--queue", "tuned")
    result = cli("queue", "tuned", "--pause", "--retention", "3600", "--json", "--api", api.url)
    assert result.code == 0, result.err
    shown = result.json()
    assert shown["paused"] is True and shown["retention"] == 3600
    assert shown == api.get("/v1/queues/tuned")
    assert cli("queue", "tuned", "--resume", "--json", "--api", api.url).json()["paused"] is False
    panel = cli("queue", "tuned", "--api", api.url)
    assert panel.code == 0 and "1h (3600 s)" in panel.out
    bad = cli("queue", "tuned", "--retention", "3", "--api", api.url)
    assert bad.code == 2
    assert "#/retention" in one_error_line(bad.err)


def test_queue__typo_with_a_change__exit_1_and_no_queue_made(cli: Remote, api: Api) -> None:
    result = cli("queue", "defualt", "--pause", "--api", api.url)
    assert result.code == 1
    assert "no queue named 'defualt'" in one_error_line(result.err)
    assert "defualt" not in {q["name"] for q in api.get("/v1/queues")["items"]}


def test_redrive__dead_letters_back(cli: Remote, api: Api) -> None:
    job_id = _submit(cli, api, "boom")
    _wait_status(cli, api, job_id, {"failed"})
    result = cli("redrive", "default", "--ids", job_id, "--json", "--api", api.url)
    assert result.code == 0, result.err
    assert result.json() == {"redriven": 1}


def test_purge__cancels_what_waits(cli: Remote, api: Api) -> None:
    ids = [_submit(cli, api, "add", "1", "1", "--queue", "doomed") for _ in range(2)]
    result = cli("purge", "doomed", "--yes", "--json", "--api", api.url)
    assert result.code == 0, result.err
    assert result.json() == {"purged": 2}
    assert {api.get(f"/v1/jobs/{i}")["status"] for i in ids} == {"cancelled"}


# -- connection and tokens ------------------------------------------------------------------
def test_unreachable_api__exit_1_one_line(cli: Remote) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for command in (["status", "0193b6c2-8f5e-7c3a-9d1e-3f2a1b4c5d6e"], ["submit", "add", "1", "2"], ["queues"]):
        result = cli(*command, "--api", url)
        assert result.code == 1
        assert one_error_line(result.err) == f"conveyor: error: cannot reach the API at {url}: connection refused"


def test_api_host_that_does_not_resolve__exit_1_saying_so(cli: Remote) -> None:
    result = cli("queues", "--api", "http://jobs.invalid")  # .invalid never resolves (RFC 2606)
    assert result.code == 1
    # it said "unknown error -2": os.strerror of getaddrinfo's own code
    assert one_error_line(result.err).startswith("conveyor: error: cannot reach the API at http://jobs.invalid: ")
    assert "unknown error" not in result.err


def test_api_before_the_command__used_as_after_it(cli: Remote, api: Api) -> None:
    """As --url: `conveyor --api URL jobs` said "argument COMMAND: invalid choice: 'http://...'"."""
    result = cli("--api", api.url, "queues", "--json")
    assert result.code == 0, result.err
    assert result.json() == api.get("/v1/queues")
    for command in ("worker", "server", "up"):
        result = cli("--api", api.url, command)
        assert (result.code, one_error_line(result.err)) == (2, (
            f"conveyor {command}: error: {command} takes no --api or --token: it opens the backend (--url) itself "
            f"(see 'conveyor {command} --help')"))


def test_https_to_a_plain_http_server__exit_1_saying_tls(cli: Remote, api: Api) -> None:
    """OpenSSL's error number read as the system's: "cannot reach the API at ...: operation not permitted"."""
    url = api.url.replace("http://", "https://")
    result = cli("queues", "--api", url)
    assert result.code == 1
    line = one_error_line(result.err)
    assert line.startswith(f"conveyor: error: cannot reach the API at {url}: TLS error: [SSL: "), line
    assert "not permitted" not in line and "_ssl.c" not in line


def test_api_from_the_environment(cli: Remote, api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_API", api.url)
    result = cli("queues", "--json")
    assert result.code == 0, result.err
    assert result.json() == api.get("/v1/queues")


def test_not_an_http_url__usage_error(cli: Remote) -> None:
    result = cli("jobs", "--api", "localhost:8000")
    assert result.code == 2
    assert "http://" in one_error_line(result.err)


def test_empty_api__usage_error_not_conveyor_api_or_the_backend(
    cli: Remote, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``--api "$UNSET"`` went to $CONVEYOR_API, else opened ./conveyor.db and listed "no jobs"."""
    monkeypatch.chdir(tmp_path)
    for env in ({}, {"CONVEYOR_API": "http://127.0.0.1:1"}):
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        result = cli("jobs", "--api", "")
        assert (result.code, result.out) == (2, "")
        assert one_error_line(result.err) == (
            "conveyor jobs: error: argument --api: empty URL: give the server's base URL (e.g. http://127.0.0.1:8000), "
            "or leave --api out to use $CONVEYOR_API (see 'conveyor jobs --help')")


def test_api_with_a_query__usage_error(cli: Remote, api: Api) -> None:
    """Each path went after the query: ``?x=1/v1/jobs`` asked the server's / ("did not answer like a
    Conveyor API", exit 1; a submit: "HTTP 405: Method Not Allowed")."""
    for url in (f"{api.url}?x=1", f"{api.url}/?"):
        for command in (["jobs"], ["submit", "add", "1", "2"]):
            result = cli(*command, "--api", url)
            assert (result.code, result.out) == (2, ""), result.err
            assert one_error_line(result.err) == (
                f"conveyor: error: the API URL {url!r} has a query (?...): give the server's base URL, e.g. "
                "http://127.0.0.1:8000")


def test_port_out_of_range__usage_error_naming_it(cli: Remote, monkeypatch: pytest.MonkeyPatch) -> None:
    for url in ("http://127.0.0.1:99999", "http://127.0.0.1:x1"):
        result = cli("queues", "--api", url)
        assert result.code == 2, result.err
        assert one_error_line(result.err).startswith(f"conveyor: error: --api {url!r} is not a valid URL: Port")
    monkeypatch.setenv("CONVEYOR_API", "http://127.0.0.1:70000")
    result = cli("jobs")
    assert result.code == 2 and "out of range" in one_error_line(result.err)


class _Quiet404(http.server.BaseHTTPRequestHandler):
    """Another web server: 404 (not problem+json) for every path, and no log on stderr."""

    def do_GET(self) -> None:
        self.send_error(404)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_not_the_base_url__usage_error_saying_so(cli: Remote, api: Api) -> None:
    """A path after the address (or another server) answers 404 to /v1/...: that is a wrong --api,
    not "Not Found" (exit 1), nor "no job has id ..." for a job that may well exist."""
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Quiet404) as other:
        threading.Thread(target=other.serve_forever, daemon=True).start()
        try:
            for url in (f"{api.url}/nope", f"{api.url}/v1", f"http://127.0.0.1:{other.server_address[1]}"):
                for command in (["queues"], ["status", "0193b6c2-8f5e-7c3a-9d1e-3f2a1b4c5d6e"]):
                    result = cli(*command, "--api", url)
                    assert result.code == 2, (url, result.err)
                    assert one_error_line(result.err) == (
                        f"conveyor: error: {url} has no Conveyor API routes (HTTP 404 for /v1/...): give the "
                        "server's base URL, e.g. http://127.0.0.1:8000")
        finally:
            other.shutdown()


class _Welcome(http.server.BaseHTTPRequestHandler):
    """Another web server's catch-all: 200 and a page for every path and method."""

    def _page(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b"<html><body>Welcome!</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PATCH = _page

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.mark.parametrize(("handler", "expected"), [
    # a submit to a server of files: "HTTP 501: Unsupported method ('POST')", exit 1
    (_Quiet404, {"submit": "has no Conveyor API routes (HTTP 501 for /v1/...)"}),
    # "did not answer like a Conveyor API", exit 1; watch: "cannot reach the API at ...: the stream
    # ended before the job did", exit 1, after 8 s of reconnecting
    (_Welcome, {"submit": "did not answer like a Conveyor API", "queues": "did not answer like a Conveyor API",
                "watch": "did not answer like a Conveyor API (HTTP 200: text/html, not an event stream)"}),
])
def test_another_web_server__usage_error_at_once(
    cli: Remote, handler: type[http.server.BaseHTTPRequestHandler], expected: dict[str, str]
) -> None:
    argvs = {"submit": ["submit", "add", "1", "2"], "queues": ["queues"],
             "watch": ["watch", "0193b6c2-8f5e-7c3a-9d1e-3f2a1b4c5d6e"]}
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as other:
        threading.Thread(target=other.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{other.server_address[1]}"
        try:
            for command, why in expected.items():
                started = time.monotonic()
                result = cli(*argvs[command], "--api", url)
                assert (result.code, result.out) == (2, ""), result.err
                assert one_error_line(result.err) == (
                    f"conveyor: error: {url} {why}: give the server's base URL, e.g. http://127.0.0.1:8000")
                assert time.monotonic() - started < 3
        finally:
            other.shutdown()


def test_submit__body_over_the_servers_limit__usage_error(cli: Remote, api: Api) -> None:
    result = cli("submit", "transcode", '"' + "a" * 1_100_000 + '"', "1", "--queue", HELD, "--api", api.url)
    assert result.code == 2
    assert one_error_line(result.err) == (
        "conveyor: error: the API refused the request: the body is larger than 1048576 bytes (HTTP 413)")


def test_token_not_printable_ascii__usage_error(cli: Remote, api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """httpx refuses such a header value: "unexpected UnicodeEncodeError" (a newline: "cannot reach")."""
    expected = "conveyor: error: the token of --token / CONVEYOR_API_TOKEN must be printable ASCII without spaces"
    for token in ("s\u00e9cret", "\U0001f4a5", "a\nb"):
        result = cli("jobs", "--api", api.url, "--token", token)
        assert (result.code, one_error_line(result.err)) == (2, expected)
    monkeypatch.setenv("CONVEYOR_API_TOKEN", "s\u00e9cret")
    result = cli("queues", "--api", api.url)
    assert (result.code, one_error_line(result.err)) == (2, expected)


def test_tokens__missing_or_wrong__exit_1_naming_the_token(cli: Remote, secured: Api) -> None:
    result = cli("jobs", "--api", secured.url)
    assert result.code == 1
    line = one_error_line(result.err)
    assert "token" in line and "401" in line and "CONVEYOR_API_TOKEN" in line
    result = cli("jobs", "--api", secured.url, "--token", "wrong")
    assert result.code == 1
    assert "did not accept the token" in one_error_line(result.err)


def test_tokens__right_token_works_and_scope_is_checked(
    cli: Remote, secured: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = _submit(cli, secured, "add", "1", "2", "--queue", HELD, "--token", "s3cret")
    result = cli("status", job_id, "--json", "--api", secured.url, "--token", "r3ad")
    assert result.code == 0, result.err
    assert result.json() == secured.get(f"/v1/jobs/{job_id}", token="s3cret")
    monkeypatch.setenv("CONVEYOR_API_TOKEN", "r3ad")
    result = cli("cancel", job_id, "--api", secured.url)  # read scope: may not cancel
    assert result.code == 1
    line = one_error_line(result.err)
    assert "403" in line and "admin" in line
    monkeypatch.setenv("CONVEYOR_API_TOKEN", "s3cret")
    assert cli("cancel", job_id, "--api", secured.url).code == 0
