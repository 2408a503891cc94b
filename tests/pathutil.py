"""Where the fastmta under test lives, for tests that start subprocesses."""

from __future__ import annotations

import os


def package_parent() -> str:
    """The directory that holds the ``fastmta`` package this test run imported (the
    source tree's ``src`` or site-packages): subprocesses get it as PYTHONPATH so they run
    the same build, compiled core included."""
    import fastmta

    return os.path.dirname(os.path.dirname(os.path.abspath(fastmta.__file__)))
