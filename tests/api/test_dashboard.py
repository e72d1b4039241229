"""The dashboard at ``/``: served open with a strict CSP, and rendered by a real browser."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from importlib.resources import files

import httpx
import pytest

from conveyor import Conveyor
from tests.api.conftest import Server, WorkerThread, make_app

SCRIPT = (files("conveyor.api") / "static" / "dashboard.js").read_text()
XSS = '<img src=x onerror="document.title=1">'


@pytest.fixture
def secured(app: Conveyor) -> Iterator[Server]:
    s = Server(app, tokens="ops:s3cret:admin")
    yield s
    s.stop()


def test_page_and_assets__open_without_a_token_and_locked_down(secured: Server) -> None:
    page = secured.http.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp and "unsafe-inline" not in csp
    for asset, kind in (("/dashboard.js", "text/javascript"), ("/dashboard.css", "text/css")):
        assert asset in page.text
        r = secured.http.get(asset)
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
    assert secured.http.get("/v1/queues").status_code == 401  # the data still needs a token
    assert "/" not in secured.http.get("/openapi.json", headers={"Authorization": "Bearer s3cret"}).json()["paths"]


def test_script__calls_only_routes_the_api_has(http: httpx.Client) -> None:
    paths = set(http.get("/openapi.json").json()["paths"])
    called = {re.sub(r"\$\{[^}]+\}", "{x}", p.split("?")[0]) for p in re.findall(r"[`\"](/v1/[^`\"]*)[`\"]", SCRIPT)}
    assert len(called) >= 8
    for path in called:
        pattern = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(path)) + "$"
        assert any(re.match(pattern, re.sub(r"\{[^}]+\}", "{x}", known)) for known in paths), path


def browser_dom(url: str) -> str:
    """The page's DOM after its script ran, from headless Chromium (scripts/install installs it)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    assert chromium, "Chromium is needed for the dashboard's browser test: scripts/test installs it"
    done = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           "--virtual-time-budget=5000", "--dump-dom", url],
                          capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_in_a_browser__queues_workers_and_jobs_show_and_user_text_stays_text(server: Server, url: str) -> None:
    worker = WorkerThread(make_app(url), concurrency=2)
    try:
        done = server.http.post("/v1/jobs", json={"task": "add", "args": [2, 3]}).json()
        hostile = server.http.post("/v1/jobs", json={"task": "transcode", "args": [XSS], "kwargs": {"height": 1},
                                                      "delay": 600}).json()
        dom = browser_dom(f"{server.url}/#job={hostile['id']}")
    finally:
        worker.stop()
    queues = dom[dom.index('id="queues"'):dom.index('id="workers"')]
    assert "<td>media " in queues and "<td>default " in queues
    workers = dom[dom.index('id="workers"'):dom.index('id="filters"')]
    assert "no live worker" not in workers and re.search(r"<td>[012] / 2</td>", workers)
    jobs = dom[dom.index('id="jobs"'):dom.index('id="detail"')]
    assert done["id"] in jobs and hostile["id"] in jobs and "scheduled" in jobs
    detail = dom[dom.index('id="detail"'):]
    assert "transcode · scheduled" in detail
    assert "&lt;img src=x onerror=" in detail  # shown as text, in the job's JSON
    assert "<img" not in dom  # never made into an element
