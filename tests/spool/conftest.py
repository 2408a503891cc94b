from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from helpers import open_spool  # noqa: E402

from fastmta.spool import Spool  # noqa: E402


@pytest.fixture
def spool(tmp_path):
    sp = open_spool(str(tmp_path / "spool"))
    yield sp
    Spool.close_all()


@pytest.fixture(autouse=True)
def _close_spools():
    yield
    Spool.close_all()
