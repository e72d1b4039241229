"""``conveyor server`` and ``conveyor up``: addresses they cannot listen on, ``up --no-scheduler``, and
how ``server`` stops (with an event stream open, or while the app still loads)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import free_port
from tests.cli.conftest import Cli, Result, one_error_line


def test_server__port_in_use__exit_1_one_line(cli: Cli) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli.run("server", "--port", str(port), timeout=30)
    assert result.code == 1
    assert one_error_line(result.err) == (
        f"conveyor server: error: cannot listen on 127.0.0.1:{port}: Address already in use"
    )


def test_server__unknown_host__exit_1_one_line(cli: Cli) -> None:
    result = cli.run("server", "--insecure", "--host", "not-a-host.invalid", "--port", "8000", timeout=30)
    assert result.code == 1
    assert one_error_line(result.err).startswith("conveyor server: error: cannot listen on not-a-host.invalid:8000: ")


@pytest.mark.parametrize("command", ["server", "up"])
def test_empty_host__exit_2_not_every_interface(cli: Cli, command: str) -> None:
    """``--host "$UNSET"`` listened on 0.0.0.0 and [::]; with tokens set, nothing said so."""
    env = {**cli.env(), "CONVEYOR_API_TOKENS": "ci:s3cret:admin"}
    result = cli.run(command, "--host", "", "--port", str(free_port()), env=env, timeout=10)
    assert result.code == 2
    assert one_error_line(result.err) == (
        f"conveyor {command}: error: argument --host: empty host: give an address (0.0.0.0: every interface), or "
        f"leave --host out for 127.0.0.1 (see 'conveyor {command} --help')")


@pytest.mark.parametrize("workers", ["0", "1001", "99999999999999999999"])
def test_up__workers_out_of_range__exit_2_before_starting_anything(cli: Cli, workers: str) -> None:
    """``--workers 100000`` set out to fork a hundred thousand processes."""
    result = cli.run("up", "--workers", workers, "--port", str(free_port()), timeout=10)
    assert result.code == 2
    assert "argument --workers" in one_error_line(result.err)


EVERY_SECOND_APP = '''
from conveyor import Context, Conveyor

app = Conveyor()

@app.periodic("* * * * * */1", catch_up=None)  # a job a second, from whatever scheduler runs
def tick(ctx: Context) -> None: ...
'''


@pytest.mark.slow
def test_up__no_scheduler__workers_run_but_no_periodic_job_is_enqueued(cli: Cli) -> None:
    (cli.app_dir / "every_second_app.py").write_text(EVERY_SECOND_APP)
    port = free_port()
    env = {**cli.env(), "CONVEYOR_APP": "every_second_app:app"}
    log = open(cli.tmp_path / "up.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "conveyor.cli", "up", "--no-scheduler", "--port", str(port),
                             "--workers", "2", "--grace", "1", "--log-level", "WARNING"],
                            env=env, cwd=cli.tmp_path, stdout=log, stderr=subprocess.STDOUT)
    log.close()  # the child has its own copy
    try:
        deadline = time.monotonic() + 20
        while len(_get(port, "/v1/workers") or []) < 2:  # both workers up (each would have started its scheduler)
            assert proc.poll() is None and time.monotonic() < deadline, (cli.tmp_path / "up.log").read_text()
            time.sleep(0.2)
        time.sleep(2.5)  # two and more ticks
        assert _get(port, "/v1/jobs") == []
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(30)
    assert code == 0, (cli.tmp_path / "up.log").read_text()


def _get(port: int, path: str) -> list[object] | None:
    """The items of ``path``; None while the server does not answer."""
    try:
        items: list[object] = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).json()["items"]
    except httpx.TransportError:
        return None
    return items


def _start_server(cli: Cli, port: int, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    log = open(cli.tmp_path / "server.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "conveyor.cli", "server", "--port", str(port)],
                            env=env or cli.env(), cwd=cli.tmp_path, stdout=log, stderr=subprocess.STDOUT)
    log.close()  # the child has its own copy
    cli.procs.append(proc)  # killed at the end of the test, whatever happened
    return proc


@pytest.mark.slow
def test_server__sigterm_while_an_event_stream_is_open__stream_ends_exit_0_within_8_s(cli: Cli) -> None:
    port = free_port()
    proc = _start_server(cli, port)
    deadline = time.monotonic() + 20
    while _get(port, "/v1/jobs") is None:
        assert proc.poll() is None and time.monotonic() < deadline, (cli.tmp_path / "server.log").read_text()
        time.sleep(0.1)
    job_id = cli.submit("add", "1", "2")  # no worker: the job stays queued, its stream stays open
    streaming, ended = threading.Event(), []

    def listen() -> None:
        try:
            with httpx.stream("GET", f"http://127.0.0.1:{port}/v1/jobs/{job_id}/events",
                              timeout=httpx.Timeout(5, read=30)) as response:
                for line in response.iter_lines():
                    if line.startswith("event: job"):
                        streaming.set()
            ended.append("closed")
        except httpx.HTTPError as exc:
            ended.append(type(exc).__name__)

    reader = threading.Thread(target=listen, daemon=True)
    reader.start()
    assert streaming.wait(10)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(8)
    reader.join(5)
    log = (cli.tmp_path / "server.log").read_text()
    assert code == 0, log
    assert time.monotonic() - started < 8
    assert ended == ["closed"]  # the response ended (an EventSource reconnects), not a reset
    assert "Traceback" not in log


SLOW_APP = '''
import contextlib
import os
import pathlib
import time
import uuid

from conveyor import Conveyor

pathlib.Path(os.environ["LOADING_MARK"]).write_text("loading")
time.sleep(10)
app = Conveyor()
'''


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_server__stop_signal_while_the_app_loads__exit_0_quietly(cli: Cli, signum: signal.Signals) -> None:
    (cli.tmp_path / "slow_app.py").write_text(SLOW_APP)
    mark: Path = cli.tmp_path / "loading"
    env = {**cli.env(), "CONVEYOR_APP": "slow_app:app", "LOADING_MARK": str(mark),
           "PYTHONPATH": f"{cli.tmp_path}{os.pathsep}{cli.app_dir}"}
    proc = _start_server(cli, free_port(), env)
    deadline = time.monotonic() + 20
    while not mark.exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signum)
    code = proc.wait(20)
    log = (cli.tmp_path / "server.log").read_text()
    assert code == 0, log
    assert "Traceback" not in log and "interrupted" not in log, log


class SilentEngine:
    """A TCP listener that accepts connections and never answers (a proxy in front of a dead
    server): keepalives are answered, so only a bound on the wait finds it out."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                self.conns.append(self.sock.accept()[0])

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.close()


def test_silent_rabbitmq__commands_exit_1_saying_so(cli: Cli, tmp_path: Path) -> None:
    silent = SilentEngine()
    try:
        env = {**cli.env(), "CONVEYOR_URL": f"amqp://guest:guest@127.0.0.1:{silent.port}/",
               "CONVEYOR_STORE_URL": f"sqlite:///{tmp_path}/store.db"}
        result = cli.run("jobs", env=env, timeout=20)
        assert result.code == 1
        said = one_error_line(result.err)
        assert said == f"conveyor: error: RabbitMQ at 127.0.0.1:{silent.port} did not answer within 5 s"
    finally:
        silent.close()


@pytest.mark.slow
def test_silent_redis__commands_exit_1_server_serves_503_and_stops(cli: Cli) -> None:
    """Redis waited forever for the first answer: ``conveyor server`` never served (not even
    /readyz), ``up`` and the other commands never ended."""
    silent = SilentEngine()
    try:
        env = {**cli.env(), "CONVEYOR_URL": f"redis://127.0.0.1:{silent.port}/0"}
        port = free_port()
        server = _start_server(cli, port, env)  # each of the three waits its 5 s: side by side, not in turn

        def run_timed(argv: list[str]) -> tuple[Result, float]:
            started = time.monotonic()
            result = cli.run(*argv, env=env, timeout=20)
            return result, time.monotonic() - started

        commands = (["jobs"], ["up", "--port", str(free_port())])
        with ThreadPoolExecutor(len(commands)) as pool:
            for argv, (result, took) in zip(commands, pool.map(run_timed, commands), strict=True):
                assert result.code == 1, argv
                assert "did not answer within 5 s" in one_error_line(result.err), argv
                assert took < 15, argv

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
                break
            time.sleep(0.2)
        else:
            pytest.fail("the server never answered")
        assert ready.status_code == 503
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=15) == 0
    finally:
        silent.close()


@pytest.mark.slow
def test_silent_rabbitmq_then_a_missing_vhost__server_serves_then_exits_2_saying_so(cli: Cli, tmp_path: Path) -> None:
    """An engine silent at start is served (/readyz says 503) after a second's probe, not its 5 s
    connect timeout; when it then answers with a configuration error, the server stops as a start
    that found it would: one line, exit 2 (it went on serving 500s before)."""
    from tests.e2e.tcp_proxy import TcpProxy

    vhost = f"cli_missing_{uuid.uuid4().hex[:8]}"
    with TcpProxy("127.0.0.1", 5672) as proxy:
        proxy.freeze()
        env = {**cli.env(), "CONVEYOR_URL": f"amqp://guest:guest@127.0.0.1:{proxy.port}/{vhost}",
               "CONVEYOR_STORE_URL": f"sqlite:///{tmp_path}/store.db"}
        port = free_port()
        started = time.monotonic()
        server = _start_server(cli, port, env)
        while True:
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            assert server.poll() is None, (cli.tmp_path / "server.log").read_text()
            assert time.monotonic() - started < 5.5, "not serving yet: the start waited on the silent engine"
            time.sleep(0.05)
        proxy.thaw()
        code = server.wait(timeout=20)
    log = (cli.tmp_path / "server.log").read_text()
    assert code == 2, log
    assert log.splitlines()[-1] == (
        f"conveyor: error: RabbitMQ at 127.0.0.1:{proxy.port} refused virtual host {vhost!r}: it does not exist, "
        "or this user may not use it (rabbitmqctl list_vhosts, list_permissions)"
    ), log
    assert "Traceback" not in log, log
