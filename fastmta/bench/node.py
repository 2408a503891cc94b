"""One fastmta node as its own process: supervisor, workers and spool (cluster bench).

``python -m fastmta.bench.node SPEC.json``: the node starts its supervisor on its spool
(with the cluster's worker entry point when ``[cluster] redis_url`` is set), prints
``ready`` once every worker beats, waits for ``go`` on stdin, injects its recipients
(``inject``: its slice of the bench recipients: every ``nodes``-th from ``index``; or
nothing after a restart), waits until its delivery is final, drains and writes its
figures to ``SPEC["out"]`` (JSON), then prints ``done``.  The parent may kill -9 the
whole process group at any time (the fault tests): the spool keeps what was sent.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
import time

import msgspec

from fastmta.bench.profile import expand, load_profile, recipients
from fastmta.cluster.node import worker_target
from fastmta.config import Config
from fastmta.delivery import inject
from fastmta.delivery.recipients import Row
from fastmta.engine import entry as engine
from fastmta.engine.supervisor import Supervisor
from fastmta.spool import Spool


def _orphan_watch() -> None:
    """stdin closes when the bench dies: take the node (its process group) down too."""
    sys.stdin.read()
    os.killpg(os.getpgid(0), signal.SIGKILL)


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def _wait_workers(sup: Supervisor, task: asyncio.Task, timeout_s: float) -> None:
    t0 = time.monotonic()
    while not all(w.get("pid") for w in sup.workers_status()) or not sup.slots[0].proc:
        if task.done():
            await task
            raise RuntimeError("the engine stopped during start-up")
        if time.monotonic() - t0 > timeout_s:
            raise RuntimeError("the engine workers did not start in time")
        await asyncio.sleep(0.02)


async def run_node(spec: dict) -> dict:
    cfg = msgspec.convert(spec["config"], Config)
    spool_path = spec["spool"]
    spool = Spool.open(spool_path, cfg.spool)
    sup = Supervisor(cfg, spool_path, workers=spec.get("workers") or None, title=False,
                     worker_target=worker_target(cfg))
    task = asyncio.get_running_loop().create_task(sup.run(forever=True))
    await _wait_workers(sup, task, 60.0)
    _say("ready")
    await asyncio.to_thread(sys.stdin.readline)  # "go" (or EOF: go as well)
    threading.Thread(target=_orphan_watch, daemon=True).start()
    marks: list[tuple[int, float]] = []
    t_go = time.time()
    did = spec.get("did") or 0
    if spec.get("inject", True):
        prof = load_profile(spec["profile"])
        world = expand(prof, spec["domains"], spec["sites"])
        route = await engine.domain_router(world.domains, cfg)
        nodes, index = spec["nodes"], spec["index"]

        def rows():
            line = 0
            for i, e in enumerate(recipients(prof, world, spec["messages"],
                                             seed=spec.get("seed", 1))):
                if i % nodes != index:
                    continue
                line += 1
                if line % 512 == 1:
                    marks.append((line, time.time() * 1000.0))
                yield Row(line, e, {})
            marks.append((line + 1, time.time() * 1000.0))

        from fastmta.bench.harness import message_template

        analysis = await asyncio.to_thread(
            inject, spool, rows(), message_template(spec["size"]),
            validity_s=prof.bench.validity_s, cfg=cfg.delivery, shard_of=route,
            shards=cfg.engine.shards, name=f"bench-node{index}")
        did = analysis.delivery_id
        _say(f"injected {did}")
    deadline = time.monotonic() + spec.get("timeout_s", 600.0)
    while spool.kpis(did).get("pending", 0):
        if task.done():
            await task
            raise RuntimeError("the engine stopped before the delivery was final")
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    t_final = time.time()
    sup.drain()
    await asyncio.wait_for(task, 120.0)
    ws = sup.workers_status()
    return {"did": did, "marks": marks, "t_go": t_go, "t_final": t_final,
            "kpis": spool.kpis(did),
            "delivered_by_worker": [int((w.get("stats") or {}).get("sent", 0)) for w in ws],
            "limits": [w.get("limits") or {} for w in ws]}


def main(argv: list[str]) -> int:
    with open(argv[0]) as f:
        spec = json.load(f)
    from fastmta.runtime import run

    try:
        out = run(run_node(spec))
    finally:
        Spool.close_all()
    tmp = spec["out"] + ".tmp"
    with open(tmp, "w") as f:
        json.dump(out, f)
    os.replace(tmp, spec["out"])
    _say("done")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
