"""``queues``, ``queue``, ``redrive``, ``purge``."""

from __future__ import annotations

import pytest

from tests.cli.conftest import Cli, on_a_terminal, one_error_line

QUEUE_FIELDS = {"name", "queued", "scheduled", "running", "failed", "retention", "visibility_timeout",
                "max_deliveries", "paused"}


def test_queues__json__items_with_counts_and_settings(cli: Cli) -> None:
    cli.submit("add", "1", "1")
    cli.submit("add", "1", "1", "--delay", "600")
    body = cli("queues", "--json").json()
    assert set(body) == {"items"}
    by_name = {q["name"]: q for q in body["items"]}
    assert {"default", "media"} <= set(by_name)  # media: named by the app, no job yet
    default = by_name["default"]
    assert set(default) >= QUEUE_FIELDS
    assert default["queued"] == 1
    assert default["scheduled"] == 1
    assert default["paused"] is False


def test_queues__without_app__backend_only(cli: Cli) -> None:
    cli.submit("add", "1", "1")
    env = cli.env()
    del env["CONVEYOR_APP"]
    result = cli.run("queues", "--json", env=env)
    assert result.code == 0, result.err
    assert [q["name"] for q in result.json()["items"]] == ["default"]


def test_queues__table__names_each_queue(cli: Cli) -> None:
    cli.submit("add", "1", "1")
    out = cli("queues").out
    assert "default" in out and "retention" in out


def test_queue__change_settings__stored_and_shown(cli: Cli) -> None:
    result = cli("queue", "default", "--retention", "3600", "--visibility-timeout", "45", "--max-deliveries", "4",
                 "--json")
    assert result.code == 0, result.err
    shown = result.json()
    assert shown["retention"] == 3600
    assert shown["visibility_timeout"] == 45
    assert shown["max_deliveries"] == 4
    again = cli.run("queue", "default", "--json").json()  # another process sees the stored values
    assert again == shown


def test_queue__pause_then_resume__workers_wait_then_run(cli: Cli) -> None:
    assert cli("queue", "default", "--pause", "--json").json()["paused"] is True
    job_id = cli.submit("add", "1", "1")
    cli.burst()
    assert cli.job(job_id)["status"] == "queued"
    assert cli("queue", "default", "--resume", "--json").json()["paused"] is False
    cli.burst()
    assert cli.job(job_id)["status"] == "succeeded"


def test_queue__panel__shows_settings(cli: Cli) -> None:
    out = cli("queue", "default", "--pause").out
    assert "queue default" in out and "visibility timeout" in out and "yes" in out


def test_queue__out_of_range__exit_2_and_nothing_changes(cli: Cli) -> None:
    result = cli("queue", "default", "--retention", "5")
    assert result.code == 2
    assert "retention" in one_error_line(result.err)
    assert cli("queue", "default", "--json").json()["retention"] == 4 * 86400


def test_queue__pause_and_resume_together__exit_2(cli: Cli) -> None:
    result = cli("queue", "default", "--pause", "--resume")
    assert result.code == 2
    assert "not allowed with" in one_error_line(result.err)


def test_redrive__dead_letters__back_to_queued(cli: Cli) -> None:
    ids = [cli.submit("boom") for _ in range(2)]
    cli.burst()
    result = cli("redrive", "default")
    assert result.code == 0
    assert result.out.strip() == "redriven: 2"
    assert {cli.job(i)["status"] for i in ids} == {"queued"}


def test_redrive__ids__only_those(cli: Cli) -> None:
    first, second = cli.submit("boom"), cli.submit("boom")
    cli.burst()
    assert cli("redrive", "default", "--ids", first, "--json").json() == {"redriven": 1}
    assert cli.job(first)["status"] == "queued"
    assert cli.job(second)["status"] == "failed"


def test_redrive__ids_in_any_case__and_not_an_id_is_a_usage_error(cli: Cli) -> None:
    failed = cli.submit("boom")
    cli.burst()
    assert cli.run("redrive", "default", "--ids", "nope").code == 2
    assert cli("redrive", "default", "--ids", failed.upper(), "--json").json() == {"redriven": 1}


@pytest.mark.parametrize("argv", [["redrive", "never-used"], ["purge", "never-used", "-y"], ["queue", "never-used"],
                                  ["queue", "never-used", "--pause"], ["queue", "never-used", "--retention", "60"]])
def test_unknown_queue__exit_1_not_found__as_through_the_api(cli: Cli, argv: list[str]) -> None:
    cli.submit("add", "1", "1")
    result = cli.run(*argv)
    assert result.code == 1
    assert "no queue named 'never-used'" in one_error_line(result.err)
    assert "never-used" not in [q["name"] for q in cli("queues", "--json").json()["items"]]  # none was made


def test_redrive__nothing_failed__zero(cli: Cli) -> None:
    cli.submit("add", "1", "1")
    assert cli("redrive", "default", "--json").json() == {"redriven": 0}


def test_purge__queued_jobs__cancelled(cli: Cli) -> None:
    ids = [cli.submit("add", "1", "1") for _ in range(3)]
    other = cli.submit("steps")
    result = cli.run("purge", "default")
    assert result.code == 0, result.err
    assert result.out.strip() == "purged: 3"
    assert {cli.job(i)["status"] for i in ids} == {"cancelled"}
    assert cli.job(other)["status"] == "queued"


def test_purge__json(cli: Cli) -> None:
    cli.submit("add", "1", "1")
    assert cli("purge", "default", "--json").json() == {"purged": 1}


@pytest.mark.parametrize("argv", [["redrive", "bad q!"], ["purge", "bad q!", "-y"], ["queue", "bad q!"],
                                  ["worker", "--queues", "default,bad q!", "--burst"], ["jobs", "--queue", "bad q!"],
                                  ["submit", "add", "1", "2", "--queue", "bad q!"]])
def test_invalid_queue_name__exit_2_naming_it(cli: Cli, argv: list[str]) -> None:
    result = cli(*argv)
    assert result.code == 2
    assert "invalid queue name 'bad q!': queue names are" in one_error_line(result.err)


@pytest.mark.parametrize("argv", [["jobs", "--queue", ""], ["jobs", "--queue", "a b/ü"],
                                  ["submit", "add", "1", "2", "--queue", ""],
                                  ["worker", "--queues", "default,", "--burst"]])
def test_empty_or_invalid_queue_name__exit_2_not_an_empty_answer(cli: Cli, argv: list[str]) -> None:
    """``jobs --queue ''`` printed "no jobs" (exit 0); ``worker --queues "default,$UNSET"`` worked "default" only."""
    result = cli(*argv)
    assert (result.code, result.out) == (2, "")
    line = one_error_line(result.err)
    assert "argument" in line and "invalid queue name" in line and "queue names are 1–100 ASCII letters" in line


def test_purge__ctrl_d_at_the_prompt__nothing_purged(cli: Cli) -> None:
    cli.submit("add", "1", "1")
    out, code = on_a_terminal(cli, ["purge", "default"], b"\x04", b"[y/N]")
    assert code == 1, out
    assert "nothing purged" in out and "EOFError" not in out
    assert cli("queue", "default", "--json").json()["queued"] == 1
