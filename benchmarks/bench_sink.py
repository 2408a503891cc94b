"""How fast the simulated internet's MX hosts accept mail, against Postfix's smtp-sink.

Load comes from Postfix's ``smtp-source`` (no pipelining; sessions reuse connections
with -d) and from the fastmta client (pipelined), 3 KB messages, loopback only.  Sinks:
``smtp-sink`` (one process) and the sim's MX hosts with 1 and 2 worker processes.
Figures are taken on a 2-core machine shared with other jobs (under contention): the
load generator and the sink compete for the same two cores.

    PYTHONPATH=src python benchmarks/bench_sink.py [--messages 30000] [--sessions 16] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_client import on_loop, run_fastmta  # noqa: E402

SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(ip: str, port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection((ip, port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{ip}:{port} does not answer")


def smtp_source(ip: str, port: int, messages: int, sessions: int) -> dict:
    t = time.perf_counter()
    r = subprocess.run([SOURCE, "-d", "-s", str(sessions), "-m", str(messages), "-l", "3072",
                        "-f", "sender@bench.test", "-t", "rcpt@sink.test", f"{ip}:{port}"],
                       capture_output=True, text=True, timeout=300)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(f"smtp-source failed: {r.stderr.strip()}")
    return {"messages": messages, "seconds": dt, "msgs_per_s": messages / dt}


class SimSink:
    """The sim's 'sink' profile in its own process (like `fastmta sim serve`)."""

    def __init__(self, workers: int) -> None:
        self.port = free_port()
        env = dict(os.environ)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fastmta", "sim", "serve", "--profile", "sink",
             "--dns-port", "0", "--smtp-port", str(self.port), "--workers", str(workers),
             "--routes", os.devnull],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
        line = self.proc.stdout.readline()
        info = json.loads(line)
        self.port = info["smtp_port"]
        self.ip = "127.0.1.1"
        wait_port(self.ip, self.port)

    def stop(self) -> dict:
        self.proc.send_signal(2)
        out, _ = self.proc.communicate(timeout=30)
        for line in out.splitlines():
            if line.startswith('{"stats"'):
                return json.loads(line)["stats"]
        return {}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=30000)
    ap.add_argument("--sessions", type=int, default=16)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not os.path.exists(SOURCE):
        print("smtp-source (Debian package postfix) is not installed", file=sys.stderr)
        return 2
    n, s = args.messages, args.sessions
    out: dict = {"messages": n, "sessions": s, "message_bytes": 3072,
                 "note": "2-core machine shared with other jobs: figures under contention"}

    port = free_port()
    sink = subprocess.Popen([SINK, "-u", "nobody", f"127.0.0.1:{port}", "1024"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port("127.0.0.1", port)
        out["smtp-sink <- smtp-source"] = smtp_source("127.0.0.1", port, n, s)
        out["smtp-sink <- fastmta"] = on_loop(lambda: run_fastmta("127.0.0.1", port, n, s, 64),
                                              True)
    finally:
        sink.terminate()
        sink.wait(5)

    for workers in (1, 2):
        sim = SimSink(workers)
        try:
            out[f"sim x{workers} <- smtp-source"] = smtp_source(sim.ip, sim.port, n, s)
            out[f"sim x{workers} <- fastmta"] = on_loop(
                lambda: run_fastmta(sim.ip, sim.port, n, s, 64), True)  # noqa: B023
            out[f"sim x{workers} <- fastmta BDAT"] = on_loop(
                lambda: run_fastmta(sim.ip, sim.port, n, s, 64, chunking=True),  # noqa: B023
                True)
        finally:
            stats = sim.stop()
        out[f"sim x{workers} counted"] = stats.get("messages")
        out[f"sim x{workers} cpu_us_per_msg"] = stats.get("mx_cpu_s", 0) / (3 * n) * 1e6
        assert stats.get("messages") == 3 * n, stats  # every accepted message counted

    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"{n} x 3 KB messages, {s} sessions (under contention: shared 2-core machine)")
    for k, v in out.items():
        if isinstance(v, dict):
            print(f"  {k:28} {v['msgs_per_s']:9.0f} msgs/s")
        elif k.endswith("cpu_us_per_msg"):
            print(f"  {k:28} {v:9.1f} us CPU per accepted message (all MX workers)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
