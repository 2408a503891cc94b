"""Traffic shaping: adaptive per-site limits and provider rules.  Pure.

No I/O and no clock of its own: every method takes ``now`` (seconds, monotonic), so the
policy is tested by feeding it outcomes.  docs/shaping.md explains the algorithm, its
parameters and how it differs from Postfix's and Momentum's.

- ``SiteShaper``: one per site.  Connection limit with AIMD-with-memory (start small,
  +1 per window of successes while the limit is in use, cut x``decrease_factor`` at once
  on a throttle, recover fast up to just below the remembered level, probe above it
  slowly); the same for the message rate when the destination throttles on rate;
  suspension for a growing duration on blocks; provider rules (reply regex -> action for
  a duration, after N matches per period); everything within operator bounds.

Its rate limiters (``Gcra``, ``ProviderBudget``) are in ``rates.py``; the provider table
(shipped defaults, ``site_params``, ``site_rules``) is in ``providers.py``.
"""

from __future__ import annotations

import functools
import math
import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from fastmta.config import ShapingConfig, ShapingRule
from fastmta.engine.rates import Gcra, ProviderBudget, burst_for
from fastmta.errors import ConfigError

ACTIONS = ("suspend", "set_connections", "set_rate", "bounce")
INF = math.inf
_BUCKET_S = 0.1  # resolution of the accepted-recipients history
_MAX_RATE_PROBE_STEP = 0.5


# ---------------------------------------------------------------------- rules (automation)


@dataclass(frozen=True, slots=True)
class Effect:
    """A provider rule that fired: ``action`` with ``value`` until ``until``."""

    rule: str
    action: str
    value: float
    until: float


@functools.lru_cache(maxsize=1024)
def _compile(pattern: str) -> re.Pattern:
    try:
        return re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise ConfigError(f"invalid shaping rule pattern {pattern!r}: {exc}") from exc


def validate_rule(rule: ShapingRule) -> None:
    """Raise ConfigError for an unknown action, a bad regex or nonsensical numbers."""
    if rule.action not in ACTIONS:
        raise ConfigError(f"shaping rule {rule.name or rule.pattern!r}: unknown action "
                          f"{rule.action!r} (one of {', '.join(ACTIONS)})")
    _compile(rule.pattern)
    if rule.threshold < 1 or rule.duration_s <= 0 or rule.period_s <= 0:
        raise ConfigError(f"shaping rule {rule.name or rule.pattern!r}: threshold >= 1, "
                          "duration_s > 0 and period_s > 0 are required")
    if rule.action in ("set_connections", "set_rate") and rule.value < 0:
        raise ConfigError(f"shaping rule {rule.name or rule.pattern!r}: value must be >= 0")


# ----------------------------------------------------------------------------- sites


class SiteShaper:
    """Adaptive limits of one site (see module docstring and docs/shaping.md)."""

    def __init__(self, params: ShapingConfig, rules: Sequence[ShapingRule] = (),
                 provider: ProviderBudget | None = None, now: float = 0.0) -> None:
        self.p = params
        self.provider = provider
        lo, hi = max(1, params.min_connections), max(1, params.max_connections)
        self.min_limit, self.max_limit = min(lo, hi), hi
        self.limit = min(max(params.initial_connections, self.min_limit), self.max_limit)
        self.ceiling: int | None = None  # lowest connection level known to throttle
        self.ceiling_at = now
        self.successes = 0
        self.last_cut = -INF
        self.last_probe = -INF
        self.pause_until = -INF
        self.suspended_until = -INF
        self.suspend_reason = ""
        self.suspend_s = params.suspend_initial_s
        self.connect_failures = 0
        # message rate: fixed operator cap, adaptive rate and its remembered ceiling
        self.rate_cap = params.msg_rate_per_s if params.msg_rate_per_s > 0 else None
        self.rate: float | None = None
        self.last_rate_step = now
        self.rate_probe_step = params.rate_probe_fraction
        # after a rate throttle: pause sending for a doubling time, then one probe
        self.rate_pause_until = -INF
        self.rate_pause_s = params.throttle_pause_s
        self.probe_pending = False
        self.probe_out_at: float | None = None
        self._gcra: Gcra | None = None
        self._gcra_rate: float | None = None
        self._conn_gcra = (Gcra(params.conn_rate_per_s, burst_for(params.conn_rate_per_s,
                                                                  params.conn_burst))
                           if params.conn_rate_per_s > 0 else None)
        self._window: deque[list[float]] = deque()  # [bucket start, successes]
        self._window_total = 0  # sum of the successes in _window
        self._first_success = None
        self._rules = [(r, _compile(r.pattern), deque()) for r in rules]
        self.effects: list[Effect] = []
        self.throttles = 0
        self.blocks = 0
        self.sent = 0

    # ---- effective limits

    def _expire(self, now: float) -> None:
        if self.effects and any(e.until <= now for e in self.effects):
            self.effects = [e for e in self.effects if e.until > now]
        if self.ceiling is not None and now - self.ceiling_at > self.p.ceiling_ttl_s:
            self.ceiling = None
        if self.rate is not None and now - self.ceiling_at > self.p.ceiling_ttl_s:
            self.rate = None
        self._recover_rate(now)

    def _effect_min(self, action: str) -> float | None:
        values = [e.value for e in self.effects if e.action == action]
        return min(values) if values else None

    def connection_limit(self, now: float) -> int:
        """Current connection limit (adaptive level within bounds, capped by rules)."""
        self._expire(now)
        limit = self.limit
        cap = self._effect_min("set_connections")
        if cap is not None:
            limit = min(limit, int(cap))
        return max(0, limit)

    def msg_rate(self, now: float) -> float | None:
        """Current message-rate limit per second (None = unlimited)."""
        self._expire(now)
        rates = [r for r in (self.rate_cap, self.rate, self._effect_min("set_rate"))
                 if r is not None]
        return min(rates) if rates else None

    def suspended(self, now: float) -> bool:
        self._expire(now)
        effects = self.effects  # usually empty: no generator per call (1.9% of a worker)
        return now < self.suspended_until or bool(effects) and any(
            e.action == "suspend" for e in effects)

    def resume_at(self, now: float) -> float:
        """When a suspended site may be tried again (``now`` when not suspended)."""
        ends = [e.until for e in self.effects if e.action == "suspend"]
        if now < self.suspended_until:
            ends.append(self.suspended_until)
        return max(ends) if ends else now

    def bouncing(self, now: float) -> Effect | None:
        """The active ``bounce`` effect, if a rule said to fail this site's queue."""
        self._expire(now)
        for e in self.effects:
            if e.action == "bounce":
                return e
        return None

    def open_delay(self, now: float, active: int) -> float | None:
        """Seconds to wait before opening one more connection; None = at the limit.

        Does not consume anything: call ``on_open`` when the connection is started.
        """
        if active >= self.connection_limit(now):
            return None
        if self.provider is not None and not self.provider.may_open():
            return None
        wait = 0.0
        if self.suspended(now):
            wait = self.resume_at(now) - now
        wait = max(wait, self.pause_until - now)
        if self._conn_gcra is not None:
            wait = max(wait, self._conn_gcra.delay(now))
        return max(0.0, wait)

    def on_open(self, now: float) -> None:
        """A connection attempt starts (consumes connection rate, provider budget)."""
        if self._conn_gcra is not None:
            self._conn_gcra.take(now)
        if self.provider is not None:
            self.provider.acquire()

    def on_close(self) -> None:
        """A connection (attempt) ended: give back the provider budget."""
        if self.provider is not None:
            self.provider.release()

    def flight_limit(self, now: float) -> int | None:
        """Most recipients to send in one go: 1 while the site must be probed with a
        single message (after a rate throttle pause), the burst of the message-rate
        limit when there is one, else None (no limit from shaping)."""
        if self.probe_pending:
            return 1
        rate = self.msg_rate(now)
        if rate is not None:
            return self._max_cells(rate)
        if self.provider is not None and self.provider.rate is not None:
            return max(1, int(self.provider.rate.tolerance / self.provider.rate.interval) + 1)
        return None

    def reserve_send(self, now: float, n: int = 1) -> float:
        """Take ``n`` message cells from the site and provider rate limits if both allow
        now (returns 0.0), else return the seconds to wait (nothing taken).

        After a rate throttle nothing is sent until the pause ends; then a single
        message (``n == 1``) goes first as a probe and the rest wait for its answer."""
        if now < self.rate_pause_until:
            return self.rate_pause_until - now
        if self.probe_pending:
            if self.probe_out_at is not None and now - self.probe_out_at < 30.0:
                return 0.05
            if n > 1:
                return 0.05
        rate = self.msg_rate(now)
        wait = 0.0
        if rate is not None:
            if self._gcra is None:
                self._gcra = Gcra(rate, burst_for(rate, self.p.msg_burst))
                self._gcra_rate = rate
            elif rate != self._gcra_rate:
                self._gcra.set_rate(rate, burst_for(rate, self.p.msg_burst))
                self._gcra_rate = rate
            wait = self._gcra.delay(now, n)
        prov = self.provider.rate if self.provider is not None else None
        if prov is not None and wait <= 0.0:
            # only once the site's own limiter allows: a shared budget's ``delay`` takes
            # cells from the other workers/nodes, which would lapse unspent meanwhile
            wait = prov.delay(now, n)
        if wait > 0.0:
            return wait
        if rate is not None and self._gcra is not None:
            self._gcra.take(now, n)
        if prov is not None:
            prov.take(now, n)
        if self.probe_pending:
            self.probe_out_at = now
        return 0.0

    def _max_cells(self, rate: float) -> int:
        return max(1, burst_for(rate, self.p.msg_burst))

    # ---- outcomes

    def on_connected(self, now: float) -> None:
        self.connect_failures = 0

    def on_answer(self, now: float) -> None:
        """A transaction got a non-throttle answer (accepted or not): the destination
        takes our traffic again, so a pending probe succeeded."""
        if self.probe_pending:
            self.probe_pending = False
            self.probe_out_at = None
        self.rate_pause_s = self.p.throttle_pause_s

    def on_success(self, now: float, n: int = 1, active: int | None = None) -> None:
        """``n`` recipients accepted.  ``active``: connections open to the site now; the
        limit grows only while it is in use (``active >= limit``)."""
        self.sent += n
        self.on_answer(now)
        sec = math.floor(now / _BUCKET_S) * _BUCKET_S
        if self._window and self._window[-1][0] == sec:
            self._window[-1][1] += n
        else:
            self._window.append([sec, n])
        self._window_total += n
        self._prune_window(now)
        if self._first_success is None:
            self._first_success = now
        if now >= self.suspended_until:
            self.suspend_s = self.p.suspend_initial_s
        if not self.p.adaptive:
            return
        self._expire(now)
        if active is not None and active < self.limit:
            return
        self.successes += n
        if self.successes < max(1, self.limit):
            return
        self.successes = 0
        target = min(self.limit + max(1, self.p.increase_step), self.max_limit)
        if self.ceiling is not None and target >= self.ceiling:
            # at or above the level that throttled last time: probe slowly
            if now - self.last_probe < self.p.probe_interval_s:
                return
            if self.limit >= self.ceiling:
                # held the old ceiling for a whole probe interval: it is safe now
                self.ceiling = self.limit + 1
                self.ceiling_at = now
            self.last_probe = now
            target = min(self.limit + 1, self.max_limit)
        self.limit = target

    @property
    def rate_ceiling(self) -> float | None:
        """The learned rate the destination allows (the rate is a fraction of it)."""
        return None if self.rate is None else self.rate / self.p.rate_recover_fraction

    def observed_rate(self, now: float) -> float:
        """Accepted recipients per second over the last ``rate_window_s``."""
        total = self.window_count(now)
        span = self.p.rate_window_s
        if self._first_success is not None:
            span = min(span, max(now - self._first_success, 0.25))
        return total / span if span > 0 else 0.0

    def on_throttle(self, now: float, kind: str = "connections",
                    active: int | None = None) -> bool:
        """The destination asked us to slow down.  ``kind``: ``connections`` (421 at
        connect, too many connections, resets/timeouts) or ``rate`` (4.7.x rate replies
        to a transaction).  ``active``: connections open to the site, the throttled one
        included (the level that triggered it).  Returns True when the limits were cut (at most once per
        ``throttle_holdoff_s``: replies of one cohort count once)."""
        self.throttles += 1
        if kind == "rate" and self.p.adaptive and now >= self.rate_pause_until:
            # pause all sending, doubling while the throttling goes on, then probe
            pause = self.rate_pause_s
            frees = self._window_frees_at(now)
            if frees is not None:
                # no longer than until a sliding window of ours would have room again
                pause = min(pause, max(self.p.throttle_pause_s, frees - now))
            self.rate_pause_until = now + pause
            self.rate_pause_s = min(self.p.rate_pause_max_s, self.rate_pause_s * 2)
            self.probe_pending = True
            self.probe_out_at = None
        if not self.p.adaptive:
            return False
        # every throttle holds new connections back for a moment (no reconnect storm)
        self.pause_until = max(self.pause_until, now + self.p.throttle_pause_s)
        if now - self.last_cut < self.p.throttle_holdoff_s:
            return False
        self.last_cut = now
        self.ceiling_at = now
        self.successes = 0
        if kind == "rate" and self.p.adaptive_rate:
            self._cut_rate(now)
            return True
        # the level that triggered it: the connections actually open (the refused one
        # included) when that is below the limit
        level = min(self.limit, active) if active else self.limit
        if self.ceiling is not None and level >= self.ceiling:
            # a probe above the known-safe level failed: back to just below it
            self.limit = max(self.min_limit, min(self.ceiling - 1, self.max_limit))
        else:
            self.ceiling = level
            self.limit = max(self.min_limit, int(level * self.p.decrease_factor))
        self.last_probe = now
        return True

    def window_count(self, now: float, span: float | None = None) -> int:
        """Recipients accepted over the last ``span`` seconds (default ``rate_window_s``;
        at most ``rate_window_s`` of history is kept)."""
        self._prune_window(now)
        if span is None or span >= self.p.rate_window_s:
            return self._window_total
        start, total = now - span, 0
        for s, c in reversed(self._window):
            if s + _BUCKET_S <= start:
                break
            total += c
        return total

    def _prune_window(self, now: float) -> None:
        """Drop the buckets that ended before ``now - rate_window_s``."""
        start = now - self.p.rate_window_s
        w = self._window
        while w and w[0][0] + _BUCKET_S <= start:
            self._window_total -= w.popleft()[1]

    def _window_frees_at(self, now: float) -> float | None:
        """When the oldest acceptance still inside our ``rate_window_s`` leaves it: the
        moment a sliding-window limit of that length has room again."""
        self._prune_window(now)
        return self._window[0][0] + _BUCKET_S + self.p.rate_window_s if self._window else None

    def _cut_rate(self, now: float) -> None:
        # What the destination counted against us when it said stop: the recipients it
        # accepted over its accounting window (assumed ``rate_window_s``; a minute is what
        # providers state).  Pauses count as silence, as they do in a sliding window.
        # A throttle early on (a window shorter than ours, or not yet full) makes that
        # figure an underestimate: never below ``decrease_factor`` of the rate we were
        # accepted at (the classic multiplicative decrease).
        estimate = max(self.window_count(now) / self.p.rate_window_s,
                       self.observed_rate(now) * self.p.decrease_factor, 0.5)
        self.rate = max(0.5, estimate * self.p.rate_recover_fraction)
        self.rate_probe_step = self.p.rate_probe_fraction
        self.last_rate_step = now

    def _recover_rate(self, now: float) -> None:
        """Probe above the learned rate: every ``probe_interval_s`` spent using it without
        a throttle, raise it by ``rate_probe_fraction``, doubling the step on each
        successful probe (an underestimate is outgrown in a few minutes)."""
        if self.rate is None:
            return
        interval = self.p.probe_interval_s
        if now - self.last_rate_step < interval or now - self.last_cut < interval:
            return
        self.last_rate_step = now
        span = min(interval, self.p.rate_window_s)
        if self.window_count(now, span) < 0.8 * self.rate * span:
            return  # not using the rate: nothing learned by raising it
        self.rate *= 1.0 + self.rate_probe_step
        self.rate_probe_step = min(_MAX_RATE_PROBE_STEP, self.rate_probe_step * 2)

    def on_block(self, now: float, reason: str = "blocked") -> float:
        """The destination blocks us (spam/reputation/policy): suspend the site for a
        duration that doubles on each consecutive block.  Returns the resume time."""
        self.blocks += 1
        if now < self.suspended_until:
            return self.suspended_until
        self.suspended_until = now + self.suspend_s
        self.suspend_reason = reason
        self.suspend_s = min(self.p.suspend_max_s, self.suspend_s * self.p.suspend_factor)
        return self.suspended_until

    def on_connect_failure(self, now: float, throttle: bool = False) -> bool:
        """Every MX host of the site failed to connect.  A throttle-like failure (reset,
        timeout, 421 greeting) cuts the limit; ``connect_failures_to_suspend``
        consecutive failures suspend the site (dead destination).  True if suspended."""
        self.connect_failures += 1
        if throttle:
            self.on_throttle(now, "connections")
        if self.connect_failures >= max(1, self.p.connect_failures_to_suspend):
            self.connect_failures = 0
            self.on_block(now, "unreachable")
            return True
        return False

    def on_reply(self, text: str, now: float) -> list[Effect]:
        """Match a non-2xx reply against the provider rules; apply and return the effects
        that fired (a rule fires after ``threshold`` matches within ``period_s``)."""
        fired = []
        for rule, rx, hits in self._rules:
            if not rx.search(text):
                continue
            hits.append(now)
            while hits and hits[0] <= now - rule.period_s:
                hits.popleft()
            if len(hits) >= rule.threshold:
                hits.clear()
                effect = Effect(rule.name or rule.pattern, rule.action, rule.value,
                                now + rule.duration_s)
                self.effects = [e for e in self.effects if e.rule != effect.rule]
                self.effects.append(effect)
                fired.append(effect)
        return fired

    def status(self, now: float) -> dict:
        """A snapshot for progress displays and logs."""
        return {
            "limit": self.connection_limit(now),
            "ceiling": self.ceiling,
            "rate": self.msg_rate(now),
            "suspended": self.suspended(now),
            "throttles": self.throttles,
            "blocks": self.blocks,
            "effects": [e.rule for e in self.effects],
        }
