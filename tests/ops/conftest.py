"""Fixtures for the operations tests (helpers in ops_helpers.py, the shared fixtures in
tests/sim_fixtures.py)."""

from __future__ import annotations

from ops_helpers import ops_world

from sim_fixtures import sim_fixtures

world, sim, spool_dir = sim_fixtures(ops_world)
