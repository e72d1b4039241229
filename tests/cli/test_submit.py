"""``conveyor submit`` and ``conveyor worker``: enqueue, validate, wait."""

from __future__ import annotations

import pytest

from tests.cli.conftest import Cli, one_error_line


def test_submit__then_burst_worker__status_json_succeeded(cli: Cli) -> None:
    submitted = cli.run("submit", "add", "2", "3")
    assert submitted.code == 0, submitted.err
    job_id = submitted.out.strip()

    worker = cli.run("worker", "--burst", "--no-scheduler")
    assert worker.code == 0, worker.err

    status = cli.run("status", job_id, "--json")
    assert status.code == 0
    job = status.json()
    assert job["id"] == job_id
    assert job["status"] == "succeeded"
    assert job["result"] == 5
    assert job["args"] == [2, 3]


def test_submit_wait__worker_running__prints_result_json(cli: Cli) -> None:
    cli.background_worker("--no-scheduler")
    result = cli.run("submit", "add", "20", "22", "--wait", "--timeout", "20", timeout=30)
    assert result.code == 0, result.err + cli.logs()
    assert result.out.strip() == "42"


def test_submit_wait__task_fails__exit_1_and_names_the_error(cli: Cli) -> None:
    cli.background_worker("--no-scheduler")
    result = cli.run("submit", "boom", "--wait", "--timeout", "20", timeout=30)
    assert result.code == 1
    assert "ValueError: boom" in result.err, result.err + cli.logs()
    line = one_error_line(result.err)
    assert "failed" in line and "ValueError: boom" in line


def test_submit_wait__no_worker__times_out_with_exit_1(cli: Cli) -> None:
    result = cli("submit", "add", "1", "2", "--wait", "--timeout", "0.3")
    assert result.code == 1
    assert "still queued" in one_error_line(result.err)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["add", "1", "x"], "argument 2 ('x') is not valid JSON"),
        (["add", "1", "{"], "not valid JSON"),
        (["nope"], "unknown task 'nope'"),
        (["add", "1", '"two"'], "b:"),
        (["add", "1"], "missing a required argument: 'b'"),
        (["add", "1", "2", "3"], "too many positional arguments"),
        (["add", "--kwargs", "[1, 2]"], "--kwargs must be a JSON object"),
        (["add", "--kwargs", "{bad"], "--kwargs is not valid JSON"),
        (["add", "1", "2", "--priority", "12"], "priority must be an integer from 0 to 9"),
        (["add", "1", "2", "--queue", "no spaces"], "queue names"),
        (["add", "1", "2", "--priority", "high"], "argument --priority: invalid int value"),
        (["add", "1", "2", "--timeout", "5"], "--timeout needs --wait"),
        # "must be more than 0 seconds: '1e309'"
        (["add", "1", "2", "--wait", "--timeout", "1e309"],
         "argument --timeout: not a finite number of seconds: '1e309'"),
        (["add", "1", "2", "--wait", "--timeout", "nan"], "argument --timeout: not a finite number of seconds: 'nan'"),
        (["add", "1", "2", "--delay", "-3"], "delay must be a number of seconds"),
        # json recursed past Python's limit: "unexpected RecursionError", exit 1
        (["add", "1", "[" * 3000 + "]" * 3000], "argument 2 ('" + "[" * 59 + "…') nests arrays and objects too deeply"),
        (["add", "1", "--kwargs", '{"b": ' + "[" * 3000 + "]" * 3000 + "}"], "--kwargs nests arrays and objects"),
        (["add", "1", '"\\ud800"'], "argument 2 ('\"\\\\ud800\"'): a string holds a lone UTF-16 surrogate"),
        (["add", "1", '"\udcff"'], "a string holds a lone UTF-16 surrogate"),  # argv bytes not UTF-8
        (["add", "1", "--kwargs", '{"\\udc80": 2}'], "--kwargs: a string holds a lone UTF-16 surrogate"),
    ],
)
def test_submit__bad_input__exit_2_with_one_line(cli: Cli, argv: list[str], expected: str) -> None:
    result = cli("submit", *argv)
    assert result.code == 2
    assert expected in one_error_line(result.err)
    assert result.out == ""


def test_submit__bad_input_as_a_real_process__exit_2_no_traceback(cli: Cli) -> None:
    result = cli.run("submit", "add", "1", '"two"')
    assert result.code == 2
    assert "b: Input should be a valid integer" in one_error_line(result.err)


def test_submit__bad_input__creates_no_job(cli: Cli) -> None:
    cli("submit", "add", "1", "oops")
    assert cli("jobs", "--json").json()["items"] == []


def test_submit__no_app__exit_2(cli: Cli) -> None:
    env = cli.env()
    del env["CONVEYOR_APP"]
    result = cli.run("submit", "add", "1", "2", env=env)
    assert result.code == 2
    assert "no app given" in one_error_line(result.err)


@pytest.mark.parametrize(("app", "expected"), [("nomodule:app", "cannot import 'nomodule'"),
                                                ("cli_test_app:nothing", "the app module 'cli_test_app' has no "
                                                                         "attribute 'nothing'"),
                                                ("cli_test_app:add", "'cli_test_app:add' is not a Conveyor app"),
                                                ("cli_test_app", "module:attribute")])
def test_submit__bad_app__exit_2(cli: Cli, app: str, expected: str) -> None:
    result = cli.run("submit", "add", "1", "2", "--app", app)
    assert result.code == 2
    assert expected in one_error_line(result.err)


@pytest.mark.parametrize(("app", "module"), [("cli_test_app.py:app", "cli_test_app"),
                                               ("./cli_test_app.py:app", "cli_test_app"),
                                               ("/srv/jobs/cli_test_app.py:app", "cli_test_app"),
                                               ("pkg/tasks.py:app", "pkg.tasks")])
def test_submit__app_given_as_a_file__exit_2_naming_the_module(cli: Cli, app: str, module: str) -> None:
    """As for `python app.py`: the line said "No module named 'cli_test_app.py'; 'cli_test_app' is
    not a package", or "the 'package' argument is required to perform a relative import"."""
    result = cli.run("submit", "add", "1", "2", "--app", app)
    assert result.code == 2
    assert one_error_line(result.err) == (
        f"conveyor: error: --app takes a module, not a file: {module}:app (run from the directory the module is "
        "in, or put that directory on PYTHONPATH)")


@pytest.mark.parametrize(("source", "expected"), [
    ('raise RuntimeError("config missing: FOO")\n',
     "conveyor: error: cannot import the app module 'broken_app': RuntimeError: config missing: FOO"),
    ("def f(:\n", "conveyor: error: cannot import the app module 'broken_app': SyntaxError: "),
    # not an Exception: a traceback
    ('class Abort(BaseException): ...\nraise Abort("no config")\n',
     "conveyor: error: cannot import the app module 'broken_app': Abort: no config"),
    # a module __getattr__ that makes the app lazily: "unexpected RuntimeError", exit 1
    ('def __getattr__(name):\n    raise RuntimeError("config missing: FOO")\n',
     "conveyor: error: cannot get 'app' from the app module 'broken_app': RuntimeError: config missing: FOO"),
    # script code on import: the command ended with exit 3 and not a word
    ("raise SystemExit(3)\n", "conveyor: error: the app module of 'broken_app:app' exited while it was imported "
                               "(SystemExit 3): keep script code under `if __name__ == \"__main__\":`"),
])
def test_submit__app_module_fails_on_import__exit_2_naming_the_module(cli: Cli, source: str, expected: str) -> None:
    (cli.tmp_path / "broken_app.py").write_text(source)
    result = cli.run("submit", "add", "1", "2", "--app", "broken_app:app")
    assert result.code == 2
    assert one_error_line(result.err).startswith(expected)


def test_submit__options__reach_the_job(cli: Cli) -> None:
    job_id = cli.submit("steps", "--kwargs", '{"n": 2}', "--queue", "bulk", "--priority", "7", "--delay", "600",
                        "--max-retries", "1")
    job = cli.job(job_id)
    assert job["queue"] == "bulk"
    assert job["priority"] == 7
    assert job["status"] == "scheduled"
    assert job["max_retries"] == 1
    assert job["kwargs"] == {"n": 2}


def test_submit__same_key_twice__same_job(cli: Cli) -> None:
    first = cli.submit("add", "1", "2", "--key", "order-7")
    second = cli.submit("add", "1", "2", "--key", "order-7")
    assert first == second
    assert len(cli("jobs", "--json").json()["items"]) == 1


def test_submit__same_key_other_arguments__usage_error_and_no_second_job(cli: Cli) -> None:
    first = cli.submit("add", "1", "2", "--key", "order-8")
    for other in (("add", "1", "3"), ("add", "1", "2", "--delay", "60"), ("add", "1", "2", "--priority", "4")):
        result = cli.run("submit", *other, "--key", "order-8")
        assert result.code == 2, result.err
        assert "different request" in one_error_line(result.err) and first in result.err
    assert len(cli("jobs", "--json").json()["items"]) == 1


def test_submit__key_beyond_printable_ascii__usage_error_as_over_http(cli: Cli) -> None:
    """One rule for a key, whichever way it goes: `--key café` worked on the engine and was
    refused through `--api` (an HTTP header carries printable ASCII only)."""
    for result in cli.run_each(*(["submit", "add", "1", "2", "--key", key] for key in ("café", "tab\there", ""))):
        assert result.code == 2, result.err
        assert "1–255 printable ASCII characters" in one_error_line(result.err)
    assert cli("jobs", "--json").json()["items"] == []


def test_submit__negative_number_argument__is_json_not_an_option(cli: Cli) -> None:
    job_id = cli.submit("add", "-1", "-2")
    exponent = cli.submit("steps", "0", "-1e-3")  # argparse took -1e-3 for an unknown option
    cli.burst()
    assert cli.job(job_id)["result"] == -3 and cli.job(exponent)["args"] == [0, -0.001]
    result = cli("submit", "add", "1", "-Infinity")
    assert result.code == 2 and "unrecognized" not in one_error_line(result.err), result.err


def test_worker__queues_option__leaves_other_queues_alone(cli: Cli) -> None:
    media = cli.submit("steps", "--kwargs", '{"n": 1, "pause": 0}')
    default = cli.submit("add", "1", "1")
    assert cli("worker", "--burst", "--no-scheduler", "--queues", "default").code == 0
    assert cli.job(default)["status"] == "succeeded"
    assert cli.job(media)["status"] == "queued"


def test_worker__async_pool_and_concurrency__runs_jobs(cli: Cli) -> None:
    job_id = cli.submit("add", "3", "4")
    assert cli("worker", "--burst", "--no-scheduler", "--pool", "async", "--concurrency", "2").code == 0
    assert cli.job(job_id)["result"] == 7


def test_worker__log_level_in_any_case(cli: Cli) -> None:
    """``--log-level debug`` was refused (uvicorn's flag of the same name takes lowercase)."""
    job_id = cli.submit("add", "1", "1")
    result = cli("worker", "--burst", "--no-scheduler", "--log-level", "debug")
    assert result.code == 0, result.err
    assert cli.job(job_id)["status"] == "succeeded"
    result = cli("worker", "--burst", "--log-level", "loud")
    assert result.code == 2 and "invalid choice" in result.err
    one_error_line(result.err)


def test_worker__bad_options__exit_2(cli: Cli) -> None:
    # 20 digits of --concurrency: "unexpected OverflowError" from the worker's first heartbeat, exit 1
    for argv in (["--concurrency", "0"], ["--pool", "fork"], ["--grace", "-1"], ["--queues", ","],
                 ["--concurrency", "10001"], ["--concurrency", "99999999999999999999"]):
        result = cli("worker", "--burst", *argv)
        assert result.code == 2, argv
        one_error_line(result.err)
