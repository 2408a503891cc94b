"""Fixtures for the HTTP API and dashboard tests: a simulated internet (one per module),
a spool, and an ``HttpServer`` on a free loopback port in a thread of the test process."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import httpx
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "ops"))

from http_helpers import TOKEN, http_world  # noqa: E402
from ops_helpers import SimThread  # noqa: E402

from fastmta.http.server import HttpServer  # noqa: E402
from fastmta.sim.world import World  # noqa: E402
from fastmta.spool import Spool  # noqa: E402


@pytest.fixture(scope="module")
def world() -> World:
    return http_world()


@pytest.fixture(scope="module")
def sim(world) -> Iterator[SimThread]:
    s = SimThread(world)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def spool_dir(tmp_path) -> Iterator[str]:
    path = str(tmp_path / "spool")
    try:
        yield path
    finally:
        Spool.close_all()


@pytest.fixture
def cfg(sim):
    from ops_helpers import make_config

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
