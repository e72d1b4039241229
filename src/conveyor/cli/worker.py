"""``conveyor worker``: run jobs from the app's queues in this process."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from types import FrameType

from conveyor import metrics
from conveyor.cli import argtypes
from conveyor.cli.common import add_common, add_log_level, app_spec, configure_logging, load
from conveyor.cli.errors import Stopped
from conveyor.worker.run import left_running, run_in_process
from conveyor.worker.worker import Worker


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``worker``."""
    p = subparsers.add_parser("worker", help="run jobs until stopped (SIGTERM/SIGINT), or until idle with --burst")
    p.add_argument("--queues", type=argtypes.queue_names, metavar="A,B",
                   help="queues to work (default: every queue the app names)")
    p.add_argument("--concurrency", type=argtypes.concurrency, metavar="N",
                   help=f"jobs at once, 1-{argtypes.MAX_CONCURRENCY} (default 8; process pool: CPUs)")
    p.add_argument("--pool", choices=("thread", "process", "async"), default="thread",
                   help="where sync tasks run (async tasks always run on the event loop)")
    p.add_argument("--grace", type=argtypes.seconds(), default=30.0, metavar="S",
                   help="on shutdown, let running jobs finish for S seconds (default 30)")
    p.add_argument("--max-tasks-per-child", type=argtypes.integer(1), metavar="N",
                   help="process pool: replace a process after N jobs")
    p.add_argument("--max-memory-per-child", type=argtypes.integer(1), metavar="MIB",
                   help="process pool: replace a process that holds more than MIB MiB after a job")
    p.add_argument("--metrics", type=argtypes.address, metavar="[HOST:]PORT",
                   help="serve this worker's Prometheus metrics at http://HOST:PORT/metrics, with /healthz and "
                        "/readyz (503 while its claim loop stalls or the engine is unreachable) (HOST: 127.0.0.1)")
    p.add_argument("--no-scheduler", action="store_true", help="do not enqueue the app's periodic tasks")
    p.add_argument("--burst", action="store_true", help="exit once no job is ready")
    add_log_level(p)
    add_common(p)
    p.set_defaults(func=worker)


def worker(args: argparse.Namespace) -> int:
    """Run a worker; its exit code (0, or 70 when its claim loop stalled)."""
    signal.signal(signal.SIGTERM, _stop_before_start)  # the worker's own handler replaces it once it runs
    app = load(args)
    configure_logging(args.log_level)
    worker = Worker(
        app,
        queues=args.queues,
        concurrency=args.concurrency,
        pool=args.pool,
        grace=args.grace,
        scheduler=not args.no_scheduler,
        burst=args.burst,
        app_spec=app_spec(args),
        max_tasks_per_child=args.max_tasks_per_child,
        max_memory_per_child=args.max_memory_per_child and args.max_memory_per_child * 2**20,
    )
    if args.metrics is not None:
        host, port = args.metrics
        try:
            metrics.serve(host, port, worker.not_ready)
        except OSError as exc:
            print(f"conveyor worker: error: cannot serve metrics on {host}:{port}: {exc.strerror or exc}",
                  file=sys.stderr)
            return 1
        logging.getLogger("conveyor.worker").info("metrics at http://%s:%d/metrics (and /healthz, /readyz)",
                                                  host, port)
    code = run_in_process(worker)
    if left_running():
        # job code that ignored its time limit or cancel must not keep the process alive: its
        # job was already settled or handed back
        logging.shutdown()
        os._exit(code)
    return code


def _stop_before_start(signum: int, frame: FrameType | None) -> None:
    """SIGTERM while the app loads or the engine connects: no job was taken, so a clean exit 0
    (as SPEC §4 asks of a stop), not death by the signal (143)."""
    raise Stopped
