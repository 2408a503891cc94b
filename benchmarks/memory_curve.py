"""RSS per process over a long delivery on the simulated internet (issue #9).

    PYTHONPATH=src python benchmarks/memory_curve.py --recipients 300000 --every 5

Runs ``fastmta run`` as a subprocess on a spool holding one delivery, samples every
``--every`` seconds the resident memory of the supervisor and of each worker (anonymous
memory = Python heap, and file-backed = the LMDB map pages the process touched, which the
kernel can drop), and prints the curve plus a JSON summary.  Flat anonymous memory is the
claim; file-backed pages follow the spool's size and are page cache, not a leak.

    PYTHONPATH=src python benchmarks/memory_curve.py --command fastmta analyze ...

samples any other command instead (e.g. ``analyze`` of a 10M-line file).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import chaos  # noqa: E402
from fastmta import engine  # noqa: E402
from fastmta.sim import SimInternet  # noqa: E402
from fastmta.sim.config import sim_config  # noqa: E402
from fastmta.spool import Spool  # noqa: E402


def rss(pid: int) -> tuple[int, int]:
    """(anonymous, file-backed) resident kB of a process (0, 0 if gone)."""
    anon = file = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    anon = int(line.split()[1])
                elif line.startswith("RssFile:") or line.startswith("RssShmem:"):
                    file += int(line.split()[1])
    except OSError:
        pass
    return anon, file


def tree(pid: int) -> list[int]:
    out = [pid]
    for c in chaos.children(pid):
        out.extend(tree(c))
    return out


def name_of(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"
    if "resource_tracker" in cmd:
        return "resource_tracker"
    return cmd[:40]


def sample_loop(proc: subprocess.Popen, every_s: float, t0: float, curve: list,
                stop=lambda: False) -> None:
    while proc.poll() is None and not stop():
        row = {"t_s": round(time.monotonic() - t0, 1)}
        for p in tree(proc.pid):
            nm = name_of(p)
            if nm == "resource_tracker":
                continue
            a, f = rss(p)
            row[nm] = (a // 1024, f // 1024)
        curve.append(row)
        time.sleep(every_s)


def print_curve(curve: list) -> None:
    names = sorted({k for row in curve for k in row if k != "t_s"})
    print("t_s  " + "  ".join(f"{n[:26]:>26}" for n in names))
    print("     " + "  ".join(f"{'anon MB / file MB':>26}" for _ in names))
    for row in curve:
        cells = [f"{f'{row[n][0]} / {row[n][1]}' if n in row else '-':>26}" for n in names]
        print(f"{row['t_s']:>5} " + "  ".join(cells))


def summary(curve: list) -> dict:
    names = sorted({k for row in curve for k in row if k != "t_s"})
    out = {}
    for n in names:
        vals = [row[n][0] for row in curve if n in row]
        if not vals:
            continue
        q = max(1, len(vals) // 4)
        out[n] = {"anon_mb_first_quarter_max": max(vals[:q]), "anon_mb_last_quarter_max":
                  max(vals[-q:]), "anon_mb_max": max(vals), "samples": len(vals)}
    return out


async def engine_run(args, workdir: Path) -> dict:
    world = chaos.chaos_world()
    rcpt = workdir / "recipients.csv"
    doms = world.domains
    with open(rcpt, "w") as f:
        f.write("email,name\n")
        for i in range(args.recipients):
            f.write(f"r{i}@{doms[i % len(doms)]},n{i}\n")
    async with SimInternet(world) as sim:
        cfg = sim_config(sim, validity_s=3000.0, retry_s=2.0, workers=args.workers)
        spool_path = workdir / "spool"
        conf = workdir / "fastmta.toml"
        conf.write_text(chaos.config_toml(cfg))
        spool = Spool.open(spool_path, cfg.spool)
        a = await engine.inject_file(spool, cfg, rcpt, chaos.MESSAGE.encode(),
                                     validity_s=3000.0)
        env = dict(os.environ, PYTHONPATH=chaos.SRC)
        cmd = [sys.executable, "-m", "fastmta", "run", "--spool", str(spool_path),
               "--config", str(conf)]
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        curve: list = []
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.run_in_executor(
                None, sample_loop, proc, args.every, t0, curve), args.timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
        elapsed = time.monotonic() - t0
        k = spool.kpis(a.delivery_id)
        spool.close()
    return {"recipients": args.recipients, "elapsed_s": round(elapsed, 1),
            "sent": k.get("sent", 0), "failed": k.get("failed", 0),
            "pending": k.get("pending", 0), "curve": curve}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipients", type=int, default=300_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--every", type=float, default=5.0)
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument("--command", nargs=argparse.REMAINDER,
                    help="sample this command instead of an engine run")
    args = ap.parse_args()
    if args.command:
        t0 = time.monotonic()
        proc = subprocess.Popen(args.command, stdout=subprocess.DEVNULL)
        curve: list = []
        sample_loop(proc, args.every, t0, curve)
        res = {"command": " ".join(args.command), "rc": proc.wait(),
               "elapsed_s": round(time.monotonic() - t0, 1), "curve": curve}
    else:
        with tempfile.TemporaryDirectory(prefix="fastmta-mem-") as tmp:
            res = asyncio.run(engine_run(args, Path(tmp)))
    print_curve(res["curve"])
    res["summary"] = summary(res.pop("curve"))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
