"""Helpers for the operations tests: the world of their simulated internet (run by
``sim_fixtures.SimThread``: the pool API under test is synchronous), a helper that builds
a loopback-only config, and message/recipient helpers."""

from __future__ import annotations

import msgspec

from fastmta.config import Config, ProviderConfig
from fastmta.sim.config import sim_config
from fastmta.sim.world import Behaviour, Provider, World, WorldSpec
from sim_fixtures import SimThread

MESSAGE = (
    "From: Sender <news@sender.example>\n"
    "To: {{email}}\n"
    "Subject: Hello {{name}}\n"
    "\n"
    "Hi {{name}}, a test message.\n"
)


def ops_world() -> World:
    return World(WorldSpec(name="ops", providers=[
        Provider(name="fast", generate=6, hosts=1),
        Provider(name="slowpoke", generate=2, hosts=1),  # suspended/cancelled in tests
        Provider(name="unknownusers", generate=2,
                 behaviour=Behaviour(unknown_user_rate=0.3)),
        Provider(name="greylister", generate=2, behaviour=Behaviour(greylist_s=1.0)),
        Provider(name="fullboxes", generate=2, behaviour=Behaviour(mailbox_full_rate=0.5)),
        Provider(name="blocker", generate=1, behaviour=Behaviour(block=True)),
        Provider(name="nxdomain", generate=1, dns="nxdomain"),
    ]))


def make_config(sim: SimThread, *, validity_s: float = 20.0, retry_s: float = 1.0,
                workers: int = 1, **ops) -> Config:
    cfg = sim_config(sim.sim, validity_s=validity_s, retry_s=retry_s, workers=workers)
    r = msgspec.structs.replace
    slow = ProviderConfig(name="slowpoke", mx_suffixes=["slowpoke.sim.test"])
    ops.setdefault("suspend_recheck_s", 1.0)
    ops.setdefault("admin_poll_s", 0.2)
    ops.setdefault("status_interval_s", 0.3)
    return r(cfg, shaping=r(cfg.shaping, suspend_initial_s=3.0, suspend_max_s=5.0),
             providers=[*cfg.providers, slow], ops=r(cfg.ops, **ops))


def domains_of(world: World, provider: str) -> list[str]:
    return [d for d in world.domains if world.domain_provider[d].name == provider]


def recipients(world: World, n: int, providers: list[str] | None = None,
               prefix: str = "r") -> list[dict]:
    doms = [d for d in world.domains
            if providers is None or world.domain_provider[d].name in providers]
    return [{"email": f"{prefix}{i}@{doms[i % len(doms)]}", "name": f"n{i}"}
            for i in range(n)]
