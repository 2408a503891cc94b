"""Fixtures for the HTTP API and dashboard tests: a simulated internet (one per module)
and a spool (tests/sim_fixtures.py, shared with tests/ops), and an ``HttpServer`` on a
free loopback port in a thread of the test process."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator

import httpx
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "ops"))

from http_helpers import TOKEN, http_world  # noqa: E402
from ops_helpers import make_config  # noqa: E402

from fastmta.http.server import HttpServer  # noqa: E402
from sim_fixtures import sim_fixtures  # noqa: E402

world, sim, spool_dir = sim_fixtures(http_world)
CHROMIUM = os.environ.get("FASTMTA_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture
def cfg(sim):
    return make_config(sim)


@pytest.fixture
def server(cfg, spool_dir) -> Iterator[HttpServer]:
    srv = HttpServer(cfg, spool_dir, "127.0.0.1:0", token=TOKEN,
                     max_upload_bytes=2 * 1024 * 1024)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def client(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


@pytest.fixture
def admin(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30,
                      headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        yield c


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium, headless, driven by Playwright (no browser download)."""
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not shutil.which(CHROMIUM):
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    pw = playwright_api.sync_playwright().start()
    b = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
    try:
        yield b
    finally:
        b.close()
        pw.stop()


@pytest.fixture
def page(browser):
    """A fresh page; ``page.errors`` collects the page's JavaScript errors.  bypass_csp:
    the escaping itself is under test, not the CSP behind it (and Playwright's
    wait_for_function needs eval)."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 1000}, bypass_csp=True)
    p = ctx.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda e: errors.append(str(e)))
    p.errors = errors
    try:
        yield p
    finally:
        ctx.close()
