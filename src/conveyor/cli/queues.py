"""Commands on queues: queues, queue (show or change settings), redrive, purge."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from conveyor.cli import argtypes, render
from conveyor.cli.common import API_HELP, add_api, add_common
from conveyor.cli.errors import EXIT_FAILED, EXIT_OK
from conveyor.cli.ops import open_operations


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the queue commands."""
    p = subparsers.add_parser("queues", help="list queues with their counts and settings", epilog=API_HELP)
    p.add_argument("--json", action="store_true", help='print {"items": [...]}')
    add_common(p)
    add_api(p)
    p.set_defaults(func=queues)

    p = subparsers.add_parser("queue", help="show or change one queue's settings (durations in seconds)",
                              epilog=API_HELP)
    p.add_argument("name", type=argtypes.queue_name, metavar="NAME")
    p.add_argument("--retention", type=float, metavar="S", help="jobs not started within S seconds expire")
    p.add_argument("--visibility-timeout", type=float, metavar="S", help="lease length without heartbeat")
    p.add_argument("--max-deliveries", type=int, metavar="N", help="deliveries before a job is failed")
    p.add_argument("--result-ttl", type=float, metavar="S", help="keep finished job records S seconds")
    pause = p.add_mutually_exclusive_group()
    pause.add_argument("--pause", dest="paused", action="store_const", const=True, help="hand no jobs to workers")
    pause.add_argument("--resume", dest="paused", action="store_const", const=False, help="undo --pause")
    p.add_argument("--json", action="store_true", help="print the queue's JSON")
    add_common(p)
    add_api(p)
    p.set_defaults(func=queue)

    p = subparsers.add_parser("redrive", help="put a queue's failed jobs (dead letters) back to queued",
                              epilog=API_HELP)
    p.add_argument("queue", type=argtypes.queue_name, metavar="QUEUE")
    p.add_argument("--ids", nargs="+", metavar="ID", help="only these jobs")
    p.add_argument("--json", action="store_true", help='print {"redriven": n}')
    add_common(p)
    add_api(p)
    p.set_defaults(func=redrive)

    p = subparsers.add_parser("purge", help="cancel every job waiting in a queue", epilog=API_HELP)
    p.add_argument("queue", type=argtypes.queue_name, metavar="QUEUE")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation on a terminal")
    p.add_argument("--json", action="store_true", help='print {"purged": n}')
    add_common(p)
    add_api(p)
    p.set_defaults(func=purge)


def queues(args: argparse.Namespace) -> int:
    """Every known queue (and every queue the app names, when one is given)."""

    async def run() -> dict[str, Any]:
        async with open_operations(args) as ops:
            return await ops.queues()

    page = asyncio.run(run())
    if args.json:
        render.print_json(page)
    elif not page["items"]:
        render.console().print("no queues")
    else:
        out = render.console()
        out.print(render.queues_table([render.queue_info(q) for q in page["items"]], width=out.width))
    return EXIT_OK


def queue(args: argparse.Namespace) -> int:
    """Show a queue; with options, change its settings first."""
    changes: dict[str, Any] = {
        "retention": args.retention,
        "visibility_timeout": args.visibility_timeout,
        "max_deliveries": args.max_deliveries,
        "result_ttl": args.result_ttl,
        "paused": args.paused,
    }
    changes = {k: v for k, v in changes.items() if v is not None}

    async def run() -> dict[str, Any]:
        async with open_operations(args) as ops:
            return await ops.queue(args.name, changes)

    data = asyncio.run(run())
    if args.json:
        render.print_json(data)
    else:
        render.console().print(render.queue_panel(render.queue_info(data)))
    return EXIT_OK


def redrive(args: argparse.Namespace) -> int:
    """Dead letters back to ``queued``, attempts reset."""

    async def run() -> int:
        async with open_operations(args) as ops:
            return await ops.redrive(args.queue, args.ids)

    count = asyncio.run(run())
    if args.json:
        render.print_json({"redriven": count})
    else:
        print(f"redriven: {count}")
    return EXIT_OK


def purge(args: argparse.Namespace) -> int:
    """Cancel every ready job of a queue."""
    if not args.yes and sys.stdin.isatty() and sys.stdout.isatty():
        try:
            answer = input(f"cancel every waiting job of queue {args.queue!r}? [y/N] ")
        except EOFError:  # Ctrl-D: no (it was "unexpected EOFError")
            answer = ""
            print()
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing purged", file=sys.stderr)
            return EXIT_FAILED

    async def run() -> int:
        async with open_operations(args) as ops:
            return await ops.purge(args.queue)

    count = asyncio.run(run())
    if args.json:
        render.print_json({"purged": count})
    else:
        print(f"purged: {count}")
    return EXIT_OK
