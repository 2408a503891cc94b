"""The CLI commands of issue #3 (click runner, real spool on disk)."""

from __future__ import annotations

import csv
import io
import json

import pytest
from click.testing import CliRunner

from fastmta.cli import main
from fastmta.records import Result
from fastmta.spool import Spool

MSG = (b"From: Shop <news@shop.example>\nTo: {{email}}\nSubject: Hi {{first}}\n\nHello {{first}}\n")
CSV = "email,first\na@x.example,A\n,B\nbad,C\nA@X.example,D\na@x.example,E\nq@y.example,F\n"


@pytest.fixture
def files(tmp_path):
    (tmp_path / "r.csv").write_text(CSV)
    (tmp_path / "m.eml").write_bytes(MSG)
    yield tmp_path
    Spool.close_all()


def run(*args, ok=True):
    res = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert res.exit_code == 0, res.output
    return res


def test_analyze_json_and_exclusions(files):
    sp = files / "spool"
    run("quarantine", "add", "q@y.example", "--spool", sp)
    out = run("analyze", "--recipients", files / "r.csv", "--message", files / "m.eml",
              "--json", "--exclusions", files / "ex.csv", "--spool", sp).output
    a = json.loads(out)
    assert a["recipients"] == 6 and a["to_deliver"] == 2
    assert a["excluded"] == {"double": 1, "unqualified_address": 1, "address_in_quarantine": 1,
                             "denylisted_address": 0, "address_not_specified": 1}
    assert isinstance(a["warnings"], list) and any("List-Unsubscribe" in w for w in a["warnings"])
    rows = list(csv.DictReader(open(files / "ex.csv")))
    assert [(r["line"], r["reason"]) for r in rows] == [
        ("3", "address_not_specified"), ("4", "unqualified_address"), ("6", "double"),
        ("7", "address_in_quarantine")]
    run("analyze", "--recipients", files / "r.csv", "--message", files / "m.eml",
        "--exclusions", files / "ex.jsonl", "--spool", sp)
    lines = [json.loads(x) for x in open(files / "ex.jsonl")]
    assert lines[0] == {"line": 3, "email": "", "reason": "address_not_specified", "detail": ""}


def test_analyze_bad_input_is_a_clear_error(files):
    (files / "bad.csv").write_text("name\nx\n")
    res = run("analyze", "--recipients", files / "bad.csv", "--message", files / "m.eml",
              "--spool", files / "none", ok=False)
    assert res.exit_code == 1 and "no email column" in res.output


def test_inject_status_report_log(files):
    sp_dir = files / "spool"
    out = run("inject", "--recipients", files / "r.csv", "--message", files / "m.eml",
              "--validity", "2d", "--json", "--spool", sp_dir).output
    did = json.loads(out)["delivery_id"]
    sp = Spool.open(str(sp_dir))
    d = sp.delivery(did)
    assert d.expires_ms - d.created_ms == 2 * 86400_000
    items = sp.lease(range(64), "t", 10)
    sp.commit([Result(key=items[0].key, outcome="sent", code=250, mx="mx.x.example",
                      source_ip="127.0.0.9"),
               Result(key=items[1].key, outcome="hard", code=550, enhanced="5.1.1",
                      bounce_class=10, type="hard", reason="user_unknown",
                      reply="550 5.1.1 unknown user")])
    st = json.loads(run("status", str(did), "--json", "--spool", sp_dir).output)
    assert (st["sent"], st["failed"], st["pending"], st["to_deliver"]) == (1, 1, 1, 3)
    rep = json.loads(run("report", str(did), "--json", "--spool", sp_dir).output)
    assert rep["success_pct"] == pytest.approx(33.33)
    assert rep["by_reason"] == {"user_unknown": 1}
    assert rep["by_bounce_class"] == {"10 Invalid Recipient": 1}
    assert rep["by_domain"][items[0].domain]["sent"] == 1
    assert rep["excluded_by_reason"] == {"unqualified_address": 1, "address_not_specified": 1,
                                         "double": 1} and rep["excluded"] == 3
    assert "Success" in run("report", str(did), "--spool", sp_dir).output
    log = run("log", str(did), "--format", "csv", "--spool", sp_dir).output
    rows = list(csv.DictReader(io.StringIO(log)))
    assert list(rows[0])[:12] == ["type", "timeQueued", "timeFirstAttempt", "timeLogged", "orig",
                                  "rcpt", "dsnAction", "dsnStatus", "dsnDiag", "dsnMta",
                                  "bounceCat", "dlvSourceIp"]
    by_rcpt = {r["rcpt"]: r for r in rows if r["type"] in ("d", "b")}
    sent = by_rcpt[items[0].email]
    assert sent["dsnAction"] == "relayed" and sent["dsnMta"] == "mx.x.example"
    bounced = by_rcpt[items[1].email]
    assert (bounced["type"], bounced["dsnStatus"], bounced["bounceCat"]) == ("b", "5.1.1", "bad-mailbox")
    assert bounced["dsnDiag"] == "smtp;550 5.1.1 unknown user" and bounced["jobId"] == str(did)
    jl = [json.loads(x) for x in run("log", str(did), "--format", "jsonl", "--spool", sp_dir).output.splitlines()]
    assert len(jl) == 6 and {r["type"] for r in jl} == {"d", "b", "q", "x"}
    att = run("log", str(did), "--attempts", "--format", "jsonl", "--spool", sp_dir).output.splitlines()
    assert [json.loads(x)["outcome"] for x in att] == ["sent", "hard"]
    # the hard bounce put the address in quarantine
    ql = run("quarantine", "list", "--json", "--spool", sp_dir).output.splitlines()
    assert json.loads(ql[0])["address"] == items[1].email.lower()
    assert "released" in run("quarantine", "remove", items[1].email, "--spool", sp_dir).output
    assert run("quarantine", "remove", items[1].email, "--spool", sp_dir, ok=False).exit_code == 1


def test_status_of_unknown_delivery(files):
    run("quarantine", "add", "x@y.example", "--spool", files / "spool")
    res = run("status", "42", "--spool", files / "spool", ok=False)
    assert res.exit_code == 1 and "no delivery 42" in res.output


def test_inject_jsonl_expire_resize_and_info(files):
    (files / "r.jsonl").write_text('{"email": "a@x.example", "first": "A"}\n{"email": "bad"}\n')
    sp_dir = files / "spool"
    out = run("inject", "--recipients", files / "r.jsonl", "--message", files / "m.eml",
              "--validity", "60s", "--json", "--spool", sp_dir).output
    a = json.loads(out)
    assert a["to_deliver"] == 1 and a["excluded"]["unqualified_address"] == 1
    sp = Spool.open(str(sp_dir))
    d = sp.delivery(a["delivery_id"])
    assert d.expires_ms - d.created_ms == 60_000
    assert "0 recipient(s) expired" in run("spool", "expire", "--spool", sp_dir).output
    res = run("spool", "resize", "--map-size", "1G", "--spool", sp_dir, ok=False)
    assert res.exit_code == 1 and "only be raised" in res.output  # default map is 64 GiB
    assert "map size now" in run("spool", "resize", "--map-size", "128G", "--spool", sp_dir).output
    info = json.loads(run("spool", "info", "--spool", sp_dir).output)
    assert info["map_size"] == 128 * 1024**3 and info["entries"]["rcpt"] == 2
    bad = run("inject", "--recipients", files / "r.jsonl", "--message", files / "m.eml",
              "--validity", "4d", "--spool", sp_dir, ok=False)
    assert bad.exit_code == 1 and "3.5 days" in bad.output


def test_analyze_as_a_real_process(files):
    import os
    import subprocess
    import sys

    import fastmta

    env = dict(os.environ)
    src = os.path.dirname(os.path.dirname(fastmta.__file__))
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(
        [sys.executable, "-m", "fastmta", "analyze", "--recipients", str(files / "r.csv"),
         "--message", str(files / "m.eml"), "--json", "--spool", str(files / "none")],
        capture_output=True, text=True, timeout=60, env=env, check=True,
    ).stdout
    a = json.loads(out)
    assert set(a) >= {"recipients", "to_deliver", "excluded", "warnings"}
    assert a["excluded"] == {"double": 1, "unqualified_address": 1, "address_in_quarantine": 0,
                             "denylisted_address": 0, "address_not_specified": 1}
