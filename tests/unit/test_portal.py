"""Many threads, many loops: a thread per request, or an ``asyncio.run`` per call, must not cost a
connection each."""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from conveyor import Context, Conveyor
from conveyor.core.portal import Portal


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


def make_app(tmp_path: Path) -> Conveyor:
    app = Conveyor(f"sqlite:///{tmp_path / 'jobs.db'}")

    @app.task
    def noop(ctx: Context) -> None:
        pass

    return app


def test_a_thread_per_request__reuses_the_connections_of_ended_threads(tmp_path: Path) -> None:
    """Each new thread got a new event loop and opened a new connection on it, and kept both after
    it ended: 200 requests, 1,000 more open files here (on PostgreSQL, 'too many clients')."""
    app = make_app(tmp_path)
    app.get_job(app.enqueue("noop").id)  # this thread's own loop and connection
    ids: list[str] = []

    def request() -> None:
        handle = app.enqueue("noop")
        job = app.get_job(handle.id)
        assert job is not None
        ids.append(job.id)

    before = open_files()
    for _ in range(200):
        thread = threading.Thread(target=request)
        thread.start()
        thread.join()
    assert len(set(ids)) == 200
    assert open_files() <= before + 6  # one more loop and connection at most, not one per request
    app.close()


def test_threads_at_once__each_runs_on_its_own_loop(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    start = threading.Barrier(8)
    loops: set[int] = set()
    errors: list[BaseException] = []

    def request() -> None:
        start.wait()
        try:
            for _ in range(20):
                app.get_job(app.enqueue("noop").id)
            loops.add(id(app.portal._own_loop()))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=request) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors and len(loops) == 8
    app.close()


def test_an_asyncio_run_per_call__keeps_no_connection_of_the_ended_loops(tmp_path: Path) -> None:
    """Each ``asyncio.run`` opened a backend on its loop, and the app kept them all (a backend
    refers to its loop, so the weak keys never let go): 150 calls, 300 more open files here;
    on PostgreSQL, 'too many clients' after about 90."""
    app = make_app(tmp_path)
    asyncio.run(app.enqueue_async("noop"))
    gc.collect()
    before = open_files()
    for _ in range(150):
        asyncio.run(app.enqueue_async("noop"))
    gc.collect()
    # SQLite keeps the file descriptor of a closed connection until the file's last connection
    # closes, reusing it for the next one: a few dozen at most, not two per call
    assert open_files() - before < 60


SCRIPT_ENQUEUES_AT_EXIT = """
import atexit, os, sys, threading, time
from conveyor import Context, Conveyor
from conveyor.core.portal import Portal

app = Conveyor(sys.argv[1])

@app.task
def noop(ctx: Context) -> None:
    pass

job_id = noop.enqueue().id
app.get_job(job_id)  # the main thread's own loop and connection

def enqueue_many(who):
    def run():
        errors = set()
        for _ in range(300):
            try:
                app.get_job(job_id)
            except BaseException as exc:
                errors.add(f"{type(exc).__name__}: {exc}")
        os.write(1, f"{who} {sorted(errors)}\\n".encode())  # one write: the two threads' lines never interleave
    return run

def after_main():  # a daemon thread still enqueuing while the program exits
    while threading.main_thread().is_alive():
        time.sleep(0.0005)
    enqueue_many("daemon")()

threading.Thread(target=after_main, daemon=True).start()
atexit.register(enqueue_many("main at exit"))
"""


def test_threads_calling_at_exit__each_on_its_own_loop(tmp_path: Path) -> None:
    """At exit the main thread counts as ended before its atexit calls run: a daemon thread was
    handed the main thread's loop while the main thread used it ('This event loop is already
    running' for every call that overlapped)."""
    script = tmp_path / "at_exit.py"
    script.write_text(SCRIPT_ENQUEUES_AT_EXIT)
    done = subprocess.run([sys.executable, str(script), f"sqlite:///{tmp_path}/exit.db"],
                          capture_output=True, text=True, timeout=60)
    assert "already running" not in done.stdout + done.stderr, done.stdout + done.stderr
    assert "main at exit []" in done.stdout


def test_stop__closes_the_background_loop() -> None:
    """It was stopped and left open: every app on RabbitMQ warned "unclosed event loop" once collected."""
    portal = Portal(always_in_background=True)

    async def running_loop() -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    loop = portal.call(running_loop())
    portal.stop()

    deadline = time.monotonic() + 5
    while not loop.is_closed() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert loop.is_closed()
    assert portal.call(running_loop()) is not loop  # a call after stop gets a new loop
    portal.stop()
