"""RedisLimits against a real redis-server on loopback (started per test module)."""

from __future__ import annotations

import time

import pytest
import redis

from fastmta.cluster.redis_limits import GRACE_S, RedisLimits
from fastmta.cluster.server import RedisServer
from fastmta.config import ClusterConfig
from fastmta.engine.limits import LocalLimits, share_of


@pytest.fixture()
def srv():
    with RedisServer() as s:
        yield s


def node(srv, name, **kw):
    cfg = ClusterConfig(redis_url=srv.url, node=name, **kw)
    return RedisLimits(cfg, fallback=LocalLimits())


def test_leases_held_across_nodes_and_released(srv):
    a, b = node(srv, "a"), node(srv, "b")
    got = [x.acquire(["site:s", "provider:p"], [3, 10]) for x in (a, b, a, b)]
    assert got.count(None) == 1 and all(got[:3])
    # the provider limit binds too, and a denial takes nothing from the site
    c = node(srv, "c")
    assert c.acquire(["site:t", "provider:p"], [5, 3]) is None
    r = redis.Redis.from_url(srv.url)
    assert r.zcard("fm:c:{site:t}") == 0 and r.zcard("fm:c:{provider:p}") == 3
    a.release(got[0])
    assert b.acquire(["site:s", "provider:p"], [3, 10]) is not None
    assert r.zcard("fm:c:{site:s}") == 3
    for x in (a, b, c):
        x.close()
    assert r.zcard("fm:c:{site:s}") == 0 and r.zcard("fm:c:{provider:p}") == 0


def test_dead_node_leases_expire_within_ttl(srv):
    a, b = node(srv, "a", lease_ttl_s=3), node(srv, "b", lease_ttl_s=3)
    assert a.acquire(["site:s"], [2]) and a.acquire(["site:s"], [2])
    assert b.acquire(["site:s"], [2]) is None
    t0 = time.monotonic()
    # a dies (never renews); b gets the slot once a's leases expire, not before
    while b.acquire(["site:s"], [2]) is None:
        assert time.monotonic() - t0 < 5.0
        time.sleep(0.1)
    assert 2.5 < time.monotonic() - t0 < 4.5


def test_renewal_keeps_leases_alive(srv):
    a, b = node(srv, "a", lease_ttl_s=3), node(srv, "b", lease_ttl_s=3)
    assert a.acquire(["site:s"], [1])
    t0 = time.monotonic()
    while time.monotonic() - t0 < 5.0:
        a.tick()
        assert b.acquire(["site:s"], [1]) is None
        time.sleep(0.2)


def test_gcra_batches_all_or_nothing(srv):
    a, b = node(srv, "a"), node(srv, "b")
    # 100/s, burst 10: 10 cells at once, then the next 10 after 0.1 s
    assert a.take(["site:s", "provider:p"], [(100, 10), (1000, 100)], 10) == 0.0
    wait = b.take(["site:s", "provider:p"], [(100, 10), (1000, 100)], 10)
    assert 0.05 < wait <= 0.101
    # the denial charged nothing: the provider bucket has the 90 cells the first take
    # left (not 80), then it is empty
    assert b.take(["provider:p"], [(1000, 100)], 88) == 0.0
    assert b.take(["provider:p"], [(1000, 100)], 20) > 0.0


def test_gcra_rate_held_over_time(srv):
    nodes = [node(srv, n) for n in "abc"]
    taken, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < 2.0:
        for x in nodes:
            if x.take(["site:s"], [(200, 10)], 5) == 0.0:
                taken += 5
        time.sleep(0.002)
    elapsed = time.monotonic() - t0
    assert 200 * elapsed * 0.9 <= taken <= 200 * elapsed + 10 + 5


def test_learned_limits_and_suspensions_reach_other_nodes(srv):
    a, b = node(srv, "a"), node(srv, "b", signal_poll_s=0.0)
    assert b.signals([]) == []
    a.publish("site:s", limit=4)
    a.publish("site:s", suspend_s=60)
    sig = b.signals([])
    assert [(k, s.limit) for k, s in sig if s.limit] == [("site:s", 4)]
    assert any(55 < s.suspend_s <= 60 for _, s in sig)
    # a node that starts later begins from the learned level
    c = node(srv, "c", signal_poll_s=0.0)
    learned = c.learned("site:s")
    assert learned.limit == 4 and learned.suspend_s > 55
    assert c.signals([]) == []  # old signals are not replayed to a new node


def test_share_of_sums_to_limit():
    for limit in range(0, 20):
        names = ["n1", "n2", "n3"]
        assert sum(share_of(limit, names, n, True) for n in names) == limit
    assert share_of(2, ["a", "b", "c"], "c", True) == 0
    assert share_of(90.0, ["a", "b", "c"], "b", False) == 30.0


def test_redis_killed_then_restarted(srv):
    a, b, c = (node(srv, n, lease_ttl_s=3, retry_s=0.2) for n in "abc")
    for x in (a, b, c):
        x.tick()  # membership: three nodes seen
    held = [a.acquire(["site:s"], [6]) for _ in range(2)]
    assert all(held) and a.nodes == ["a", "b", "c"]
    srv.kill()
    # a: holds 2 = its share of 6 over 3 nodes, so no more while Redis is down
    assert a.acquire(["site:s"], [6]) is None and a.degraded
    assert a.status()["degraded"] is True and a.status()["outages"] == 1
    # b: no lease yet, gets its share (2) and no more; rates run on the share too
    assert b.acquire(["site:s"], [6]) is None and b.degraded  # the switch: a grace period
    time.sleep(GRACE_S + 0.05)  # while nodes above their share close the excess
    assert b.cap("site:s", 6) == 2
    got = [b.acquire(["site:s"], [6]) for _ in range(3)]
    assert got.count(None) == 1
    assert b.take(["site:s"], [(30, 1)], 1) == 0.0  # 10/s share
    assert 0.05 < b.take(["site:s"], [(30, 1)], 1) <= 0.11
    b.release(got[0])
    srv.start()
    time.sleep(0.25)
    for x in (a, b):
        x.tick()
    assert not a.degraded and not b.degraded
    r = redis.Redis.from_url(srv.url)
    # the restarted (empty) Redis learnt the leases still held: a's 2 and b's 1
    assert r.zcard("fm:c:{site:s}") == 3
    # shared limits again: 3 more, then the limit
    more = [c.acquire(["site:s"], [6]) for _ in range(4)]
    assert more.count(None) == 1
    for x in (a, b, c):
        x.close()
    assert r.zcard("fm:c:{site:s}") == 0  # nothing leaked


def test_fair_shares_while_another_node_waits(srv):
    a, b = node(srv, "a"), node(srv, "b")
    held = [a.acquire(["site:f"], [4]) for _ in range(4)]
    assert all(held)  # alone, a may take the whole limit
    assert b.acquire(["site:f"], [4]) is None  # full: b is now a node wanting the key
    assert not b.last_denial_fair
    a.release(held.pop())
    # a holds 3 >= ceil(4 / 2 nodes wanting): the freed slot waits for b
    assert a.acquire(["site:f"], [4]) is None
    assert a.last_denial_fair  # refused for its share: it backs off longer
    got = b.acquire(["site:f"], [4])
    assert got is not None
    r = redis.Redis.from_url(srv.url)
    members = r.zrange("fm:c:{site:f}", 0, -1)
    assert sorted(m.split(b":")[0] for m in members) == [b"a", b"a", b"a", b"b"]
    a.release(held.pop())
    a.release(held.pop())
    # a holds 1 < 2: it may take one back; b may grow to its share
    assert b.acquire(["site:f"], [4]) is not None
    assert a.acquire(["site:f"], [4]) is not None
    assert a.acquire(["site:f"], [4]) is None and b.acquire(["site:f"], [4]) is None
    for x in (a, b):
        x.close()


def test_keys_of_one_admission_share_a_cluster_slot(srv):
    from redis.crc import key_slot

    a = node(srv, "a")
    site, prov = "provider:p/site:mx1.p.test", "provider:p"
    assert a.k("c", site) == "fm:c:{provider:p}/site:mx1.p.test"
    assert key_slot(a.k("c", site).encode()) == key_slot(a.k("c", prov).encode())
    assert key_slot(a.k("r", site).encode()) == key_slot(a.k("w", prov).encode())
    assert a.acquire([site, prov], [2, 3])
    r = redis.Redis.from_url(srv.url)
    assert r.zcard("fm:c:{provider:p}/site:mx1.p.test") == 1 == r.zcard("fm:c:{provider:p}")
    # a learned limit goes to the site's state hash (same slot) and to the stream
    b = node(srv, "b")
    a.publish(site, limit=1)
    assert b.learned(site).limit == 1
    assert ("provider:p/site:mx1.p.test", 1) in [(k, x.limit) for k, x in b.signals([site])]
    a.close()
    b.close()


def test_leases_of_a_short_outage_are_removed_when_redis_answers_again(srv):
    """Redis stalls (SIGSTOP) for longer than the timeout: an acquire times out (Redis
    runs it later: a lease nobody holds) and a lease is released while degraded.  Both
    are owed releases, removed at the recovery; before, they stayed until their TTL
    (30 s by default) and starved the site (the stall of docs/scale.md)."""
    import os
    import signal

    a = node(srv, "a", retry_s=0.2)
    held = a.acquire(["site:s"], [6])
    assert held is not None
    r = redis.Redis.from_url(srv.url)
    os.kill(srv.proc.pid, signal.SIGSTOP)
    try:
        assert a.acquire(["site:s"], [6]) is None and a.degraded  # the reply is lost
        a.release(held)  # degraded: Redis cannot be told now
    finally:
        os.kill(srv.proc.pid, signal.SIGCONT)
    assert r.zcard("fm:c:{site:s}") == 2  # the held lease, and the lost acquire's
    assert a.status()["owed_releases"] == 2
    time.sleep(0.25)
    a.tick()
    assert not a.degraded
    assert r.zcard("fm:c:{site:s}") == 0 and a.status()["owed_releases"] == 0
    a.close()


def test_reservations_queue_the_nodes_and_hold_the_rate(srv):
    """Rate cells reserved ahead: every request within ``ahead`` is granted with the time
    it may be used; spent no earlier than that, the cells of all nodes never exceed the
    GCRA (rate x elapsed + burst); beyond ``ahead`` nothing is charged."""
    nodes = [node(srv, n) for n in "abc"]
    rate, burst, k = 200.0, 10, 10
    granted = []  # (usable at, cells)
    t0 = time.monotonic()
    for _ in range(10):
        for x in nodes:
            ok, wait = x.reserve(["site:r"], [(rate, burst)], k, 0.3)
            if ok:
                granted.append((time.monotonic() + wait, k))
    # 30 requests of 10 cells (50 ms of the rate) at once: the first usable now (the
    # burst), the next ones queued 50 ms apart up to 0.3 s ahead, the rest refused
    assert 6 <= len(granted) <= 8
    waits = sorted(t - t0 for t, _ in granted)
    assert waits[0] < 0.05 and 0.25 < waits[-1] < 0.36
    ok, wait = nodes[0].reserve(["site:r"], [(rate, burst)], k, 0.3)
    assert not ok and wait > 0
    for t_use, _ in granted:
        used = sum(c for t, c in granted if t <= t_use)
        assert used <= rate * (t_use - t0) + burst + k
    for x in nodes:
        x.close()
