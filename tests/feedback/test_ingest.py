"""``fastmta inbound ingest`` (mbox, Maildir, stdin) and ``inbound list|show``."""

from __future__ import annotations

import json
import mailbox
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fbhelpers import DOMAIN, original, rid_of, sent_delivery, tokens_for

from fastmta.records import Status
from fastmta.sim.feedback import build_arf, build_dsn
from fastmta.spool import Spool

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args, stdin: bytes | None = None, cfg: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "fastmta", "inbound", *args, "--config",
                           str(cfg)], input=stdin, capture_output=True, env=env, timeout=120)


def test_ingest_mbox_maildir_stdin(tmp_path):
    spath = str(tmp_path / "s")
    sp, did, items = sent_delivery(spath, 6)
    tok = tokens_for(sp)
    msgs = []
    for it in items[:4]:
        rid = rid_of(it)
        msgs.append(build_dsn(it.email, tok.return_path(tok.token(did, rid)),
                              original(tok, did, rid, it.email), style="exim"))
    Spool.close_all()
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[spool]\npath = "{spath}"\n[feedback]\nenabled = true\n'
                   f'domains = ["{DOMAIN}"]\n')
    box = mailbox.mbox(str(tmp_path / "bounces.mbox"))
    for m in msgs[:2]:
        box.add(mailbox.mboxMessage(m))
    box.flush()
    md = mailbox.Maildir(str(tmp_path / "Maildir"))
    md.add(mailbox.MaildirMessage(msgs[2]))
    md.flush()
    for src, stdin in ((str(tmp_path / "bounces.mbox"), None), (str(tmp_path / "Maildir"), None),
                       ("-", msgs[3])):
        r = _cli("ingest", "-q", src, stdin=stdin, cfg=cfg)
        assert r.returncode == 0, r.stderr
    r = _cli("ingest", "-q", str(tmp_path / "bounces.mbox"), cfg=cfg)  # again: no change
    summary = json.loads(r.stdout.decode().strip().splitlines()[-1])
    assert summary == {"ingested": 2, "effects": {"duplicate": 2}}
    # an ARF with the recipient redacted, through stdin
    arf = build_arf(items[5].email, original(tok, did, rid_of(items[5]), items[5].email))
    assert _cli("ingest", "-q", "-", stdin=arf, cfg=cfg).returncode == 0
    assert _cli("ingest", str(tmp_path / "missing"), cfg=cfg).returncode != 0
    sp = Spool.open(spath)
    assert [sp.recipient(did, rid_of(i)).status for i in items] == \
        [Status.FAILED] * 4 + [Status.SENT] * 2
    assert "complained" in sp.recipient(did, rid_of(items[5])).feedback
    lines = _cli("list", cfg=cfg).stdout.decode().splitlines()
    recs = [json.loads(x) for x in lines]
    assert [x["effect"] for x in recs] == ["failed"] * 4 + ["duplicate"] * 2 + ["complained"]
    shown = _cli("show", str(recs[0]["id"]), cfg=cfg).stdout
    assert b'"effect": "failed"' in shown and b"Mail delivery failed" in shown
    assert _cli("show", "999", cfg=cfg).returncode != 0


@pytest.mark.parametrize("processes", [1, 2])
def test_inbound_serve_command(tmp_path, processes):
    """`fastmta inbound serve` as an operator starts it: refuses relaying, takes a DSN
    (also with ``--processes 2``: a second listener process on the same port)."""
    import smtplib

    from fastmta.sim.mx import free_port

    spath = str(tmp_path / "s")
    sp, did, items = sent_delivery(spath, 1)
    tok = tokens_for(sp)
    it = items[0]
    rid = rid_of(it)
    rp = tok.return_path(tok.token(did, rid))
    raw = build_dsn(it.email, rp, original(tok, did, rid, it.email), style="qmail")
    Spool.close_all()
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-m", "fastmta", "inbound", "serve", "--listen",
                          f"127.0.0.1:{port}", "--domain", DOMAIN, "--spool", spath,
                          "--processes", str(processes)],
                         stderr=subprocess.PIPE, env=env)
    try:
        line = p.stderr.readline().decode()  # printed once the socket listens
        assert f"SMTP on 127.0.0.1:{port}" in line, line
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
            c.ehlo("x")
            c.mail("")
            assert c.rcpt("someone@example.org")[0] == 550
            assert c.rcpt(rp)[0] == 250
            assert c.data(raw)[0] == 250
    finally:
        p.terminate()
        p.wait(timeout=20)
    sp = Spool.open(spath)
    assert sp.recipient(did, rid).status == Status.FAILED
