"""Chaos run: a delivery on the simulated internet while workers and the supervisor are
killed with SIGKILL; then an audit (issue #9).

    PYTHONPATH=src python benchmarks/chaos.py --recipients 100000 --rounds 20 \
        --interval 3 --supervisor-kills 3

The engine runs as a subprocess (``fastmta run``); this process holds the simulated
internet (DNS + MX hosts on loopback) and the kill loop.  Each round kills one random
worker process (``kill -9``); ``--supervisor-kills`` of the rounds (spread evenly) kill the
supervisor instead and start a new one.  Before each kill the recipients leased by the
victim's process(es) are counted: they are the only ones whose result may not be durable,
so the duplicates the sink saw must not exceed their sum.

Audit afterwards: every recipient final (0 pending, 0 lost), each recipient's state equals
the world's verdict, duplicates <= sum of in-flight at the kills, KPIs equal a recount,
and the spool reopens cleanly (no leases, empty queues).  Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec

from fastmta.config import Config
from fastmta.config import to_toml as config_toml  # memory_curve.py and tests use it
from fastmta.engine import entry as engine
from fastmta.sim import SimInternet
from fastmta.sim.audit import audit_delivery as audit
from fastmta.sim.config import sim_config
from fastmta.sim.world import Behaviour, Provider, World, WorldSpec
from fastmta.spool import Spool


def _package_parent() -> str:
    """Where the fastmta this script imported lives (the source tree's src/ when run with
    PYTHONPATH=src, else site-packages): child processes get the same build."""
    import fastmta

    return os.path.dirname(os.path.dirname(os.path.abspath(fastmta.__file__)))


SRC = _package_parent()

MESSAGE = (
    "From: Sender <news@sender.example>\n"
    "To: {{email}}\n"
    "Subject: Hello {{name}}\n"
    "\n"
    "Hi {{name}}, a chaos test message.\n"
)


def chaos_world() -> World:
    """Providers whose recipients all end final well inside the validity period."""
    return World(WorldSpec(name="chaos", providers=[
        Provider(name="fastmail", generate=150, hosts=2),
        Provider(name="unknownusers", generate=20, behaviour=Behaviour(unknown_user_rate=0.2)),
        Provider(name="greylister", generate=15, behaviour=Behaviour(greylist_s=1.0)),
        Provider(name="throttler", generate=10, hosts=2,
                 behaviour=Behaviour(max_conn_per_ip=3, max_msgs_per_conn=20)),
        Provider(name="nxdomain", generate=3, dns="nxdomain"),
        Provider(name="nullmx", generate=2, dns="nullmx"),
    ]))


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(entry))
    return out


def worker_pids(sup_pid: int) -> list[int]:
    """Worker processes of a supervisor (spawned children running python)."""
    pids = []
    for c in children(sup_pid):
        try:
            with open(f"/proc/{c}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        # workers set their title ("fastmta: worker N"); spawn children otherwise
        if b"fastmta: worker" in cmd or (b"multiprocessing.spawn" in cmd):
            pids.append(c)
    return pids


def reopen_check(spool_path: Path, cfg: Config) -> dict:
    """Open the spool in a fresh process and report leases and queue counts."""
    code = (
        "import json,sys,msgspec\n"
        "from fastmta.config import SpoolConfig\n"
        "from fastmta.spool import Spool\n"
        "s = Spool.open(sys.argv[1], msgspec.json.decode(sys.argv[2], type=SpoolConfig))\n"
        "print(json.dumps({'leases': len(s.leases()), 'queues': s.queue_counts(),"
        " 'deliveries': len(s.deliveries())}))\n"
        "s.close()\n")
    env = dict(os.environ, PYTHONPATH=SRC)
    r = subprocess.run([sys.executable, "-c", code, str(spool_path),
                        msgspec.json.encode(cfg.spool).decode()],
                       capture_output=True, text=True, timeout=60, env=env)
    if r.returncode != 0:
        return {"ok": False, "error": r.stderr[-2000:]}
    out = json.loads(r.stdout)
    out["ok"] = out["leases"] == 0 and not any(out["queues"].values())
    return out


async def chaos(workdir: Path, n: int, rounds: int, interval_s: float, supervisor_kills: int,
                workers: int, seed: int, timeout_s: float, log=print) -> dict:
    rng = random.Random(seed)
    world = chaos_world()
    domains = world.domains
    rcpt = workdir / "recipients.csv"
    with open(rcpt, "w") as f:
        f.write("email,name\n")
        for i in range(n):
            d = domains[i % len(domains)] if i < len(domains) else rng.choice(domains)
            f.write(f"r{i}@{d},n{i}\n")
    msg = workdir / "message.eml"
    msg.write_text(MESSAGE)
    sup_rounds = set()
    if supervisor_kills:
        step = rounds / (supervisor_kills + 1)
        sup_rounds = {round(step * (k + 1)) for k in range(supervisor_kills)}
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    async with SimInternet(world) as sim:
        cfg = sim_config(sim, validity_s=600.0, retry_s=2.0, workers=workers)
        spool_path = workdir / "spool"
        conf = workdir / "fastmta.toml"
        conf.write_text(config_toml(cfg))
        spool = Spool.open(spool_path, cfg.spool)
        t0 = time.monotonic()
        a = await engine.inject_file(spool, cfg, rcpt, msg.read_bytes(), validity_s=600.0)
        did = a.delivery_id
        log(f"injected {n} recipients in {time.monotonic() - t0:.1f}s (delivery {did})")
        cmd = [sys.executable, "-m", "fastmta", "run", "--spool", str(spool_path),
               "--config", str(conf)]
        logf = open(workdir / "engine.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(cmd, env=env, stdout=logf, stderr=subprocess.STDOUT)
        kills: list[dict] = []
        t_start = time.monotonic()
        try:
            for rnd in range(1, rounds + 1):
                await asyncio.sleep(interval_s * rng.uniform(0.7, 1.3))
                if proc.poll() is not None:
                    log(f"round {rnd}: engine already finished (rc {proc.returncode})")
                    break
                sent = spool.kpis(did).get("sent", 0)
                if rnd in sup_rounds:
                    # the supervisor and (orphaned) workers: those workers keep going until
                    # they notice; count what all of them hold
                    victims = [proc.pid]
                    held = len(spool.leases(did))
                    proc.kill()
                    proc.wait(30)
                    kills.append({"round": rnd, "what": "supervisor", "sent": sent,
                                  "in_flight": held})
                    log(f"round {rnd}: kill -9 supervisor {victims[0]} at sent={sent}, "
                        f"{held} leased")
                    proc = subprocess.Popen(cmd, env=env, stdout=logf, stderr=subprocess.STDOUT)
                    continue
                pids = worker_pids(proc.pid)
                if not pids:
                    log(f"round {rnd}: no worker running (restart in progress)")
                    kills.append({"round": rnd, "what": "none", "sent": sent, "in_flight": 0})
                    continue
                victim = rng.choice(pids)
                os.kill(victim, signal.SIGKILL)
                held = sum(1 for _, _, lease in spool.leases(did) if lease.pid == victim)
                kills.append({"round": rnd, "what": "worker", "pid": victim, "sent": sent,
                              "in_flight": held})
                log(f"round {rnd}: kill -9 worker {victim} at sent={sent}, {held} leased")
            loop = asyncio.get_running_loop()
            remaining = max(10.0, timeout_s - (time.monotonic() - t_start))
            rc = await asyncio.wait_for(loop.run_in_executor(None, proc.wait), remaining)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            logf.close()
        elapsed = time.monotonic() - t_start
        accepted = await sim.accepted()
        result = audit(spool, did, world, accepted)
        spool.close()
    reopen = reopen_check(spool_path, cfg)
    in_flight = sum(k["in_flight"] for k in kills)
    return {
        "recipients": n, "rounds": len(kills), "workers": workers,
        "worker_kills": sum(1 for k in kills if k["what"] == "worker"),
        "supervisor_kills": sum(1 for k in kills if k["what"] == "supervisor"),
        "engine_rc": rc, "elapsed_s": round(elapsed, 1),
        "lost": result["status"].get("pending", 0) + (n - result["n"]),
        "duplicates": result["dupes"], "in_flight_at_kills": in_flight,
        "dupes_within_bound": result["dupes"] <= in_flight,
        # tighter: results not yet durable when a process dies are at most the batch
        # being committed plus the one filling, per worker that died
        "commit_window_bound": 2 * cfg.spool.commit_batch * (
            sum(1 for k in kills if k["what"] == "worker")
            + workers * sum(1 for k in kills if k["what"] == "supervisor")),
        "status": result["status"], "reasons": result["reasons"], "kpis": result["kpis"],
        "audit_problems": result["problems"], "n_problems": result["n_problems"],
        "reopen": reopen, "kills": kills,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipients", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--interval", type=float, default=3.0, help="seconds between kills")
    ap.add_argument("--supervisor-kills", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=9)
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--dir", default=None, help="work directory (default: temp, removed)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fastmta-chaos-") as tmp:
        workdir = Path(args.dir) if args.dir else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        out = asyncio.run(chaos(workdir, args.recipients, args.rounds, args.interval,
                                args.supervisor_kills, args.workers, args.seed, args.timeout,
                                log=lambda s: print(s, file=sys.stderr, flush=True)))
    print(json.dumps(out, indent=1))
    ok = (out["lost"] == 0 and out["n_problems"] == 0 and out["dupes_within_bound"]
          and out["reopen"]["ok"] and out["engine_rc"] == 0)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
