"""Helpers for the egress and history tests: a config with two loopback sources (a warm
one and a cold one on a tiny warm-up plan, pooled as ``mix``), and the CLI's
``fastmta egress status --json`` on the same spool and config file."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import msgspec

from fastmta.config import (
    Config,
    EgressConfig,
    EgressMember,
    EgressPool,
    EgressSource,
    WarmupPlanConfig,
    to_toml,
)
from pathutil import package_parent

WARM, COLD = "127.0.0.5", "127.0.0.6"
COLD_CAP = 40


def egress_config(cfg: Config) -> Config:
    eg = EgressConfig(
        sources=[EgressSource(name="warm1", source_ip=WARM),
                 EgressSource(name="cold1", source_ip=COLD, ehlo_name="cold1.sender.example",
                              warmup=True, plan="tiny")],
        pools=[EgressPool(name="mix", members=[EgressMember(source="warm1", weight=1),
                                               EgressMember(source="cold1", weight=3)])],
        plans=[WarmupPlanConfig(name="tiny", daily=[COLD_CAP, 2 * COLD_CAP],
                                hourly_fraction=1.0)],
        overflow="spill")
    return msgspec.structs.replace(cfg, egress=eg)


#: the same [egress] as ``egress_config`` for the CLI's config file (``to_toml`` leaves
#: tables of tables out)
EGRESS_TOML = f'''
[egress]
overflow = "spill"
[[egress.sources]]
name = "warm1"
source_ip = "{WARM}"
[[egress.sources]]
name = "cold1"
source_ip = "{COLD}"
ehlo_name = "cold1.sender.example"
warmup = true
plan = "tiny"
[[egress.pools]]
name = "mix"
members = [{{source = "warm1", weight = 1}}, {{source = "cold1", weight = 3}}]
[[egress.plans]]
name = "tiny"
daily = [{COLD_CAP}, {2 * COLD_CAP}]
hourly_fraction = 1.0
'''


def cli_egress(spool_dir: str, cfg: Config, tmp_path) -> dict:
    conf = tmp_path / "egress.toml"
    parts = to_toml(cfg).split("\n[")
    conf.write_text("\n[".join(p for p in parts if not p.startswith("egress]"))
                    + EGRESS_TOML)
    env = dict(os.environ, PYTHONPATH=package_parent())
    r = subprocess.run([sys.executable, "-m", "fastmta", "egress", "status", "--json",
                        "--spool", spool_dir, "--config", str(conf)], capture_output=True,
                       text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


#: fields that move with the clock between two snapshots taken a moment apart
CLOCK_FIELDS = {"egress_time", "age_s", "suspended_for_s"}


def stable(doc: dict) -> dict:
    """The status document without the fields that move with the clock."""
    if isinstance(doc, dict):
        return {k: stable(v) for k, v in doc.items() if k not in CLOCK_FIELDS}
    if isinstance(doc, list):
        return [stable(v) for v in doc]
    return doc
