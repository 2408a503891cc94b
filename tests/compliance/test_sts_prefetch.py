"""The ``_mta-sts`` TXT lookup moved to injection (engine/sts_prefetch.py): the table
injection writes, its freshness, and a run whose workers ask the DNS nothing for the
domains the injection found without a policy (while enforce still applies)."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from fastmta.engine import entry as engine
from fastmta.engine import sts_prefetch
from fastmta.sim import SimInternet
from fastmta.sim.config import mta_sts_records, sim_config
from fastmta.sim.world import Behaviour, Provider, World, WorldSpec
from fastmta.spool import Spool

ENFORCE = "version: STSv1\nmode: enforce\nmx: *.stsprov.sim.test\nmax_age: 600\n"
ELSEWHERE = "version: STSv1\nmode: enforce\nmx: mx.elsewhere.test\nmax_age: 600\n"
PLAIN = [f"plain{i}.test" for i in range(40)]


def test_table_merge_and_freshness(tmp_path):
    assert sts_prefetch.save(tmp_path, {"a.test": "", "B.test.": "id1"}, now=1000.0) == 2
    sts_prefetch.save(tmp_path, {"c.test": ""}, now=1500.0)  # merged, not replaced
    clock = [1600.0]
    p = sts_prefetch.PrefetchedTxt(tmp_path, clock=lambda: clock[0], check_s=0.0)
    assert p.no_policy_until("a.test") == 1000.0 + sts_prefetch.FRESH_S
    assert p.no_policy_until("b.test") == 0.0  # publishes a policy: the worker fetches it
    assert p.no_policy_until("unknown.test") == 0.0
    clock[0] = 1000.0 + sts_prefetch.FRESH_S + 1
    assert p.no_policy_until("a.test") == 0.0  # stale: the worker asks again
    assert p.no_policy_until("c.test") > clock[0]
    # a later save drops the stale answers and the reader sees the new file
    sts_prefetch.save(tmp_path, {"d.test": ""}, now=clock[0])
    p2 = sts_prefetch.PrefetchedTxt(tmp_path, clock=lambda: clock[0])
    assert p2.no_policy_until("d.test") and not p2.no_policy_until("a.test")


def test_corrupt_table_is_ignored(tmp_path):
    path = sts_prefetch.table_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\xc1garbage")
    assert sts_prefetch.PrefetchedTxt(tmp_path).no_policy_until("a.test") == 0.0
    sts_prefetch.save(tmp_path, {"a.test": ""})  # rewritten cleanly
    assert sts_prefetch.PrefetchedTxt(tmp_path).no_policy_until("a.test") > 0


def world() -> World:
    policies = {"enforce.test": ENFORCE, "mismatch.test": ELSEWHERE}
    return World(WorldSpec(name="stspre", providers=[
        Provider(name="stsprov", domains=["enforce.test", "mismatch.test"],
                 behaviour=Behaviour(starttls=True)),
        Provider(name="plainprov", domains=PLAIN),
    ], records=[r for d in policies for r in mta_sts_records(d)], mta_sts=policies))


def _run(tmp_path, name: str, drop_table: bool):
    async def go():
        async with SimInternet(world()) as sim:
            cfg = sim_config(sim, validity_s=4.0, retry_s=1.0, workers=1)
            r = msgspec.structs.replace
            cfg = r(cfg, compliance=r(cfg.compliance, mta_sts_cafile=sim.ca_file,
                                      tls_rpt_dir=str(tmp_path / f"tlsrpt-{name}")),
                    smtp=r(cfg.smtp, tls="opportunistic"))
            rcpt = tmp_path / f"{name}.csv"
            rcpt.write_text("email\n" + "".join(
                f"u@{d}\n" for d in ["enforce.test", "mismatch.test", *PLAIN]))
            spool_path = tmp_path / f"spool-{name}"
            spool = Spool.open(spool_path, cfg.spool)
            inj = await engine.inject_file(spool, cfg, rcpt, b"From: a@sender.example\n"
                                           b"Subject: x\n\nhello\n", validity_s=4.0)
            table = sts_prefetch.load(spool_path)
            if drop_table:
                sts_prefetch.table_path(spool_path).unlink()
            q0 = sim.dns.queries
            await engine.run(cfg, spool_path, [inj.delivery_id])
            status = {rec.email.rpartition("@")[2]: rec.status_name
                      for _rid, rec in spool.recipients(inj.delivery_id)}
            return table, sim.dns.queries - q0, status

    try:
        return asyncio.run(go())
    finally:
        Spool.close_all()


@pytest.mark.timeout(120)
def test_injection_looks_up_the_txt_records_so_workers_do_not(tmp_path):
    table, queries_with, status = _run(tmp_path, "with", drop_table=False)
    assert {d: v[1] for d, v in table.items()} == {
        "enforce.test": "sim1", "mismatch.test": "sim1", **{d: "" for d in PLAIN}}
    # the policies still apply: verified TLS to a matching MX, enforce refusing the other
    assert status["enforce.test"] == "sent" and status["mismatch.test"] == "failed"
    assert all(status[d] == "sent" for d in PLAIN)
    _table, queries_without, status2 = _run(tmp_path, "without", drop_table=True)
    assert status2 == status
    # without the injection's answers, each plain domain costs the worker one TXT query
    assert queries_without - queries_with >= len(PLAIN), (queries_without, queries_with)
