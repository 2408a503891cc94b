"""`fastmta send --pool` over real loopback sources with a cold IP on a warm-up plan
(its cap holds, the rest spills to the warm IP), and `fastmta egress status [--json]`."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections import Counter

import pytest

from fastmta.sim import SimInternet
from fastmta.sim.world import Provider, World, WorldSpec

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "engine"))
from engine_helpers import config_toml, make_config, write_inputs  # noqa: E402

from pathutil import package_parent  # noqa: E402

ENV = dict(os.environ, PYTHONPATH=package_parent() + os.pathsep +
           os.environ.get("PYTHONPATH", ""))
WARM, COLD = "127.0.0.5", "127.0.0.6"
EGRESS = f'''
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
daily = [50, 100]
hourly_fraction = 1.0
'''


def without_egress(toml: str) -> str:
    """The generated config without its [egress] table (the test writes its own)."""
    parts = toml.split("\n[")
    return "\n[".join(p for p in parts if not p.startswith("egress]"))


def fastmta(*args: str) -> list[str]:
    return [sys.executable, "-m", "fastmta", *args]


@pytest.mark.timeout(120)
def test_send_pool_cold_cap_and_status(tmp_path):
    world = World(WorldSpec(name="pool", providers=[Provider(name="inbox", generate=6)]))
    rcpt, msg, _ = write_inputs(tmp_path, world, 400)
    spool = tmp_path / "spool"

    async def go():
        async with SimInternet(world) as sim:
            cfg = make_config(sim, validity_s=30.0, workers=1)
            conf = tmp_path / "fastmta.toml"
            conf.write_text(without_egress(config_toml(cfg)) + EGRESS)
            bad = await asyncio.to_thread(subprocess.run, fastmta(
                "send", "--recipients", str(rcpt), "--message", str(msg), "--config",
                str(conf), "--spool", str(spool), "--yes", "--pool", "nope"),
                env=ENV, capture_output=True, timeout=60)
            assert bad.returncode != 0 and b"egress pool 'nope' is not configured" in \
                bad.stderr
            assert not (spool / "data.mdb").exists()  # nothing injected
            ok = await asyncio.to_thread(subprocess.run, fastmta(
                "send", "--recipients", str(rcpt), "--message", str(msg), "--config",
                str(conf), "--spool", str(spool), "--yes", "--pool", "mix", "--json"),
                env=ENV, capture_output=True, timeout=90)
            assert ok.returncode == 0, ok.stderr.decode()[-2000:]
            return await sim.stats(), conf

    stats, conf = asyncio.run(go())
    got = Counter()
    for k, v in stats["by_source"].items():
        got[k.split("\t")[1]] += v
    assert got[COLD] == 50  # its whole day-1 cap, never more
    assert got[WARM] == 350  # the overflow
    st = subprocess.run(fastmta("egress", "status", "--json", "--config", str(conf),
                                "--spool", str(spool)), env=ENV, capture_output=True,
                        timeout=60, check=True)
    doc = json.loads(st.stdout)
    cold = next(s for s in doc["sources"] if s["name"] == "cold1")
    assert cold["warmup"] and cold["plan"] == "tiny" and cold["pools"] == ["mix"]
    (row,) = cold["providers"]
    assert row["daily_cap"] == 50 and row["used_today"] == 50 and row["stage"] == 1
    assert row["next"] == "advance"  # a full day with clean feedback
    warm = next(s for s in doc["sources"] if s["name"] == "warm1")
    (wrow,) = warm["providers"]  # a warm source's use is counted too (no cap)
    assert wrow["used_today"] == 350 and wrow["daily_cap"] is None and wrow["next"] == "warm"
    # a warm source's totals: its use (no allowance), deferrals and last use
    assert warm["used_today"] == 350 and warm["daily_allowance"] is None
    assert warm["deferred_today"] == wrow["deferred_today"] >= 0
    assert warm["last_used"] is not None and warm["last_used"] <= doc["egress_time"]
    assert cold["used_today"] == 50 and cold["daily_allowance"] == 50
    assert row["room_today"] == 0 and row["last_used"] is not None
    assert {r["source"] for r in doc["learned"]} == {"warm1", "cold1"}
    text = subprocess.run(fastmta("egress", "status", "--config", str(conf), "--spool",
                                  str(spool)), env=ENV, capture_output=True, timeout=60,
                          check=True).stdout.decode()
    assert "warm-up plan tiny" in text and "stage 1: 50/50 today" in text
    assert "used 350 today" in text and "350 today, " in text and "(no cap: warm)" in text
    assert "used 50/50 today" in text and "last used " in text
