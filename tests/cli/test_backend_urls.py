"""A malformed ``--url`` is a usage error: exit 2 and one line naming what is wrong in it."""

from __future__ import annotations

import os
import re
import uuid

import pytest

from tests.api.conftest import free_port
from tests.cli.conftest import Cli, one_error_line


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:notaport/0", "invalid port 'notaport' in the redis:// URL"),
        ("redis://127.0.0.1:99999/0", "invalid port '99999' in the redis:// URL"),
        ("postgresql://postgres:s3cret@127.0.0.1:notaport/test", "invalid port 'notaport' in the postgresql:// URL"),
        ("amqp://guest:s3cret@127.0.0.1:notaport/", "invalid port 'notaport' in the amqp:// URL"),
    ],
)
def test_url__port_not_a_number__exit_2_naming_it(cli: Cli, url: str, expected: str) -> None:
    env = cli.env()
    env["CONVEYOR_STORE_URL"] = cli.url  # an amqp:// URL needs a job store
    result = cli.run("jobs", "--url", url, env=env)
    assert result.code == 2
    line = one_error_line(result.err)
    assert expected in line
    assert "s3cret" not in line  # a URL's password never reaches the terminal


@pytest.mark.parametrize("argv", [["--url", "", "jobs"], ["jobs", "--url", ""],
                                  ["submit", "add", "1", "2", "--url", " "], ["worker", "--burst", "--url", ""]])
def test_url__explicitly_empty__exit_2_not_the_default_database(cli: Cli, argv: list[str]) -> None:
    """``--url "$UNSET"`` used $CONVEYOR_URL, else ./conveyor.db, as if the option were not there."""
    env = cli.env()
    del env["CONVEYOR_URL"]
    result = cli.run(*argv, env=env)
    assert result.code == 2
    assert "argument --url: empty URL" in one_error_line(result.err)
    assert not (cli.tmp_path / "conveyor.db").exists()


@pytest.mark.parametrize("url", ["postgresql://postgres:s3cret\udcff@127.0.0.1:5432/test", "redis://\udcff:6379/0"])
def test_url__bytes_not_utf8__exit_2_saying_so(cli: Cli, url: str) -> None:
    """PostgreSQL's: "unexpected UnicodeEncodeError" (exit 1); a Redis host: "unreachable" (exit 1)."""
    result = cli.run("jobs", "--url", url)
    assert (result.code, result.out) == (2, "")
    assert one_error_line(result.err) == (
        "conveyor jobs: error: argument --url: the URL holds bytes that are not UTF-8: percent-encode them (%FF) "
        "(see 'conveyor jobs --help')")


def test_url__sqlite_file_name_not_utf8__is_that_file(cli: Cli) -> None:
    name = cli.tmp_path / "jobs-\udcff.db"
    result = cli.run("submit", "add", "1", "2", "--url", f"sqlite:///{name}")
    assert result.code == 0, result.err
    assert os.path.exists(os.fsencode(name))


def test_url__sqlite_in_memory__exit_2_not_an_id_for_a_lost_job(cli: Cli) -> None:
    """``submit`` printed an id for a job in a database that ended with the command."""
    for argv in (["submit", "add", "1", "2"], ["jobs"]):
        result = cli.run(*argv, "--url", "sqlite:///:memory:")
        assert (result.code, result.out) == (2, ""), argv
        assert "sqlite:///:memory: cannot hold jobs" in one_error_line(result.err)


def test_url__redis_database_not_a_number__exit_2_not_database_0(cli: Cli) -> None:
    # redis-py ignores a path it cannot read as a number: the jobs would land in database 0
    url = f"redis://127.0.0.1:6379/abc?prefix=cli_{uuid.uuid4().hex[:12]}"
    argvs = (["jobs"], ["submit", "add", "1", "2"], ["worker", "--burst"])
    for argv, result in zip(argvs, cli.run_each(*([*argv, "--url", url] for argv in argvs)), strict=True):
        assert result.code == 2, argv
        assert "invalid redis database 'abc' in the URL" in one_error_line(result.err)


def test_url__redis_database_the_server_lacks__exit_2_naming_it(cli: Cli) -> None:
    """It said the server's bare "DB index is out of range"; the server refuses to start too."""
    url = f"redis://127.0.0.1:6379/99?prefix=cli_{uuid.uuid4().hex[:12]}"
    argvs = (["jobs"], ["submit", "add", "1", "2"], ["worker", "--burst"], ["server", "--port", str(free_port())])
    for argv, result in zip(argvs, cli.run_each(*([*argv, "--url", url] for argv in argvs)), strict=True):
        assert result.code == 2, argv
        assert re.search(r"error: redis at 127\.0\.0\.1:6379 has no database 99 \(it has \d+: 0 to \d+\): use one "
                         r"of its databases in the URL", one_error_line(result.err)), result.err


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6379/0?prefix=cli_typo&bogus=1", "the redis URL: unknown option 'bogus'"),
        ("redis://127.0.0.1:6379/0?prefix=cli_typo&socket_timeout=soon", "Invalid value for 'socket_timeout'"),
        ("postgresql://postgres:s3cret@127.0.0.1:5432/test?schema=cli_typo&pool_mx=2",
         'the PostgreSQL URL: invalid URI query parameter: "pool_mx"'),
        ("sqlite:///typo.db?mode=ro", "takes no options"),
        ("amqp://guest:s3cret@127.0.0.1:5672/?prefix=cli_typo&reconect_interval=2", "the amqp URL: unknown option "
         "'reconect_interval'"),
        ("amqp://guest:s3cret@127.0.0.1:5672/?prefix=cli_typo&heartbeat=%C2%B2", "invalid amqp heartbeat '²'"),
        # the prefixes the docs allow, and no others (both took '/' and 'é')
        ("redis://127.0.0.1:6379/0?prefix=bad/x", "invalid redis key prefix 'bad/x': use letters, digits"),
        ("redis://127.0.0.1:6379/0?prefix=%C3%A9t%C3%A9", "invalid redis key prefix 'été': use letters, digits"),
        ("amqp://guest:s3cret@127.0.0.1:5672/?prefix=a%2Fb", "invalid amqp queue prefix 'a/b': use letters, digits"),
        # an option without a value meant the default (the schema 'conveyor', redis-py's timeout), a
        # repeated one its last value, without a word
        ("postgresql://postgres:s3cret@127.0.0.1:5432/test?schema=", "the PostgreSQL URL: option 'schema' has no "
         "value"),
        ("redis://127.0.0.1:6379/0?prefix=cli_typo&socket_timeout=", "the redis URL: option 'socket_timeout' has no "
         "value"),
        ("amqp://guest:s3cret@127.0.0.1:5672/?prefix=cli_typo&reconnect_interval=", "the amqp URL: option "
         "'reconnect_interval' has no value"),
        ("redis://127.0.0.1:6379/0?prefix=cli_typo&prefix=cli_typo2", "the redis URL: option 'prefix' is given twice"),
    ],
)
def test_url__mistyped_option__exit_2_naming_it(cli: Cli, url: str, expected: str) -> None:
    """A typo in a URL option was an 'unexpected TypeError' / 'ProgrammingError' (exit 1) from
    inside the engine's client, and SQLite ignored it."""
    env = cli.env()
    env["CONVEYOR_STORE_URL"] = cli.url  # an amqp:// URL needs a job store
    result = cli.run("jobs", "--url", url, env=env)
    assert result.code == 2
    line = one_error_line(result.err)
    assert expected in line and "unexpected" not in line
    assert "s3cret" not in line


@pytest.mark.parametrize("argv", [("jobs",), ("worker", "--burst"), ("server", "--port", "0")])
def test_url__rabbitmq_virtual_host_that_does_not_exist__exit_2_naming_it(cli: Cli, argv: tuple[str, ...]) -> None:
    """It said 'RabbitMQ ... is unreachable: Expected one of ['Connection.OpenOk'], got <Connection.Close
    object at 0x...>' (exit 1), and the server started, answering 503 for ever."""
    env = cli.env()
    env["CONVEYOR_STORE_URL"] = cli.url
    vhost = f"cli_missing_{uuid.uuid4().hex[:8]}"
    if argv[0] == "server":
        argv = ("server", "--port", str(free_port()))
    result = cli.run(*argv, "--url", f"amqp://guest:guest@127.0.0.1:5672/{vhost}", env=env, timeout=30)
    assert result.code == 2, result.err
    assert one_error_line(result.err).endswith(f"refused virtual host {vhost!r}: it does not exist, or this user may "
                                               "not use it (rabbitmqctl list_vhosts, list_permissions)")


def test_conveyor_url_env__bytes_not_utf8__exit_2_saying_so(cli: Cli) -> None:
    """``--url`` checked its bytes; ``CONVEYOR_URL`` (and an app's own ``Conveyor(url)``) did not."""
    env = {**cli.env(), "CONVEYOR_URL": "postgresql://postgres:s3cret\udcff@127.0.0.1:5432/test"}
    result = cli.run("jobs", env=env)
    assert (result.code, result.out) == (2, "")
    assert one_error_line(result.err) == (
        "conveyor: error: the backend URL holds bytes that are not UTF-8: percent-encode them (%FF)")
