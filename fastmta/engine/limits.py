"""Limits held above one worker: the interface, the in-process backend, the shaper seam.

A site's connection limit, message rate and provider budget stay the limits of the
*whole site* when its traffic is spread over several workers (one node) or several
nodes (a cluster).  The engine asks a ``Limits`` backend for connection slots (leases)
and rate tokens (in batches), and publishes what it learns (a cut limit, a cut rate, a
suspension) through it.  Backends:

- ``LocalLimits`` (here): one process; also the arithmetic every backend shares.
- ``engine.node_limits.ShmLimits``: the workers of one supervisor, in shared memory.
- ``cluster.redis_limits.RedisLimits``: several nodes, through a Redis Function library;
  falls back to a ``ShmLimits``/``LocalLimits`` with this node's share when Redis is
  unreachable.

``SharedBudget`` duck-types ``rates.ProviderBudget`` (``may_open``/``acquire``/
``release``/``rate``), so ``SiteShaper`` consults it exactly where it consults a
provider budget today: the seam into the engine is one object per site.

Pure: no asyncio, sockets or spool; the clock is ``time.monotonic`` (system-wide on Linux,
so processes of one node agree).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable, Sequence

import msgspec

from fastmta.engine.rates import Gcra, burst_for

Rate = tuple[float, int]  # (messages per second, burst)
DENIED_S = 0.05  # a site refused a connection slot asks again after this (or a release)


class Learned(msgspec.Struct):
    """What other workers/nodes learned about a key (None/0 = nothing)."""

    limit: int | None = None  # a connection limit cut by a throttle
    rate: float | None = None  # a message rate cut by a throttle
    suspend_s: float = 0.0  # seconds the key stays suspended from now


def share_of(value: float, nodes: Sequence[str], node: str, integer: bool) -> float:
    """This node's share of a limit: the integer part split so that the shares of all
    ``nodes`` sum to ``value`` exactly (the first ``value % n`` nodes by name get one
    more); a rate is split evenly.  Never above ``value``."""
    names = sorted(set(nodes) | {node})
    n = len(names)
    if value < 0:
        return value
    if not integer:
        return value / n
    v = int(value)
    return v // n + (1 if names.index(node) < v % n else 0)


class Limits:
    """The interface (see module docstring).  Methods are synchronous and cheap: a
    backend that talks to a server keeps each call bounded by a short timeout."""

    scope = "none"
    # a refused connection request is asked again after DENIED_S, doubling while the
    # refusals go on, up to this (a backend with a round trip per ask waits longer)
    denied_max_s = DENIED_S
    reserve_ahead_s = 0.0  # rate cells may be reserved this far ahead (``reserve``)
    last_denial_fair = False  # the last refusal: this process holds its fair share
    epoch = 0  # bumped when a backend switches where its limits live (cells lapse)

    def acquire(self, keys: Sequence[str], limits: Sequence[int]) -> str | None:
        """One connection lease counted against every key (limit < 0: count only);
        the lease id, or None when one of the keys is at its limit (nothing taken)."""
        raise NotImplementedError

    def release(self, lease: str) -> None:
        raise NotImplementedError

    def take(self, keys: Sequence[str], rates: Sequence[Rate], n: int) -> float:
        """``n`` rate cells from every key's bucket: 0.0 when taken, else the seconds to
        wait (nothing taken from any bucket)."""
        raise NotImplementedError

    def reserve(self, keys: Sequence[str], rates: Sequence[Rate], n: int,
                ahead_s: float = 0.0) -> tuple[bool, float]:
        """``n`` cells from every key's bucket that conform within ``ahead_s``:
        ``(True, s)`` charged, usable ``s`` seconds from now (0.0: now), or ``(False,
        wait)``, nothing charged.  This default reserves nothing ahead (``take``)."""
        wait = self.take(keys, rates, n)
        return wait <= 0.0, wait

    def publish(self, key: str, *, limit: int | None = None, rate: float | None = None,
                suspend_s: float = 0.0) -> None:
        """Tell the other workers/nodes what this one learned about ``key``."""
        raise NotImplementedError

    def learned(self, key: str) -> Learned | None:
        """The current learned state of ``key`` (a new site starts from it)."""
        raise NotImplementedError

    def signals(self, keys: Iterable[str]) -> list[tuple[str, Learned]]:
        """What others published since the last call (about ``keys``, or all)."""
        raise NotImplementedError

    def cap(self, key: str, limit: int) -> int | None:
        """The most connections this process may keep to ``key`` right now when that is
        less than what it was granted (a cluster node on its local share during an
        outage); None: no constraint."""
        return None

    def tick(self) -> None:
        """Periodic upkeep (lease renewal, membership, reconnection)."""

    def held(self) -> int:
        """Leases held by this process."""
        return 0

    def status(self) -> dict:
        return {"scope": self.scope, "degraded": False, "leases": self.held()}

    def close(self) -> None:
        """Release every lease still held."""


class LocalLimits(Limits):
    """All limits in this process (one worker; or a fallback with scaled limits)."""

    scope = "process"

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.counts: dict[str, int] = {}
        self.leases: dict[str, Sequence[str]] = {}
        self.buckets: dict[str, Gcra] = {}
        self.state: dict[str, dict] = {}
        self._ids = itertools.count(1)
        self._pending: list[tuple[str, Learned]] = []

    def acquire(self, keys, limits):
        for k, lim in zip(keys, limits, strict=True):
            if lim >= 0 and self.counts.get(k, 0) >= lim:
                return None
        for k in keys:
            self.counts[k] = self.counts.get(k, 0) + 1
        lease = f"p{next(self._ids)}"
        self.leases[lease] = tuple(keys)
        return lease

    def release(self, lease):
        for k in self.leases.pop(lease, ()):
            self.counts[k] = max(0, self.counts.get(k, 0) - 1)

    def take(self, keys, rates, n):
        now = self.clock()
        gs = []
        for k, (rate, burst) in zip(keys, rates, strict=True):
            g = self.buckets.get(k)
            if g is None:
                g = self.buckets[k] = Gcra(rate, burst)
            elif g.interval != 1.0 / rate:
                g.set_rate(rate, burst)
            gs.append(g)
        wait = max((g.delay(now, n) for g in gs), default=0.0)
        if wait > 0:
            return wait
        for g in gs:
            g.take(now, n)
        return 0.0

    def publish(self, key, *, limit=None, rate=None, suspend_s=0.0):
        st = self.state.setdefault(key, {})
        now = self.clock()
        if limit is not None:
            st["limit"] = limit
        if rate is not None:
            st["rate"] = rate
        if suspend_s > 0:
            st["suspend"] = max(st.get("suspend", 0.0), now + suspend_s)

    def learned(self, key):
        st = self.state.get(key)
        if not st:
            return None
        return Learned(limit=st.get("limit"), rate=st.get("rate"),
                       suspend_s=max(0.0, st.get("suspend", 0.0) - self.clock()))

    def signals(self, keys):
        return []  # one process: nobody else publishes

    def held(self):
        return len(self.leases)

    def close(self):
        for lease in list(self.leases):
            self.release(lease)


class SharedBudget:
    """One site's limits in a ``Limits`` backend, shaped like ``rates.ProviderBudget``.

    Keys: ``site:<name>``, or ``provider:<p>/site:<name>`` for a site of provider p
    (connection limit = the site's current adaptive limit, message
    rate = its current rate) and, when the site belongs to a provider with caps,
    ``provider:<name>`` (its connection and rate caps).  Rate cells are taken from the
    backend ``batch_s`` worth of the rate at a time and spent locally; unspent cells
    lapse after two such periods, so a batch never adds a burst later.  A backend that
    reserves (``Limits.reserve_ahead_s``, the cluster's) may grant a batch usable a
    little later: the flights wait for that moment instead of asking again.  A refused
    connection request is asked again after ``DENIED_S``, doubling up to
    ``Limits.denied_max_s`` while refused (at once after a release of ours).
    """

    def __init__(self, limits: Limits, site: str, *, conn_limit: Callable[[float], int],
                 msg_rate: Callable[[float], float | None], msg_burst: int = 0,
                 provider: str = "", provider_conns: int | None = None,
                 provider_rate: float | None = None, batch_s: float = 0.05) -> None:
        self.limits = limits
        self.pkey = f"provider:{provider}" if provider else ""
        # a site of a provider is named under it ("provider:P/site:S"): a backend can
        # keep the keys of one admission together (Redis Cluster hash tags, docs/scale.md)
        self.key = f"{self.pkey}/site:{site}" if provider else f"site:{site}"
        self.conn_limit = conn_limit
        self.msg_rate = msg_rate
        self.msg_burst = msg_burst
        self.provider_conns = provider_conns
        self.provider_rate = provider_rate
        self.batch_s = batch_s
        self.pending: str | None = None  # a lease granted by may_open, not yet used
        self.leases: list[str] = []
        self.denied = False  # the last may_open was refused (someone else must free one)
        self.share: int | None = None  # keep at most this many (Limits.cap; sync loop)
        self.cells = 0
        self.cells_until = 0.0
        self.active = 0
        self.max_connections = provider_conns
        self.round_trips = 0
        self.retry_at = 0.0  # after a refusal, ask the backend again from then on
        self.refusals = 0  # connection requests refused in a row
        self.take_at = 0.0  # after a rate denial: no cell conforms before then
        self.cells_at = 0.0  # reserved cells are usable from then on
        self.cells_epoch = limits.epoch
        # what this site last published / applied (SiteShaper values)
        self.seen_limit: int | None = None
        self.seen_rate: float | None = None
        self.seen_suspend = -math.inf

    # ---- connections (ProviderBudget shape)
    def _keys_limits(self, now: float) -> tuple[list[str], list[int]]:
        keys, lims = [self.key], [self.conn_limit(now)]
        if self.pkey:
            keys.append(self.pkey)
            lims.append(self.provider_conns if self.provider_conns else -1)
        return keys, lims

    def may_open(self) -> bool:
        if self.pending is None:
            t = time.monotonic()
            if t < self.retry_at:  # refused a moment ago: no round trip per pump
                self.denied = True
                return False
            keys, lims = self._keys_limits(t)
            self.round_trips += 1
            self.pending = self.limits.acquire(keys, lims)
            if self.pending is None:
                cap = self.limits.denied_max_s
                # at its fair share already: no more until the others' demand changes
                back = cap if self.limits.last_denial_fair else \
                    DENIED_S * 2.0 ** min(self.refusals, 8)
                self.refusals += 1
                self.retry_at = t + min(cap, back)
            else:
                self.refusals = 0
        self.denied = self.pending is None
        return not self.denied

    def acquire(self) -> None:
        if self.pending is None and not self.may_open():
            # on_open without a successful may_open: count it anyway (never unbalanced)
            keys, _ = self._keys_limits(time.monotonic())
            self.pending = self.limits.acquire(keys, [-1] * len(keys))
        if self.pending is not None:
            self.leases.append(self.pending)
        self.pending = None
        self.active += 1

    def release(self) -> None:
        self.retry_at = 0.0  # a slot of ours is free: the next ask may get it
        self.active = max(0, self.active - 1)
        if self.leases:
            self.round_trips += 1
            self.limits.release(self.leases.pop())

    def close(self) -> None:
        for lease in self.leases + ([self.pending] if self.pending else []):
            self.limits.release(lease)
        self.leases, self.pending = [], None

    # ---- message rate (the ``ProviderBudget.rate`` Gcra shape)
    def _rates(self, now: float) -> tuple[list[str], list[Rate]]:
        keys, rates = [], []
        r = self.msg_rate(now)
        if r is not None and r > 0:
            keys.append(self.key)
            rates.append((r, burst_for(r, self.msg_burst)))
        if self.pkey and self.provider_rate:
            keys.append(self.pkey)
            rates.append((self.provider_rate, burst_for(self.provider_rate, 0)))
        return keys, rates

    @property
    def rate(self) -> SharedBudget | None:
        """Self when a rate applies to the site (SiteShaper reads ``provider.rate``)."""
        if self.provider_rate or self.msg_rate(time.monotonic()) is not None:
            return self
        return None

    @property
    def interval(self) -> float:
        _, rates = self._rates(time.monotonic())
        return 1.0 / min(r for r, _ in rates) if rates else 1.0

    @property
    def tolerance(self) -> float:
        _, rates = self._rates(time.monotonic())
        if not rates:
            return 0.0
        r, b = min(rates)
        return (b - 1) / r

    def delay(self, now: float, n: int = 1) -> float:
        t = time.monotonic()
        if self.cells_epoch != self.limits.epoch:
            # cells granted by the shared limits are not the local share's (and back)
            self.cells, self.cells_epoch, self.take_at = 0, self.limits.epoch, 0.0
        if self.cells >= n and t < self.cells_until:
            return max(0.0, self.cells_at - t)  # reserved cells: usable from cells_at
        if t < self.take_at:  # the backend said: nothing conforms before then
            return self.take_at - t
        keys, rates = self._rates(now)
        if not keys:
            return 0.0
        slowest = min(r for r, _ in rates)
        k = max(n, int(slowest * self.batch_s))
        if t >= self.cells_until:
            self.cells = 0
        ahead = self.limits.reserve_ahead_s
        self.round_trips += 1
        ok, wait = self.limits.reserve(keys, rates, k, ahead)
        if not ok and k > n:
            # a whole batch does not fit yet: the cells this flight needs may (a lower
            # bound of their wait: the batch's, less k - n cells of the slowest rate)
            est = wait - (k - n) / slowest
            if est > 0:
                wait = est
            else:
                self.round_trips += 1
                k = n
                ok, wait = self.limits.reserve(keys, rates, n, ahead)
        if not ok:
            self.take_at = t + wait
            return wait
        self.cells += k
        # usable once the whole batch conforms (measured from after the reply: never
        # early); cells lapse two batch periods later (a late flight still spends them;
        # never a burst later than that)
        self.cells_at = time.monotonic() + wait if wait > 0 else 0.0
        self.cells_until = max(t, self.cells_at) + 2 * max(self.batch_s, k / slowest)
        return max(0.0, self.cells_at - t) if wait > 0 else 0.0

    def take(self, now: float, n: int = 1) -> float:
        self.cells = max(0, self.cells - n)
        return 0.0
