"""Memory per process over a long delivery on the simulated internet (issues #9, #21).

    python benchmarks/memory_curve.py --recipients 10000000 --every 10

The ``null`` bench world (``fastmta bench --profile null``: every MX accepts at once;
``--domains`` domains over ``--sites`` MX sites) is served by ``fastmta sim serve`` (MX
hosts in ``--sink-procs`` processes); a CSV of ``--recipients`` personalised recipients
(``email,name``) is injected with ``fastmta inject`` (subprocess), then ``fastmta run``
delivers it until every recipient is final.  Every ``--every`` seconds it samples the
resident memory of each fastmta process: private (anonymous: Python heap, C allocator)
and file-backed (the LMDB map pages the process touched: page cache, shared and
reclaimable, not a leak).  It prints the curve and a JSON summary: time to inject and
to drain, spool bytes per recipient after each, and per process the private memory
maximum of the first and the last quarter of the run (flat = no growth with the
number of recipients).

    PYTHONPATH=src python benchmarks/memory_curve.py --command fastmta analyze ...

samples any other command instead (e.g. ``analyze`` of a 10M-line file).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import chaos  # noqa: E402
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
    """``fastmta <command>`` for a fastmta process, ``worker <pid>`` for the processes it
    spawned (supervisor's workers, an injection reader), else the command line."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().decode(errors="replace").split("\0")
    except OSError:
        return "?"
    cmd = " ".join(argv).strip()
    if "resource_tracker" in cmd:
        return "resource_tracker"
    if "multiprocessing.spawn" in cmd or "multiprocessing-fork" in cmd:
        return f"worker {pid}"
    if "fastmta" in argv:
        i = argv.index("fastmta")
        return " ".join(argv[i:i + 2])
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


def _spool_bytes(spool_path: Path) -> int:
    try:
        return os.stat(spool_path / "data.mdb").st_blocks * 512
    except OSError:
        return 0


def _write_inputs(args, workdir: Path) -> tuple[Path, Path, Path]:
    """The null world as a sim profile, the recipients (streamed) and the template."""
    from fastmta import bench as b
    from fastmta.bench.profile import world_toml

    prof = b.load_profile("null")
    world = b.expand(prof, args.domains, args.sites)
    wpath = workdir / "world.toml"
    wpath.write_text(world_toml(world))
    rcpt = workdir / "recipients.csv"
    with open(rcpt, "w", buffering=1 << 20) as f:
        f.write("email,name\n")
        for i, e in enumerate(b.recipients(prof, world, args.recipients)):
            f.write(f"{e},Name {i}\n")
    msg = workdir / "message.eml"
    msg.write_bytes(b.message_template(args.size).replace(b"Subject: ", b"Subject: {{name}}, ", 1))
    return wpath, rcpt, msg


def _start_sim(args, wpath: Path, workdir: Path) -> tuple[subprocess.Popen, dict]:
    env = dict(os.environ, PYTHONPATH=chaos.SRC)
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastmta", "sim", "serve", "--profile", str(wpath),
         "--dns-port", "0", "--smtp-port", "0", "--workers", str(args.sink_procs),
         "--routes", str(workdir / "routes.txt")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the first line is the JSON with the ports
    if not line:
        raise SystemExit("fastmta sim serve did not start")
    return proc, json.loads(line)


def _config(ports: dict, validity_s: float, workers: int):
    from types import SimpleNamespace

    from fastmta.config import DnsConfig
    from fastmta.sim.config import sim_config

    sim = SimpleNamespace(
        dns_config=lambda **kw: DnsConfig(nameservers=["127.0.0.1"], port=ports["dns_port"],
                                          allow_loopback_mx=True, **kw),
        smtp_port=ports["smtp_port"], ca_file=None, mta_sts_port=0)
    return sim_config(sim, validity_s=validity_s, retry_s=5.0, workers=workers)


def _sampled(cmd: list[str], args, t0: float, curve: list, timeout_s: float) -> tuple[int, float]:
    """Run ``cmd`` and sample its process tree until it exits; (rc, seconds)."""
    env = dict(os.environ, PYTHONPATH=chaos.SRC)
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        sample_loop(proc, args.every, t0, curve,
                    stop=lambda: time.monotonic() - start > timeout_s)
        rc = proc.wait(timeout=max(1.0, timeout_s - (time.monotonic() - start)))
    except subprocess.TimeoutExpired:
        rc = -9
    finally:
        if proc.poll() is None:  # out of time: stop it (twice = at once), then the tree
            pids = tree(proc.pid)
            for _ in range(2):
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                    break
                except subprocess.TimeoutExpired:
                    continue
            for p in pids:
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass
            proc.wait(10)
    return rc, time.monotonic() - start


def engine_run(args, workdir: Path) -> dict:
    t = time.monotonic()
    wpath, rcpt, msg = _write_inputs(args, workdir)
    inputs_s = time.monotonic() - t
    sim, ports = _start_sim(args, wpath, workdir)
    spool_path = workdir / "spool"
    conf = workdir / "fastmta.toml"
    try:
        cfg = _config(ports, args.validity, args.workers)
        conf.write_text(chaos.config_toml(cfg))
        t0 = time.monotonic()
        inject_curve: list = []
        rc_inj, inject_s = _sampled(
            [sys.executable, "-m", "fastmta", "inject", "--recipients", str(rcpt),
             "--message", str(msg), "--spool", str(spool_path), "--config", str(conf),
             "--validity", f"{int(args.validity)}s", "--json"],
            args, t0, inject_curve, args.timeout)
        bytes_injected = _spool_bytes(spool_path)
        run_curve: list = []
        rc_run, drain_s = _sampled(
            [sys.executable, "-m", "fastmta", "run", "--spool", str(spool_path),
             "--config", str(conf)], args, t0, run_curve, args.timeout)
    finally:
        sim.terminate()
        try:
            sim.wait(30)
        except subprocess.TimeoutExpired:
            sim.kill()
    spool = Spool.open(spool_path, cfg.spool)
    k = spool.kpis(1)
    spool.close()
    n = args.recipients
    bytes_drained = _spool_bytes(spool_path)
    return {
        "recipients": n, "domains": args.domains, "sites": args.sites,
        "workers": args.workers, "size_bytes": args.size, "inputs_s": round(inputs_s, 1),
        "inject_rc": rc_inj, "inject_s": round(inject_s, 1),
        "inject_per_s": round(n / inject_s) if inject_s else 0,
        "run_rc": rc_run, "drain_s": round(drain_s, 1),
        "drain_per_s": round(k.get("sent", 0) / drain_s) if drain_s else 0,
        "drain_complete": rc_run == 0 and not k.get("pending", 0),
        "sent": k.get("sent", 0), "failed": k.get("failed", 0),
        "pending": k.get("pending", 0),
        "spool_bytes_after_inject": bytes_injected,
        "spool_bytes_per_recipient_after_inject": round(bytes_injected / n, 1),
        "spool_bytes_after_drain": bytes_drained,
        "spool_bytes_per_recipient_after_drain": round(bytes_drained / n, 1),
        "load_average_end": os.getloadavg(),
        "inject_curve": inject_curve, "curve": run_curve,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipients", type=int, default=300_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--domains", type=int, default=1000)
    ap.add_argument("--sites", type=int, default=100)
    ap.add_argument("--size", type=int, default=3000, help="message bytes (about)")
    ap.add_argument("--sink-procs", type=int, default=2, help="MX processes of the sim")
    ap.add_argument("--validity", type=float, default=3 * 3600.0, help="seconds")
    ap.add_argument("--every", type=float, default=5.0)
    ap.add_argument("--timeout", type=float, default=3600.0, help="per phase, seconds")
    ap.add_argument("--dir", default=None, help="work directory (default: a temp dir)")
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
        with tempfile.TemporaryDirectory(prefix="fastmta-mem-", dir=args.dir) as tmp:
            res = engine_run(args, Path(tmp))
    if "inject_curve" in res:
        print("injection (fastmta inject):")
        print_curve(res["inject_curve"])
        res["inject_summary"] = summary(res.pop("inject_curve"))
        print("delivery (fastmta run):")
    print_curve(res["curve"])
    res["summary"] = summary(res.pop("curve"))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
