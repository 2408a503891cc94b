"""The recipients index (``fastmta.http.rcpt_index``) on a real spool: indexed pages
equal the full scan for every filter, follow status changes committed after the build
(through the event log), and the API switches to it for a big delivery."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from http_helpers import TOKEN, wait_for

from fastmta.config import Config
from fastmta.engine import entry as engine
from fastmta.http.rcpt_index import RecipientIndexes
from fastmta.http.recipients_page import page
from fastmta.http.server import HttpServer
from fastmta.records import Result
from fastmta.spool import Spool
from fastmta.spool.keys import pack_rcpt

N = 6000
MESSAGE = b"From: a@sender.example\nSubject: x\n\nhello\n"


def hard(did: int, rid: int, reason: str) -> Result:
    return Result(key=pack_rcpt(did, rid), outcome="hard", code=550, enhanced="5.1.1",
                  bounce_class=10, type="hard", reason=reason, reply="550 no")


def soft(did: int, rid: int, reason: str) -> Result:
    return Result(key=pack_rcpt(did, rid), outcome="soft", code=451, enhanced="4.7.1",
                  bounce_class=20, type="soft", reason=reason, reply="451 later")


@pytest.fixture
def filled(tmp_path):
    """A delivery of N recipients over 100 domains (a few invalid lines excluded), with
    hard bounces (1 in 40), soft ones (1 in 70) and sent ones (1 in 3)."""
    cfg = Config()
    path = tmp_path / "r.csv"
    with open(path, "w") as f:
        f.write("email\n")
        for i in range(N):
            f.write(f"user{i}@d{i % 100}.example\n" if i % 997 else "not-an-address\n")
    spool = Spool.open(str(tmp_path / "spool"), cfg.spool)
    a = asyncio.run(engine.inject_file(spool, cfg, path, MESSAGE, route_by_mx=False))
    did = a.delivery_id
    res = [hard(did, r, "user_unknown" if r % 80 else "mailbox_full")
           for r in range(0, N, 40) if r % 997]
    res += [soft(did, r, "greylisted") for r in range(5, N, 70)]
    res += [Result(key=pack_rcpt(did, r), outcome="sent", code=250) for r in range(1, N, 3)]
    spool.commit(res)
    try:
        yield cfg, spool, did, tmp_path
    finally:
        Spool.close_all()


def walk(spool, did: int, index, **flt) -> list[int]:
    """Every matching recipient id, following the cursor to the end."""
    out, cursor = [], 0
    for _ in range(10_000):
        r = page(spool, did, cursor=cursor, limit=97, budget_s=None, index=index, **flt)
        out += [x["rcpt_id"] for x in r["items"]]
        if r["next_cursor"] is None:
            return out
        cursor = r["next_cursor"]
    raise AssertionError("cursor did not end")


def ready_index(spool, did):
    ix = RecipientIndexes(spool, min_recipients=0)
    return ix, wait_for(lambda: ix.get(did), timeout=30)


FILTERS = [{"status": "failed"}, {"status": "sent"}, {"status": "pending"},
           {"status": "excluded"}, {"reason": "mailbox_full"}, {"reason": "greylisted"},
           {"reason": "nope"}, {"domain": "d7.example"}, {"domain": "D7.Example"},
           {"domain": "none.example"}, {"domain": "d3.example", "status": "failed"},
           {"status": "sent", "q": "user1"}, {"reason": "user_unknown", "domain": "d0.example"}]


@pytest.mark.parametrize("flt", FILTERS, ids=[str(f) for f in FILTERS])
def test_indexed_pages_equal_the_scan(filled, flt):
    _cfg, spool, did, _ = filled
    _ix, idx = ready_index(spool, did)
    want = walk(spool, did, None, **flt)
    got = walk(spool, did, idx, **flt)
    assert got == want
    r = page(spool, did, limit=50, index=idx, **flt)
    assert r["indexed"] is True and r["count"] == min(50, len(want))


def test_the_index_follows_later_commits(filled):
    _cfg, spool, did, _ = filled
    ix, idx = ready_index(spool, did)
    before = walk(spool, did, idx, reason="mailbox_full")
    # soft recipients that become hard bounces with a new reason, after the build
    later = walk(spool, did, None, reason="greylisted", status="pending")[:20]
    assert len(later) == 20
    spool.commit([hard(did, r, "policy_block") for r in later])
    idx = wait_for(lambda: ix.get(did), timeout=10)
    assert walk(spool, did, idx, reason="policy_block") == later
    assert walk(spool, did, idx, reason="policy_block") == walk(spool, did, None,
                                                                reason="policy_block")
    assert set(later) <= set(walk(spool, did, idx, status="failed"))
    assert walk(spool, did, idx, reason="mailbox_full") == before
    assert ix.last_seq[did] == spool.last_event_seq()


def test_the_api_uses_the_index_for_a_big_delivery(filled):
    cfg, spool, did, tmp_path = filled
    srv = HttpServer(cfg, spool.path, "127.0.0.1:0", token=TOKEN).start()
    try:
        srv.ctx.rcpt_indexes.min_recipients = 1000
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            url = f"/api/v1/deliveries/{did}/recipients"
            params = {"domain": "d7.example", "status": "failed", "limit": 5}
            first = c.get(url, params=params).json()  # the build starts in the background
            deadline = time.monotonic() + 30
            while True:
                r = c.get(url, params=params).json()
                if r["indexed"] or time.monotonic() > deadline:
                    break
            assert r["indexed"] is True
            assert [x["rcpt_id"] for x in r["items"]] == walk(
                spool, did, None, domain="d7.example", status="failed")[:5]
            assert all(x["status"] == "failed" and x["email"].endswith("@d7.example")
                       for x in r["items"])
            assert first["items"][:len(first["items"])] == r["items"][:len(first["items"])]
            small = c.get(url, params={"q": "user12"}).json()
            assert small["indexed"] is False  # no indexable filter: the scan
    finally:
        srv.stop()


def test_timeline_reads_a_long_log_in_bounded_steps(filled):
    """(The timeline shares this spool fixture.)  A tiny budget: each call reads a part
    of the log, says so, and the calls converge to the whole log's counts."""
    from fastmta.http.timeline import Timelines

    _cfg, spool, did, _ = filled
    whole = Timelines(spool).of(did)
    assert whole["complete"] and whole["last_seq"] == spool.last_event_seq()
    t = Timelines(spool)
    seen, calls = [], 0
    while True:
        seq, done = t.update(budget_s=1e-9)
        seen.append(seq)
        calls += 1
        if done:
            break
        assert calls < 100
    assert calls > 1 and seen == sorted(seen) and seen[-1] == whole["last_seq"]
    part = t.of(did)
    assert {k: part[k] for k in ("sent", "failed", "soft", "received", "t")} == \
        {k: whole[k] for k in ("sent", "failed", "soft", "received", "t")}
