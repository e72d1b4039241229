"""How the commands show jobs and queues: rich tables and panels for people, plain JSON for programs."""

from __future__ import annotations

import io
import json
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.measure import Measurement
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from conveyor.backends.base import QueueInfo
from conveyor.cli.errors import printable
from conveyor.core.job import Job, Status
from conveyor.core.queues import QueueSettings

#: How each status is coloured.
STATUS_STYLES: Mapping[Status, str] = {
    Status.WAITING: "magenta",
    Status.SCHEDULED: "cyan",
    Status.QUEUED: "blue",
    Status.RUNNING: "yellow",
    Status.RETRYING: "dark_orange",
    Status.SUCCEEDED: "green",
    Status.FAILED: "bold red",
    Status.CANCELLED: "dim",
    Status.EXPIRED: "dim red",
}


def console(stderr: bool = False) -> Console:
    """A console on stdout (or stderr); wide and colourless when not a terminal, so pipes get whole lines."""
    stream = sys.stderr if stderr else sys.stdout
    tty = stream.isatty()
    return Console(file=stream, width=None if tty else 200, soft_wrap=not tty, highlight=False)


def print_json(value: Any) -> None:
    """Plain JSON on stdout: indented for a terminal, one line for a pipe. Non-ASCII text as is,
    unless stdout cannot encode it (``PYTHONIOENCODING=ascii``, a cp1252 console): then as
    ``\\u`` escapes, the same JSON (``main`` makes stdout replace what it cannot encode: here
    that would change the data)."""
    indent = 2 if sys.stdout.isatty() else None
    text = json.dumps(value, indent=indent, ensure_ascii=False)
    try:
        text.encode(sys.stdout.encoding or "utf-8")
    except UnicodeEncodeError:
        text = json.dumps(value, indent=indent)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def status_text(status: Status) -> Text:
    return Text(str(status), style=STATUS_STYLES.get(status, ""))


def when(ts: float | None) -> str:
    """A local, second-precision time, or an em dash."""
    if ts is None:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def progress_text(progress: Mapping[str, Any] | None) -> str:
    if not progress:
        return ""
    fraction = progress.get("fraction")
    percent = f"{float(fraction):.0%}" if isinstance(fraction, int | float) else ""
    message = printable(str(progress.get("message") or ""))
    return f"{percent} {message}".strip()


def compact(value: Any, limit: int = 200) -> str:
    """JSON of ``value``, cut to ``limit`` characters."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def job_panel(job: Job, width: int | None = None) -> Panel:
    """Everything worth reading about one job; ``width``: the terminal's, which the panel fits."""
    title = f"job {job.id}"
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    if width is not None and len(title) + 6 > width:  # the title would be cut, the id with it
        title = "job"
        grid.add_row("id", job.id)
    grid.add_row("status", status_text(job.status))
    grid.add_row("task", escape(job.task))
    grid.add_row("queue", escape(job.queue))
    grid.add_row("attempt", f"{job.attempt} of {job.max_retries + 1}")
    grid.add_row("priority", str(job.priority))
    if job.progress:
        grid.add_row("progress", escape(progress_text(job.progress)))
    grid.add_row("args", escape(compact(list(job.args), 2000)))
    if job.kwargs:
        grid.add_row("kwargs", escape(compact(dict(job.kwargs), 2000)))
    if job.depends_on:
        grid.add_row("depends on", ", ".join(job.depends_on))
    if job.idempotency_key:
        grid.add_row("key", escape(job.idempotency_key))
    if job.cancel_requested and not job.status.terminal:
        grid.add_row("cancel", "requested")
    grid.add_row("created", when(job.created_at))
    if job.scheduled_at is not None:
        grid.add_row("scheduled", when(job.scheduled_at))
    grid.add_row("started", when(job.started_at))
    grid.add_row("finished", when(job.finished_at))
    if job.status is Status.SUCCEEDED:
        grid.add_row("result", escape(compact(job.result, 2000)))
    parts: list[RenderableType] = [grid]
    if job.attempts:
        parts.append(timeline_table(job, None if width is None else width - 4))  # the panel's border and padding
    if job.error:
        what = printable(f"{job.error.get('type')}: {job.error.get('message')}", keep="\n")
        parts.append(Text(f"\n{what}", style="red"))
        if job.error.get("traceback"):
            parts.append(Text(printable(str(job.error["traceback"]).rstrip(), keep="\n"), style="dim"))
    return Panel(Group(*parts), title=title, title_align="left", box=box.ROUNDED, expand=False)


def timeline_table(job: Job, width: int | None = None) -> Table:
    """Every delivery of the job: who ran it, when, and how it ended; ``width``: what it may take."""
    columns: list[tuple[str, Mapping[str, Any]]] = [
        (name, {}) for name in ("attempt", "worker", "started", "finished", "outcome", "error")]
    rows = []
    for entry in job.attempts:
        error = entry.get("error") or {}
        rows.append((
            str(entry.get("attempt", "")),
            escape(printable(str(entry.get("worker_id") or ""))),
            when(entry.get("started_at")),
            when(entry.get("finished_at")),
            escape(str(entry.get("status") or "running")),
            escape(printable(f"{error.get('type')}: {error.get('message')}") if error else ""),
        ))
    return fitted_table(columns, rows, width=width, drop=("worker", "started", "error", "finished"),
                        title="timeline", title_justify="left", box=box.SIMPLE, show_edge=False)


def jobs_table(jobs: Sequence[Job], next_cursor: str | None = None, width: int | None = None) -> Table:
    """One row per job, newest first; ``width``: the terminal's, which the table fits."""
    columns = [(name, {"no_wrap": name == "id"})
               for name in ("id", "task", "queue", "status", "attempt", "progress", "created", "finished")]
    rows = [(job.id, escape(job.task), escape(job.queue), status_text(job.status), str(job.attempt),
             escape(progress_text(job.progress)), when(job.created_at), when(job.finished_at)) for job in jobs]
    return fitted_table(columns, rows, width=width, drop=JOBS_DROPPED_FIRST,
                        caption=f"more: --cursor {next_cursor}" if next_cursor else None)


#: The columns a narrow terminal loses first, before the last (the id and the status stay).
JOBS_DROPPED_FIRST = ("progress", "created", "attempt", "finished", "queue", "task")
#: Likewise for the queues (the name stays).
QUEUES_DROPPED_FIRST = ("max deliveries", "visibility", "retention", "scheduled", "running", "paused", "failed",
                        "queued")


def fitted_table(columns: Sequence[tuple[str, Mapping[str, Any]]], rows: Sequence[Sequence[RenderableType]], *,
                 width: int | None, drop: Sequence[str], caption: str | None = None, **options: Any) -> Table:
    """A table of ``rows`` under ``columns`` (header, ``add_column`` options). Narrower than its
    longest words, rich cuts every column alike ("fa…" for failed at 80 columns; at 60 only the ids
    were left, at 20 nothing): so the columns of ``drop`` go instead, first to last, until the rest
    fit ``width`` whole, and the caption names them (``--json`` has everything). Narrower still,
    what is left folds onto more lines rather than lose characters. ``options`` go to ``Table``
    (``box``: SIMPLE_HEAD unless given)."""
    left_out: list[str] = []
    while True:
        table = _table(columns, rows, left_out, caption, options)
        if width is None or _narrowest(table) <= width:
            return table
        if len(left_out) == len(drop):
            return _table(columns, rows, left_out, caption, options, fold=True)
        left_out.append(drop[len(left_out)])


def _table(columns: Sequence[tuple[str, Mapping[str, Any]]], rows: Sequence[Sequence[RenderableType]],
           left_out: Sequence[str], caption: str | None, options: Mapping[str, Any], fold: bool = False) -> Table:
    shown = [i for i, (name, _) in enumerate(columns) if name not in left_out]
    notes = [caption] if caption else []
    if left_out:
        notes.append(f"not shown, for want of width: {', '.join(left_out)} (--json has them)")
    table = Table(caption="\n".join(notes) or None, **{"box": box.SIMPLE_HEAD, **options})
    for i in shown:
        name, options = columns[i]
        # fold, not cut, what still does not fit: rich narrows the widest columns first, words or not
        table.add_column(name, **({**options, "no_wrap": False, "overflow": "fold"} if fold
                                  else {"overflow": "fold", **options}))
    for row in rows:
        table.add_row(*(row[i] for i in shown))
    return table


def _narrowest(table: Table) -> int:
    """The fewest columns ``table`` takes without breaking a word."""
    wide = Console(file=io.StringIO(), width=100_000)
    return Measurement.get(wide, wide.options, table).minimum


def duration(seconds: float) -> str:
    """``90`` → ``1m30s``; whole units only, as SQS consoles show them."""
    s = int(seconds)
    if s != seconds or s == 0:
        return f"{seconds:g}s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if s >= size:
            parts.append(f"{s // size}{unit}")
            s %= size
    return "".join(parts)


def queue_info(data: Mapping[str, Any]) -> QueueInfo:
    """A queue's JSON (``GET /v1/queues/{name}``) as the ``QueueInfo`` the tables show."""
    defaults = QueueSettings()
    settings = QueueSettings(
        retention=float(data.get("retention", defaults.retention)),
        visibility_timeout=float(data.get("visibility_timeout", defaults.visibility_timeout)),
        max_deliveries=int(data.get("max_deliveries", defaults.max_deliveries)),
        result_ttl=float(data.get("result_ttl", defaults.result_ttl)),
        paused=bool(data.get("paused", False)),
    )
    counts = {name: int(data.get(name) or 0) for name in ("queued", "scheduled", "running", "failed")}
    return QueueInfo(name=str(data["name"]), settings=settings, counts=counts)


def queues_table(infos: Sequence[QueueInfo], width: int | None = None) -> Table:
    """One row per queue: counts and settings; ``width``: the terminal's, which the table fits."""
    columns = [(name, {"justify": "left" if name in ("queue", "paused") else "right"})
               for name in ("queue", "queued", "scheduled", "running", "failed", "retention", "visibility",
                            "max deliveries", "paused")]
    rows = []
    for info in infos:
        row = info.to_json()
        rows.append((
            escape(info.name),
            str(row["queued"]),
            str(row["scheduled"]),
            str(row["running"]),
            Text(str(row["failed"]), style="red" if row["failed"] else ""),
            duration(info.settings.retention),
            duration(info.settings.visibility_timeout),
            str(info.settings.max_deliveries),
            Text("paused", style="yellow") if info.settings.paused else Text("no"),
        ))
    return fitted_table(columns, rows, width=width, drop=QUEUES_DROPPED_FIRST)


def queue_panel(info: QueueInfo) -> Panel:
    """One queue's counts and settings."""
    row = info.to_json()
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for name in ("queued", "scheduled", "running", "failed"):
        grid.add_row(name, str(row[name]))
    s = info.settings
    grid.add_row("retention", f"{duration(s.retention)} ({s.retention:g} s)")
    grid.add_row("visibility timeout", f"{duration(s.visibility_timeout)} ({s.visibility_timeout:g} s)")
    grid.add_row("max deliveries", str(s.max_deliveries))
    grid.add_row("result ttl", f"{duration(s.result_ttl)} ({s.result_ttl:g} s)")
    grid.add_row("paused", Text("yes", style="yellow") if s.paused else Text("no"))
    return Panel(grid, title=f"queue {escape(info.name)}", title_align="left", box=box.ROUNDED, expand=False)
