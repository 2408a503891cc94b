"""MTA-STS against the simulated internet: policies fetched over HTTPS on loopback (the
sim's own CA), cached for max_age, and enforced by the engine: enforce refuses a
non-matching MX and an untrusted certificate, testing mode delivers and logs; every
attempt is recorded for TLS-RPT and `fastmta tls report` writes the report."""

from __future__ import annotations

import asyncio
import json

import msgspec
import pytest
from click.testing import CliRunner

from fastmta.cli import main
from fastmta.engine import entry as engine
from fastmta.sim import SimInternet
from fastmta.sim.config import mta_sts_records, sim_config
from fastmta.sim.world import Behaviour, Provider, World, WorldSpec
from fastmta.smtp.mta_sts_fetch import PolicyFetcher
from fastmta.spool import Spool

ENFORCE = "version: STSv1\nmode: enforce\nmx: *.stsprov.sim.test\nmax_age: 600\n"
TESTING = "version: STSv1\nmode: testing\nmx: mx.elsewhere.test\nmax_age: 600\n"
ELSEWHERE = "version: STSv1\nmode: enforce\nmx: mx.elsewhere.test\nmax_age: 600\n"


def world() -> World:
    policies = {"enforce.test": ENFORCE, "testing.test": TESTING, "mismatch.test": ELSEWHERE,
                "notls.test": ENFORCE.replace("*.stsprov.sim.test", "*.plainprov.sim.test")}
    records = [r for d in policies for r in mta_sts_records(d)]
    return World(WorldSpec(name="sts", providers=[
        Provider(name="stsprov", domains=["enforce.test", "testing.test", "mismatch.test",
                                          "nosts.test"],
                 behaviour=Behaviour(starttls=True, keep_messages=True)),
        Provider(name="plainprov", domains=["notls.test"]),
    ], records=records, mta_sts=policies))


def test_fetch_and_cache_max_age():
    async def go():
        async with SimInternet(world()) as sim:
            clock = [1000.0]
            f = PolicyFetcher(["127.0.0.1"], sim.dns_port, https_port=sim.mta_sts_port,
                              cafile=sim.ca_file, timeout_s=3.0, clock=lambda: clock[0])
            r1 = await f.policy("enforce.test")
            assert r1.source == "fetched" and r1.policy.mode == "enforce" and r1.policy.id == "sim1"
            assert f.fetches == 1 and sim.mta_sts.requests == 1
            clock[0] += 599.0
            r2 = await f.policy("enforce.test")
            assert r2.source == "cache" and f.fetches == 1  # within max_age: no refetch
            clock[0] += 2.0
            r3 = await f.policy("enforce.test")
            assert r3.source == "fetched" and f.fetches == 2  # max_age passed: refetched
            none = await f.policy("nosts.test")
            assert none.policy is None and none.source == "none" and not none.failure
            # a policy host whose certificate is not trusted: sts-webpki-invalid, no policy
            bad = PolicyFetcher(["127.0.0.1"], sim.dns_port, https_port=sim.mta_sts_port,
                                cafile=sim.cert[0], timeout_s=3.0)
            r4 = await bad.policy("enforce.test")
            assert r4.policy is None and r4.failure == "sts-webpki-invalid"
            # RFC 8461 5.1: a cached policy stays in force when a refetch fails
            stale = PolicyFetcher(["127.0.0.1"], sim.dns_port, https_port=sim.mta_sts_port,
                                  cafile=sim.cert[0], timeout_s=3.0, cache=f.cache,
                                  clock=lambda: clock[0])
            stale.cache.put("enforce.test", msgspec.structs.replace(r3.policy, id="old"),
                            clock[0])
            r5 = await stale.policy("enforce.test")
            assert r5.source == "cache" and r5.policy.mode == "enforce"
            assert r5.failure == "sts-webpki-invalid"

    asyncio.run(go())


def _run(tmp_path, cafile_of, domains):
    async def go():
        async with SimInternet(world(), keep_messages=True) as sim:
            cfg = sim_config(sim, validity_s=4.0, retry_s=1.0, workers=1)
            r = msgspec.structs.replace
            cfg = r(cfg, compliance=r(cfg.compliance, mta_sts_cafile=cafile_of(sim),
                                      tls_rpt_dir=str(tmp_path / "tlsrpt")),
                    smtp=r(cfg.smtp, tls="opportunistic"))
            rcpt = tmp_path / "r.csv"
            rcpt.write_text("email\n" + "".join(f"u{i}@{d}\n" for d in domains
                                                 for i in range(3)))
            spool_path = str(tmp_path / "spool")
            spool = Spool.open(spool_path, cfg.spool)
            inj = await engine.inject_file(spool, cfg, rcpt, b"From: a@sender.example\n"
                                           b"Subject: x\n\nhello\n", validity_s=4.0)
            await engine.run(cfg, spool_path, [inj.delivery_id])
            out = {}
            for _rid, rec in spool.recipients(inj.delivery_id):
                out[rec.email] = (rec.status_name, rec.reply, rec.reason, rec.type)
            from fastmta.ops.report import attempt_rows

            replies = {}
            for row in attempt_rows(spool, inj.delivery_id):
                replies.setdefault(row["rcpt"].rpartition("@")[2], set()).add(row["dsnDiag"])
            out["replies"] = replies
            return out, await sim.accepted()

    try:
        return asyncio.run(go())
    finally:
        Spool.close_all()


def _by_domain(out):
    res: dict[str, set] = {}
    for email, (status, *_rest) in out.items():
        if email == "replies":
            continue
        res.setdefault(email.rpartition("@")[2], set()).add(status)
    return res


@pytest.mark.timeout(120)
def test_enforce_and_testing_end_to_end(tmp_path):
    out, _accepted = _run(tmp_path, lambda sim: sim.ca_file,
                          ["enforce.test", "testing.test", "mismatch.test", "notls.test",
                           "nosts.test"])
    st = _by_domain(out)
    assert st["enforce.test"] == {"sent"}  # verified TLS to a matching MX
    assert st["testing.test"] == {"sent"}  # MX not in the policy: delivered, logged
    assert st["nosts.test"] == {"sent"}
    assert st["mismatch.test"] == {"failed"}  # enforce: no MX matches -> never sent
    assert st["notls.test"] == {"failed"}  # enforce: STARTTLS not offered -> never sent
    mm = json.loads(CliRunner().invoke(main, [
        "tls", "report", "--dir", str(tmp_path / "tlsrpt"), "--domain", "mismatch.test",
        "--day", _today()]).output)["policies"][0]
    assert mm["policy"]["policy-string"] == ["version: STSv1", "mode: enforce",
                                             "mx: mx.elsewhere.test", "max_age: 600"]
    assert {(d["result-type"], d["receiving-mx-hostname"]) for d in mm["failure-details"]} \
        == {("validation-failure", "mx1.stsprov.sim.test")}
    assert mm["summary"]["total-successful-session-count"] == 0
    assert not any(k.endswith(("@mismatch.test", "@notls.test")) for k in _accepted)
    assert all(out[f"u{i}@{d}"][2] == "expired" for i in range(3)
               for d in ("mismatch.test", "notls.test"))
    day = json.loads(CliRunner().invoke(main, [
        "tls", "report", "--dir", str(tmp_path / "tlsrpt"), "--domain", "testing.test",
        "--day", _today()]).output)
    pol = day["policies"][0]
    assert pol["policy"]["policy-type"] == "sts"
    assert pol["summary"]["total-failure-session-count"] >= 1
    assert {d["result-type"] for d in pol["failure-details"]} == {"validation-failure"}
    rep = json.loads(CliRunner().invoke(main, [
        "tls", "report", "--dir", str(tmp_path / "tlsrpt"), "--domain", "enforce.test",
        "--day", _today()]).output)
    s = rep["policies"][0]["summary"]
    assert s["total-successful-session-count"] >= 1 and s["total-failure-session-count"] == 0
    notls = json.loads(CliRunner().invoke(main, [
        "tls", "report", "--dir", str(tmp_path / "tlsrpt"), "--domain", "notls.test",
        "--day", _today()]).output)
    assert {d["result-type"] for d in notls["policies"][0]["failure-details"]} == \
        {"starttls-not-supported"}


@pytest.mark.timeout(120)
def test_enforce_refuses_an_untrusted_certificate(tmp_path):
    # the policy hosts are trusted, the MX hosts' certificate is not
    out, accepted = _run(tmp_path, lambda sim: sim.mta_sts_cert,
                         ["enforce.test", "testing.test"])
    st = _by_domain(out)
    assert st["enforce.test"] == {"failed"}
    assert st["testing.test"] == {"sent"}  # testing: delivered after the failed check
    assert not any(k.endswith("@enforce.test") for k in accepted)
    rep = json.loads(CliRunner().invoke(main, [
        "tls", "report", "--dir", str(tmp_path / "tlsrpt"), "--domain", "enforce.test",
        "--day", _today()]).output)
    types = {d["result-type"] for d in rep["policies"][0]["failure-details"]}
    assert types == {"certificate-not-trusted"}
    assert rep["policies"][0]["summary"]["total-successful-session-count"] == 0


def _today() -> str:
    import time

    from fastmta.compliance.tlsrpt import day_of

    return day_of(time.time())
