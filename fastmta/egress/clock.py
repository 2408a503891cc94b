"""The egress clock: wall-clock seconds, optionally compressed.

Warm-up days and hours, the memory's age and suspension ends are measured on this clock,
never on ``time.time()`` directly, so tests and ``fastmta bench --profile warmup`` run a
day in seconds through the same code.  A compressed clock keeps its origin: ``factor``
egress seconds pass per real second since ``origin_wall``; the origin is persisted with
the learned state, so a restarted run continues the same compressed calendar.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

DAY_S = 86400.0
HOUR_S = 3600.0


@dataclass(frozen=True, slots=True)
class EgressClock:
    """``now()`` = origin + (wall - origin) * factor (factor 1: the wall clock)."""

    factor: float = 1.0
    origin_wall: float = 0.0
    wall: object = time.time  # injectable real clock (tests)

    def now(self) -> float:
        real = self.wall()  # type: ignore[operator]
        if self.factor == 1.0:
            return real
        return self.origin_wall + (real - self.origin_wall) * self.factor

    def real_delay(self, egress_s: float) -> float:
        """Real seconds until ``egress_s`` egress seconds have passed."""
        return max(0.0, egress_s) / self.factor


class ManualClock:
    """A clock that moves only when told (unit tests of the ramp and the selector)."""

    factor = 1.0

    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def now(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s

    def real_delay(self, egress_s: float) -> float:
        return max(0.0, egress_s)
