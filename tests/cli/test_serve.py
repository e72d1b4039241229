"""``conveyor server`` and ``conveyor up``: addresses they cannot listen on, and ``up --no-scheduler``."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from tests.api.conftest import free_port
from tests.cli.conftest import Cli, one_error_line


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
