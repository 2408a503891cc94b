"""The bench harness end to end (small runs) and its safety checks.

Real parts: the simulated internet (DNS + MX processes on loopback), the full engine
(spawned workers, durable LMDB spool), the real CLI in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fastmta.bench import BenchError, BenchOptions, expand, load_profile, recipients, run_bench
from fastmta.bench.harness import check_addresses, check_loopback
from fastmta.bench.profile import world_toml
from fastmta.config import Config, DnsConfig, SmtpConfig
from fastmta.runtime import run
from fastmta.sim.world import load_world
from pathutil import package_parent

SRC = package_parent()
REQUIRED = ("messages", "msgs_per_s", "inject_msgs_per_s", "delivered", "bounced", "expired",
            "lost", "duplicates", "attempts", "throttle_replies", "connections",
            "cpu_s_fastmta", "cpu_s_sink", "rss_peak_mb", "profile", "workers", "impl")


def _cli(*args: str, timeout: float = 150.0) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=SRC)
    return subprocess.run([sys.executable, "-m", "fastmta", *args], capture_output=True,
                          text=True, env=env, timeout=timeout)


@pytest.mark.timeout(180)
def test_cli_json_null_profile_2000_messages():
    """2,000 messages through the real engine: every JSON field, an exact audit."""
    r = _cli("bench", "--messages", "2000", "--domains", "50", "--sites", "10",
             "--workers", "2", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    for k in REQUIRED:
        assert k in out, k
    assert out["messages"] == 2000 and out["profile"] == "null" and out["workers"] == 2
    assert out["delivered"] == 2000 and out["sink_messages"] == 2000
    assert out["lost"] == 0 and out["bounced"] == 0 and out["expired"] == 0
    assert out["duplicates"] == 0 and out["audit_ok"] is True
    assert out["attempts"] >= 2000
    assert out["impl"] in ("compiled", "pure")
    assert out["msgs_per_s"] > 0 and out["inject_msgs_per_s"] > out["msgs_per_s"]
    assert out["cpu_s_fastmta"] > 0 and out["cpu_s_sink"] > 0
    assert 0 < out["connections"] <= 2000
    assert out["latency_ms_p50"] <= out["latency_ms_p99"]
    assert out["domains"] == 50 and out["sites"] == 10
    assert 5 < out["rss_peak_mb"] < 2000
    # the acceptance timeline counts every delivered recipient once, from the injection
    assert sum(out["accepted_per_250ms"]) == 2000 and out["accepted_per_250ms"][-1] > 0
    # where the wall time of the sending went: both workers and both sink processes ran
    sched = out["sched_sending"]
    assert sched["worker"]["procs"] == 2 and sched["sink"]["procs"] == 2
    assert sched["worker"]["run_s"] > 0 and sched["sink"]["run_s"] > 0
    assert 0 < sched["worker"]["window_s"] < out["elapsed_s"] + 1.0


REALISTIC = {"messages": 1500, "domains": 60, "sites": 15}


@pytest.fixture(scope="module")
def realistic_run(tmp_path_factory):
    """One small realistic-profile run (its spool kept) for the tests below."""
    d = tmp_path_factory.mktemp("realistic")
    res = run(asyncio_run_bench(BenchOptions(**REALISTIC, profile="realistic", workers=2,
                                             spool_dir=str(d))))
    return res, str(d / "spool")


@pytest.mark.timeout(180)
def test_realistic_profile_audit_holds(realistic_run):
    """Bounces, expiries and throttling all accounted for: the world's verdict per
    recipient matches the spool, nothing accepted is lost or reported failed."""
    res, _ = realistic_run
    assert res["audit_ok"], res["audit_problems"]
    assert res["lost"] == 0 and res["unexpected"] == 0 and res["pending"] == 0
    assert res["bounced"] > 0  # unknown users, NXDOMAIN, null MX
    assert res["expired"] > 0  # full mailboxes, dead and blocking hosts
    assert res["delivered"] + res["bounced"] + res["expired"] == 1500


def _odd_templates() -> tuple[dict[str, str], int]:
    """template -> reply: what the realistic world answers in wording no rule knows, and
    to how many recipients."""
    from fastmta.classify.templates import template
    from fastmta.sim.oddities import DEFERRALS, REFUSALS, odd_reply
    from fastmta.sim.world import rcpt_fate

    prof = load_profile("realistic")
    world = expand(prof, REALISTIC["domains"], REALISTIC["sites"])
    out, n = {}, 0
    for e in recipients(prof, world, REALISTIC["messages"]):
        p = world.domain_provider[e.rpartition("@")[2]]
        fate = rcpt_fate(p.behaviour, e)
        if fate in ("odd_refusal", "odd_deferral"):
            pool = REFUSALS if fate == "odd_refusal" else DEFERRALS
            text = odd_reply(pool, p.name, e).decode().strip()
            out[template(text)] = text
            n += 1
    return out, n


@pytest.mark.timeout(180)
def test_realistic_run_feeds_the_unknown_reply_loop(realistic_run, tmp_path, monkeypatch):
    """After a realistic run the spool holds the sim's unknown replies as templates;
    ``rules suggest`` lists them (counts, examples, a proposed rule); ``rules test`` shows
    what a suggestion changes, and after ``rules add`` the classifier matches it."""
    from click.testing import CliRunner

    from fastmta import core
    from fastmta.classify.suggest import to_toml
    from fastmta.cli import main
    from fastmta.engine.unknown_replies import UnknownReplyLoop
    from fastmta.spool import Spool
    from fastmta.spool.unknown import read_unknown

    _, spool_dir = realistic_run
    expected, n_odd = _odd_templates()
    assert len(expected) >= 6  # the long tail's copies word their replies differently
    sp = Spool.open(spool_dir)
    try:
        stored = read_unknown(sp)
    finally:
        sp.close()
    # exactly the sim's unknown texts, at least one reply per recipient that gets one
    assert {e["template"] for e in stored} == set(expected)
    assert all(e["rule"].startswith("fallback-") and e["sites"] for e in stored)
    total = sum(e["count"] for e in stored)
    assert total >= n_odd
    run_cli = CliRunner()
    res = run_cli.invoke(main, ["rules", "suggest", "--spool", spool_dir, "--json"])
    assert res.exit_code == 0, res.output
    clusters = json.loads(res.output)["clusters"]
    assert len(clusters) == len(expected)
    assert sum(c["count"] for c in clusters) == total
    for c in clusters:
        assert c["examples"] and c["proposed"]["source"].startswith("fastmta rules suggest")
        assert c["proposed"]["text_all"]  # a phrase of the template, not the code alone
    # adopt the most frequent refusal's suggestion
    top = next(c for c in clusters if c["proposed"]["code"][0].startswith("5"))
    name = top["proposed"]["name"]
    cand = tmp_path / "cand.toml"
    cand.write_text(to_toml([top]))
    example = top["examples"][0]
    assert core.classify(example, "rcpt").rule.startswith("fallback-")
    ops_file = tmp_path / "operator.toml"
    monkeypatch.setenv("FASTMTA_BOUNCE_RULES", str(ops_file))
    res = run_cli.invoke(main, ["rules", "test", str(cand), "--spool", spool_dir, "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output)
    assert rep["replies"] == total and rep["changed"] == top["count"]
    assert sum(v for k, v in rep["after"].items() if k.startswith(name + " ")) == top["count"]
    loop = UnknownReplyLoop()  # a worker running with the operator file (not there yet)
    res = run_cli.invoke(main, ["rules", "add", str(cand)])
    assert res.exit_code == 0, res.output
    try:
        assert loop.check_rules() is True
        got = core.classify(example, "rcpt")
        assert got.rule == name and got.bounce_class == top["proposed"]["bounce_class"]
        assert not loop.unknown.observe(example, "rcpt", "s", got, 1)  # known now
    finally:
        monkeypatch.delenv("FASTMTA_BOUNCE_RULES")
        core.load_rules([])


async def asyncio_run_bench(opts: BenchOptions) -> dict:
    return await run_bench(opts)


def test_refuses_non_loopback_resolver_in_config(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[dns]\nnameservers = ["192.0.2.53"]\n')
    r = _cli("bench", "--messages", "10", "--config", str(cfg), timeout=60)
    assert r.returncode != 0
    assert "non-loopback resolver" in r.stderr and "192.0.2.53" in r.stderr


def test_refusals():
    with pytest.raises(BenchError, match="explicit loopback resolver"):
        check_loopback(Config())
    with pytest.raises(BenchError, match="non-loopback resolvers"):
        check_loopback(Config(dns=DnsConfig(nameservers=["127.0.0.1", "8.8.8.8"])))
    with pytest.raises(BenchError, match="source addresses"):
        check_loopback(Config(dns=DnsConfig(nameservers=["127.0.0.1"]),
                              smtp=SmtpConfig(source_ips=["198.51.100.7"])))
    with pytest.raises(BenchError, match="MX hosts outside loopback"):
        check_addresses(["127.0.1.1:2525", "203.0.113.9:25"])
    check_loopback(Config(dns=DnsConfig(nameservers=["127.0.0.1", "::1"])),
                   ["127.0.1.1:2525", "127.0.2.3"])


def test_profiles_scale_and_spread():
    prof = load_profile("null")
    w = expand(prof, 1000, 100)
    assert len(w.domains) == 1000
    sites = {tuple(h.address for h in w.provider_hosts[p.name]) for p in w.spec.providers}
    assert len(sites) == 100
    emails = list(recipients(prof, w, 5000))
    assert len(set(emails)) == 5000
    per_domain = {}
    for e in emails:
        d = e.rpartition("@")[2]
        per_domain[d] = per_domain.get(d, 0) + 1
    assert len(per_domain) == 1000 and max(per_domain.values()) == 5
    real = load_profile("realistic")
    rw = expand(real, 500, 50)
    em = list(recipients(real, rw, 20000))
    gmail = sum(1 for e in em if rw.domain_provider[e.rpartition("@")[2]].name == "gmail")
    assert 0.27 < gmail / len(em) < 0.33  # the profile's share
    for name in ("null", "realistic", "throttled", "ratecap"):
        load_profile(name)


def test_write_world_serves_same_world(tmp_path):
    path = tmp_path / "w.toml"
    rc = tmp_path / "r.csv"
    r = _cli("bench", "--profile", "realistic", "--domains", "120", "--sites", "20",
             "--messages", "300", "--write-world", str(path), "--write-recipients", str(rc),
             timeout=60)
    assert r.returncode == 0, r.stderr
    lines = rc.read_text().splitlines()
    assert lines[0] == "email" and len(lines) == 301
    assert b"{{email}}" in (tmp_path / "r.eml").read_bytes()
    again = load_world(str(path))
    ref = expand(load_profile("realistic"), 120, 20)
    assert again.domains == ref.domains and again.hosts == ref.hosts
    assert world_toml(again) == world_toml(ref)


def test_bad_profile_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[bench]\ntail = "nope"\n')
    r = _cli("bench", "--profile", str(bad), "--messages", "10", timeout=60)
    assert r.returncode != 0 and "tail provider 'nope' not defined" in r.stderr
    r = _cli("bench", "--profile", "no-such-profile", timeout=60)
    assert r.returncode != 0 and "no bench profile 'no-such-profile' (bundled: " in r.stderr
    for name in ("campaign", "capped", "memory", "null", "ratecap", "realistic", "throttled"):
        assert name in r.stderr


def test_goodput_scores_windows_of_the_sliding_minute_cap():
    from fastmta.bench.audit import _goodput

    prof = load_profile("ratecap")
    world = expand(prof, 100, 10)
    # capped-slow allows 2,400 per minute: a sender pacing at exactly 40/s for 4 min...
    paced = [int(i * 25) for i in range(9600)]
    # ...one bursting at each window boundary, and one that stalls half of the time
    burst = [w * 60_000 + i for w in range(4) for i in range(2400)]
    slow = [int(i * 50) for i in range(4800)]
    for times, pct in ((paced, 100.0), (burst, 100.0), (slow, 50.0)):
        g = _goodput(world, prof, {"capped-slow": times})["capped-slow"]
        assert g["windows"] == 3 and g["goodput_pct_of_cap"] == pytest.approx(pct, abs=0.1)
    quick = _goodput(world, prof, {"capped-slow": list(range(0, 10_000, 10))})["capped-slow"]
    assert quick["windows"] == 0 and quick["goodput_pct_of_cap"] is None


def test_campaign_profile_mix_and_spread():
    """The campaign profile: provider shares, a Zipf tail, message kinds by share."""
    from collections import Counter

    from fastmta.bench.harness import _split, message_kinds
    from fastmta.bench.profile import zipf_cumulative

    prof = load_profile("campaign")
    assert prof.bench.dkim == "ed25519-sha256" and prof.bench.source
    world = expand(prof, 3000, 300)
    emails = list(recipients(prof, world, 20000, seed=3))
    by = Counter(world.domain_provider[e.rpartition("@")[2]].name.split("-")[0]
                 for e in emails)
    assert abs(by["gmail"] / 20000 - 0.33) < 0.02
    assert abs(by["outlook"] / 20000 - 0.15) < 0.02
    tail = Counter(e.rpartition("@")[2] for e in emails
                   if world.domain_provider[e.rpartition("@")[2]].name.startswith("small"))
    sizes = sorted(tail.values(), reverse=True)
    assert sizes[0] > 20 * sizes[len(sizes) // 2]  # Zipf-like: a few big, many small
    z = zipf_cumulative(4, 1.0)
    assert z[-1] == 1.0 and z[0] == pytest.approx(12 / 25)
    kinds = message_kinds(prof, 3000)
    assert [k[0] for k in kinds] == [k.name for k in prof.bench.messages]
    for (_n, _s, tpl), k in zip(kinds, prof.bench.messages, strict=True):
        assert abs(len(tpl) - k.size) < 0.02 * k.size + 300
    lists = _split(prof, world, 20000, kinds, 3)
    assert sum(map(len, lists)) == 20000
    for lst, k in zip(lists, prof.bench.messages, strict=True):
        assert abs(len(lst) / 20000 - k.share) < 0.02


@pytest.mark.timeout(240)
def test_campaign_profile_end_to_end_signed_and_audited(tmp_path):
    """A small campaign (five kinds of message, DKIM Ed25519, the failure mix) through
    the real engine: every recipient final as the world says, every kept message signed
    and verified by dkimpy, the mix reported per kind."""
    import re

    src = load_profile("campaign")
    text = open(os.path.join(SRC, "fastmta", "bench", "profiles", "campaign.toml")).read()
    short = tmp_path / "campaign-short.toml"  # the same world, a short validity
    short.write_text(re.sub(r"(?m)^validity_s = .*$", "validity_s = 12.0", text))
    res = run(asyncio_run_bench(BenchOptions(messages=1500, domains=300, sites=30,
                                             profile=str(short), workers=2)))
    assert res["audit_ok"], res["audit_problems"]
    assert res["lost"] == 0 and res["unexpected"] == 0 and res["pending"] == 0
    assert res["dkim"] and res["dkim_algorithm"] == src.bench.dkim
    assert res["dkim_ok"] and res["dkim_kept"] > 0
    assert res["dkim_verify"]["verified"] == res["dkim_verify"]["sampled"] > 0
    mix = {m["kind"]: m for m in res["message_mix"]}
    assert set(mix) == {k.name for k in src.bench.messages}
    assert sum(m["recipients"] for m in mix.values()) == 1500
    assert mix["catalogue"]["bytes"] > 150_000 > mix["newsletter"]["bytes"] > 40_000
    assert res["bounced"] > 0 and res["expired"] > 0
    assert res["delivered_msgs_per_s"] > 0 and res["mbytes_per_s"] > 0
