"""``conveyor server`` (the HTTP API) and ``conveyor up`` (server + workers + scheduler, supervised)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import signal
import socket
import sys
import threading
from collections.abc import Awaitable, Iterator
from types import FrameType
from typing import NoReturn

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conveyor.cli import argtypes
from conveyor.cli.common import add_common, add_log_level, app_spec, configure_logging, load, open_backend
from conveyor.cli.errors import Stopped, UsageError
from conveyor.core.errors import BackendUnavailable

DEFAULT_MAX_BODY = 1024 * 1024
#: Seconds a stopping server waits for open responses before it cancels them. An event stream
#: (``/v1/jobs/{id}/events``) never ends by itself: without a bound uvicorn would wait on it
#: forever and ``up`` would SIGKILL the server after its grace.
CLOSE_STREAMS_AFTER = 3  # uvicorn takes whole seconds


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``server`` and ``up``."""
    p = subparsers.add_parser("server", help="serve the HTTP API and the dashboard (one process)")
    _serve_options(p)
    add_common(p)
    p.set_defaults(func=server)
    u = subparsers.add_parser("up", help="server + workers + scheduler, supervised: the single-machine mode")
    _serve_options(u)
    u.add_argument("--workers", type=argtypes.integer(1, 1000), default=2, metavar="N",
                   help="worker processes, 1-1000 (default 2)")
    u.add_argument("--concurrency", type=argtypes.concurrency, metavar="N",
                   help=f"jobs at once per worker, 1-{argtypes.MAX_CONCURRENCY} (default 8)")
    u.add_argument("--grace", type=argtypes.seconds(), default=30.0, metavar="S",
                   help="on shutdown, let running jobs finish for S seconds (default 30)")
    u.add_argument("--no-scheduler", action="store_true",
                   help="enqueue no periodic tasks (a scheduler runs elsewhere, or none is wanted)")
    add_common(u)
    u.set_defaults(func=up)


def _serve_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", type=argtypes.host, default="127.0.0.1",
                   help="interface to listen on (default 127.0.0.1; 0.0.0.0: every interface)")
    p.add_argument("--port", type=argtypes.integer(1, 65535, "a TCP port is"), default=8000,
                   help="TCP port (default 8000)")
    p.add_argument("--max-body", type=argtypes.integer(1), default=DEFAULT_MAX_BODY, metavar="BYTES",
                   help="largest request body accepted (default 1048576)")
    p.add_argument("--insecure", action="store_true",
                   help="allow listening beyond loopback without CONVEYOR_API_TOKENS")
    add_log_level(p)
    p.add_argument("--access-log", action="store_true", help="log every request (off by default: it costs ~10%%)")


def port_problem(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on (in use, no such address), or None."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def cannot_listen(command: str, host: str, port: int) -> bool:
    """Whether ``host:port`` cannot be listened on, said in one line (not uvicorn's startup logs)."""
    problem = port_problem(host, port)
    if problem:
        print(f"conveyor {command}: error: cannot listen on {host}:{port}: {problem}", file=sys.stderr)
    return problem is not None


def check_exposure(host: str, insecure: bool, has_tokens: bool) -> None:
    """Refuse to listen beyond loopback without tokens, unless ``--insecure``."""
    if has_tokens or insecure or _loopback(host):
        return
    raise UsageError(f"refusing to listen on {host} without CONVEYOR_API_TOKENS; set tokens or pass --insecure")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def stop_before_start(*signums: int) -> None:
    """Until the command's own handlers take over, ``signums`` exit 0: nothing runs yet, so a
    stop while the app loads is as clean as any (SPEC §4), not death by the signal (143) or a
    ``KeyboardInterrupt``."""
    for signum in signums:
        signal.signal(signum, _exit_0)


def _exit_0(signum: int, frame: FrameType | None) -> NoReturn:
    raise Stopped


def check_engine(url: str, within: float | None = None) -> None:
    """Open the engine once and ping it: ``BackendUnavailable`` (one line, exit 1) here rather
    than workers that exit 1 and are restarted forever. ``within``: seconds to wait at most (else
    the engine's own connect timeout, 5 s), then ``TimeoutError``."""

    async def probe() -> None:
        async with open_backend(url) as backend:
            await backend.ping()

    # in a thread of its own: a cancelled connect may linger in the engine client's tasks (aiormq's
    # on a silent RabbitMQ), which asyncio.run would wait for; a late probe ends by itself
    said: list[BaseException | None] = []

    def run() -> None:
        try:
            asyncio.run(probe())
        except BaseException as exc:  # re-raised below, unless too late to matter
            said.append(exc)
        else:
            said.append(None)

    probing = threading.Thread(target=run, name="conveyor-engine-probe", daemon=True)
    probing.start()
    probing.join(within)
    if not said:
        raise TimeoutError(f"the engine did not answer within {within} s")
    if said[0] is not None:
        raise said[0]


def server(args: argparse.Namespace) -> int:
    """Serve the API until SIGINT/SIGTERM; 0 after a clean stop."""
    stop_before_start(signal.SIGINT, signal.SIGTERM)  # uvicorn's own handlers replace these
    import uvicorn

    from conveyor.api import SETTINGS_WAIT, create_api
    from conveyor.api.auth import tokens_from_env

    app = load(args)
    # a down or silent engine is served (/readyz says 503 until it answers), after at most a second
    with contextlib.suppress(BackendUnavailable, TimeoutError):
        check_engine(app.url, within=SETTINGS_WAIT)  # a configuration error that only connecting reveals: exit 2
    tokens = tokens_from_env()
    check_exposure(args.host, args.insecure, bool(tokens))
    if cannot_listen("server", args.host, args.port):
        return 1
    configure_logging(args.log_level)
    fatal: list[BaseException] = []

    def stop_on(error: BaseException) -> None:  # the engine answered at last, with a configuration error
        fatal.append(error)
        srv.stop()

    api = create_api(app, tokens=tokens, max_body=args.max_body, on_fatal=stop_on)
    stopping = asyncio.Event()
    config = uvicorn.Config(EndStreamsOnStop(api, stopping), host=args.host, port=args.port,
                            log_level=args.log_level.lower(), lifespan="on", proxy_headers=False,
                            access_log=args.access_log, timeout_graceful_shutdown=CLOSE_STREAMS_AFTER)
    srv = _Server(config, stopping)
    try:
        srv.run()
    except SystemExit as exc:
        if exc.code == 0:  # a stop signal before uvicorn took the signals over
            raise
        # uvicorn could not start after all, e.g. the port was taken meanwhile (it logged why)
        print("conveyor server: error: the server did not start (see the log above)", file=sys.stderr)
        return 1
    if fatal:
        raise fatal[0]  # one line and its exit code, as a start that found it (2 for a configuration error)
    return 0 if srv.started else 1


def up(args: argparse.Namespace) -> int:
    """Run server, workers and the scheduler as supervised child processes."""
    from conveyor.supervisor import STOP_SIGNALS, Child, Supervisor  # the standard library only

    stop_before_start(*STOP_SIGNALS)  # the supervisor's own handlers replace these
    from conveyor.api.auth import tokens_from_env
    from conveyor.webhooks import secret_key

    app = load(args)  # fail here, once, on a bad --app or URL (exit 2), not in every child
    secret_key()  # likewise a malformed CONVEYOR_WEBHOOK_SECRET, which every worker would refuse
    check_exposure(args.host, args.insecure, bool(tokens_from_env()))
    if cannot_listen("up", args.host, args.port):  # a server child could never start: say so once
        return 1
    check_engine(app.url)  # likewise an engine no worker could reach (exit 1)
    spec = app_spec(args)
    assert spec is not None  # load() succeeded
    base = [sys.executable, "-m", "conveyor.cli"]
    common = ["--app", spec, "--url", app.url]
    serve = ["server", *common, "--host", args.host, "--port", str(args.port), "--max-body", str(args.max_body),
             "--log-level", args.log_level, *(["--insecure"] if args.insecure else []),
             *(["--access-log"] if args.access_log else [])]
    children = [Child("server", [*base, *serve])]
    for i in range(args.workers):
        work = ["worker", *common, "--grace", str(args.grace), "--log-level", args.log_level]
        if args.concurrency:
            work += ["--concurrency", str(args.concurrency)]
        if i > 0 or args.no_scheduler:
            work.append("--no-scheduler")  # one scheduler is enough (more would be harmless)
        children.append(Child(f"worker-{i + 1}", [*base, *work]))
    print(f"conveyor up: http://{args.host}:{args.port} with {args.workers} worker(s) on {app.url}"
          f"{', no scheduler' if args.no_scheduler else ''}", file=sys.stderr, flush=True)
    return Supervisor(children, stop_timeout=args.grace + 10).run()


class EndStreamsOnStop:
    """ASGI middleware: once ``stopping`` is set, responses still streaming end cleanly. A job's
    event stream never ends by itself; without this, uvicorn would cancel it after
    ``CLOSE_STREAMS_AFTER`` (a traceback in the log, a reset for the client). Here the app hears
    a disconnect, and the client gets the end of the response (an EventSource then reconnects)."""

    def __init__(self, app: ASGIApp, stopping: asyncio.Event) -> None:
        self.app = app
        self.stopping = stopping

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body_read = started = complete = False

        async def receive_or_stop() -> Message:
            nonlocal body_read
            if not body_read:
                message = await receive()
                body_read = message["type"] != "http.request" or not message.get("more_body", False)
                return message
            # the body is read: all receive() can still say is "disconnected", as a stop does
            return await _first_or_disconnect(receive(), self.stopping)

        async def tracked(message: Message) -> None:
            nonlocal started, complete
            started = started or message["type"] == "http.response.start"
            complete = complete or (message["type"] == "http.response.body" and not message.get("more_body"))
            await send(message)

        await self.app(scope, receive_or_stop, tracked)
        if started and not complete and self.stopping.is_set():
            await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _first_or_disconnect(received: Awaitable[Message], stopping: asyncio.Event) -> Message:
    """What ``received`` gives, unless ``stopping`` is set first: then a disconnect."""
    got, stop = asyncio.ensure_future(received), asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait((got, stop), return_when=asyncio.FIRST_COMPLETED)
    finally:
        got.cancel()
        stop.cancel()
    return got.result() if got.done() and not got.cancelled() else {"type": "http.disconnect"}


class _Server:
    """uvicorn, stopping on SIGINT/SIGTERM without re-raising the signal (so the exit code is 0),
    and setting ``stopping`` as its shutdown begins."""

    def __init__(self, config: object, stopping: asyncio.Event) -> None:
        import uvicorn

        class Quiet(uvicorn.Server):
            async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
                stopping.set()  # open streams end now, not at uvicorn's timeout
                await super().shutdown(sockets)

            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                previous = {s: signal.signal(s, self.handle_exit) for s in (signal.SIGINT, signal.SIGTERM)}
                try:
                    yield
                finally:
                    for s, handler in previous.items():
                        signal.signal(s, handler)

        assert isinstance(config, uvicorn.Config)
        self.server = Quiet(config)

    @property
    def started(self) -> bool:
        return bool(self.server.started)

    def run(self) -> None:
        self.server.run()

    def stop(self) -> None:
        """Shut down as on SIGTERM (call on the server's loop)."""
        self.server.should_exit = True
