"""``conveyor server``: an address it cannot listen on is one line and exit 1, as for ``conveyor up``."""

from __future__ import annotations

import socket

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
