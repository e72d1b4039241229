"""Real engine crashes: the engine's own process dies mid-run and is started again.

``test_faults.py`` cuts connections with a proxy while the engine stays up; here a PRIVATE engine
(its own port, its own data directory, never the shared services) is killed the hard way while
two ``conveyor worker`` processes run jobs: Redis with ``kill -9`` (AOF, fsync on every write),
PostgreSQL with ``pg_ctl stop -m immediate`` (fsync on, crash recovery at the next start), a
RabbitMQ node with ``kill -9`` (its job records in a private Redis that stays up).

Before the crash: 4 jobs running, 24 queued, 6 delayed. During the 2.5 s outage a submit must
fail fast with ``BackendUnavailable`` (on RabbitMQ a connected client stores the job and defers
its ticket instead; only a client that never connected is refused) and the workers must stay up.
After the restart every job accepted must end ``succeeded``. Only a job running at the crash may
run twice, and at most twice: on PostgreSQL leases and outcomes commit with
``synchronous_commit=off`` (docs/backends.md), so the crash may undo the claim of a running job,
which then runs again; that is counted and printed.

RabbitMQ 3.10 may bring a quorum queue back without a leader after a crash (rabbitmq-server
#10070): each worker's first claim then waits 5 s for the consume to time out and the store
serves alone; the last outcomes have been seen to land 15 s after the restart (``RECOVERY``).

Also here: what an engine set up to lose jobs on a restart does lose, and the warning a worker
gives of it as it starts (``setup_warnings``).
"""

from __future__ import annotations

import collections
import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import pytest
import redis

from conveyor import Conveyor
from conveyor.backends.base import WorkerInfo
from conveyor.core.errors import BackendUnavailable
from conveyor.core.handle import JobHandle
from conveyor.core.job import Status
from tests.e2e.conftest import Env, wait_for
from tests.e2e.jobs_app import recorded
from tests.e2e.test_faults import close, make_client, timed_enqueue, wait_terminal

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

ENGINE_PORTS = range(20400, 20500)  #: private engines listen here, away from the shared services
OUTAGE = 2.5  #: seconds the engine stays down
FAIL_FAST = 3.0  #: a submit during the outage must fail within this many seconds
RECOVERY = 35.0  #: every job must be terminal this many seconds after the restart (RabbitMQ: up to 15.6 s
#: seen when a quorum queue came back without a leader for a while, rabbitmq-server#10070; slack for a loaded CI)
VISIBILITY = 5  #: short leases: a claim whose reply the crash swallowed comes back soon
LONG_JOBS, SHORT_JOBS, DELAYED_JOBS = 8, 20, 6


class Engine(Protocol):
    url: str

    def start(self) -> None: ...
    def crash(self) -> None: ...
    def stop(self) -> None: ...


_handed_out: set[int] = set()


def free_engine_port() -> int:
    """A free port of ``ENGINE_PORTS`` not handed out before (an engine may want two)."""
    for port in ENGINE_PORTS:
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {ENGINE_PORTS}")


def answers(ping: Callable[[], object]) -> bool:
    try:
        return bool(ping())
    except Exception:
        return False


class PrivateRedis:
    """``redis-server`` on its own port and directory: every write on disk before its reply."""

    DURABLE = ("--appendonly", "yes", "--appendfsync", "always", "--save", "")

    def __init__(self, tmp_path: Path, persistence: tuple[str, ...] = DURABLE) -> None:
        self.dir = tmp_path / "redis"
        self.dir.mkdir()
        self.port = free_engine_port()
        self.url = f"redis://127.0.0.1:{self.port}/0?prefix=crash"
        self.proc: subprocess.Popen[bytes] | None = None
        self.persistence = persistence

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             *self.persistence, "--logfile", "redis.log"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        with redis.Redis(port=self.port, socket_timeout=1) as direct:
            wait_for(lambda: answers(direct.ping), timeout=10, what="the private redis-server to answer")

    def crash(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.crash()


def postgres_bin(name: str) -> str | None:
    """The newest installed PostgreSQL server program ``name`` (Debian keeps them off the PATH)."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: float(Path(p).parts[-3]))
    return found[-1] if found else shutil.which(name)


class PrivatePostgres:
    """A cluster of its own, fsync on. PostgreSQL refuses to run as root: then it runs as the
    ``postgres`` user, in a directory that user owns and can reach (pytest's tmp_path is private
    to root)."""

    def __init__(self, tmp_path: Path) -> None:
        initdb, self.pg_ctl = postgres_bin("initdb"), postgres_bin("pg_ctl")
        if initdb is None or self.pg_ctl is None:
            pytest.skip("PostgreSQL server programs (initdb, pg_ctl) are not installed")
        self.as_root = os.geteuid() == 0
        self.base = Path(tempfile.mkdtemp(prefix="conveyor-pg-")) if self.as_root else tmp_path / "pg"
        self.base.mkdir(exist_ok=True)
        if self.as_root:
            owner = pwd.getpwnam("postgres")
            os.chown(self.base, owner.pw_uid, owner.pw_gid)
        self.data = self.base / "data"
        self.port = free_engine_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres?schema=crash"
        self.initdb = initdb
        self.tmp_path = tmp_path

    def init(self) -> None:
        # -N: initdb's own fsyncs only slow the test; what the server writes later is fsynced
        self.run(self.initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust", "-N")

    def run(self, *argv: str) -> None:
        command = ["runuser", "-u", "postgres", "--", *argv] if self.as_root else list(argv)
        done = subprocess.run(command, capture_output=True, timeout=30, check=False)
        assert done.returncode == 0, f"{argv[0]} failed: {done.stdout.decode()}{done.stderr.decode()}"

    def start(self, fsync: str = "on") -> None:
        options = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync={fsync}"
        assert self.pg_ctl is not None
        self.run(self.pg_ctl, "-D", str(self.data), "-l", str(self.base / "server.log"), "-o", options,
                 "-w", "-t", "20", "start")

    def crash(self) -> None:
        assert self.pg_ctl is not None
        self.run(self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "-t", "10", "stop")

    def stop(self) -> None:
        pid_file = self.data / "postmaster.pid"
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGQUIT)  # what -m immediate sends
            wait_for(lambda: not pid_file.exists(), timeout=10, what="the private postgres to stop")
        if self.as_root:  # keep the server's log with the test's files
            with contextlib.suppress(OSError):
                shutil.copy(self.base / "server.log", self.tmp_path / "postgres.log")
            shutil.rmtree(self.base, ignore_errors=True)


def rabbitmq_server() -> str | None:
    """The server script itself: /usr/sbin's wrapper would switch to the rabbitmq user."""
    direct = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
    return str(direct) if direct.exists() else shutil.which("rabbitmq-server")


class PrivateRabbit:
    """A RabbitMQ node of its own (name, ports, data, config, no plugins) beside the shared one;
    it registers with the epmd already running."""

    def __init__(self, tmp_path: Path) -> None:
        server = rabbitmq_server()
        if server is None:
            pytest.skip("rabbitmq-server is not installed")
        self.server = server
        self.base = tmp_path / "rabbit"
        self.base.mkdir()
        self.port, dist = free_engine_port(), free_engine_port()
        (self.base / "rabbitmq.conf").write_text(f"listeners.tcp.default = 127.0.0.1:{self.port}\n")
        (self.base / "enabled_plugins").write_text("[].\n")
        self.environ = dict(
            os.environ, HOME=str(self.base), RABBITMQ_NODENAME=f"conveyor_crash_{uuid.uuid4().hex[:8]}@localhost",
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1", RABBITMQ_NODE_PORT=str(self.port), RABBITMQ_DIST_PORT=str(dist),
            RABBITMQ_BASE=str(self.base), RABBITMQ_MNESIA_BASE=str(self.base / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.base / "log"), RABBITMQ_CONFIG_FILE=str(self.base / "rabbitmq.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.base / "enabled_plugins"),
            RABBITMQ_PID_FILE=str(self.base / "node.pid"),
        )
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/?prefix=crash"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        out = open(self.base / "server.log", "ab")  # noqa: SIM115
        # a session of its own: the crash kills the node's whole process group, nothing else
        self.proc = subprocess.Popen([self.server], env=self.environ, stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        out.close()  # the child has its own copy
        wait_for(lambda: listening(self.port), timeout=20, what="the private RabbitMQ node to boot (20 s)")

    def crash(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5)

    def stop(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.crash()


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    engine = PrivateRedis(tmp_path)
    try:
        yield engine
    finally:
        engine.stop()


@pytest.fixture
def private_postgres(tmp_path: Path) -> Iterator[PrivatePostgres]:
    engine = PrivatePostgres(tmp_path)
    try:
        engine.init()
        yield engine
    finally:
        engine.stop()


@pytest.fixture
def private_rabbit(tmp_path: Path) -> Iterator[PrivateRabbit]:
    engine = PrivateRabbit(tmp_path)
    try:
        yield engine
    finally:
        engine.stop()


def workers_seen(client: Conveyor) -> list[WorkerInfo]:
    async def go() -> list[WorkerInfo]:
        return await (await client.backend()).workers(time.time())

    return client.portal.call(go(), timeout=10)


def submit_work(env: Env) -> list[JobHandle]:
    """Long jobs first (they fill the 4 slots), short ones queued behind them, delayed ones."""
    return env.client.enqueue_many(
        [("work", (800,), {}, {}) for _ in range(LONG_JOBS)]
        + [("work", (50,), {}, {}) for _ in range(SHORT_JOBS)]
        + [("work", (50,), {}, {"delay": 3}) for _ in range(DELAYED_JOBS)]
    )


def started_not_ended(log: Path) -> set[str]:
    events = recorded(log)
    return {str(e["job"]) for e in events if e["event"] == "start"} - {
        str(e["job"]) for e in events if e["event"] == "end"}


def ping(client: Conveyor) -> bool:
    async def go() -> None:
        await (await client.backend()).ping()

    return answers(lambda: client.portal.call(go(), timeout=10) or True)


def submits_in_outage(env: Env, engine: Engine, jobs: list[JobHandle], stored_in_outage: bool) -> list[float]:
    """Submit while the engine is down; how long each refused submit took to fail. A client
    connected before the crash, then one that never connected (it cannot open the engine)."""
    started = time.monotonic()
    if stored_in_outage:
        jobs.append(env.client.enqueue("work", (50,)))
        took = time.monotonic() - started
        assert took < FAIL_FAST, f"a submit during the outage took {took:.2f} s"
        attempts = []
    else:
        attempts = [timed_enqueue(env.client)]
    fresh = make_client(engine.url)
    try:
        attempts.append(timed_enqueue(fresh))
    finally:
        close(fresh)
    for exc, took in attempts:
        assert isinstance(exc, BackendUnavailable), f"expected BackendUnavailable, got {exc!r}"
        assert took < FAIL_FAST, f"a submit during the outage took {took:.2f} s to fail: {exc}"
    return [took for _, took in attempts]


def first_start(log: Path, job_id: str) -> float:
    return min(float(str(e["t"])) for e in recorded(log) if e["job"] == job_id and e["event"] == "start")


def crash_and_restart(engine: Engine, tmp_path: Path, name: str, *, stored_in_outage: bool = False) -> None:
    """The scenario of this file. ``stored_in_outage``: a connected client's submit during the
    outage stores the job (RabbitMQ: the store is up, the ticket is deferred) rather than failing."""
    engine.start()
    env = Env(tmp_path, engine.url)
    try:
        workers = [env.worker("--concurrency", "2", env=env.env(TEST_VISIBILITY=str(VISIBILITY))) for _ in range(2)]
        wait_for(lambda: len(workers_seen(env.client)) == 2, timeout=20, what="both workers registered")
        jobs = submit_work(env)
        wait_for(lambda: len(started_not_ended(env.log)) >= 4, timeout=10, what="4 jobs running")
        running_at_crash = started_not_ended(env.log)

        engine.crash()
        crashed_at = time.monotonic()
        failed_in = submits_in_outage(env, engine, jobs, stored_in_outage)
        time.sleep(max(0.0, OUTAGE - (time.monotonic() - crashed_at)))
        assert [w.poll() for w in workers] == [None, None], f"a worker exited during the outage:\n{env.logs()}"

        engine.start()
        restarted_at = time.monotonic()
        wait_for(lambda: ping(env.client), timeout=15, what="the engine to answer the client after the restart")
        answered = time.monotonic() - restarted_at
        submitted_at = time.time()
        jobs.append(env.client.enqueue("work", (50,)))
        stored = wait_terminal(env.client, jobs, RECOVERY)
        recovered = time.monotonic() - restarted_at
        assert sorted(j.id for j in stored) == sorted(h.id for h in jobs), "an accepted job is gone"
        assert all(j.status is Status.SUCCEEDED for j in stored), collections.Counter(j.status for j in stored)
        assert [w.poll() for w in workers] == [None, None], f"a worker exited:\n{env.logs()}"

        starts = collections.Counter(str(e["job"]) for e in recorded(env.log) if e["event"] == "start")
        twice = {job_id for job_id, n in starts.items() if n > 1}
        assert max(starts.values()) <= 2 and twice <= running_at_crash, (starts, running_at_crash)
        assert "Traceback" not in env.logs(), env.logs()
        print(f"\n[{name}] {len(jobs)} jobs, {len(running_at_crash)} running at the crash; submits failed in "
              f"{', '.join(f'{t:.2f}' for t in failed_in)} s; the client's ping answered {answered:.2f} s after "
              f"the restart; a job submitted then started {first_start(env.log, jobs[-1].id) - submitted_at:.2f} s "
              f"later; all succeeded {recovered:.2f} s after the restart ({time.monotonic() - crashed_at:.2f} s after "
              f"the crash); ran twice: {len(twice)}, all running at the crash")
    finally:
        env.stop()
        with contextlib.suppress(Exception):
            env.client.close()


def test_redis_killed_mid_run__every_accepted_job_succeeds_after_its_restart(
    private_redis: PrivateRedis, tmp_path: Path
) -> None:
    crash_and_restart(private_redis, tmp_path, "redis kill -9")


def test_postgres_crashed_mid_run__every_accepted_job_succeeds_after_its_restart(
    private_postgres: PrivatePostgres, tmp_path: Path
) -> None:
    crash_and_restart(private_postgres, tmp_path, "postgresql stop -m immediate")


def test_rabbitmq_killed_mid_run__every_accepted_job_succeeds_after_its_restart(
    private_rabbit: PrivateRabbit, private_redis: PrivateRedis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    private_redis.start()  # the job store: it stays up
    monkeypatch.setenv("CONVEYOR_STORE_URL", private_redis.url)  # read by create_backend, here and in workers
    crash_and_restart(private_rabbit, tmp_path, "rabbitmq kill -9", stored_in_outage=True)



@pytest.mark.parametrize(("persistence", "said"), [
    (("--appendonly", "no", "--save", ""), "keeps nothing on disk (appendonly no, no save points): a Redis restart "
                                           "loses every job; turn on AOF (appendonly yes)"),
    (("--appendonly", "no", "--save", "3600 1"),
     "writes only snapshots (appendonly no, save 3600 1): a Redis restart loses the jobs written since the last one; "
     "turn on AOF (appendonly yes)"),
    (PrivateRedis.DURABLE, None),
    (("--appendonly", "no", "--save", "", "--rename-command", "CONFIG", ""), None),  # a managed Redis: cannot tell
], ids=["nothing on disk", "snapshots only", "aof", "no CONFIG command"])
async def test_setup_warnings__redis_says_what_a_restart_would_lose(
    tmp_path: Path, persistence: tuple[str, ...], said: str | None
) -> None:
    engine = PrivateRedis(tmp_path, persistence)
    try:
        engine.start()
        backend = Conveyor(engine.url)
        try:
            warnings = await (await backend.backend()).setup_warnings()
        finally:
            await backend.aclose()
        assert warnings == ([f"redis at 127.0.0.1:{engine.port} {said}"] if said else [])
    finally:
        engine.stop()


def test_redis_without_persistence__the_worker_warns_at_start__and_a_restart_loses_every_job(tmp_path: Path) -> None:
    """What docs/backends.md says of a Redis without AOF, seen: the worker says so as it starts,
    and after a restart the jobs it held are unknown."""
    engine = PrivateRedis(tmp_path, ("--appendonly", "no", "--save", ""))
    env = Env(tmp_path, engine.url)
    try:
        engine.start()
        worker = env.worker("--burst", "--no-scheduler")
        assert worker.wait(30) == 0, env.logs()
        assert f"redis at 127.0.0.1:{engine.port} keeps nothing on disk" in env.logs()
        jobs = [env.enqueue("work", 50) for _ in range(10)]
        engine.crash()
        engine.start()
        assert [env.client.get_job(job.id) for job in jobs] == [None] * len(jobs)
    finally:
        env.stop()
        engine.stop()
        with contextlib.suppress(Exception):
            env.client.close()


async def test_setup_warnings__postgres_with_fsync_off_says_so(private_postgres: PrivatePostgres) -> None:
    said = []
    for fsync in ("off", "on"):
        private_postgres.start(fsync=fsync)
        app = Conveyor(private_postgres.url)
        try:
            said.append(await (await app.backend()).setup_warnings())
        finally:
            await app.aclose()
            private_postgres.crash()  # stop(): the fixture's, which also removes the cluster
    assert said == [[f"PostgreSQL at 127.0.0.1:{private_postgres.port}/postgres runs with fsync off: a crash of its "
                     "host may lose or corrupt every job; turn fsync on"], []]
