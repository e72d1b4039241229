"""``status``, ``watch``, ``jobs``, ``cancel``, ``retry``."""

from __future__ import annotations

import re

import pytest

from conveyor import Context, Conveyor
from tests.cli.conftest import Cli, on_a_terminal, one_error_line

MISSING = "01a2222c-0000-7000-8000-000000000000"


@pytest.mark.parametrize("job_id", [MISSING, "not-a-uuid"])
def test_status__unknown_id__exit_1_one_line(cli: Cli, job_id: str) -> None:
    result = cli("status", job_id)
    assert result.code == 1
    assert f"no job has id '{job_id}'" in one_error_line(result.err)


def test_status__unknown_id_as_a_real_process__exit_1(cli: Cli) -> None:
    result = cli.run("status", MISSING, "--json")
    assert result.code == 1
    assert result.out == ""
    one_error_line(result.err)


def test_status__panel__shows_result(cli: Cli) -> None:
    job_id = cli.submit("add", "2", "2")
    cli.burst()
    out = cli("status", job_id).out
    assert job_id in out
    assert "succeeded" in out
    assert "result" in out and "4" in out


def test_status__failed_job__panel_shows_error(cli: Cli) -> None:
    job_id = cli.submit("boom")
    cli.burst()
    out = cli("status", job_id).out
    assert "failed" in out
    assert "ValueError: boom" in out


def test_status__json__is_the_job_resource(cli: Cli) -> None:
    job_id = cli.submit("steps", "--kwargs", '{"n": 2, "pause": 0}')
    cli.burst()
    job = cli.job(job_id)
    for field in ("id", "task", "queue", "status", "args", "kwargs", "priority", "progress", "result", "error",
                  "attempt", "max_retries", "depends_on", "idempotency_key", "metadata", "created_at",
                  "scheduled_at", "started_at", "finished_at", "updated_at"):
        assert field in job
    assert job["result"] == "done"
    assert job["created_at"].endswith("Z")


def test_jobs__json__items_and_next_cursor(cli: Cli) -> None:
    ids = [cli.submit("add", str(i), "0") for i in range(3)]
    page = cli("jobs", "--json").json()
    assert set(page) == {"items", "next_cursor"}
    assert [j["id"] for j in page["items"]] == ids[::-1]  # newest first
    assert page["next_cursor"] is None


def test_jobs__limit_and_cursor__page_through_everything(cli: Cli) -> None:
    ids = {cli.submit("add", str(i), "0") for i in range(5)}
    seen: list[str] = []
    cursor: list[str] = []
    for _ in range(5):
        page = cli("jobs", "--json", "--limit", "2", *cursor).json()
        seen += [j["id"] for j in page["items"]]
        if page["next_cursor"] is None:
            break
        cursor = ["--cursor", page["next_cursor"]]
    assert sorted(seen) == sorted(ids)


def test_jobs__filters__status_task_queue(cli: Cli) -> None:
    ok = cli.submit("add", "1", "1")
    bad = cli.submit("boom")
    cli.burst()
    media = cli.submit("steps")
    assert [j["id"] for j in cli("jobs", "--json", "--status", "failed").json()["items"]] == [bad]
    assert [j["id"] for j in cli("jobs", "--json", "--task", "add").json()["items"]] == [ok]
    assert [j["id"] for j in cli("jobs", "--json", "--queue", "media").json()["items"]] == [media]


def test_jobs__table__lists_each_job(cli: Cli) -> None:
    job_id = cli.submit("add", "1", "1")
    out = cli("jobs").out
    assert job_id in out and "queued" in out and "add" in out


def test_jobs__empty__says_so(cli: Cli) -> None:
    assert cli("jobs").out.strip() == "no jobs"


def test_jobs__bad_status__exit_2(cli: Cli) -> None:
    result = cli("jobs", "--status", "done")
    assert result.code == 2
    assert "invalid choice" in one_error_line(result.err)


@pytest.mark.parametrize(("argv", "expected"), [
    # "no jobs", exit 0: `--task "$UNSET"` looked like a task that never ran
    (["jobs", "--task", ""], "argument --task: invalid task name '': a task name is a str of 1–200 characters"),
    (["jobs", "--task", "t" * 201], "argument --task: invalid task name 'tttt"),
    # argv bytes that are not UTF-8: "unexpected UnicodeEncodeError" from SQLite, exit 1
    (["jobs", "--task", "\udcff"], "argument --task: invalid task name '\\udcff'"),
    (["submit", "\udcff"], "argument TASK: invalid task name '\\udcff'"),
])
def test_task_name_no_task_can_have__exit_2_not_an_answer(cli: Cli, argv: list[str], expected: str) -> None:
    cli.submit("add", "1", "1")
    result = cli(*argv)
    assert (result.code, result.out) == (2, "")
    assert expected in one_error_line(result.err)


def test_jobs__empty_cursor__the_first_page(cli: Cli) -> None:
    """``--cursor "$NEXT"`` before there is a next page: from the start, as the API takes ``?cursor=``."""
    job_id = cli.submit("add", "1", "1")
    assert [j["id"] for j in cli("jobs", "--json", "--cursor", "").json()["items"]] == [job_id]


@pytest.mark.parametrize("columns", [20, 80])
def test_jobs_and_queues__narrow_terminal__statuses_and_names_shown_whole(cli: Cli, columns: int) -> None:
    """rich cut every column alike: at 80 columns a status read "fa…" or "qu…", at 60 only the ids
    were left, and at 20 the queues table was blank."""
    cli.submit("boom")
    cli.burst()
    cli.submit("add", "1", "1")
    for argv, words in ((["jobs"], ("failed", "queued")), (["queues"], ("default",))):
        out, code = on_a_terminal(cli, argv, columns=columns)
        lines = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out).splitlines()
        assert code == 0, out
        assert all(any(re.search(rf"\b{word}\b", line) for line in lines) for word in words), out
        words_only = " ".join(" ".join(lines).split())  # the caption wraps
        assert "not shown, for want of width:" in words_only and "(--json has them)" in words_only
        assert max(len(line.rstrip()) for line in lines) <= columns, out


def test_status__narrow_terminal__the_id_whole_and_the_timeline_fitted(cli: Cli) -> None:
    """At 40 columns the panel's title cut the id ("job 01a2…b24490d─"), the timeline read "fa…"."""
    job_id = cli.submit("boom")
    cli.burst()
    out, code = on_a_terminal(cli, ["status", job_id], columns=40)
    lines = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out).splitlines()
    assert code == 0, out
    assert job_id in "".join(line.strip("│ ").removeprefix("id").strip() for line in lines[1:3]), out
    assert sum(bool(re.search(r"\bfailed\b", line)) for line in lines) == 2, out  # status, and the timeline's
    assert max(len(line.rstrip()) for line in lines) <= 40, out


def test_watch__succeeds__exit_0_with_result(cli: Cli) -> None:
    cli.background_worker("--no-scheduler")
    job_id = cli.submit("steps", "--kwargs", '{"n": 4, "pause": 0.05}')
    result = cli.run("watch", job_id, "--timeout", "20", timeout=30)
    assert result.code == 0, result.err + cli.logs()
    assert "succeeded" in result.out
    assert '"done"' in result.out


def test_watch__fails__exit_1(cli: Cli) -> None:
    job_id = cli.submit("boom")
    cli.burst()
    result = cli("watch", job_id, "--timeout", "5")
    assert result.code == 1
    assert "ValueError: boom" in one_error_line(result.err)


def test_watch__unknown_id__exit_1(cli: Cli) -> None:
    result = cli("watch", MISSING)
    assert result.code == 1
    one_error_line(result.err)


def test_watch__not_finished_in_time__exit_1(cli: Cli) -> None:
    job_id = cli.submit("add", "1", "1")
    result = cli("watch", job_id, "--timeout", "0.2")
    assert result.code == 1
    assert "still queued" in one_error_line(result.err)


def test_cancel__queued_job__is_cancelled(cli: Cli) -> None:
    job_id = cli.submit("add", "1", "1")
    result = cli("cancel", job_id)
    assert result.code == 0
    assert result.out.strip() == f"{job_id} cancelled"
    assert cli.job(job_id)["status"] == "cancelled"
    cli.burst()
    assert cli.job(job_id)["status"] == "cancelled"


def test_cancel__json__prints_the_job(cli: Cli) -> None:
    job_id = cli.submit("add", "1", "1")
    assert cli("cancel", job_id, "--json").json()["status"] == "cancelled"


def test_cancel__unknown_id__exit_1(cli: Cli) -> None:
    result = cli("cancel", MISSING)
    assert result.code == 1
    one_error_line(result.err)


def test_cancel__finished_job__exit_1_clear_message(cli: Cli) -> None:
    job_id = cli.submit("add", "1", "1")
    cli.burst()
    result = cli("cancel", job_id)
    assert result.code == 1
    assert "already succeeded" in one_error_line(result.err)


@pytest.mark.parametrize("how", ["failed", "cancelled"])
def test_retry__failed_or_cancelled__back_to_queued(cli: Cli, how: str) -> None:
    if how == "failed":
        job_id = cli.submit("boom")
        cli.burst()
    else:
        job_id = cli.submit("add", "1", "1")
        cli("cancel", job_id)
    assert cli.job(job_id)["status"] == how
    result = cli("retry", job_id)
    assert result.code == 0
    assert result.out.strip() == f"{job_id} queued"
    job = cli.job(job_id)
    assert job["status"] == "queued"
    assert job["attempt"] == 1


@pytest.mark.parametrize("status", ["queued", "succeeded"])
def test_retry__job_not_finished_badly__exit_1_clear_message(cli: Cli, status: str) -> None:
    job_id = cli.submit("add", "1", "1")
    if status == "succeeded":
        cli.burst()
    result = cli("retry", job_id)
    assert result.code == 1
    assert f"is {status}; only failed, cancelled or expired jobs can be retried" in one_error_line(result.err)
    assert cli.job(job_id)["status"] == status


def test_retry__unknown_id__exit_1(cli: Cli) -> None:
    result = cli("retry", MISSING)
    assert result.code == 1
    one_error_line(result.err)


def _dependent_of(cli: Cli, parent_id: str) -> str:
    """A job of ``add`` that depends on ``parent_id`` (``conveyor submit`` takes no depends_on)."""
    from conveyor.backends.sqlite import SQLiteBackend
    from conveyor.core.ids import uuid7
    from conveyor.core.job import Job

    backend = SQLiteBackend(cli.url)
    try:
        [(child, _)] = backend.enqueue_blocking([Job(id=uuid7(), task="add", args=[1, 1], depends_on=[parent_id])])
    finally:
        backend.close_blocking()
    return child.id


def test_retry__dependent_of_failed_parent__exit_1_naming_the_parent(cli: Cli) -> None:
    parent_id = cli.submit("boom")
    child_id = _dependent_of(cli, parent_id)
    cli.burst()
    assert cli.job(child_id)["status"] == "cancelled"

    result = cli("retry", child_id)

    assert result.code == 1
    line = one_error_line(result.err)
    assert parent_id in line and "ended failed" in line
    assert cli.job(child_id)["status"] == "cancelled"


def test_retry__dependent_of_pending_parent__waits_then_runs(cli: Cli) -> None:
    parent_id = cli.submit("add", "1", "1")
    child_id = _dependent_of(cli, parent_id)
    cli("cancel", child_id)

    result = cli("retry", child_id)

    assert result.code == 0 and result.out.strip() == f"{child_id} waiting"
    cli.burst()
    assert cli.job(child_id)["result"] == 2 and cli.job(child_id)["status"] == "succeeded"


def test_stdout_not_utf8__tables_and_json_still_print(cli: Cli) -> None:
    """PYTHONIOENCODING=ascii, a cp1252 console: every table ended in "unexpected UnicodeEncodeError"
    (our own "—" did it), and --json too for a job holding non-ASCII text."""
    app = Conveyor(cli.url)

    @app.task
    def echo(ctx: Context, text: str) -> str:
        return text

    try:
        job_id = echo.enqueue("é 💥").id
    finally:
        app.close()
    env = {**cli.env(), "PYTHONIOENCODING": "ascii"}
    result = cli.run("status", job_id, "--json", env=env)
    assert result.code == 0, result.err
    assert result.out.isascii() and result.json()["args"] == ["é 💥"]  # escaped: the same JSON
    for result in cli.run_each(["status", job_id], ["jobs"], ["queues"], env=env):
        assert result.code == 0, result.err
        assert result.err == "" and ("queued" in result.out)


EVIL_APP = '''from conveyor import Context, Conveyor

app = Conveyor()


@app.task(max_retries=0)
def evil(ctx: Context) -> None:
    ctx.progress(0.5, "\\x1b]0;owned\\x07 \\x1b[31mred")
    raise ValueError("\\x1b[2J\\u202egnp.exe")
'''


def test_job_text_with_terminal_controls__shown_escaped_not_acted_on(cli: Cli) -> None:
    """A job's progress message, error and traceback are the task's text (maybe someone else's):
    printed raw, ESC sequences cleared the screen or set the title, and U+202E reversed the line."""
    (cli.tmp_path / "evil_app.py").write_text(EVIL_APP)
    env = {**cli.env(), "CONVEYOR_APP": "evil_app:app"}
    result = cli.run("submit", "evil", env=env)
    job_id = result.out.strip()
    assert cli.run("worker", "--burst", "--no-scheduler", env=env).code == 0
    outputs = {"status": cli.run("status", job_id, env=env), "jobs": cli.run("jobs", env=env),
               "watch": cli.run("watch", job_id, env=env)}
    for name, result in outputs.items():
        assert not any(c in result.out + result.err for c in "\x1b\x07\u202e"), (name, result)
    assert "\\x1b[2J\\u202egnp.exe" in outputs["status"].out
    assert "\\x1b]0;owned\\x07 \\x1b[31mred" in outputs["jobs"].out
    assert one_error_line(outputs["watch"].err).endswith("failed: ValueError: \\x1b[2J\\u202egnp.exe")
