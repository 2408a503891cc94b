from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "spool"))

from fastmta.spool import Spool  # noqa: E402


@pytest.fixture(autouse=True)
def _close_spools():
    yield
    Spool.close_all()
