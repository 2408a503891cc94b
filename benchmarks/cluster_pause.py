"""Redis stalls mid-run: the 3-node capped bench with redis-server SIGSTOPped for PAUSE s
at each of the times AT (seconds after the start), the stall experiment of docs/scale.md.

    PYTHONPATH=$PWD python benchmarks/cluster_pause.py [PAUSE] [AT,AT...] [MESSAGES] [TIMEOUT]

Prints one JSON line: the accepted rate, the provider's peak connections, refusals,
the audit (pending/lost/duplicates), the elapsed time and the leases left in Redis.
A healthy run takes about as long as one without pauses (~22 s for 4,000 messages on
this machine) and leaves 0 leases; before the fixes it stalled for 19-77 s.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
import time

from fastmta.bench.cluster import _leases_left, nodes_pass
from fastmta.bench.harness import BenchOptions
from fastmta.bench.profile import expand, load_profile
from fastmta.cluster.server import RedisServer

KEYS = ("observed_msgs_per_s", "peak_connections", "refusals", "delivered", "pending",
        "lost", "duplicates", "elapsed_s", "audit_ok", "redis_round_trips_per_msg",
        "delivered_by_node", "leases_left")


async def main(pause: float, at: list[float], messages: int, timeout_s: float) -> dict:
    opts = BenchOptions(messages=messages, domains=20, sites=1, profile="capped",
                        timeout_s=timeout_s)
    prof = load_profile("capped")
    world = expand(prof, 20, 1)
    tmp = tempfile.mkdtemp(prefix="fastmta-pause-")
    try:
        with RedisServer() as srv:
            async def pauser() -> None:
                t0 = time.monotonic()
                for t in at:
                    await asyncio.sleep(max(0.0, t - (time.monotonic() - t0)))
                    os.kill(srv.proc.pid, signal.SIGSTOP)
                    try:
                        await asyncio.sleep(pause)
                    finally:
                        os.kill(srv.proc.pid, signal.SIGCONT)

            task = asyncio.get_running_loop().create_task(pauser())
            out = await nodes_pass(opts, prof, world, 3, srv.url, tmp)
            task.cancel()
            out["leases_left"] = _leases_left(srv.url)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {k: out.get(k) for k in KEYS}


if __name__ == "__main__":
    a = sys.argv[1:]
    res = asyncio.run(main(float(a[0]) if a else 0.4,
                           [float(x) for x in (a[1] if len(a) > 1 else "6,12").split(",")],
                           int(a[2]) if len(a) > 2 else 4000,
                           float(a[3]) if len(a) > 3 else 120.0))
    print(json.dumps(res))
