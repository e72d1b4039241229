"""Commands on jobs: submit, status, watch, jobs, cancel, retry."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from collections.abc import Callable
from typing import Any

from rich.markup import escape

from conveyor.cli import argtypes, render
from conveyor.cli.common import API_HELP, add_api, add_common
from conveyor.cli.errors import EXIT_OK, UsageError, printable
from conveyor.cli.ops import RETRYABLE, Operations, open_operations
from conveyor.core.errors import InvalidTransition, JobFailed, JobNotFound
from conveyor.core.job import Job, Status
from conveyor.serialization import SURROGATE_REFUSED

__all__ = ["RETRYABLE", "follow", "register"]


SECONDS = argtypes.seconds(positive=True)
#: A negative JSON number (``-1e5``, ``-.5``) or ``-Infinity``: argparse before 3.13 took only ``-1``
#: and ``-1.5`` for numbers and the rest for unknown options ("unrecognized arguments: -1e5").
NEGATIVE_ARGUMENT = re.compile(r"^-(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$|^-Infinity$")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the job commands."""
    p = subparsers.add_parser("submit", help="enqueue a job and print its id", epilog=API_HELP)
    p.add_argument("task", type=argtypes.task_name, metavar="TASK", help="registered task name")
    # default=[]: else argparse (before 3.13) names ARG_JSON among the required arguments when TASK is missing
    p.add_argument("args", nargs="*", default=[], metavar="ARG_JSON",
                   help='positional arguments, each JSON (quote strings: \'"a"\')')
    p._negative_number_matcher = NEGATIVE_ARGUMENT
    p.add_argument("--kwargs", metavar="JSON", help="keyword arguments as a JSON object")
    p.add_argument("--queue", type=argtypes.queue_name, help="queue (default: the task's)")
    p.add_argument("--priority", type=int, metavar="0-9", help="9 runs first (default: the task's)")
    p.add_argument("--delay", type=float, metavar="S", help="do not start before S seconds from now")
    p.add_argument("--max-retries", type=int, metavar="N", help="retries after a failure (default: the task's)")
    p.add_argument("--key", metavar="K", help="idempotency key: the same key yields the same job")
    p.add_argument("--wait", action="store_true", help="wait for the job; print its result as JSON")
    p.add_argument("--timeout", type=SECONDS, metavar="S", help="with --wait: give up after S seconds (exit 1)")
    add_common(p)
    add_api(p)
    p.set_defaults(func=submit)

    p = subparsers.add_parser("status", help="show a job", epilog=API_HELP)
    p.add_argument("id", metavar="ID")
    p.add_argument("--json", action="store_true", help="print the job's JSON")
    add_common(p)
    add_api(p)
    p.set_defaults(func=status)

    p = subparsers.add_parser("watch", help="follow a job live until it finishes (exit 1 unless it succeeded)",
                              epilog=API_HELP)
    p.add_argument("id", metavar="ID")
    p.add_argument("--timeout", type=SECONDS, metavar="S", help="give up after S seconds (exit 1)")
    add_common(p)
    add_api(p)
    p.set_defaults(func=watch)

    p = subparsers.add_parser("jobs", help="list jobs, newest first", epilog=API_HELP)
    p.add_argument("--status", choices=[str(s) for s in Status])
    p.add_argument("--queue", type=argtypes.queue_name, help="only this queue's jobs")
    p.add_argument("--task", type=argtypes.task_name, help="only this task's jobs")
    p.add_argument("--limit", type=argtypes.integer(1, 500), default=50, metavar="N",
                   help="at most N jobs, 1-500 (default 50)")
    p.add_argument("--cursor", type=argtypes.cursor, help="the next_cursor of a previous page")
    p.add_argument("--json", action="store_true", help='print {"items": [...], "next_cursor": ...}')
    add_common(p)
    add_api(p)
    p.set_defaults(func=jobs)

    p = subparsers.add_parser("cancel", help="cancel a job (a running one cooperatively)", epilog=API_HELP)
    p.add_argument("id", metavar="ID")
    p.add_argument("--json", action="store_true", help="print the job's JSON")
    add_common(p)
    add_api(p)
    p.set_defaults(func=cancel)

    p = subparsers.add_parser("retry", help="run a failed, cancelled or expired job again", epilog=API_HELP)
    p.add_argument("id", metavar="ID")
    p.add_argument("--json", action="store_true", help="print the job's JSON")
    add_common(p)
    add_api(p)
    p.set_defaults(func=retry)


# -- submit ---------------------------------------------------------------------------------
def submit(args: argparse.Namespace) -> int:
    """Validate, enqueue, print the id (or, with --wait, the result)."""
    if args.timeout is not None and not args.wait:
        raise UsageError("--timeout needs --wait")
    positional = [_json_arg(text, f"argument {i} ({_shown(text)!r})") for i, text in enumerate(args.args, 1)]
    kwargs = _json_arg(args.kwargs, "--kwargs") if args.kwargs is not None else {}
    if not isinstance(kwargs, dict):
        raise UsageError("--kwargs must be a JSON object, e.g. '{\"height\": 480}'")
    from conveyor.client import OPTIONS  # here: the HTTP client is not loaded for every command

    reserved = sorted(set(kwargs) & OPTIONS)
    if reserved:
        raise UsageError(f"--kwargs may not use the reserved name(s) {', '.join(reserved)}; use the options")
    given = {"queue": args.queue, "priority": args.priority, "delay": args.delay, "max_retries": args.max_retries,
             "key": args.key}
    options = {k: v for k, v in given.items() if v is not None}

    async def run() -> int:
        async with open_operations(args) as ops:
            job_id = await ops.submit(args.task, positional, kwargs, options)
            if not args.wait:
                print(job_id)
                return EXIT_OK
            render.print_json(await ops.wait(job_id, args.timeout))
            return EXIT_OK

    return asyncio.run(run())


def _shown(text: str, limit: int = 60) -> str:
    """``text`` cut to ``limit`` characters, to name an argument in an error line."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _json_arg(text: str, what: str) -> Any:
    """``text`` as JSON; a usage error for what JSON cannot be, or what no job can hold (checked
    here, so that the line is the same with ``--api``, where the server said "HTTP 400 ... body")."""
    try:
        value = json.loads(text)
        # a \ud800 escape, or argv bytes that are not UTF-8 (decoded with surrogateescape)
        json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise UsageError(f"{what}: {SURROGATE_REFUSED}") from None
    except ValueError as exc:
        hint = " (quote strings: '\"text\"')" if text[:1].isalpha() else ""
        raise UsageError(f"{what} is not valid JSON: {exc}{hint}") from None
    except RecursionError:  # json recurses per level: this was an "unexpected RecursionError", exit 1
        raise UsageError(f"{what} nests arrays and objects too deeply") from None
    return value


# -- reading --------------------------------------------------------------------------------
def status(args: argparse.Namespace) -> int:
    """Show one job: a panel, or exactly its JSON."""

    async def run() -> dict[str, Any]:
        async with open_operations(args) as ops:
            return await ops.get(args.id)

    data = asyncio.run(run())
    if args.json:
        render.print_json(data)
    else:
        out = render.console()
        out.print(render.job_panel(Job.from_json(data), width=out.width))
    return EXIT_OK


def jobs(args: argparse.Namespace) -> int:
    """List jobs with filters, newest first."""

    async def run() -> dict[str, Any]:
        async with open_operations(args) as ops:
            return await ops.jobs(status=args.status, task=args.task, queue=args.queue, limit=args.limit,
                                  cursor=args.cursor)

    page = asyncio.run(run())
    items = [Job.from_json(item) for item in page["items"]]
    if args.json:
        render.print_json(page)
    elif not items:
        render.console().print("no jobs")
    else:
        out = render.console()
        out.print(render.jobs_table(items, page.get("next_cursor"), width=out.width))
    return EXIT_OK


def watch(args: argparse.Namespace) -> int:
    """Follow a job live; exit 0 when it succeeded, 1 otherwise."""

    async def run() -> Job:
        async with open_operations(args) as ops:
            if sys.stdout.isatty():
                return await _watch_bar(ops, args.id, args.timeout)
            return await follow(ops, args.id, _line_printer(), args.timeout)

    job = asyncio.run(run())
    if job.status is Status.SUCCEEDED:
        render.console().print(f"[green]succeeded[/]: {escape(render.compact(job.result, 2000))}")
        return EXIT_OK
    error = dict(job.error) if job.error else None
    what = f": {error.get('type')}: {error.get('message')}" if error else ""
    raise JobFailed(f"job {job.id} ({job.task}) {job.status}{what}", error, str(job.status))


async def _watch_bar(ops: Operations, job_id: str, timeout: float | None) -> Job:
    from rich.progress import BarColumn, Progress, SpinnerColumn, TaskProgressColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=render.console(), transient=False) as bar:
        task_id = bar.add_task(job_id, total=100)

        def show(job: Job) -> None:
            fraction = (job.progress or {}).get("fraction")
            completed = 100.0 if job.status is Status.SUCCEEDED else None
            if completed is None and isinstance(fraction, int | float):
                completed = float(fraction) * 100
            label = f"{job.task} [{render.STATUS_STYLES[job.status]}]{job.status}[/]"
            message = (job.progress or {}).get("message")
            if message:
                label += f" {escape(printable(str(message)))}"
            bar.update(task_id, description=label, completed=completed)

        return await follow(ops, job_id, show, timeout)


def _line_printer() -> Callable[[Job], None]:
    """For pipes and logs: one line per visible change."""
    last: list[str] = []

    def show(job: Job) -> None:
        progress = "" if job.status.terminal else render.progress_text(job.progress)
        line = f"{job.status} {progress}".strip()
        if not last or last[-1] != line:
            last.append(line)
            print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)

    return show


async def follow(
    ops: Operations, job_id: str, on_change: Callable[[Job], None], timeout: float | None = None
) -> Job:
    """Call ``on_change`` with the job on every change until it is terminal; the final job."""
    final: Job | None = None
    async for data in ops.follow(job_id, timeout):
        final = Job.from_json(data)
        on_change(final)
        if final.status.terminal:
            break
    if final is None:
        raise JobNotFound(f"no job has id {job_id!r}")
    return final


# -- admin ----------------------------------------------------------------------------------
def cancel(args: argparse.Namespace) -> int:
    """Cancel a pending job at once; ask a running one to stop."""

    async def run() -> dict[str, Any]:
        async with open_operations(args) as ops:
            return await ops.cancel(args.id)

    data = asyncio.run(run())
    job = Job.from_json(data)
    if job.status.terminal and job.status is not Status.CANCELLED:
        raise InvalidTransition(f"job {job.id} already {job.status}; nothing to cancel")
    if args.json:
        render.print_json(data)
    elif job.status is Status.CANCELLED:
        print(f"{job.id} cancelled")
    else:
        print(f"{job.id} cancel requested ({job.status}: the task stops when it next checks)")
    return EXIT_OK


def retry(args: argparse.Namespace) -> int:
    """Put a failed, cancelled or expired job back to ``queued`` with attempts reset."""

    async def run() -> dict[str, Any]:
        async with open_operations(args) as ops:
            return await ops.retry(args.id)

    data = asyncio.run(run())
    if args.json:
        render.print_json(data)
    else:
        print(f"{data['id']} {data['status']}")
    return EXIT_OK
