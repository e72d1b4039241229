"""``conveyor schedules``: the app's periodic tasks and when each runs next."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from rich.markup import escape

from conveyor.cli import render
from conveyor.cli.common import API_HELP, add_api, add_common
from conveyor.cli.errors import EXIT_OK
from conveyor.cli.ops import open_operations


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``schedules``."""
    p = subparsers.add_parser("schedules", help="list the app's periodic tasks with their next run",
                              description="The app's periodic tasks (--app), or the server's (--api). " + API_HELP)
    p.add_argument("--json", action="store_true", help='print {"items": [...]}')
    add_common(p)
    add_api(p)
    p.set_defaults(func=schedules)


def schedules(args: argparse.Namespace) -> int:
    """Print every schedule of the app (--app or CONVEYOR_APP), or of the API's app (--api)."""

    async def run() -> list[dict[str, Any]]:
        async with open_operations(args) as ops:
            return list((await ops.schedules())["items"])

    items = asyncio.run(run())
    if args.json:
        render.print_json({"items": items})
        return EXIT_OK
    if not items:
        render.console().print("no schedules")
        return EXIT_OK
    rows = []
    for item in items:
        # a schedule whose ticks cannot be computed says why in its row; the others still show
        nxt = f"[red]{escape(str(item['error']))}[/red]" if "error" in item else str(item["next_run_at"])
        rows.append((escape(str(item["task"])), escape(str(item["cron"])), escape(str(item["tz"])), nxt,
                     str(item["previous_run_at"] or "-")))
    # a time is cut rather than wrapped: the cron expression wraps instead
    columns = [(name, {"no_wrap": "(UTC)" in name}) for name in ("task", "cron", "tz", "next run (UTC)",
                                                                "previous tick (UTC)")]
    out = render.console()
    out.print(render.fitted_table(columns, rows, width=out.width, drop=("previous tick (UTC)", "tz", "cron")))
    return EXIT_OK

