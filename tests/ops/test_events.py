"""Every event type, written durably by a real run, read back through the API and the
``fastmta events`` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import pytest
from ops_helpers import MESSAGE, make_config, recipients

from fastmta import WorkerPool
from fastmta.ops import events as E
from fastmta.ops.admin import Admin
from fastmta.spool import Spool
from pathutil import package_parent

pytestmark = pytest.mark.timeout(120)

SRC = package_parent()


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.path.abspath(SRC))
    return subprocess.run([sys.executable, "-m", "fastmta", *args], capture_output=True,
                          env=env, timeout=timeout, check=False)


def test_every_event_type(sim, world, spool_dir):
    cfg = make_config(sim, validity_s=6.0)
    rows = recipients(world, 240, ["fast", "unknownusers", "greylister", "fullboxes",
                                   "blocker", "nxdomain"], prefix="e")
    with WorkerPool(cfg, spool=spool_dir) as pool:
        h = pool.submit(rows, MESSAGE)
        Admin(pool.spool).suspend(delivery=h.id, reason="check")
        pool.admin.resume(delivery=h.id)
        st = h.wait(timeout_s=60)
        all_events = list(E.EventReader(pool.spool).poll(limit=100_000))
    kinds = Counter(E.event_type(e) for e in all_events)
    for t in ("reception", "delivery", "bounce", "transient", "expiration", "site", "admin",
              "delivery_state"):
        assert kinds[t] > 0, (t, kinds)
    assert kinds["delivery"] == st["sent"]
    # sequence numbers are the log's: strictly increasing, no gaps
    seqs = [e.seq for e in all_events]
    assert seqs == list(range(1, len(seqs) + 1))
    rec = [e for e in all_events if isinstance(e, E.Reception)]
    assert sum(e.count for e in rec) == 240
    # final state per recipient agrees with the last recipient event
    last = {}
    for e in all_events:
        if E.event_type(e) in E.RECIPIENT_TYPES:
            last[e.email] = e
    sp = pool.spool
    for _rid, r in sp.recipients(h.id):
        ev = last[r.email]
        if r.status_name == "sent":
            assert isinstance(ev, E.Delivery)
        else:
            assert isinstance(ev, E.Bounce | E.Expiration), (r, ev)
            assert ev.reason == r.reason or (isinstance(ev, E.Expiration)
                                              and r.reason == "expired")
    hard = [e for e in all_events if isinstance(e, E.Bounce) and e.reason == "user_unknown"]
    assert hard
    b = hard[0]
    assert b.bounce_class == 10 and b.bounce_type == "hard" and b.code == 550
    assert b.reply.startswith("550") and b.mx and b.source_ip.startswith("127.")
    nx = [e for e in all_events if isinstance(e, E.Bounce) and e.reason == "invalid_domain"]
    assert nx and nx[0].bounce_class == 21
    tr = [e for e in all_events if isinstance(e, E.Transient)]
    assert {e.reason for e in tr} >= {"mailbox_full"}
    exp = [e for e in all_events if isinstance(e, E.Expiration)]
    assert exp and all(e.email.split("@")[1] in {d for d in world.domains
                                                 if world.expected(e.email)[0] == "soft"}
                       or True for e in exp)
    assert all(world.expected(e.email)[0] == "soft" for e in exp)
    site = [e for e in all_events if isinstance(e, E.SiteChange)]
    blocked = [e for e in site if e.kind == "suspended" and "blocker" in e.site]
    assert blocked and blocked[0].reason and blocked[0].until_ms > blocked[0].ts_ms
    # adaptive limits moved somewhere (connection limit or rate) and were logged
    assert any(e.kind == "limit" and e.limit >= 1 for e in site)
    adm = [e for e in all_events if isinstance(e, E.AdminAction)]
    assert [(a.action, a.target) for a in adm] == [("suspend", f"delivery:{h.id}"),
                                                   ("resume", f"delivery:{h.id}")]
    # JSON round trip of every event
    for e in all_events:
        assert E.from_json(E.to_json(e)) == e


def test_events_cli_jsonl_and_follow(sim, world, spool_dir):
    cfg = make_config(sim)
    with WorkerPool(cfg, spool=spool_dir) as pool:
        h = pool.submit(recipients(world, 30, ["fast"], prefix="c"), MESSAGE)
        h.wait(timeout_s=60)
    n_log = pool.spool.last_event_seq()  # after stop: shutdown may log too
    Spool.close_all()
    out = _cli("events", "--spool", spool_dir)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(x) for x in out.stdout.splitlines()]
    assert [x["seq"] for x in lines] == list(range(1, n_log + 1))
    assert sum(1 for x in lines if x["type"] == "delivery") == 30
    out = _cli("events", "--spool", spool_dir, "--type", "delivery", "--delivery", str(h.id))
    assert len(out.stdout.splitlines()) == 30
    # --follow prints what is appended while it runs
    env = dict(os.environ, PYTHONPATH=os.path.abspath(SRC))
    proc = subprocess.Popen([sys.executable, "-m", "fastmta", "events", "--spool", spool_dir,
                             "--follow", "--timeout", "20"], stdout=subprocess.PIPE, env=env)
    try:
        import time

        time.sleep(1.5)  # let the follower open the spool and position at the end
        sp = Spool.open(spool_dir)
        Admin(sp).suspend(site="mx0.example.test", reason="follow test")
        line = proc.stdout.readline()
        ev = json.loads(line)
        assert ev["type"] == "admin" and ev["action"] == "suspend"
        assert ev["seq"] == n_log + 1
    finally:
        proc.kill()
        proc.wait(10)
    out = _cli("events", "--spool", spool_dir, "--type", "nonsense")
    assert out.returncode != 0 and b"unknown event type" in out.stderr
