"""Shared pieces of the engine tests: worlds, configs, injection, the audit."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import msgspec

from fastmta import engine
from fastmta.cli.engine_cmds import sim_config
from fastmta.config import Config
from fastmta.sim.world import Behaviour, Provider, World, WorldSpec

MESSAGE = (
    "From: Sender <news@sender.example>\n"
    "To: {{email}}\n"
    "Subject: Hello {{name}}\n"
    "\n"
    "Hi {{name}}, a test message.\n"
)


def mixed_world() -> World:
    """200 domains on a mix of profiles (issue #5's end-to-end test)."""
    return World(WorldSpec(name="e2e", providers=[
        Provider(name="fastmail", generate=115, hosts=2),
        Provider(name="dropper", generate=5,
                 behaviour=Behaviour(disconnect_in_data_rate=0.1)),
        Provider(name="unknownusers", generate=20, behaviour=Behaviour(unknown_user_rate=0.2)),
        Provider(name="fullboxes", generate=15, behaviour=Behaviour(mailbox_full_rate=0.2)),
        Provider(name="greylister", generate=15, behaviour=Behaviour(greylist_s=1.0)),
        Provider(name="throttler", generate=20, hosts=2,
                 behaviour=Behaviour(max_conn_per_ip=3, max_msgs_per_conn=20,
                                     max_rcpts_per_txn=5)),
        Provider(name="blocker", generate=4, behaviour=Behaviour(block=True)),
        Provider(name="nxdomain", generate=4, dns="nxdomain"),
        Provider(name="nullmx", generate=2, dns="nullmx"),
    ]))


def write_inputs(tmp: Path, world: World, n: int, seed: int = 1) -> tuple[Path, Path, list[str]]:
    rng = random.Random(seed)
    domains = world.domains
    emails = [f"r{i}@{domains[i % len(domains)] if i < len(domains) else rng.choice(domains)}"
              for i in range(n)]
    rcpt = tmp / "recipients.csv"
    with open(rcpt, "w") as f:
        f.write("email,name\n")
        for i, e in enumerate(emails):
            f.write(f"{e},n{i}\n")
    msg = tmp / "message.eml"
    msg.write_text(MESSAGE)
    return rcpt, msg, emails


def make_config(sim, *, validity_s: float = 15.0, retry_s: float = 2.0, workers: int = 2,
                **shaping) -> Config:
    cfg = sim_config(sim, validity_s=validity_s, retry_s=retry_s, workers=workers)
    r = msgspec.structs.replace
    return r(cfg, shaping=r(cfg.shaping, suspend_initial_s=5.0, suspend_max_s=10.0, **shaping))


async def inject(spool, cfg: Config, rcpt: Path, msg: Path, validity_s: float):
    a = await engine.inject_file(spool, cfg, rcpt, msg.read_bytes(), validity_s=validity_s)
    return a.delivery_id


def audit(spool, did: int, world: World, accepted: dict[str, int]) -> dict:
    """Compare every recipient's final state with the world's verdict and the sink.

    Returns counts; ``problems`` lists the first mismatches (empty = audit holds).
    """
    problems: list[str] = []
    status = Counter()
    reasons = Counter()
    dupes = 0
    n = 0
    for _rid, r in spool.recipients(did):
        n += 1
        st = r.status_name
        status[st] += 1
        if st == "failed":
            reasons[r.reason] += 1
        exp, why = world.expected(r.email)
        got = accepted.get(r.email, 0)
        if got > 1:
            dupes += got - 1
        if st == "pending":
            problems.append(f"{r.email}: still pending")
        elif exp == "sent":
            if st != "sent" or got < 1:
                problems.append(f"{r.email}: expected sent, is {st}/{r.reason}, accepted {got}")
        elif exp == "failed":
            if st != "failed" or r.reason != why or got:
                problems.append(f"{r.email}: expected failed {why}, is {st}/{r.reason}, "
                                f"accepted {got}")
        elif exp == "soft":
            # expired after the validity; the last soft reason is kept -- except for a
            # recipient whose site was suspended (block) before it was ever tried: our own
            # deferrals carry no reason in the spool
            ok_reason = r.last_soft_reason == why or (r.attempts == 0 and r.deferrals > 0
                                                     and not r.last_soft_reason)
            if st != "failed" or r.reason != "expired" or not ok_reason or got:
                problems.append(f"{r.email}: expected expired ({why}), is {st}/{r.reason}/"
                                f"{r.last_soft_reason} attempts {r.attempts}, accepted {got}")
        if st != "sent" and got:
            problems.append(f"{r.email}: accepted by the sink but {st}")
    k = spool.kpis(did)
    recount = {"sent": status["sent"], "failed": status["failed"],
               "pending": status["pending"]}
    kp = {key: k.get(key, 0) for key in recount}
    if kp != recount:
        problems.append(f"KPIs {kp} != recount {recount}")
    kreasons = {key[7:]: v for key, v in k.items() if key.startswith("reason/") and v}
    if kreasons != dict(reasons):
        problems.append(f"KPI reasons {kreasons} != recount {dict(reasons)}")
    return {"n": n, "status": dict(status), "reasons": dict(reasons), "dupes": dupes,
            "problems": problems[:20], "n_problems": len(problems)}


def config_toml(cfg: Config) -> str:
    """The scalar settings of a Config as TOML (enough for a subprocess `fastmta run`)."""
    import json

    out = []
    for section, values in msgspec.to_builtins(cfg).items():
        if not isinstance(values, dict):
            continue
        out.append(f"[{section}]")
        for k, v in values.items():
            if isinstance(v, bool):
                out.append(f"{k} = {'true' if v else 'false'}")
            elif isinstance(v, int | float):
                out.append(f"{k} = {v}")
            elif isinstance(v, str):
                out.append(f"{k} = {json.dumps(v)}")
            elif isinstance(v, list) and all(isinstance(x, str) for x in v):
                out.append(f"{k} = {json.dumps(v)}")
        out.append("")
    return "\n".join(out)
