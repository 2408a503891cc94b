"""Fixtures of the compliance tests: one simulated internet with the sender zones."""

from __future__ import annotations

import pytest
from compliance_helpers import SimThread, compliance_world, write_key


@pytest.fixture(scope="module")
def key(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("dkim") / "s1.pem")
    return path, write_key(path)


@pytest.fixture(scope="module")
def sim(key):
    s = SimThread(compliance_world(key[1]))
    try:
        yield s
    finally:
        s.close()
