"""``conveyor worker --metrics``: /healthz and /readyz next to /metrics, with a real worker whose
engine is cut, or goes silent, and comes back (SPEC §4: a stalled or disconnected worker is
noticed by /readyz)."""

from __future__ import annotations

import signal
import socket

import httpx
import pytest

from conveyor.worker.worker import UNREADY_AFTER
from tests.e2e import test_faults
from tests.e2e.conftest import wait_for
from tests.e2e.test_faults import ProxiedEnv

pytestmark = pytest.mark.slow

faulty = test_faults.faulty  #: the fixture: workers reach the engine (Redis, PostgreSQL) through a TcpProxy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def status(http: httpx.Client, path: str) -> int | None:
    try:
        return http.get(path).status_code
    except httpx.TransportError:
        return None  # not listening yet


def test_readyz__503_while_the_engine_is_cut__200_again_once_it_is_back(faulty: ProxiedEnv):
    env = faulty
    port = free_port()
    worker = env.worker("--metrics", f"127.0.0.1:{port}")
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
        wait_for(lambda: status(http, "/readyz") == 200, timeout=20, what="/readyz 200 once the worker runs")
        health = http.get("/healthz")
        assert (health.status_code, health.json()) == (200, {"status": "ok"})
        assert http.get("/readyz").json() == {"status": "ready"}
        scrape = http.get("/metrics")
        assert scrape.status_code == 200 and "process_resident_memory_bytes" in scrape.text

        env.proxy.cut()
        wait_for(lambda: status(http, "/readyz") == 503, timeout=10, what="/readyz 503 while Redis is cut")
        down = http.get("/readyz")
        assert down.headers["content-type"] == "application/problem+json" and down.headers["retry-after"]
        assert down.json()["status"] == 503 and "fail" in down.json()["detail"]
        assert status(http, "/healthz") == 200  # alive: no reason to restart it
        assert status(http, "/metrics") == 200

        env.proxy.restore()
        wait_for(lambda: status(http, "/readyz") == 200, timeout=20, what="/readyz 200 once Redis is back")
        assert env.enqueue("add", 2, 3).wait(timeout=20) == 5  # and it works again

    worker.send_signal(signal.SIGTERM)
    assert worker.wait(15) == 0


@pytest.mark.parametrize("faulty", ["redis"], indirect=True)
def test_readyz__503_while_the_engine_is_silent__the_claim_loop_is_stalled(faulty: ProxiedEnv):
    """No reset, no answer (a hung server, a path that drops packets): the claim loop waits on its
    call, so /readyz fails within ``UNREADY_AFTER`` seconds, long before the watchdog's exit."""
    env = faulty
    port = free_port()
    env.worker("--metrics", f"127.0.0.1:{port}")
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
        wait_for(lambda: status(http, "/readyz") == 200, timeout=20, what="/readyz 200 once the worker runs")
        env.proxy.freeze()
        try:
            wait_for(lambda: status(http, "/readyz") == 503, timeout=UNREADY_AFTER + 5, what="/readyz 503")
            assert "the claim loop has not run for" in http.get("/readyz").json()["detail"]
            assert status(http, "/healthz") == 200
        finally:
            env.proxy.thaw()
        wait_for(lambda: status(http, "/readyz") == 200, timeout=30, what="/readyz 200 once Redis answers")
