"""``fastmta bench --nodes N [--cluster redis]``: several nodes against one provider.

Each node is a real separate process (``fastmta.bench.node``: its own supervisor,
workers and LMDB spool); they share one simulated internet and, with ``--cluster
redis``, one throwaway ``redis-server`` on a loopback port (``cluster.server``).  The
nodes start their engines, then inject their slice of the recipients at the same
moment.  With ``--cluster redis`` the same run is repeated without the cluster (each
node holds the provider's limits as if it were alone): the figures side by side show
what sharing prevents.  Per pass: the provider's caps (``cap_msgs_per_s``,
``cap_connections``, from the sim's world), the accepted rate (``observed_msgs_per_s``:
acceptances of the capped provider from its first to its last), the sim's
``peak_connections`` (refused connections count while they are open), refusals, the
audit over every node's spool, and Redis round trips (``INFO commandstats``) per
delivered message.

``--cluster redis`` with one node (``run_overhead``): the in-process bench twice, with
and without Redis, for the cluster's overhead on the null profile.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter

import msgspec

from fastmta.bench.audit import _audit
from fastmta.bench.profile import BenchError, expand, load_profile
from fastmta.config import Config, ProviderConfig
from fastmta.spool import Spool

RATE_KEYS = ("421 4.7.28",)
CONN_KEYS = ("421 4.3.2",)
r = msgspec.structs.replace


class NodeProc:
    """A node process (``python -m fastmta.bench.node``), in its own process group."""

    def __init__(self, spec: dict, workdir: str, name: str) -> None:
        self.spec = dict(spec, out=os.path.join(workdir, f"{name}.json"))
        self.path = os.path.join(workdir, f"{name}.spec.json")
        self.name = name
        self.proc: asyncio.subprocess.Process | None = None
        self.log = open(os.path.join(workdir, f"{name}.log"), "ab")  # noqa: SIM115

    async def start(self) -> NodeProc:
        with open(self.path, "w") as f:
            json.dump(self.spec, f)
        if os.path.exists(self.spec["out"]):
            os.unlink(self.spec["out"])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [os.getcwd(), *[p for p in [os.environ.get("PYTHONPATH", "")] if p]]))
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fastmta.bench.node", self.path,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=self.log, start_new_session=True, env=env)
        return self

    async def expect(self, word: str, timeout_s: float) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        while True:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout_s)
            if not line:
                raise BenchError(f"node {self.name} exited before {word!r} (see its log "
                                 f"{self.log.name})")
            text = line.decode().strip()
            if text.startswith(word):
                return text

    def go(self) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")

    async def result(self, timeout_s: float) -> dict:
        await self.expect("done", timeout_s)
        await asyncio.wait_for(self.proc.wait(), 30.0)
        with open(self.spec["out"]) as f:
            return json.load(f)

    def kill9(self) -> None:
        """SIGKILL to the node's whole process group (supervisor and workers)."""
        if self.proc is not None and self.proc.returncode is None:
            os.killpg(self.proc.pid, signal.SIGKILL)

    async def wait(self) -> None:
        if self.proc is not None:
            await asyncio.wait_for(self.proc.wait(), 30.0)

    def close(self) -> None:
        self.kill9()
        self.log.close()


def capped_provider(world) -> tuple[str, int, float]:
    """(name, C connections, R msgs/s) of the world's capped provider."""
    for p in world.spec.providers:
        b = p.behaviour
        if b.max_conn_per_ip and b.max_msgs_per_min_per_ip:
            return p.name, b.max_conn_per_ip, b.max_msgs_per_min_per_ip / b.rate_window_s
    raise BenchError("--nodes needs a profile with a provider capped in connections and "
                     "rate (e.g. --profile capped)")


def node_config(cfg: Config, world, redis_url: str, node: str,
                rate_margin: float = 0.97) -> Config:
    """A node's config: the capped provider's published limits as the operator's
    provider rule (just under its rate), and the cluster when ``redis_url``."""
    name, conns, rate = capped_provider(world)
    p = next(p for p in world.spec.providers if p.name == name)
    suffix = p.mx_names[0].split(".", 1)[1] if p.mx_names else f"{name}.sim.test"
    prov = ProviderConfig(name=name, mx_suffixes=[suffix], initial_connections=conns,
                          max_connections=conns, provider_max_connections=conns,
                          provider_msg_rate_per_s=round(rate * rate_margin, 3))
    cl = r(cfg.cluster, redis_url=redis_url, node=node)
    return r(cfg, providers=[prov, *cfg.providers], cluster=cl)


# commands a client sends (one round trip each); the others in commandstats (ZADD, GET,
# TIME...) also count the calls made inside the Functions
TOP_LEVEL = ("cmdstat_fcall", "cmdstat_fcall_ro", "cmdstat_xread", "cmdstat_xrevrange",
             "cmdstat_function|load")


def node_spec(opts, cfg: Config, workdir: str, index: int, nodes: int) -> dict:
    """The spec of node ``index`` of ``nodes`` (``fastmta.bench.node``)."""
    return {"config": msgspec.to_builtins(cfg), "spool": os.path.join(workdir,
                                                                      f"spool{index}"),
            "workers": opts.workers or 1, "profile": opts.profile, "domains": opts.domains,
            "sites": opts.sites, "messages": opts.messages, "nodes": nodes, "index": index,
            "size": opts.size, "seed": opts.seed, "timeout_s": opts.timeout_s}


def redis_calls(url: str) -> Counter:
    """Calls per command executed by the Redis server so far (``INFO commandstats``),
    plus ``_round_trips`` (client commands) and ``_all`` (with those inside Functions)."""
    import redis

    c = redis.Redis.from_url(url)
    try:
        st = c.info("commandstats")
    finally:
        c.close()
    out = Counter({k: int(v.get("calls", 0)) for k, v in st.items()
                   if k not in ("cmdstat_info", "cmdstat_ping")})
    out["_round_trips"] = sum(out[k] for k in TOP_LEVEL)
    out["_all"] = sum(v for k, v in out.items() if not k.startswith("_"))
    return out


def redis_figures(before: Counter, after: Counter, delivered: int) -> dict:
    d = after - before
    n = max(1, delivered)
    return {"redis_round_trips": d["_round_trips"],
            "redis_round_trips_per_msg": round(d["_round_trips"] / n, 4),
            "redis_commands": d["_all"], "redis_commands_per_msg": round(d["_all"] / n, 4),
            "redis_calls_by_command": {k.removeprefix("cmdstat_"): v for k, v in d.items()
                                       if not k.startswith("_") and v}}


async def nodes_pass(opts, prof, world, nodes: int, redis_url: str, workdir: str) -> dict:
    """One pass: ``nodes`` node processes against a fresh sim (and Redis when given)."""
    from fastmta.bench.harness import bench_config
    from fastmta.sim import SimInternet

    name, conns, rate = capped_provider(world)
    sim = SimInternet(world, workers=1, tls=False)
    await sim.start()
    procs: list[NodeProc] = []
    try:
        base = bench_config(sim, opts, prof)
        calls0 = redis_calls(redis_url) if redis_url else Counter()
        for i in range(nodes):
            spec = node_spec(opts, node_config(base, world, redis_url, f"n{i}"), workdir,
                             i, nodes)
            procs.append(await NodeProc(spec, workdir, f"node{i}").start())
        for p in procs:
            await p.expect("ready", 120.0)
        t0 = time.time()
        for p in procs:
            p.go()
        results = [await p.result(opts.timeout_s + 180.0) for p in procs]
        elapsed = max(x["t_final"] for x in results) - t0
        calls1 = redis_calls(redis_url) if redis_url else Counter()
        stats = await sim.stats()
        accepted = await sim.accepted()
    finally:
        for p in procs:
            p.close()
        await sim.stop()
    out = _figures(world, name, conns, rate, nodes, results, stats, accepted, elapsed,
                   bool(redis_url), workdir)
    if redis_url:
        out.update(redis_figures(calls0, calls1, out["delivered"]))
    return out


def _figures(world, name, conns, rate, nodes, results, stats, accepted, elapsed,
             clustered, workdir) -> dict:
    times: list[int] = []
    audits = []
    for i, res in enumerate(results):
        spool = Spool.open(os.path.join(workdir, f"spool{i}"))
        marks = [tuple(m) for m in res["marks"]] or [(1, res["t_go"] * 1000.0)]
        a = _audit(spool, [(res["did"], marks)], world, accepted, res["t_go"] * 1000.0)
        times += a["_capped"].get(name, [])
        audits.append(a)
    Spool.close_all()
    times.sort()
    span = (times[-1] - times[0]) / 1000.0 if len(times) > 1 else 0.0
    delivered = sum(a["delivered"] for a in audits)
    rate_ref = sum(stats["replies"].get(k, 0) for k in RATE_KEYS)
    conn_ref = sum(stats["replies"].get(k, 0) for k in CONN_KEYS)
    lim = [x for res in results for x in res["limits"]]
    rts = sum(int(x.get("round_trips", 0)) for x in lim)
    lost = sum(a["lost"] for a in audits)
    problems = [p for a in audits for p in a["problems"]][:10]
    return {
        "cluster": "redis" if clustered else "none",
        "nodes": nodes,
        "cap_msgs_per_s": round(rate, 2),
        "cap_connections": conns,
        "observed_msgs_per_s": round((len(times) - 1) / span, 1) if span else 0.0,
        "observed_pct_of_cap": round(100.0 * (len(times) - 1) / span / rate, 1)
        if span else 0.0,
        "peak_connections": int(stats.get("peak_connections", {}).get(name, 0)),
        # every attempt the provider saw: the accepted ones and the refused ones
        "attempted_msgs_per_s": round((len(times) + rate_ref) / span, 1) if span else 0.0,
        "refusals": rate_ref + conn_ref,
        "refusals_rate": rate_ref, "refusals_connections": conn_ref,
        "refusals_by_code": stats["replies"],
        "connections": stats["connections"],
        "delivered": delivered,
        "delivered_by_node": [a["delivered"] for a in audits],
        "delivered_by_worker": [res["delivered_by_worker"] for res in results],
        "elapsed_s": round(elapsed, 2),
        "msgs_per_s": round(delivered / elapsed, 1) if elapsed else 0.0,
        "lost": lost, "duplicates": sum(a["duplicates"] for a in audits),
        "pending": sum(a["pending"] for a in audits),
        "unexpected": sum(a["unexpected"] for a in audits),
        "audit_ok": lost == 0 and not any(a["pending"] or a["unexpected"] for a in audits),
        "audit_problems": problems,
        "limits_round_trips": rts,
        "limits_round_trips_per_msg": round(rts / delivered, 4) if delivered else 0.0,
        "degraded_workers": sum(1 for x in lim if x.get("degraded")),
    }


async def run_cluster_bench(opts, nodes: int, cluster: str) -> dict:
    """``--nodes N [--cluster redis]``: the pass asked, and with ``redis`` the same
    without the cluster for comparison (``without_cluster``)."""
    from fastmta.cluster.server import RedisServer

    if nodes < 1:
        raise BenchError("--nodes must be at least 1")
    prof = load_profile(opts.profile)
    world = expand(prof, opts.domains, opts.sites)
    capped_provider(world)
    tmp = tempfile.mkdtemp(prefix="fastmta-nodes-")
    try:
        out: dict = {"profile": prof.name, "messages": opts.messages,
                     "workers_per_node": opts.workers or 1}
        if cluster == "redis":
            with RedisServer() as srv:
                d = os.path.join(tmp, "cluster")
                os.mkdir(d)
                out.update(await nodes_pass(opts, prof, world, nodes, srv.url, d))
                out["leases_left"] = _leases_left(srv.url)
            d = os.path.join(tmp, "alone")
            os.mkdir(d)
            out["without_cluster"] = await nodes_pass(opts, prof, world, nodes, "", d)
        else:
            d = os.path.join(tmp, "alone")
            os.mkdir(d)
            out.update(await nodes_pass(opts, prof, world, nodes, "", d))
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _leases_left(url: str) -> int:
    import redis

    c = redis.Redis.from_url(url)
    try:
        return sum(c.zcard(k) for k in c.scan_iter("fm:c:*"))
    finally:
        c.close()


async def run_overhead(opts, pairs: int = 3) -> dict:
    """One node, ``--cluster redis``: ``pairs`` pairs of the in-process bench, with and
    without Redis, interleaved (R L, L R, R L...: a drift of the machine's load hits both
    sides alike), one Redis for all.  The top-level figures are the first Redis run's;
    ``pairs`` lists every pair; ``cluster_throughput_ratio`` is the median of the pairs'
    ratios (``..._min``/``..._max`` their spread), ``cpu_ratio`` the same for the CPU
    per message (robust to load: a stall shows in time, not CPU);
    ``redis_round_trips_per_msg`` sums every Redis run."""
    from fastmta.bench.harness import run_bench
    from fastmta.cluster.server import RedisServer

    base = opts.config or Config()
    runs: list[tuple[dict, dict]] = []
    total, delivered = Counter(), 0
    with RedisServer() as srv:
        cfg = r(base, cluster=r(base.cluster, redis_url=srv.url,
                                node=base.cluster.node or "bench"))

        async def with_redis() -> dict:
            nonlocal total, delivered
            calls0 = redis_calls(srv.url)
            res = await run_bench(dataclasses.replace(opts, config=cfg))
            calls1 = redis_calls(srv.url)
            total += calls1 - calls0
            delivered += res["delivered"]
            res.update(redis_figures(calls0, calls1, res["delivered"]))
            return res

        for i in range(max(1, pairs)):
            if i % 2 == 0:
                red = await with_redis()
                alone = await run_bench(dataclasses.replace(opts, config=base))
            else:
                alone = await run_bench(dataclasses.replace(opts, config=base))
                red = await with_redis()
            runs.append((red, alone))
        leases_left = _leases_left(srv.url)
    res = dict(runs[0][0])
    keys = ("msgs_per_s", "deliver_msgs_per_s", "elapsed_s", "delivered", "lost",
            "audit_ok", "cpu_s_per_1k_fastmta")
    res["pairs"] = [{"order": "redis first" if i % 2 == 0 else "alone first",
                     "redis": {k: red[k] for k in keys} | {
                         "redis_round_trips_per_msg": red["redis_round_trips_per_msg"]},
                     "alone": {k: alone[k] for k in keys},
                     "ratio": round(red["msgs_per_s"] / alone["msgs_per_s"], 3)
                     if alone["msgs_per_s"] else 0.0}
                    for i, (red, alone) in enumerate(runs)]
    ratios = [p["ratio"] for p in res["pairs"]]
    cpu = [red["cpu_s_per_1k_fastmta"] / alone["cpu_s_per_1k_fastmta"]
           for red, alone in runs if alone["cpu_s_per_1k_fastmta"]]
    res["cluster"] = "redis"
    res["leases_left"] = leases_left
    res["msgs_per_s_median"] = statistics.median(x[0]["msgs_per_s"] for x in runs)
    res["without_cluster"] = {k: runs[0][1][k] for k in keys} | {
        "msgs_per_s_median": statistics.median(x[1]["msgs_per_s"] for x in runs)}
    res["cluster_throughput_ratio"] = round(statistics.median(ratios), 3)
    res["cluster_throughput_ratio_min"] = min(ratios)
    res["cluster_throughput_ratio_max"] = max(ratios)
    res["cpu_ratio"] = round(statistics.median(cpu), 3) if cpu else 0.0
    res.update(redis_figures(Counter(), total, delivered))
    res["audit_ok"] = all(red["audit_ok"] and alone["audit_ok"] for red, alone in runs)
    return res
