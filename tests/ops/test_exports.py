"""Exports against real runs: rotated JSONL, accounting CSV, webhooks through a receiver
that fails on purpose, and the durable cursor across restarts."""

from __future__ import annotations

import csv
import glob
import json
import os
import random
import subprocess
import sys
import threading
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from ops_helpers import MESSAGE, make_config, recipients

from fastmta import WorkerPool
from fastmta.ops import events as E
from fastmta.ops.export_base import Cursor
from fastmta.ops.exports import WebhookExporter
from fastmta.spool import Spool
from pathutil import package_parent

pytestmark = pytest.mark.timeout(120)
SRC = package_parent()


class Receiver:
    """A webhook receiver on 127.0.0.1 that fails ``fail_rate`` of the requests: half of
    the failures answer 500 before reading, half take the batch and then drop the
    connection without answering (the sender cannot know: it must send again)."""

    def __init__(self, fail_rate: float = 0.3, seed: int = 8) -> None:
        self.rng = random.Random(seed)
        self.fail_rate = fail_rate
        self.lock = threading.Lock()
        self.acked: dict[str, list[int]] = {}  # batch id -> seqs, answered 200
        self.seen: defaultdict[str, list[list[int]]] = defaultdict(list)  # every body read
        self.requests = 0
        self.failed = 0
        rcv = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                with rcv.lock:
                    rcv.requests += 1
                    fate = rcv.rng.random()
                if fate < rcv.fail_rate / 2:
                    with rcv.lock:
                        rcv.failed += 1
                    self.send_response(500)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                seqs = [e["seq"] for e in body["events"]]
                assert self.headers["X-Fastmta-Batch"] == body["batch_id"]
                with rcv.lock:
                    rcv.seen[body["batch_id"]].append(seqs)
                if fate < rcv.fail_rate:
                    with rcv.lock:
                        rcv.failed += 1
                    self.close_connection = True
                    self.connection.shutdown(2)  # processed, but the answer is lost
                    return
                with rcv.lock:
                    rcv.acked[body["batch_id"]] = seqs
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/hook"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def all_seqs(self) -> set[int]:
        return {s for seqs in self.seen.values() for ss in seqs for s in ss}


def test_webhook_dropping_30_percent_gets_every_event(sim, world, spool_dir):
    rcv = Receiver(0.3)
    try:
        cfg = make_config(sim, webhook_url=rcv.url, webhook_batch=40, webhook_backoff_s=0.05,
                          webhook_backoff_max_s=0.4, export_interval_s=0.1)
        rows = recipients(world, 300, ["fast", "unknownusers", "greylister"], prefix="w")
        with WorkerPool(cfg, spool=spool_dir) as pool:
            h = pool.submit(rows, MESSAGE)
            h.wait(timeout_s=60)
        log = {seq for seq, _ in pool.spool.events()}
        cur = Cursor(os.path.join(spool_dir, "exports", "webhook.cursor"))
    finally:
        rcv.close()
    assert rcv.failed > 0.15 * rcv.requests  # the receiver really failed often
    got = {s for seqs in rcv.acked.values() for s in seqs} | rcv.all_seqs()
    assert log <= got, sorted(log - got)[:10]  # every event arrived at least once
    # a re-sent batch has the same id and the same events (de-duplication works)
    for bid, bodies in rcv.seen.items():
        assert all(b == bodies[0] for b in bodies), bid
    # every event was acknowledged in some batch, and the cursor is at the end
    acked = {s for seqs in rcv.acked.values() for s in seqs}
    assert log <= acked
    assert cur.acked == max(log) and cur.inflight is None
    dup = sum(len(b) - 1 for b in rcv.seen.values())
    print(f"\nwebhook: {rcv.requests} requests, {rcv.failed} failed, "
          f"{len(rcv.seen)} batches, {dup} re-sent after a lost answer")


def test_webhook_batch_id_survives_restart(sim, world, spool_dir):
    cfg = make_config(sim)
    with WorkerPool(cfg, spool=spool_dir) as pool:
        pool.submit(recipients(world, 40, ["fast"], prefix="rs"), MESSAGE).wait(timeout_s=60)
    sp = pool.spool
    down = Receiver(1.0)  # every request fails
    try:
        ex = WebhookExporter(sp, down.url, batch=25, backoff_s=0.01)
        assert ex.step() == 0 and ex.failures == 1
        first_id = next(iter(down.seen)) if down.seen else None
        inflight = Cursor(ex.cursor.path).inflight
        assert inflight is not None  # written before the POST
    finally:
        down.close()
    up = Receiver(0.0)
    try:
        ex2 = WebhookExporter(sp, up.url, batch=25)  # "after a restart": a new instance
        n = ex2.step()
        assert n == 25
        bid = next(iter(up.acked))
        assert bid == f"webhook-{inflight[0]}-{inflight[1]}"
        if first_id is not None:
            assert bid == first_id
        while ex2.step():
            pass
        assert {s for v in up.acked.values() for s in v} == {s for s, _ in sp.events()}
    finally:
        up.close()


def _jsonl_seqs(directory: str) -> list[int]:
    seqs = []
    for path in sorted(glob.glob(os.path.join(directory, "events*.jsonl"))):
        with open(path) as f:
            seqs.extend(json.loads(line)["seq"] for line in f)
    return seqs


def test_jsonl_rotation_and_accounting_csv(sim, world, spool_dir, tmp_path):
    jdir = str(tmp_path / "jsonl")
    csv_path = str(tmp_path / "acct" / "acct.csv")
    cfg = make_config(sim, validity_s=6.0, jsonl_dir=jdir, jsonl_max_bytes=8192,
                      csv_path=csv_path, export_interval_s=0.1)
    rows = recipients(world, 150, ["fast", "unknownusers", "fullboxes", "nxdomain"],
                      prefix="j")
    with WorkerPool(cfg, spool=spool_dir) as pool:
        h = pool.submit(rows, MESSAGE)
        st = h.wait(timeout_s=60)
    log = [seq for seq, _ in pool.spool.events()]
    files = glob.glob(os.path.join(jdir, "events*.jsonl"))
    assert len(files) > 3  # rotated by size
    assert all(os.path.getsize(f) < 8192 + 2048 for f in files)
    seqs = _jsonl_seqs(jdir)
    assert seqs == log, (len(seqs), len(log), sorted(set(log) - set(seqs))[:20],
                         [s for s in seqs if seqs.count(s) > 1][:20])  # once each, in order
    # the accounting CSV: one d per sent, one b per failed, r records for reception
    rows_out = []
    for path in sorted(glob.glob(os.path.join(tmp_path, "acct", "acct*.csv"))):
        with open(path, newline="") as f:
            rows_out.extend(csv.DictReader(f))
    kinds = Counter(r["type"] for r in rows_out)
    assert kinds["d"] == st["sent"] and kinds["b"] == st["failed"]
    assert kinds["t"] > 0  # mailbox full
    assert sum(int(r["count"]) for r in rows_out if r["type"] == "r") == 150
    b = next(r for r in rows_out if r["type"] == "b" and r["reason"] == "user_unknown")
    assert b["dsnAction"] == "failed" and b["dsnStatus"] == "5.1.1"
    assert b["bounceCat"] == "bad-mailbox" and b["dsnDiag"].startswith("smtp;550")
    assert b["orig"] == "news@sender.example" and b["timeQueued"] and b["dlvSourceIp"]
    e = [r for r in rows_out if r["type"] == "b" and r["reason"] == "expired"]
    assert e and all(r["bounceCat"] == "message-expired" for r in e)
    d = next(r for r in rows_out if r["type"] == "d")
    assert d["dsnAction"] == "relayed" and d["dsnStatus"].startswith("2.")
    # the CLI export continues from its own cursor: a second run adds nothing
    Spool.close_all()
    env = dict(os.environ, PYTHONPATH=SRC)
    out_dir = str(tmp_path / "cli")
    for expect in (len(log), 0):
        r = subprocess.run([sys.executable, "-m", "fastmta", "export", "jsonl", "--spool",
                            spool_dir, "--dir", out_dir, "--name", "cli"], env=env,
                           capture_output=True, text=True, timeout=60, check=False)
        assert r.returncode == 0, r.stderr
        assert f"{expect} events exported" in r.stderr
    assert _jsonl_seqs(out_dir) == log
    assert all(E.from_json(json.dumps(x)) for x in [{"type": "admin", "action": "x"}])


def test_jsonl_rotates_by_age(tmp_path):
    from fastmta.ops.exports import JsonlExporter
    from fastmta.records import AdminEvent

    sp = Spool.open(tmp_path / "spool")
    try:
        sp.append_events([AdminEvent(ts_ms=1, action="a")])
        ex = JsonlExporter(sp, tmp_path / "j", max_age_s=60.0)
        assert ex.step() == 1
        assert len(glob.glob(str(tmp_path / "j" / "events*.jsonl"))) == 1
        ex.out.opened -= 61.0  # the open file is a minute old now
        sp.append_events([AdminEvent(ts_ms=2, action="b")])
        assert ex.step() == 1
        files = sorted(glob.glob(str(tmp_path / "j" / "events-*.jsonl")))
        assert len(files) == 1 and files[0].endswith("-000000000002.jsonl")
        assert _jsonl_seqs(str(tmp_path / "j")) == [1, 2]
        ex.close()
    finally:
        Spool.close_all()


def test_webhook_type_filter(tmp_path):
    from fastmta.records import AdminEvent, DeliveryEvent

    sp = Spool.open(tmp_path / "spool")
    rcv = Receiver(0.0)
    try:
        sp.append_events([AdminEvent(ts_ms=1, action="a"),
                          DeliveryEvent(ts_ms=2, delivery_id=1, kind="received", count=3),
                          AdminEvent(ts_ms=3, action="b")])
        ex = WebhookExporter(sp, rcv.url, types=["admin"])
        assert ex.step() == 2
        assert ex.step() == 0 and ex.cursor.acked == 3
        assert sorted(s for v in rcv.acked.values() for s in v) == [1, 3]
        with pytest.raises(ValueError, match="http"):
            WebhookExporter(sp, "ftp://x")
    finally:
        rcv.close()
        Spool.close_all()
