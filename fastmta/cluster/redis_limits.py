"""Limits shared by several nodes through Redis, degrading to this node's share.

``RedisLimits`` implements ``engine.limits.Limits`` with the Redis Function library in
``limits.lua`` (loaded with ``FUNCTION LOAD REPLACE`` on connect): connection leases are
members of one ZSET per key with a short TTL (``lease_ttl_s``, 30 s) renewed every TTL/3
by ``tick``; rate cells come from a GCRA over all the keys of a send at once, in batches
*reserved* up to ``token_ahead_s`` ahead (``fm_reserve``: the nodes queue on the bucket
instead of asking again and again; the cells are spent no earlier than the time the
reply gives, so the rate holds exactly); learned limits and suspensions are a hash per
key plus one signal stream, read every ``signal_poll_s``.  Every score is the server's
``TIME`` (microseconds).  Per-second upkeep (membership, renewal, owed releases) is one
pipelined round trip, one Function call per Redis Cluster slot.

Outage policy (``degraded``): a Redis error or a call slower than ``timeout_s`` switches
this process to its ``fallback`` (the node's ``ShmLimits`` or a ``LocalLimits``) with
this node's *share* of each limit (``limits.share_of``: limit / nodes seen last, the
shares summing to the limit), after registering the leases it holds there, so the share
is never exceeded.  ``tick`` tries Redis again every ``retry_s``; on success the leases
taken meanwhile are added to Redis (``fm_renew`` re-creates missing members, which also
repairs a Redis that restarted empty) and shared limits apply again.  Leases are never
leaked: a released lease is removed where it lives; one released during an outage, or
an acquire whose reply was lost (Redis ran it after the timeout), is an *owed* release,
sent when Redis is back (``fm_drop``; before this, such leases stayed until their TTL and
starved the site: the stall of docs/scale.md); a lease this process stops renewing (it
died) expires within the TTL.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

import redis

from fastmta.config import ClusterConfig
from fastmta.engine.limits import Learned, Limits, LocalLimits, Rate, share_of

log = logging.getLogger("fastmta.cluster")

LIBRARY = (Path(__file__).with_name("limits.lua")).read_text()
GRACE_S = 1.0  # an outage: seconds without new leases while nodes shed their excess
DENIED_MAX_S = 0.4  # a refused connection request asks again after at most this
# any Redis error (a reply error too: a Function missing after a restart, a busy or
# read-only server) is an outage: the node goes on with its share, never stops sending
_ERRORS = (redis.RedisError, OSError)


class _Lease:
    __slots__ = ("keys", "local", "in_redis")

    def __init__(self, keys: tuple[str, ...], local: str | None, in_redis: bool) -> None:
        self.keys = keys
        self.local = local  # lease id in the fallback (taken or registered during an outage)
        self.in_redis = in_redis


def node_name(cfg: ClusterConfig) -> str:
    return cfg.node or socket.gethostname()


def connect(cfg: ClusterConfig, timeout_s: float) -> redis.Redis:
    """The client for ``cfg``: ``redis.Redis``, or ``redis.RedisCluster`` when
    ``redis_cluster`` (the keys of one call share a hash tag, so one slot)."""
    kw = dict(socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    if cfg.redis_cluster:
        return redis.RedisCluster.from_url(cfg.redis_url, **kw)
    return redis.Redis.from_url(cfg.redis_url, retry_on_timeout=False,
                                health_check_interval=0, **kw)


class RedisLimits(Limits):
    """``Limits`` in Redis for one process of node ``cfg.node`` (see module docstring)."""

    scope = "cluster"

    def __init__(self, cfg: ClusterConfig, fallback: Limits | None = None,
                 client: redis.Redis | None = None) -> None:
        self.cfg = cfg
        self.node = node_name(cfg)
        self.p = cfg.prefix
        self.fallback = fallback or LocalLimits()
        self.r = client  # made by _connect (a RedisCluster connects at once)
        self.sharded = cfg.redis_cluster or isinstance(client, redis.RedisCluster)
        self.pid = os.getpid()
        self.leases: dict[str, _Lease] = {}
        self.nodes: list[str] = [self.node]
        self.degraded = False
        self.degraded_since = 0.0
        self.outages = 0
        self.round_trips = 0
        self.errors = 0
        self.readopted = 0  # leases re-created in Redis (restart or outage adoption)
        self._next_renew = 0.0
        self._next_retry = 0.0
        # after an outage: until every node has put its leases back in Redis (each
        # retries every retry_s), a lease must fit the local share too
        self._settle_until = 0.0
        self._grace_until = 0.0  # after the switch: no new lease while nodes shed excess
        self._sig_id = "$"
        self._sig_keys: set[str] | None = None
        self._next_signals = 0.0
        self._owed: dict[str, tuple[str, ...]] = {}  # releases Redis still has to see
        self.reserve_ahead_s = cfg.token_ahead_s
        self.epoch = 0
        self._rated: dict[str, Rate] = {}  # the rate last asked per key (for the switch)
        self.denied_max_s = DENIED_MAX_S
        self.last_denial_fair = False
        try:
            self._connect()
        except _ERRORS as exc:
            self._degrade(exc)

    # ------------------------------------------------------------------ plumbing
    def k(self, kind: str, key: str) -> str:
        """The Redis key: its group (the provider of a site, else the key itself) is a
        hash tag, so the keys of one call are in one Redis Cluster slot:
        ``fm:c:{provider:p}/site:s`` and ``fm:c:{provider:p}``; ``fm:c:{site:s}``."""
        tag, sep, rest = key.partition("/")
        return f"{self.p}:{kind}:{{{tag}}}{sep}{rest}"

    @staticmethod
    def slot_tag(rkey: str) -> str:
        """The hash tag of a Redis key (the keys of one Function call share it)."""
        return rkey.partition("{")[2].partition("}")[0]

    def _connect(self) -> None:
        if self.r is None:
            self.r = connect(self.cfg, self.cfg.timeout_s)
        self.round_trips += 1
        self.r.function_load(LIBRARY, replace=True)
        self._member()
        if self._sig_id == "$":
            self.round_trips += 1
            last = self.r.xrevrange(self.k("sig", "all"), count=1)
            self._sig_id = last[0][0].decode() if last else "0-0"

    def _member(self) -> None:
        self.round_trips += 1
        self._members(self.r.fcall("fm_member", 1, self.k("members", "all"), self.node,
                                   int(self.cfg.lease_ttl_s * 1000)))

    def _members(self, reply) -> None:
        _, nodes = reply
        seen = {n.decode() for n in nodes} | {self.node}
        if self.degraded or time.monotonic() < self._settle_until:
            # a Redis that restarted empty knows only the nodes back so far: until every
            # node had time to come back, the shares stay those of the nodes seen before
            # (else the first node back would take the whole limit as its share)
            seen |= set(self.nodes)
        self.nodes = sorted(seen)

    def _degrade(self, exc: BaseException) -> None:
        self.errors += 1
        if self.degraded:
            return
        self.degraded = True
        self.degraded_since = time.time()
        self.outages += 1
        self._next_retry = time.monotonic() + self.cfg.retry_s
        # no new lease until the first retry failed too: a short blip (a timeout while
        # the others go on with Redis) ends before, with no lease Redis did not count
        # (else a node below its share grew to it while others held theirs in Redis)
        self._grace_until = max(time.monotonic() + GRACE_S, self._next_retry + 0.25)
        self.epoch += 1  # the cells granted by Redis lapse
        # the leases held count against the local share from now on
        for ls in self.leases.values():
            if ls.local is None:
                ls.local = self.fallback.acquire(ls.keys, [-1] * len(ls.keys))
        # the share's buckets start empty (no burst at the switch: the cluster's burst
        # may have been spent just before)
        for key, (rate, burst) in self._rated.items():
            shared = share_of(rate, self.nodes, self.node, False)
            self.fallback.take([f"share:{key}"], [(shared, burst)], max(1, burst))
        log.warning("cluster: Redis unreachable (%s); node %s sends on its share "
                    "(1/%d of each limit) until it is back", exc, self.node,
                    len(self.nodes))

    def _recover(self) -> None:
        self._connect()  # still degraded: the membership keeps the nodes seen before
        self.degraded = False
        self.epoch += 1
        self._settle_until = time.monotonic() + 2 * self.cfg.retry_s + 1.0
        # the leases keep their local count until released: it is what the settle
        # period checks new leases against; the owed releases go in the same trip
        self._renew(force=True)
        log.warning("cluster: Redis is back after %.1f s; node %s uses the shared limits",
                    time.time() - self.degraded_since, self.node)

    def _share(self, limits: Sequence[int]) -> list[int]:
        return [int(share_of(lim, self.nodes, self.node, True)) if lim >= 0 else lim
                for lim in limits]

    # ------------------------------------------------------------------ leases
    def acquire(self, keys, limits):
        keys = tuple(keys)
        if not self.degraded:
            local = None
            if time.monotonic() < self._settle_until:
                local = self.fallback.acquire(keys, self._share(limits))
                if local is None:
                    return None
            lease = f"{self.node}:{uuid.uuid4().hex}"  # whose it is, for ops
            zkeys = [self.k("c", k) for k in keys] + [self.k("w", k) for k in keys]
            try:
                self.round_trips += 1
                ok, wait = self.r.fcall("fm_acquire", len(zkeys), *zkeys,
                                        int(self.cfg.lease_ttl_s * 1000), lease, *limits)
            except _ERRORS as exc:
                if local is not None:
                    self.fallback.release(local)
                self._owed[lease] = keys  # Redis may have run it after the timeout
                self._degrade(exc)
            else:
                if not ok:
                    if local is not None:
                        self.fallback.release(local)
                    self.last_denial_fair = int(wait) < 0  # refused for its fair share
                    return None
                self.leases[lease] = _Lease(keys, local, True)
                return lease
        self.last_denial_fair = False
        if time.monotonic() < self._grace_until:
            return None  # nodes above their share close the excess first (cap)
        local = self.fallback.acquire(keys, self._share(limits))
        if local is None:
            return None
        lease = f"{self.node}:{uuid.uuid4().hex}"  # whose it is, for ops
        self.leases[lease] = _Lease(keys, local, False)
        return lease

    def release(self, lease):
        ls = self.leases.pop(lease, None)
        if ls is None:
            return
        if ls.local is not None:
            self.fallback.release(ls.local)
        if not ls.in_redis:
            return
        if self.degraded:
            self._owed[lease] = ls.keys  # removed when Redis is back (else: its TTL)
            return
        try:
            self.round_trips += 1
            self.r.fcall("fm_release", len(ls.keys), *[self.k("c", k) for k in ls.keys],
                         lease)
        except _ERRORS as exc:
            self._owed[lease] = ls.keys
            self._degrade(exc)

    def _by_slot(self, leases: Iterable[tuple[str, tuple[str, ...]]]
                 ) -> dict[str, tuple[list[str], list[str]]]:
        """(lease id, keys) pairs as ZSET keys and ids: one group (one Function call) on
        a single Redis, one per hash tag (slot) on a Redis Cluster."""
        out: dict[str, tuple[list[str], list[str]]] = {}
        for lid, keys in leases:
            for k in keys:
                rk = self.k("c", k)
                ks, ids = out.setdefault(self.slot_tag(rk) if self.sharded else "", ([], []))
                ks.append(rk)
                ids.append(lid)
        return out

    def _pay_owed(self) -> None:
        """Remove the owed leases from Redis (one pipelined round trip)."""
        if not self._owed:
            return
        pipe = self.r.pipeline(transaction=False)
        for ks, ids in self._by_slot(self._owed.items()).values():
            pipe.fcall("fm_drop", len(ks), *ks, *ids)
        self.round_trips += 1
        pipe.execute()
        self._owed.clear()

    def _renew(self, force: bool = False) -> None:
        """Membership, owed releases and lease renewal: one pipelined round trip."""
        now = time.monotonic()
        if not force and now < self._next_renew:
            return
        self._next_renew = now + min(1.0, self.cfg.lease_ttl_s / 3)
        ttl_ms = int(self.cfg.lease_ttl_s * 1000)
        pipe = self.r.pipeline(transaction=False)
        # every second: the shares of an outage need the current members
        pipe.fcall("fm_member", 1, self.k("members", "all"), self.node, ttl_ms)
        owed = list(self._owed)
        for ks, ids in self._by_slot(self._owed.items()).values():
            pipe.fcall("fm_drop", len(ks), *ks, *ids)
        renew = self._by_slot((lid, ls.keys) for lid, ls in self.leases.items())
        for ks, ids in renew.values():
            pipe.fcall("fm_renew", len(ks), *ks, ttl_ms, *ids)
        self.round_trips += 1
        replies = pipe.execute()
        self._members(replies[0])
        for lid in owed:
            self._owed.pop(lid, None)
        added = sum(int(x or 0) for x in replies[len(replies) - len(renew):])
        if added:
            self.readopted += added
        for ls in self.leases.values():
            ls.in_redis = True

    def cap(self, key: str, limit: int) -> int | None:
        """On the local share: keep at most this node's share of ``key``'s connections
        for this process (the connections above it close at their next flight)."""
        if not self.degraded:
            return None
        return self._share([limit])[0]

    def tick(self) -> None:
        try:
            if self.degraded:
                if time.monotonic() >= self._next_retry:
                    self._next_retry = time.monotonic() + self.cfg.retry_s
                    self._recover()
            else:
                self._renew()
        except _ERRORS as exc:
            self._degrade(exc)

    # ------------------------------------------------------------------ rates
    def take(self, keys: Sequence[str], rates: Sequence[Rate], n: int) -> float:
        if not self.degraded:
            args: list = [n]
            for rate, burst in rates:
                interval = 1e6 / rate
                args += [int(interval), int(interval * (max(1, burst) - 1))]
            try:
                self.round_trips += 1
                ok, wait_us = self.r.fcall("fm_take", len(keys),
                                           *[self.k("r", k) for k in keys], *args)
            except _ERRORS as exc:
                self._degrade(exc)
            else:
                return 0.0 if ok else max(1e-3, int(wait_us) / 1e6)
        shared = [(share_of(r, self.nodes, self.node, False), b) for r, b in rates]
        return self.fallback.take([f"share:{k}" for k in keys], shared, n)

    def reserve(self, keys, rates, n, ahead_s=0.0):
        if self.degraded:
            return super().reserve(keys, rates, n)  # the share, nothing ahead
        args: list = [n, int(ahead_s * 1e6)]
        for key, rb in zip(keys, rates, strict=True):
            self._rated[key] = rb
        for rate, burst in rates:
            interval = 1e6 / rate
            args += [int(interval), int(interval * (max(1, burst) - 1))]
        try:
            self.round_trips += 1
            ok, us = self.r.fcall("fm_reserve", len(keys), *[self.k("r", k) for k in keys],
                                  *args)
        except _ERRORS as exc:
            self._degrade(exc)
            return super().reserve(keys, rates, n)
        wait = int(us) / 1e6
        if ok:
            return True, wait
        return False, max(1e-3, wait)

    # ------------------------------------------------------------------ learning
    def publish(self, key, *, limit=None, rate=None, suspend_s=0.0):
        self.fallback.publish(key, limit=limit, rate=rate, suspend_s=suspend_s)
        if self.degraded:
            return
        ttl = 3600
        try:
            for field, value in (("limit", limit), ("rate", rate),
                                 ("suspend", suspend_s if suspend_s > 0 else None)):
                if value is None:
                    continue
                self.round_trips += 2
                v = self.r.fcall("fm_signal", 1, self.k("s", key), field, value, ttl)
                if v is not None:  # the stream lives in its own slot: a second call
                    self.r.xadd(self.k("sig", "all"), {"k": key, "f": field, "v": v},
                                maxlen=10_000, approximate=True)
        except _ERRORS as exc:
            self._degrade(exc)

    @staticmethod
    def _decode(now_us: int, fields: dict) -> Learned:
        susp = float(fields.get("suspend", 0) or 0)
        return Learned(limit=int(float(fields["limit"])) if "limit" in fields else None,
                       rate=float(fields["rate"]) if "rate" in fields else None,
                       suspend_s=max(0.0, (susp - now_us) / 1e6) if susp else 0.0)

    def learned(self, key):
        if self.degraded:
            return self.fallback.learned(key)
        try:
            self.round_trips += 1
            now_us, flat = self.r.fcall_ro("fm_state", 1, self.k("s", key))
        except _ERRORS as exc:
            self._degrade(exc)
            return self.fallback.learned(key)
        fields = {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}
        return self._decode(int(now_us), fields) if fields else None

    def signals(self, keys: Iterable[str]) -> list[tuple[str, Learned]]:
        """New entries of the signal stream (one round trip), for any key."""
        if self.degraded:
            return self.fallback.signals(keys)
        t = time.monotonic()
        if t < self._next_signals:
            return []
        self._next_signals = t + self.cfg.signal_poll_s
        try:
            self.round_trips += 1
            got = self.r.xread({self.k("sig", "all"): self._sig_id}, count=1000)
            if not got:
                return []
            self.round_trips += 1
            now_us = self.r.time()
        except _ERRORS as exc:
            self._degrade(exc)
            return []
        now = now_us[0] * 1_000_000 + now_us[1]
        out = []
        for mid, f in got[0][1]:
            self._sig_id = mid.decode()
            key, field, value = f[b"k"].decode(), f[b"f"].decode(), f[b"v"].decode()
            if field == "suspend":
                out.append((key, Learned(suspend_s=max(0.0, (float(value) - now) / 1e6))))
            elif field == "limit":
                out.append((key, Learned(limit=int(float(value)))))
            elif field == "rate":
                out.append((key, Learned(rate=float(value))))
        return out

    # ------------------------------------------------------------------ status
    def held(self):
        return len(self.leases)

    def status(self):
        return {"scope": self.scope, "node": self.node, "degraded": self.degraded,
                "degraded_s": round(time.time() - self.degraded_since, 1)
                if self.degraded else 0.0,
                "outages": self.outages, "errors": self.errors, "nodes": len(self.nodes),
                "leases": self.held(), "owed_releases": len(self._owed),
                "round_trips": self.round_trips,
                "readopted": self.readopted}

    def close(self):
        for lease in list(self.leases):
            self.release(lease)
        try:
            if not self.degraded:
                self._pay_owed()
        except _ERRORS:
            pass  # they expire within the TTL
        try:
            if self.r is not None:
                self.r.close()
        except _ERRORS:
            pass
