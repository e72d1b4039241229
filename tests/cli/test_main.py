"""The command line as a whole: usage errors, backend errors, entry points."""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conveyor.cli.errors import EXIT_CODES, exit_code, one_line
from conveyor.core.errors import (
    BackendUnavailable,
    ConfigurationError,
    InvalidArguments,
    InvalidTransition,
    JobFailed,
    JobNotFound,
    UnknownTask,
)
from tests.api.conftest import free_port
from tests.cli.conftest import Cli, one_error_line
from tests.unavailable import unavailable

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("argv", [["frobnicate"], ["jobs", "--frob"], ["status"], [], ["submit"]])
def test_usage_errors__exit_2_one_line(cli: Cli, argv: list[str]) -> None:
    result = cli.run(*argv)
    assert result.code == 2
    one_error_line(result.err)


def test_help__exit_0_lists_every_command(cli: Cli) -> None:
    result = cli.run("--help")
    assert result.code == 0
    for command in ("worker", "submit", "status", "watch", "jobs", "queues", "queue", "cancel", "retry", "redrive",
                    "purge"):
        assert command in result.out


def test_backend_unreachable__exit_1_one_line(cli: Cli, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/missing/dir/conveyor.db"
    argvs = (["jobs"], ["queues"], ["status", "01a2222c-0000-7000-8000-000000000000"], ["submit", "add", "1", "2"])
    for argv, result in zip(argvs, cli.run_each(*([*argv, "--url", url] for argv in argvs)), strict=True):
        assert result.code == 1, argv
        assert "SQLite" in one_error_line(result.err)


def test_unsupported_url__exit_2(cli: Cli) -> None:
    result = cli.run("jobs", "--url", "ftp://example.com")
    assert result.code == 2
    assert "unsupported backend URL" in one_error_line(result.err)


def test_url_before_the_command__is_used(cli: Cli, tmp_path: Path) -> None:
    job_id = cli.submit("add", "1", "1")
    env = cli.env()
    env["CONVEYOR_URL"] = f"sqlite:///{tmp_path}/other.db"
    result = cli.run("--url", cli.url, "status", job_id, "--json", env=env)
    assert result.code == 0, result.err
    assert result.json()["id"] == job_id


def test_default_url__conveyor_db_in_working_directory(cli: Cli, tmp_path: Path) -> None:
    env = cli.env()
    del env["CONVEYOR_URL"]
    result = cli.run("submit", "add", "1", "2", env=env)
    assert result.code == 0, result.err
    assert (tmp_path / "conveyor.db").exists()


def test_python_dash_m_conveyor__works(cli: Cli) -> None:
    proc = subprocess.run([sys.executable, "-m", "conveyor", "jobs", "--json"], env=cli.env(), cwd=cli.tmp_path,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == '{"items": [], "next_cursor": null}'


def test_console_script__installed(cli: Cli) -> None:
    script = Path(sys.executable).parent / "conveyor"
    if not script.exists():
        unavailable("console script not installed in this environment")
    proc = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0
    assert proc.stdout.startswith("conveyor ")


def signal_while_importing(cli: Cli, argv: list[str], signum: int, hold: float) -> tuple[int, str, str]:
    """Run ``conveyor argv`` through the console script, send ``signum`` while it imports the command
    line, and give its exit code, stdout and stderr. The child holds that import open for ``hold``
    seconds (on a loaded machine the signal could land after a real import, or before ``main``)."""
    child = ("import builtins, sys, time; from conveyor.console import main\n"
             "real_import = builtins.__import__\n"
             "def slow_import(name, *args, **kwargs):\n"
             "    if name == 'conveyor.cli' and builtins.__import__ is slow_import:\n"
             "        builtins.__import__ = real_import\n"
             f"        print('importing', flush=True); time.sleep({hold})\n"
             "    return real_import(name, *args, **kwargs)\n"
             "builtins.__import__ = slow_import\n"
             f"sys.argv = ['conveyor', *{argv!r}]; sys.exit(main())")
    proc = subprocess.Popen([sys.executable, "-c", child], env=cli.env(), cwd=cli.tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "importing\n"
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    return proc.returncode, out, err


def test_ctrl_c_while_the_command_line_is_still_importing__exits_130_without_a_traceback(cli: Cli) -> None:
    """Importing the command line takes about 0.4 s: a Ctrl-C then ends the command like one later does."""
    code, out, err = signal_while_importing(cli, ["jobs", "--json"], signal.SIGINT, hold=30)
    assert code == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert out == ""  # the command itself never ran


@pytest.mark.parametrize(("command", "expected"), [("worker", 0), ("jobs", -signal.SIGTERM)])
def test_sigterm_while_the_command_line_is_still_importing__a_worker_exits_0__others_as_by_the_signal(
        cli: Cli, command: str, expected: int) -> None:
    """A stop that lands before Conveyor's own handler exists (a deploy that changed its mind at
    once): a worker exits 0 as it does while the app loads, not 143; a ``jobs`` does not pretend
    it listed anything."""
    code, out, err = signal_while_importing(cli, [command, "--app", "nowhere:app"], signal.SIGTERM, hold=1)
    assert code == expected, err
    assert err == "" and out == ""  # the command itself never ran: no "unknown module nowhere"


def test_unexpected_error__one_line_exit_1(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    from conveyor.cli import jobs

    def explode(args: object) -> int:
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr(jobs, "status", explode)
    result = cli("status", "anything")
    assert result.code == 1
    line = explode.__code__.co_firstlineno + 1
    assert one_error_line(result.err) == (
        f"conveyor: error: unexpected RuntimeError: disk on fire second line (raised at cli/test_main.py:{line} in "
        "explode; CONVEYOR_DEBUG=1 shows the traceback)")  # a bare `Exception()` said nothing else


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (UnknownTask("unknown task 'x'"), 2),
        (InvalidArguments("bad"), 2),
        (ConfigurationError("bad app"), 2),
        (JobNotFound(), 1),
        (JobFailed("failed"), 1),
        (BackendUnavailable(), 1),
        (InvalidTransition(), 1),
        (TimeoutError("late"), 1),
        (KeyError("x"), 1),
    ],
)
def test_exit_codes__one_table(error: BaseException, code: int) -> None:
    assert exit_code(error) == code
    assert "\n" not in one_line(error)


def test_exit_codes__subclasses_before_their_bases() -> None:
    kinds = [kind for kind, _ in EXIT_CODES]
    for i, kind in enumerate(kinds):
        assert not any(issubclass(kind, earlier) and kind is not earlier for earlier in kinds[:i]), kind


def test_schedules__lists_periodic_tasks_with_their_next_run(capsys):
    from conveyor.cli import main

    assert main(["schedules", "--app", "examples.demo:app", "--json"]) == 0
    items = json.loads(capsys.readouterr().out)["items"]
    assert [i["task"] for i in items] == ["morning_digest"]
    assert items[0]["cron"] == "0 7 * * *" and items[0]["next_run_at"].endswith("T07:00:00.000Z")


def test_schedules__without_an_app__exit_2(capsys, monkeypatch):
    from conveyor.cli import main

    monkeypatch.delenv("CONVEYOR_APP", raising=False)
    assert main(["schedules"]) == 2
    assert "no app given" in capsys.readouterr().err


def test_unknown_option_after_a_command__hint_names_the_command(cli: Cli) -> None:
    result = cli("jobs", "--bogus")
    assert result.code == 2
    assert one_error_line(result.err) == (
        "conveyor jobs: error: unrecognized arguments: --bogus (see 'conveyor jobs --help')"
    )


def test_submit_without_task__names_only_what_is_required(cli: Cli) -> None:
    result = cli("submit")
    assert result.code == 2
    assert "the following arguments are required: TASK (see" in one_error_line(result.err)


def test_url__the_apps_own_wins_over_conveyor_url__as_the_help_says(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "own_url_app.py").write_text(
        f'from conveyor import Conveyor\n\napp = Conveyor("sqlite:///{tmp_path}/own.db")\n'
    )
    assert cli.run("queues", "--app", "own_url_app:app").code == 0  # with $CONVEYOR_URL set (cli.env)
    assert (tmp_path / "own.db").exists()
    assert not (tmp_path / "conveyor.db").exists()  # $CONVEYOR_URL's
    shown = " ".join(cli.run("jobs", "--help").out.split())
    assert ("--url URL backend URL (default: the app's own, given as Conveyor(URL), else $CONVEYOR_URL, "
            "else sqlite:///conveyor.db)") in shown


AMQP_DOWN = "amqp://guest:guest@127.0.0.1:1/"  # nothing listens on port 1


def _amqp_down_env(cli: Cli, tmp_path: Path) -> dict[str, str]:
    if importlib.util.find_spec("aio_pika") is None:
        unavailable("the amqp extra (aio-pika) is not installed")
    env = cli.env()
    env.update(CONVEYOR_URL=AMQP_DOWN, CONVEYOR_STORE_URL=f"sqlite:///{tmp_path}/store.db")
    return env


@pytest.mark.parametrize("argv", [["status", "01a24d8f-391e-7094-a408-514bff73770b"], ["queues"],
                                  ["submit", "add", "1", "2"]])
def test_rabbitmq_unreachable__only_conveyors_line__exit_1(cli: Cli, tmp_path: Path, argv: list[str]) -> None:
    result = cli.run(*argv, env=_amqp_down_env(cli, tmp_path))
    assert result.code == 1
    assert "RabbitMQ at 127.0.0.1:1 is unreachable" in one_error_line(result.err)  # not aiormq's line too


def test_rabbitmq_unreachable__worker_keeps_its_logs_and_ends_with_one_error_line(cli: Cli, tmp_path: Path) -> None:
    result = cli.run("worker", "--burst", env=_amqp_down_env(cli, tmp_path))
    assert result.code == 1
    errors = [line for line in result.err.splitlines() if line.startswith("conveyor")]
    assert len(errors) == 1 and "RabbitMQ at 127.0.0.1:1 is unreachable" in errors[0], result.err
    assert result.err.strip().splitlines()[-1] == errors[0]


@pytest.mark.parametrize("command", [("worker", "--burst", "--no-scheduler"), ("up",)], ids=["worker", "up"])
def test_malformed_webhook_secret__refused_at_start_in_one_line(cli: Cli, command: tuple[str, ...]) -> None:
    """It used to start, then log an ERROR with a traceback at every poll once a webhook was due,
    never sending the delivery nor giving up on it."""
    env = {**cli.env(), "CONVEYOR_WEBHOOK_SECRET": "whsec_not base64!"}
    port = ("--port", str(free_port())) if command[0] == "up" else ()
    result = cli.run(*command, *port, env=env, timeout=30)
    assert result.code == 2, result.err
    assert one_error_line(result.err) == ("conveyor: error: CONVEYOR_WEBHOOK_SECRET must be whsec_ followed by "
                                          "base64")


@pytest.mark.parametrize("command", [["jobs", "--json"], ["queues", "--json"], ["jobs"]])
def test_stdout_closed_early__exit_1_quietly(cli: Cli, command: list[str]) -> None:
    """`conveyor jobs --json | head -1`: the reader has gone; --json said "unexpected BrokenPipeError"
    (the tables already ended quietly, through rich)."""
    proc = subprocess.Popen([sys.executable, "-m", "conveyor.cli", *command], env=cli.env(), cwd=cli.tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.close()  # before the command has even started
    _, err = proc.communicate(timeout=30)
    assert (proc.returncode, err.decode()) == (1, "")
