"""Side by side, one invocation, one workload: fastmta, Postfix, aiosmtplib, smtplib.

Every contestant sends the same generated delivery (personalised 3 KB messages, one per
recipient, over the same simulated world: ``--domains`` domains on ``--sites`` MX sites
of the bench profile) to the same simulated MX hosts (``fastmta.sim``, ``--sink-procs``
processes on 127.0.x.y), and is measured from its first message to the sink's last
acceptance:

- fastmta: ``fastmta.bench.run_bench`` (durable spool, MX lookups against the sim DNS,
  adaptive shaping, ``--workers`` processes);
- Postfix (Debian package): a private relay instance (``benchmarks/peers.py``) with a
  transport map generated from the simulated zone (``domain smtp:[ip]:port``: Postfix
  cannot query a DNS server on a custom port, so it skips MX lookups -- an advantage);
  messages injected over SMTP by a pipelining client with ``--inject-conns``
  connections; default tuning (default_process_limit and destination concurrency are
  printed);
- aiosmtplib: a plain sender, ``--aio-conns`` concurrent connections, one reused
  connection per MX site at a time, one command at a time (no pipelining), no spool;
- smtplib: one loop, one reused connection per MX site, no spool;
- the loopback ceiling: Postfix's ``smtp-source`` (C, no pipelining, ``--source-sessions``
  sessions) straight into one simulated MX host.

CPU per message: fastmta = its own processes (supervisor, injection, workers); Postfix
= every process of the instance (psutil samples of processes run by user ``postfix`` /
named like its daemons), not counting the injecting client; the Python senders = their
own process.  The sink's CPU is shown separately.

    PYTHONPATH=src python benchmarks/compare.py --messages 100000 --domains 1000 --sites 100

Loopback only.  Postfix needs root (it is skipped with a note otherwise).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fastmta.bench import BenchOptions, expand, load_profile  # noqa: E402
from fastmta.bench.harness import (  # noqa: E402
    _split,
    check_addresses,
    is_loopback,
    message_kinds,
    run_bench,
)
from fastmta.bench.messages import first_name  # noqa: E402
from fastmta.bench.procs import ProcSampler  # noqa: E402
from fastmta.sim import SimInternet  # noqa: E402
from fastmta.sim.mx import free_port  # noqa: E402
from peers import SMTP_SOURCE, PostfixRelay, postfix_available  # noqa: E402

POSTFIX_NAMES = {"master", "qmgr", "smtpd", "smtp", "cleanup", "trivial-rewrite", "pickup",
                 "tlsmgr", "anvil", "scache", "bounce", "defer", "proxymap", "postdrop"}
MAIL_FROM = "news@sender.bench.test"


# ----------------------------------------------------------------------------- workload
class Workload:
    """The bench's workload, message for message: the same recipients, split into the
    same kinds of message (a campaign mix) with the same personalisation, in the order
    fastmta injects them.  ``deliverable``: what a correct MTA ends up delivering."""

    def __init__(self, args) -> None:
        self.prof = load_profile(args.profile)
        self.world = expand(self.prof, args.domains, args.sites)
        kinds = message_kinds(self.prof, args.size)
        self.templates = [t.decode() for _n, _s, t in kinds]
        lists = _split(self.prof, self.world, args.messages, kinds, args.seed)
        # (email, kind, 1-based line within its delivery), in injection order
        self.items = [(e, k, i) for k, lst in enumerate(lists) for i, e in enumerate(lst, 1)]
        self.emails = [e for e, _k, _i in self.items]
        self.deliverable = [e for e in self.emails if self.world.expected(e)[0] == "sent"]
        self.kind_of = {e: (k, i) for e, k, i in self.items}

    def body(self, email: str) -> bytes:
        k, i = self.kind_of[email]
        return (self.templates[k].replace("{{email}}", email)
                .replace("{{first_name}}", first_name(i)).encode())


def _cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _wait_accepted(sim, n: int, timeout_s: float, poll_s: float = 0.2) -> float:
    """Poll the sink until it accepted ``n`` messages; returns the monotonic time."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        st = await sim.stats()
        if st["messages"] >= n:
            return time.monotonic()
        await asyncio.sleep(poll_s)
    raise TimeoutError(f"sink saw fewer than {n} messages after {timeout_s:.0f}s")


def _by_site(sim, emails: list[str]) -> dict[str, list[str]]:
    """Recipients grouped by their first MX address (what a plain sender would do)."""
    routes = sim.routes()
    out: dict[str, list[str]] = defaultdict(list)
    for e in emails:
        out[routes[e.rpartition("@")[2]][0]].append(e)
    return out


def _sink_cpu(sampler: ProcSampler) -> float:
    return sampler.cpu_by_role().get("sink", 0.0)


# ----------------------------------------------------------------------------- fastmta
async def run_fastmta(args, wl: Workload) -> dict:
    r = await run_bench(BenchOptions(messages=args.messages, domains=args.domains,
                                     sites=args.sites, workers=args.workers, size=args.size,
                                     profile=args.profile, sink_procs=args.sink_procs,
                                     seed=args.seed, timeout_s=args.timeout))
    return {"name": "fastmta", "msgs_per_s": r["delivered_msgs_per_s"],
            "cpu_s": r["cpu_s_fastmta"], "cpu_s_sink": r["cpu_s_sink"],
            "delivered": r["delivered"], "lost": r["lost"], "duplicates": r["duplicates"],
            "elapsed_s": r["elapsed_s"], "rss_peak_mb": r["rss_peak_mb"],
            "connections": r["connections"],
            "notes": f"{r['workers']} workers, durable LMDB spool, impl {r['impl']}, DKIM "
                     f"{r['dkim_algorithm'] if r['dkim'] else 'off'}, "
                     f"audit {'OK' if r['audit_ok'] else 'FAILED'}",
            "bench": {k: v for k, v in r.items() if k not in ("by_provider",)}}


# ----------------------------------------------------------------------------- clients
async def _pipelined_inject(host: str, port: int, emails, body, conns: int) -> None:
    """A minimal pipelining SMTP client (MAIL/RCPT/DATA in one write, body after 354);
    each body is built when it is sent (no list of every message in memory)."""
    queue: asyncio.Queue = asyncio.Queue()
    for e in emails:
        queue.put_nowait(e)

    async def expect(reader, n: int) -> list[bytes]:
        out = []
        while len(out) < n:
            line = await reader.readline()
            if not line:
                raise ConnectionError("closed")
            if line[3:4] != b"-":
                out.append(line)
        return out

    async def one() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        await expect(reader, 1)
        writer.write(b"EHLO injector.bench.test\r\n")
        await expect(reader, 1)
        while True:
            try:
                rcpt = queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            writer.write(b"MAIL FROM:<%s>\r\nRCPT TO:<%s>\r\nDATA\r\n"
                         % (MAIL_FROM.encode(), rcpt.encode()))
            r = await expect(reader, 3)
            if not r[2].startswith(b"354"):
                raise RuntimeError(f"injection refused: {r}")
            writer.write(body(rcpt).replace(b"\r\n.", b"\r\n..") + b"\r\n.\r\n")
            r = await expect(reader, 1)
            if not r[0].startswith(b"250"):
                raise RuntimeError(f"injection refused: {r}")
        writer.write(b"QUIT\r\n")
        await writer.drain()
        writer.close()

    await asyncio.gather(*(one() for _ in range(conns)))


async def run_postfix(args, wl: Workload) -> dict:
    reason = postfix_available()
    if reason:
        return {"name": "postfix", "skipped": reason}
    async with SimInternet(wl.world, workers=args.sink_procs, tls=False) as sim:
        routes = {}
        for d, hosts in sim.routes().items():
            ip, port = hosts[0].rsplit(":", 1)
            routes[d] = (ip, int(port))
        check_addresses([a for a, _ in routes.values()])
        port = free_port()
        # the same retry policy as the bench delivery: retry every retry_s, give up
        # after validity_s (Postfix's defaults wait 300 s before a first retry)
        b = wl.prof.bench
        policy = {"minimal_backoff_time": f"{max(1, int(b.retry_s))}s",
                  "maximal_backoff_time": f"{max(1, int(b.retry_s) * 4)}s",
                  "queue_run_delay": f"{max(1, int(b.retry_s))}s",
                  "maximal_queue_lifetime": f"{max(1, int(b.validity_s))}s",
                  "bounce_queue_lifetime": f"{max(1, int(b.validity_s))}s"}
        relay = PostfixRelay(routes, port=port, extra=policy)
        sampler = ProcSampler().start()
        try:
            relay.start()
            settings = relay.settings()
            # wait for the listener (bounded)
            for _ in range(200):
                try:
                    _r, w = await asyncio.open_connection("127.0.0.1", port)
                    w.close()
                    break
                except OSError:
                    await asyncio.sleep(0.05)
            pf_cpu0 = _postfix_cpu({})
            seen: dict[int, tuple[float, float]] = {}
            _postfix_cpu(seen)
            stop = asyncio.Event()

            async def watch():
                while not stop.is_set():
                    _postfix_cpu(seen)
                    await asyncio.sleep(0.2)

            watcher = asyncio.get_running_loop().create_task(watch())
            t0 = time.monotonic()
            await _pipelined_inject("127.0.0.1", port, wl.emails, wl.body, args.inject_conns)
            t_inj = time.monotonic()
            t_end = await _wait_accepted(sim, len(wl.deliverable), args.timeout)
            stop.set()
            await watcher
            cpu = sum(now - start for start, now in seen.values())
            del pf_cpu0
            await sampler.stop()
            accepted = await sim.accepted()
        finally:
            relay.stop()
    n = len(wl.deliverable)
    lost = sum(1 for e in wl.deliverable if not accepted.get(e))
    return {"name": "postfix", "msgs_per_s": round(n / (t_end - t0), 1), "cpu_s": round(cpu, 2),
            "cpu_s_sink": round(_sink_cpu(sampler), 2), "delivered": n - lost, "lost": lost,
            "duplicates": sum(v - 1 for v in accepted.values() if v > 1),
            "elapsed_s": round(t_end - t0, 2),
            "inject_msgs_per_s": round(len(wl.emails) / (t_inj - t0), 1),
            "notes": f"Postfix {settings.get('mail_version')}, transport map (no MX lookups), "
                     + ("no DKIM signing (no milter: an advantage to Postfix), "
                        if wl.prof.bench.dkim else "")
                     + f"retry {policy['minimal_backoff_time']}, "
                     f"default_process_limit {settings.get('default_process_limit')}, "
                     "destination concurrency "
                     f"{settings.get('initial_destination_concurrency')}->"
                     f"{settings.get('default_destination_concurrency_limit')}, "
                     f"in_flow_delay {settings.get('in_flow_delay')}, "
                     f"{args.inject_conns} injecting connections",
            "settings": settings}


def _postfix_cpu(seen: dict[int, tuple[float, float]]) -> float:
    """Track CPU of Postfix's processes: pid -> (cpu at first sight, cpu now)."""
    for p in psutil.process_iter(["name", "username"]):
        try:
            if p.info["name"] not in POSTFIX_NAMES:
                continue
            t = p.cpu_times()
            cpu = t.user + t.system
        except psutil.Error:
            continue
        if p.pid in seen:
            seen[p.pid] = (seen[p.pid][0], cpu)
        else:
            # master and other long-lived daemons may predate the run: count from now
            seen[p.pid] = (cpu if p.info["name"] == "master" else 0.0, cpu)
    return 0.0


async def run_aiosmtplib(args, wl: Workload) -> dict:
    import aiosmtplib

    async with SimInternet(wl.world, workers=args.sink_procs, tls=False) as sim:
        groups = _by_site(sim, wl.emails)
        check_addresses(list(groups))
        sampler = ProcSampler().start()
        work: asyncio.Queue = asyncio.Queue()
        for addr, emails in groups.items():
            work.put_nowait((addr, emails))
        c0 = _cpu_self()
        t0 = time.monotonic()

        async def worker():
            while True:
                try:
                    addr, emails = work.get_nowait()
                except asyncio.QueueEmpty:
                    return
                ip, port = addr.rsplit(":", 1)
                smtp = aiosmtplib.SMTP(hostname=ip, port=int(port), start_tls=False,
                                       use_tls=False, local_hostname="plain.bench.test",
                                       timeout=30)
                await smtp.connect()
                sent = 0
                for e in emails:
                    if sent and sent % 100 == 0:  # like an MTA: 100 messages/connection
                        await smtp.quit()
                        await smtp.connect()
                    await smtp.sendmail(MAIL_FROM, [e], wl.body(e))
                    sent += 1
                await smtp.quit()

        await asyncio.gather(*(worker() for _ in range(args.aio_conns)))
        t_end = await _wait_accepted(sim, len(wl.emails), args.timeout)
        cpu = _cpu_self() - c0
        await sampler.stop()
        accepted = await sim.accepted()
    n = len(wl.emails)
    lost = sum(1 for e in wl.emails if not accepted.get(e))
    return {"name": f"aiosmtplib x{args.aio_conns}", "msgs_per_s": round(n / (t_end - t0), 1),
            "cpu_s": round(cpu, 2), "cpu_s_sink": round(_sink_cpu(sampler), 2),
            "delivered": n - lost, "lost": lost,
            "duplicates": sum(v - 1 for v in accepted.values() if v > 1),
            "elapsed_s": round(t_end - t0, 2),
            "notes": f"aiosmtplib {aiosmtplib.__version__}, {args.aio_conns} connections, "
                     "no spool, no MX lookups"}


async def run_smtplib(args, wl: Workload) -> dict:
    import smtplib

    async with SimInternet(wl.world, workers=args.sink_procs, tls=False) as sim:
        groups = _by_site(sim, wl.emails)
        sampler = ProcSampler().start()
        n = min(len(wl.emails), args.smtplib_max) if args.smtplib_max else len(wl.emails)
        todo = wl.emails[:n]
        groups = _by_site(sim, todo)
        check_addresses(list(groups))

        def loop() -> float:
            c0 = _cpu_self()
            for addr, emails in groups.items():
                ip, port = addr.rsplit(":", 1)
                s = smtplib.SMTP(ip, int(port), local_hostname="plain.bench.test", timeout=30)
                for i, e in enumerate(emails):
                    if i and i % 100 == 0:
                        s.quit()
                        s = smtplib.SMTP(ip, int(port), local_hostname="plain.bench.test",
                                         timeout=30)
                    s.sendmail(MAIL_FROM, [e], wl.body(e))
                s.quit()
            return _cpu_self() - c0

        t0 = time.monotonic()
        cpu = await asyncio.to_thread(loop)
        t_end = await _wait_accepted(sim, n, args.timeout)
        await sampler.stop()
        accepted = await sim.accepted()
    lost = sum(1 for e in todo if not accepted.get(e))
    return {"name": "smtplib loop", "msgs_per_s": round(n / (t_end - t0), 1),
            "cpu_s": round(cpu, 2), "cpu_s_sink": round(_sink_cpu(sampler), 2),
            "delivered": n - lost, "lost": lost, "messages": n,
            "duplicates": sum(v - 1 for v in accepted.values() if v > 1),
            "elapsed_s": round(t_end - t0, 2),
            "notes": f"one connection at a time, {n} messages, no spool, no MX lookups"}


async def run_ceiling(args, wl: Workload) -> dict:
    """smtp-source (C) straight into one simulated MX host: the loopback ceiling."""
    if not os.path.exists(SMTP_SOURCE):
        return {"name": "smtp-source -> sink", "skipped": f"{SMTP_SOURCE} not found"}
    async with SimInternet(wl.world, workers=args.sink_procs, tls=False) as sim:
        addr = next(iter(sim.routes().values()))[0]
        ip, port = addr.rsplit(":", 1)
        if not is_loopback(ip):
            raise SystemExit("refusing a non-loopback sink")
        sampler = ProcSampler().start()
        n = args.messages
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            SMTP_SOURCE, "-s", str(args.source_sessions), "-m", str(n), "-l", str(args.size),
            "-f", MAIL_FROM, "-t", "r0@" + wl.world.domains[0], "-M", "source.bench.test",
            f"{ip}:{port}", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _out, err = await asyncio.wait_for(proc.communicate(), args.timeout)
        t_end = await _wait_accepted(sim, n, 60)
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        await sampler.stop()
    return {"name": "smtp-source -> sink", "msgs_per_s": round(n / (t_end - t0), 1),
            "cpu_s": round(ru.ru_utime + ru.ru_stime - ru0.ru_utime - ru0.ru_stime, 2),
            "cpu_s_sink": round(_sink_cpu(sampler), 2),
            "delivered": n, "lost": 0, "elapsed_s": round(t_end - t0, 2),
            "notes": f"{args.source_sessions} sessions, no pipelining, one sink address"
                     + (f"; stderr: {err.decode()[:100]}" if proc.returncode else "")}


# ----------------------------------------------------------------------------- main
def table(rows: list[dict], n: int) -> str:
    ref = next((r for r in rows if r["name"] == "fastmta" and "msgs_per_s" in r), None)
    out = [f"{'sender':<22} {'msgs/s e2e':>11} {'vs fastmta':>10} {'CPU ms/msg':>10} "
           f"{'CPU vs fastmta':>14} {'sink CPU ms/msg':>15} {'lost':>5}  notes"]
    for r in rows:
        if "skipped" in r:
            out.append(f"{r['name']:<22} {'skipped':>11}  {r['skipped']}")
            continue
        m = r.get("messages", n)
        cpu_ms = 1000.0 * r["cpu_s"] / m
        ratio = (f"{ref['msgs_per_s'] / r['msgs_per_s']:.1f}x" if ref and r is not ref
                 and r["msgs_per_s"] else "-")
        cratio = (f"{cpu_ms / (1000.0 * ref['cpu_s'] / n):.1f}x" if ref and r is not ref
                  and ref["cpu_s"] else "-")
        out.append(f"{r['name']:<22} {r['msgs_per_s']:>11,.0f} {ratio:>10} {cpu_ms:>10.3f} "
                   f"{cratio:>14} {1000.0 * r['cpu_s_sink'] / m:>15.3f} {r['lost']:>5}  "
                   f"{r.get('notes', '')}")
    out.append("'vs fastmta': how many times faster fastmta is (msgs/s) and how many times "
               "more CPU per message the other sender uses.")
    return "\n".join(out)


async def main_async(args) -> list[dict]:
    wl = Workload(args)
    runners = {"fastmta": run_fastmta, "postfix": run_postfix, "aiosmtplib": run_aiosmtplib,
               "smtplib": run_smtplib, "ceiling": run_ceiling}
    rows = []
    for name in args.only.split(","):
        print(f"... {args.profile}: {name}", file=sys.stderr, flush=True)
        try:
            rows.append(await runners[name](args, wl))
        except Exception as exc:  # one failing peer must not hide the others
            rows.append({"name": name, "skipped": f"failed: {type(exc).__name__}: {exc}"})
        print(f"    {json.dumps({k: v for k, v in rows[-1].items() if k != 'bench'})}",
              file=sys.stderr, flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--domains", type=int, default=1_000)
    ap.add_argument("--sites", type=int, default=100)
    ap.add_argument("--size", type=int, default=3_000)
    ap.add_argument("--profile", default="null",
                    help="bench profile, or several separated by commas (e.g. null,campaign): "
                         "each is run in turn and their fastmta figures compared")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--sink-procs", type=int, default=2)
    ap.add_argument("--inject-conns", type=int, default=8)
    ap.add_argument("--aio-conns", type=int, default=32)
    ap.add_argument("--source-sessions", type=int, default=32)
    ap.add_argument("--smtplib-max", type=int, default=0,
                    help="cap the smtplib run at this many messages (0 = all)")
    ap.add_argument("--only", default=None,
                    help="contestants (default: fastmta,postfix,aiosmtplib,smtplib,ceiling for "
                         "the null profile; fastmta,postfix for profiles with failures)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from fastmta.runtime import run

    runs = []
    for prof in args.profile.split(","):
        a = argparse.Namespace(**vars(args))
        a.profile = prof
        if a.only is None:
            a.only = ("fastmta,postfix,aiosmtplib,smtplib,ceiling" if prof == "null"
                      else "fastmta,postfix")
        rows = run(main_async(a))
        info = {"messages": a.messages, "domains": a.domains, "sites": a.sites,
                "size": a.size, "profile": prof, "cpus": os.cpu_count(),
                "load_avg_at_end": os.getloadavg(),
                "time": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        runs.append({"run": info, "rows": rows})
    ratios = _profile_ratios(runs)
    if args.json:
        out = runs[0] if len(runs) == 1 else {"runs": runs, "ratios": ratios}
        print(json.dumps(out, indent=1, default=str))
        return
    for r in runs:
        print(f"workload: {r['run']}")
        print(table(r["rows"], r["run"]["messages"]))
        print()
    for line in ratios.get("lines", []):
        print(line)


def _profile_ratios(runs: list[dict]) -> dict:
    """fastmta's msgs/s of each profile against the first one's, and each profile's
    fastmta/Postfix ratio (all from this one invocation)."""
    def rate(r, name):
        row = next((x for x in r["rows"] if x["name"] == name and "msgs_per_s" in x), None)
        return row["msgs_per_s"] if row else None

    out: dict = {"lines": []}
    base = runs[0]
    for r in runs:
        p = r["run"]["profile"]
        f, pf = rate(r, "fastmta"), rate(r, "postfix")
        if f and pf:
            out[f"{p}_vs_postfix"] = round(f / pf, 2)
            out["lines"].append(f"{p}: fastmta {f:,.0f} msgs/s, Postfix {pf:,.0f} msgs/s: "
                                f"{f / pf:.1f}x")
        b = rate(base, "fastmta")
        if r is not base and f and b:
            out[f"{p}_vs_{base['run']['profile']}"] = round(f / b, 3)
            out["lines"].append(f"{p} / {base['run']['profile']} (fastmta msgs/s, same "
                                f"invocation): {100 * f / b:.0f}%")
    return out


if __name__ == "__main__":
    main()
