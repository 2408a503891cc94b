"""The unknown-reply loop: templates, ``rules suggest|test|add``, the spool's ``unknown``
sub-database, the scheduler recording unknown replies from the sim, rule reload."""

from __future__ import annotations

import asyncio
import json
import os
import random
import time

import pytest
from click.testing import CliRunner
from engine_helpers import make_config

from fastmta import core
from fastmta.classify import rules as _rules
from fastmta.classify.suggest import entries_from_replies, suggest, to_toml
from fastmta.classify.templates import UnknownReplies, template
from fastmta.cli import main
from fastmta.delivery import Template
from fastmta.dns.resolver import MxHost, MxResult
from fastmta.engine.scheduler import Scheduler
from fastmta.engine.sites import Job
from fastmta.engine.unknown_replies import UnknownReplyLoop
from fastmta.records import WorkItem
from fastmta.sim import SimInternet
from fastmta.sim.world import Provider, World, WorldSpec
from fastmta.spool import Spool
from fastmta.spool.unknown import read_unknown, record_unknown

TEMPLATES = [
    "550 5.9.1 Mailbox {a} frozen by provider policy ref {id}",
    "451 4.9.2 Queue for {d} is paused at {ip}, session {n}",
    "554 Transaction refused: sender {a} score {n} too low",
    "452 Greetings from {d}: storage cluster {id} rebalancing",
    "550 Address {a} was retired on {date}",
    "421 {d} node {n} maintenance window, ticket {id}",
]


def six_template_replies(n: int = 300, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        t = TEMPLATES[i % len(TEMPLATES)]
        out.append({"reply": t.format(
            a=f"user{rng.randrange(10**6)}@dom{rng.randrange(99)}.example",
            id="".join(rng.choice("abcdef0123456789") for _ in range(12)),
            d=f"mx{rng.randrange(9)}.host{rng.randrange(50)}.example.net",
            ip=f"192.0.2.{rng.randrange(255)}", n=rng.randrange(10**5),
            date=f"2026-0{rng.randrange(1, 9)}-1{rng.randrange(9)}"), "command": "rcpt"})
    return out


def test_template_masks_what_varies():
    t = template("550 5.1.1 <bob@example.com>: store 8f3a9c2e1b at mx3.example.net "
                 "[192.0.2.17] 2026-12-03 10:11:12, see https://x.example/y?z=1 (try 3)")
    assert t == ("550 5.1.1 <email>: store <id> at <domain> <ip> <date>, see <url> "
                 "(try <num>)")
    assert template("421 4.7.0 from [2001:db8::1] slow") == "421 4.7.0 from <ip> slow"


def test_six_templates_give_six_clusters_and_counts_add_up():
    replies = six_template_replies()
    clusters = suggest(entries_from_replies(replies))
    assert len(clusters) == 6
    assert sum(c["count"] for c in clusters) == 300
    assert sorted(c["count"] for c in clusters) == [50] * 6
    for c in clusters:
        assert c["examples"] and set(c["proposed"]) >= {"name", "bounce_class", "type",
                                                         "reason", "action", "source"}
        if c["proposed"].get("code", ["5"])[0].startswith("4"):
            assert c["proposed"]["type"] == "soft"  # a 4xx is never proposed hard


def test_proposed_toml_compiles_and_matches_its_cluster(tmp_path):
    replies = six_template_replies()
    clusters = suggest(entries_from_replies(replies))
    f = tmp_path / "proposed.toml"
    f.write_text(to_toml(clusters))
    clf = core.Classifier(_rules.compile_rules([str(f)]))
    got = {clf.classify(o["reply"], o["command"]).rule for o in replies}
    assert got == {c["proposed"]["name"] for c in clusters}


def test_cli_suggest_json_contract(tmp_path):
    f = tmp_path / "replies.jsonl"
    f.write_text("\n".join(json.dumps(o) for o in six_template_replies()) + "\n")
    res = CliRunner().invoke(main, ["rules", "suggest", "--replies", str(f), "--json"])
    assert res.exit_code == 0, res.output
    obj = json.loads(res.output)
    assert len(obj["clusters"]) == 6
    assert sum(c["count"] for c in obj["clusters"]) == 300
    for c in obj["clusters"]:
        assert set(c) == {"template", "count", "examples", "proposed"}
    res = CliRunner().invoke(main, ["rules", "suggest", "--replies", str(f)])
    assert res.output.count("[[rule]]") == 6


def test_cli_test_and_add_then_workers_reload(tmp_path, monkeypatch):
    replies = tmp_path / "replies.jsonl"
    replies.write_text("\n".join(json.dumps(o) for o in six_template_replies(60)) + "\n")
    cand = tmp_path / "cand.toml"
    cand.write_text('[[rule]]\nname = "frozen-mailbox"\nsource = "test"\ncode = ["550"]\n'
                    'text_all = ["frozen by provider policy"]\nbounce_class = 10\n'
                    'type = "hard"\nreason = "account_disabled"\n')
    ops_file = tmp_path / "operator.toml"
    monkeypatch.setenv("FASTMTA_BOUNCE_RULES", str(ops_file))
    run = CliRunner()
    res = run.invoke(main, ["rules", "test", str(cand), "--replies", str(replies), "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output)
    assert rep["replies"] == 60 and rep["changed"] == 10
    assert rep["after"].get("frozen-mailbox (class 10 hard)") == 10
    assert all(e["after"]["rule"] == "frozen-mailbox" for e in rep["examples"])
    # a worker running with the (not yet existing) operator file
    loop = UnknownReplyLoop()
    text = "550 5.9.1 Mailbox a@b.example frozen by provider policy ref 123abc456def"
    assert core.classify(text, "rcpt").rule != "frozen-mailbox"
    res = run.invoke(main, ["rules", "add", str(cand)])
    assert res.exit_code == 0, res.output
    assert "frozen-mailbox" in ops_file.read_text()
    assert loop.check_rules() is True  # mtime changed: reloaded, no restart
    try:
        assert core.classify(text, "rcpt").rule == "frozen-mailbox"
        # adding the same rule again is refused (duplicate name), the file is unchanged
        before = ops_file.read_text()
        res = run.invoke(main, ["rules", "add", str(cand)])
        assert res.exit_code != 0 and "already" in res.output
        assert ops_file.read_text() == before
        # a broken edit keeps the previous rules
        ops_file.write_text(before + "\n[[rule]]\nname = 'bad'\n")
        os.utime(ops_file, ns=(time.time_ns(), time.time_ns() + 10**9))
        assert loop.check_rules() is False
        assert core.classify(text, "rcpt").rule == "frozen-mailbox"
    finally:
        monkeypatch.delenv("FASTMTA_BOUNCE_RULES")
        core.load_rules([])


def test_spool_unknown_merges_batches(tmp_path):
    sp = Spool.open(str(tmp_path / "spool"))
    try:
        e = {"template": "550 x <num>", "count": 3, "first_ms": 10, "last_ms": 20,
             "sites": ["a"], "example": "550 x 1", "command": "rcpt", "code": 550,
             "enhanced": None, "rule": "fallback-rcpt-5xx"}
        record_unknown(sp, [e])
        record_unknown(sp, [dict(e, count=2, first_ms=5, last_ms=40, sites=["b"])])
        (got,) = read_unknown(sp)
        assert (got["count"], got["first_ms"], got["last_ms"], got["sites"]) == (5, 5, 40,
                                                                              ["a", "b"])
        assert read_unknown(sp, since_ms=41) == []
    finally:
        sp.close()


@pytest.mark.timeout(60)
def test_scheduler_records_the_sims_unknown_replies_and_suggest_lists_them(tmp_path):
    world = World(WorldSpec(providers=[Provider(name="odd", domains=["odd.test"])]))
    emails = [f"oddreply{i}@odd.test" for i in range(30)] + [f"u{i}@odd.test" for i in range(20)]
    exp = int(time.time() * 1000) + 600_000
    work = [WorkItem(key=i.to_bytes(8, "big"), delivery_id=1, rcpt_id=i, email=e, shard=0,
                     mail_from="a@sender.example", expires_ms=exp) for i, e in enumerate(emails)]

    async def go():
        async with SimInternet(world) as sim:
            h = world.provider_hosts["odd"][0]
            mx = MxResult(domain="odd.test", site=h.name, hosts=[MxHost(h.name, 10, [h.address])])
            done = asyncio.Event()
            results = []

            def on_result(job, res):
                results.append(res)
                if len(results) >= len(work):
                    done.set()

            tpl = Template(b"From: a@sender.example\r\nSubject: t\r\n\r\nhi\r\n")
            sched = Scheduler(make_config(sim), [], on_result,
                              lambda it: tpl.render({"email": it.email}),
                              is_static=lambda did: True)
            sched.unknown = UnknownReplies()
            site = sched.site_for(mx)
            for it in work:
                sched.enqueue(site, Job(it))
            await asyncio.wait_for(done.wait(), 30)
            await sched.stop()
            return sched, site

    sched, site = asyncio.run(go())
    entries = sched.unknown.take()
    assert len(entries) == 1  # 30 different replies, one template
    (e,) = entries
    assert e["count"] == 30 and e["sites"] == [site.name] and e["code"] == 550
    assert e["template"] == "550 5.9.0 Frobnication store <num> declined <email> (ticket <id>)"
    sp = Spool.open(str(tmp_path / "spool"))
    try:
        record_unknown(sp, entries)
    finally:
        sp.close()
    res = CliRunner().invoke(main, ["rules", "suggest", "--spool", str(tmp_path / "spool"),
                                    "--json", "--since", "1h"])
    assert res.exit_code == 0, res.output
    (c,) = json.loads(res.output)["clusters"]
    assert c["count"] == 30 and "frobnication store" in " ".join(c["proposed"]["text_all"])


def test_local_outcomes_are_not_unknown_replies():
    from fastmta.classify.outcome import local

    agg = UnknownReplies()
    reply, cls = local("connect_timeout", "connect")
    assert agg.observe(reply.raw, "connect", "site", cls, 1) is False
    c = core.classify("550 5.9.9 frobnicated 12", "rcpt")
    assert agg.observe("550 5.9.9 frobnicated 12", "rcpt", "site", c, 2) is True
    assert [e["count"] for e in agg.take()] == [1] and agg.take() == []


def test_sim_unknown_wordings_are_unknown_and_one_template_each():
    """The sim's long-tail texts (sim/oddities.py) reach only code-only fallback rules, and
    the masking turns each into one template whatever the recipient."""
    from fastmta.sim.oddities import DEFERRALS, REFUSALS, odd_reply
    from fastmta.sim.world import Behaviour, rcpt_fate

    for pool, code in ((REFUSALS, "5"), (DEFERRALS, "4")):
        seen = set()
        for p in range(40):
            for k in range(8):
                text = odd_reply(pool, f"tail-{p}", f"u{k}.{p}@d{k}.tail-{p}.test").decode()
                assert text.endswith("\r\n") and text.startswith(code)
                cls = core.classify(text.strip(), "rcpt")
                assert cls.rule.startswith("fallback-") and cls.bounce_class == 1, text
                seen.add(template(text))
        # every wording is used by some provider, and gives one template
        assert len(seen) == len(pool)
    beh = Behaviour(odd_refusal_rate=0.01, odd_deferral_rate=0.02)
    fates = [rcpt_fate(beh, f"r{i}@x.test") for i in range(20000)]
    assert 0.007 < fates.count("odd_refusal") / 20000 < 0.013
    assert 0.016 < fates.count("odd_deferral") / 20000 < 0.024


def test_a_proposal_always_has_a_phrase_when_the_template_has_a_word(tmp_path):
    """Templates whose constant parts are single words still get a text condition (a
    proposal on the code alone would take every reply with that code)."""
    replies = [{"reply": f"451 4.0.0 Vorgang {n} fuer <u{n}@x{n}.example> zurueckgestellt",
                "command": "rcpt"} for n in range(20)]
    (c,) = suggest(entries_from_replies(replies))
    assert c["proposed"]["text_all"] == ["zurueckgestellt", "vorgang"]
    f = tmp_path / "p.toml"
    f.write_text(to_toml([c]))
    clf = core.Classifier(_rules.compile_rules([str(f)]))
    assert clf.classify(replies[0]["reply"], "rcpt").rule == c["proposed"]["name"]
    assert clf.classify("451 4.0.0 Mailstore busy", "rcpt").rule != c["proposed"]["name"]
