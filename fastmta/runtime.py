"""The event loop every fastmta process runs on: uvloop when installed, else asyncio's."""

from __future__ import annotations

import asyncio
import os

__all__ = ["new_event_loop", "run", "uvloop_available"]


def uvloop_available() -> bool:
    if os.environ.get("FASTMTA_NO_UVLOOP") == "1":
        return False
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop when installed (and FASTMTA_NO_UVLOOP is not 1), else asyncio's."""
    if uvloop_available():
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run(coro):
    """``asyncio.run`` on ``new_event_loop()``."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(coro)
