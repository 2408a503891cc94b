"""Shared fixtures of the suites that drive the synchronous pool API against one
simulated internet per module (``tests/ops``, ``tests/httpapi``, ``tests/compliance``):
``SimThread`` (a ``SimInternet`` on its own loop in a daemon thread) and
``sim_fixtures(make_world)``, which a ``conftest.py`` unpacks into its ``world``, ``sim``
and ``spool_dir`` fixtures."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator

import pytest

from fastmta.sim import SimInternet
from fastmta.sim.world import World
from fastmta.spool import Spool


class SimThread:
    """A ``SimInternet`` on its own loop in a daemon thread (blocking callers, e.g. the
    pool API or blocking DNS, can use it)."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.sim = SimInternet(world)
        self.call(self.sim.start(), 60)

    def call(self, coro, timeout: float = 30.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def accepted(self) -> dict[str, int]:
        return self.call(self.sim.accepted())

    def stats(self) -> dict:
        return self.call(self.sim.stats())

    def reset(self) -> None:
        self.call(self.sim.reset())

    def close(self) -> None:
        self.call(self.sim.stop(), 60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def sim_fixtures(make_world: Callable[[], World]):
    """``world`` and ``sim`` (one per module) and ``spool_dir`` (one per test, every
    spool closed afterwards) for a conftest: ``world, sim, spool_dir = sim_fixtures(f)``."""

    @pytest.fixture(scope="module")
    def world() -> World:
        return make_world()

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

    return world, sim, spool_dir
