"""Warm-up of a source at a provider: caps from its plan stage, and the ramp.  Pure.

State per (source, provider) (``WarmupState``, persisted by the engine): the stage, the
counters of the current egress day and hour, the send-days so far.  Times are egress
clock seconds (``clock.EgressClock``); days and hours are aligned on that clock.

The ramp, decided when a day ends (``ramp_decision``), counting only send-days (a day
without traffic changes nothing -- MailerQ's and SendGrid's rule):

- ``step_back`` one stage after a day with a block (Adobe's playbook: restart at the
  previous tier; neither KumoMTA nor PowerMTA regresses by itself);
- ``hold`` when the throttle rate of the day passed ``hold_throttle_pct`` of attempts,
  or when the day did not fill ``advance_fill_pct`` of its cap (SparkPost: > 90%);
- ``advance`` one stage otherwise (a day at the cap with clean feedback).
"""

from __future__ import annotations

import msgspec

from fastmta.egress.clock import DAY_S, HOUR_S
from fastmta.egress.plans import Plan

ADVANCE, HOLD, STEP_BACK, IDLE = "advance", "hold", "step_back", "idle"


class WarmupState(msgspec.Struct, kw_only=True):
    """Counters and stage of one (source, provider)."""

    source: str
    provider: str
    stage: int = 1
    day: int = -1  # egress day index of the day counters
    hour: int = -1  # egress hour index of the hour counter
    used_day: int = 0  # messages given to this source today (reserved at selection)
    used_hour: int = 0
    attempts_day: int = 0
    throttles_day: int = 0
    blocks_day: int = 0
    deferred_day: int = 0  # deferrals today: waits for this source's cap, given back
    send_days: int = 0
    first_send: float = 0.0  # egress time of the first message (the IP's age)
    last_used: float = 0.0  # egress time of the last message given to this source
    last_action: str = ""
    history: list[list] = msgspec.field(default_factory=list)  # [day, stage, used, cap, action]


def ramp_decision(used: int, cap: int, attempts: int, throttles: int, blocks: int, *,
                  hold_throttle_pct: float = 2.0, advance_fill_pct: float = 90.0) -> str:
    """What the ramp does at the end of a day with these counters (module docstring)."""
    if blocks > 0:
        return STEP_BACK
    if used <= 0 and attempts <= 0:
        return IDLE
    if attempts and 100.0 * throttles / attempts > hold_throttle_pct:
        return HOLD
    if used >= cap * advance_fill_pct / 100.0:
        return ADVANCE
    return HOLD


class Ramp:
    """The warm-up policy of one plan with its thresholds (no clock of its own)."""

    def __init__(self, plan: Plan | None, *, hold_throttle_pct: float = 2.0,
                 advance_fill_pct: float = 90.0) -> None:
        self.plan = plan
        self.hold_throttle_pct = hold_throttle_pct
        self.advance_fill_pct = advance_fill_pct

    def caps(self, st: WarmupState) -> tuple[int, int] | None:
        """(daily, hourly) caps now; None = no cap (warm source or plan finished)."""
        if self.plan is None:
            return None
        return self.plan.caps(st.provider, st.stage)

    def decision(self, st: WarmupState) -> str:
        caps = self.caps(st)
        if caps is None:
            return IDLE
        return ramp_decision(st.used_day, caps[0], st.attempts_day, st.throttles_day,
                             st.blocks_day, hold_throttle_pct=self.hold_throttle_pct,
                             advance_fill_pct=self.advance_fill_pct)

    def roll(self, st: WarmupState, now: float) -> str | None:
        """Move the counters to ``now``'s day and hour; at a day change apply the ramp.
        Returns the ramp action taken (None when the day did not change)."""
        day, hour = int(now // DAY_S), int(now // HOUR_S)
        action = None
        if st.day != day:
            if st.day >= 0:
                action = self.decision(st)
                caps = self.caps(st)
                if action != IDLE:
                    st.send_days += 1
                    st.history.append([st.day, st.stage, st.used_day,
                                       caps[0] if caps else 0, action])
                    del st.history[:-14]
                    st.last_action = action
                if action == ADVANCE and self.plan is not None:
                    st.stage = min(st.stage + 1, self.plan.stages + 1)
                elif action == STEP_BACK:
                    st.stage = max(1, st.stage - 1)
            st.day = day
            st.used_day = st.attempts_day = st.throttles_day = st.blocks_day = 0
            st.deferred_day = 0
        if st.hour != hour:
            st.hour = hour
            st.used_hour = 0
        return action

    def room(self, st: WarmupState, now: float) -> int | None:
        """Messages the source may still take now (None = unlimited)."""
        self.roll(st, now)
        caps = self.caps(st)
        if caps is None:
            return None
        return max(0, min(caps[0] - st.used_day, caps[1] - st.used_hour))

    def frees_in(self, st: WarmupState, now: float) -> float:
        """Egress seconds until the source has room again (next hour or next day)."""
        caps = self.caps(st)
        if caps is None:
            return 0.0
        if st.used_day >= caps[0]:
            return (st.day + 1) * DAY_S - now
        return (st.hour + 1) * HOUR_S - now

    @staticmethod
    def take(st: WarmupState, now: float, n: int = 1) -> None:
        if not st.first_send:
            st.first_send = now
        st.last_used = now
        st.used_day += n
        st.used_hour += n

    @staticmethod
    def give_back(st: WarmupState, n: int = 1) -> None:
        """A reserved message did not go (deferred by our own shaping)."""
        st.used_day = max(0, st.used_day - n)
        st.used_hour = max(0, st.used_hour - n)

    @staticmethod
    def deferred(st: WarmupState, n: int = 1) -> None:
        """A message for this provider waited: for this source's cap, or it was given
        back after selection (our own shaping deferred it)."""
        st.deferred_day += n

    @staticmethod
    def feedback(st: WarmupState, attempts: int = 0, throttles: int = 0,
                 blocks: int = 0) -> None:
        st.attempts_day += attempts
        st.throttles_day += throttles
        st.blocks_day += blocks

    def status(self, st: WarmupState, now: float) -> dict:
        self.roll(st, now)
        caps = self.caps(st)
        return {
            "source": st.source, "provider": st.provider,
            "stage": st.stage if caps is not None else None,
            "day": int((now - st.first_send) // DAY_S) + 1 if st.first_send else 0,
            "send_days": st.send_days,
            "daily_cap": caps[0] if caps else None, "hourly_cap": caps[1] if caps else None,
            "used_today": st.used_day, "used_this_hour": st.used_hour,
            "attempts_today": st.attempts_day, "throttles_today": st.throttles_day,
            "blocks_today": st.blocks_day, "deferred_today": st.deferred_day,
            "room_today": max(0, caps[0] - st.used_day) if caps else None,
            "room_this_hour": max(0, min(caps[0] - st.used_day, caps[1] - st.used_hour))
            if caps else None,
            "last_used": round(st.last_used, 3) if st.last_used else None,
            "throttle_pct_today": round(100.0 * st.throttles_day / st.attempts_day, 2)
            if st.attempts_day else 0.0,
            "next": self.decision(st) if caps else "warm",
            "last_action": st.last_action,
        }
