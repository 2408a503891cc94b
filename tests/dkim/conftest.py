"""Fixtures for the DKIM tests (helpers live in ``dkim_helpers``)."""

from __future__ import annotations

import signal

import pytest
from dkim_helpers import KEYS, Keys

TEST_TIMEOUT_S = 60


@pytest.fixture(autouse=True)
def _timeout_guard():
    """Fail (instead of hanging CI) a test that runs longer than TEST_TIMEOUT_S."""

    def on_alarm(signum, frame):
        raise TimeoutError(f"test exceeded {TEST_TIMEOUT_S}s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(TEST_TIMEOUT_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="session")
def keys() -> Keys:
    """Test keys generated once per session."""
    return KEYS
