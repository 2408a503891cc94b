"""Fixtures for the operations tests (helpers in ops_helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from ops_helpers import SimThread, ops_world

from fastmta.sim.world import World
from fastmta.spool import Spool


@pytest.fixture(scope="module")
def world() -> World:
    return ops_world()


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
