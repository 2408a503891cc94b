"""Sending TLS-RPT aggregate reports (RFC 8460): the rua of the sim's ``_smtp._tls``
TXT records, the gzip JSON attachment arriving at the sim's mailbox, no second sending,
and the domains that publish no TLSRPT record."""

from __future__ import annotations

import asyncio
import email
import email.policy
import gzip
import json
import time

import pytest
from click.testing import CliRunner

from fastmta.cli import main
from fastmta.compliance.tlsrpt import TlsResultLog, day_of, report
from fastmta.compliance.tlsrpt_send import (
    build_message,
    mailto_address,
    parse_tlsrpt_txt,
    send_reports,
)
from fastmta.config import to_toml
from fastmta.sim import SimInternet
from fastmta.sim.config import demo_sender, mta_sts_records, sim_config, tlsrpt_records
from fastmta.sim.world import Provider, World, WorldSpec

POLICY = ["version: STSv1", "mode: enforce", "mx: *.stsprov.sim.test", "max_age: 600"]


def test_parse_tlsrpt_txt():
    assert parse_tlsrpt_txt(["v=TLSRPTv1; rua=mailto:a@x.test,https://r.x.test/v1"]) == [
        "mailto:a@x.test", "https://r.x.test/v1"]
    assert parse_tlsrpt_txt(["v=spf1 -all"]) == []
    assert parse_tlsrpt_txt(["v=TLSRPTv1; rua=mailto:a@x.test",
                             "v=TLSRPTv1; rua=mailto:b@x.test"]) == []  # two: none
    assert mailto_address("mailto:tls%2Breports@x.test") == "tls+reports@x.test"
    assert mailto_address("mailto:a@x.test?subject=hi") == "a@x.test"
    assert mailto_address("https://r.x.test/") is None
    assert mailto_address("mailto:a@b@c") is None


def _seed(directory, ts: float) -> None:
    log = TlsResultLog(directory)
    for i in range(3):
        log.record(ts=ts + i, domain="enforce.test", policy_type="sts", policy=POLICY,
                   mx="mx1.stsprov.sim.test", ip="127.0.0.1", result="success")
    log.record(ts=ts + 5, domain="enforce.test", policy_type="sts", policy=POLICY,
               mx="mx9.other.test", ip="127.0.0.9", result="validation-failure",
               detail="MX host not listed in the policy")
    log.record(ts=ts + 6, domain="norpt.test", policy_type="sts", policy=POLICY,
               mx="mx1.stsprov.sim.test", ip="127.0.0.1", result="success")


def test_message_format(tmp_path):
    ts = time.time()
    _seed(tmp_path, ts)
    rep = report(tmp_path, "enforce.test", day_of(ts), organization="fastmta.test")
    raw = build_message(rep, from_addr="tlsrpt@fastmta.test", to_addrs=["r@rpt.test"])
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "tlsrpt"
    assert msg["TLS-Report-Domain"] == "enforce.test"
    assert msg["TLS-Report-Submitter"] == "fastmta.test"
    assert msg["Subject"] == ("Report Domain: enforce.test Submitter: fastmta.test "
                              f"Report-ID: <{rep['report-id']}>")
    att = [p for p in msg.walk() if p.get_content_type() == "application/tlsrpt+gzip"]
    assert len(att) == 1
    name = att[0].get_filename()
    parts = name.split("!")
    assert parts[:2] == ["fastmta.test", "enforce.test"] and name.endswith(".json.gz")
    assert int(parts[3]) - int(parts[2]) == 86399
    assert json.loads(gzip.decompress(att[0].get_payload(decode=True))) == rep
    assert b"\r\n" in raw and b"\n\n" not in raw.replace(b"\r\n", b"")


def _world() -> World:
    records = [*mta_sts_records("enforce.test"),
               *tlsrpt_records("enforce.test",
                               "mailto:tls-reports@rpt.test,https://reports.rpt.test/v1")]
    return World(WorldSpec(name="tlsrpt", providers=[
        Provider(name="stsprov", domains=["enforce.test", "norpt.test"]),
        Provider(name="rpt", domains=["rpt.test"]),
    ], records=records))


def _dns_txt(world):
    zone = {r.name.lower() + ".": "".join(r.data).encode() for r in world.spec.records
            if r.type == "TXT"}
    return lambda name, timeout=5: zone.get(name.decode().lower())


@pytest.mark.timeout(60)
def test_reports_arrive_at_the_rua_mailbox(tmp_path):
    import msgspec

    import dkim as dkimpy

    ts = time.time()
    day = day_of(ts)
    rdir = tmp_path / "tls-rpt"
    _seed(rdir, ts)
    world, dkim_cfg = demo_sender(_world(), tmp_path)  # a DKIM key for sender.example

    async def go():
        async with SimInternet(world, keep_messages=True) as sim:
            cfg = msgspec.structs.replace(sim_config(sim, validity_s=10.0), dkim=dkim_cfg)
            rows = await send_reports(cfg, rdir, day, from_addr="tlsrpt@sender.example",
                                      organization="fastmta.test")
            msgs = await sim.messages()
            again = await send_reports(cfg, rdir, day, from_addr="tlsrpt@sender.example")
            cfg_file = tmp_path / "fastmta.toml"
            cfg_file.write_text(to_toml(cfg))
            # the command, with --force: sent once more, JSON rows on stdout
            res = await asyncio.to_thread(CliRunner().invoke, main, [
                "tls", "send-reports", "--config", str(cfg_file), "--dir", str(rdir),
                "--day", day, "--domain", "enforce.test", "--force", "--json"])
            return rows, msgs, again, res, await sim.messages()

    rows, msgs, again, res, msgs2 = asyncio.run(go())
    by = {(r["domain"], r["rua"]): r for r in rows}
    assert by[("enforce.test", "mailto:tls-reports@rpt.test")]["status"] == "sent"
    https = by[("enforce.test", "https://reports.rpt.test/v1")]
    assert https["status"] == "skipped" and "https" in https["detail"]
    assert by[("norpt.test", "")]["status"] == "skipped"
    assert "no v=TLSRPTv1 record at _smtp._tls.norpt.test" in by[("norpt.test", "")]["detail"]
    assert len(msgs) == 1
    mail_from, rcpts, data = msgs[0]
    assert mail_from == "tlsrpt@sender.example" and rcpts == ["tls-reports@rpt.test"]
    # DKIM-signed by the submitter's key (RFC 8460 3), verified by dkimpy
    assert by[("enforce.test", "mailto:tls-reports@rpt.test")]["dkim"] is True
    assert data.startswith(b"DKIM-Signature:") and b"d=sender.example" in data
    assert dkimpy.verify(data, dnsfunc=_dns_txt(world))
    msg = email.message_from_bytes(data, policy=email.policy.default)
    att = [p for p in msg.walk() if p.get_content_type() == "application/tlsrpt+gzip"][0]
    got = json.loads(gzip.decompress(att.get_payload(decode=True)))
    assert got == report(rdir, "enforce.test", day, organization="fastmta.test")
    pol = got["policies"][0]
    assert pol["policy"]["policy-string"] == POLICY
    assert pol["summary"] == {"total-successful-session-count": 3,
                              "total-failure-session-count": 1}
    assert pol["failure-details"][0]["result-type"] == "validation-failure"
    # a second run sends nothing again
    assert all(r["status"] == "skipped" for r in again)
    assert any("already sent" in r["detail"] for r in again)
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["day"] == day
    assert [r["status"] for r in out["reports"] if r["rua"].startswith("mailto:")] == ["sent"]
    assert len(msgs2) == 2
