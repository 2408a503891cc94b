"""Shared pieces of the engine tests: worlds, configs, injection, the audit."""

from __future__ import annotations

import random
from pathlib import Path

import msgspec

from fastmta.config import Config
from fastmta.config import to_toml as config_toml  # noqa: F401 (used by tests)
from fastmta.engine import entry as engine
from fastmta.sim.audit import audit_delivery as audit  # noqa: F401 (used by tests)
from fastmta.sim.config import sim_config
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


