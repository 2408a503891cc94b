"""CLI of the engine: ``fastmta send``, ``fastmta run``, ``fastmta demo`` (issue #5)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import msgspec

from fastmta.cli import main
from fastmta.config import Config, load_config
from fastmta.engine.retry import parse_duration
from fastmta.errors import FastMTAError
from fastmta.sim.config import (
    DEMO_MESSAGE,
    demo_sender,
    demo_world,
    sim_config,
    write_demo_recipients,
)


# --------------------------------------------------------------------------- progress
class ProgressPrinter:
    """Live progress: one rewritten line on a TTY, a log line every few seconds else."""

    def __init__(self, stream=None, tty: bool | None = None, every_s: float = 5.0) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.every_s = every_s
        self.last_log = 0.0
        self.samples: list[tuple[float, int]] = []
        self.width = shutil.get_terminal_size((100, 20)).columns
        self.peak_rate = 0.0

    def rate(self, elapsed: float, done: int) -> float:
        self.samples.append((elapsed, done))
        while len(self.samples) > 2 and elapsed - self.samples[0][0] > 3.0:
            self.samples.pop(0)
        t0, d0 = self.samples[0]
        return (done - d0) / (elapsed - t0) if elapsed > t0 else 0.0

    def __call__(self, p) -> None:
        self.last_workers = [w.get("stats") for w in p.workers]
        sent = failed = pending = 0
        for k in p.kpis.values():
            sent += k.get("sent", 0)
            failed += k.get("failed", 0)
            pending += k.get("pending", 0)
        rate = self.rate(p.elapsed_s, sent + failed)
        self.peak_rate = max(self.peak_rate, rate)
        shaped = []
        for w in p.workers:
            for name, st in (w.get("sites") or {}).items():
                if st.get("suspended") or st.get("throttled"):
                    tag = "suspended" if st.get("suspended") else f"limit {st.get('limit')}"
                    shaped.append(f"{name[:28]} ({tag})")
        line = (f"[{p.elapsed_s:6.1f}s] sent {sent}  failed {failed}  pending {pending}  "
                f"{rate:7.0f} msg/s")
        if p.restarts:
            line += f"  restarts {p.restarts}"
        if shaped:
            line += "  shaped: " + ", ".join(shaped[:3]) + (" ..." if len(shaped) > 3 else "")
        if self.tty:
            self.stream.write("\r" + line[: self.width - 1].ljust(self.width - 1))
            self.stream.flush()
        elif p.elapsed_s - self.last_log >= self.every_s:
            self.last_log = p.elapsed_s
            self.stream.write(line + "\n")
            self.stream.flush()

    def finish(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def print_report(rep: dict, elapsed_s: float | None = None) -> None:
    """The delivery report (``fastmta.ops.report``) plus the elapsed time, on stdout."""
    from fastmta.ops.report import format_report

    click.echo("")
    click.echo(format_report(rep, top=10))
    if elapsed_s:
        click.echo(f"Elapsed {elapsed_s:.1f}s: {(rep['sent'] + rep['failed']) / elapsed_s:.0f} "
                   f"recipients finalised/s, {rep['sent'] / elapsed_s:.0f} msgs/s sent")


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * verbose
    os.environ["FASTMTA_LOG_LEVEL"] = logging.getLevelName(max(level, logging.DEBUG))
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")


def _config(path: str | None, spool: str | None, workers: int | None) -> tuple[Config, str]:
    cfg = load_config(path)
    spool_path = spool or cfg.spool.path
    if workers:
        cfg = msgspec.structs.replace(cfg, engine=msgspec.structs.replace(cfg.engine,
                                                                          workers=workers))
    return cfg, spool_path


def _run_until_done(cfg: Config, spool_path: str, dids: list[int], *, quiet: bool,
                    extra=None) -> float:
    """Run the supervisor with progress until ``dids`` are final; returns elapsed s."""
    from fastmta.cluster.node import worker_target
    from fastmta.engine import entry as engine

    printer = None if quiet else ProgressPrinter()
    t0 = time.monotonic()

    async def go():
        if extra is not None:
            async with extra:
                await engine.run(cfg, spool_path, dids, progress=printer,
                                 worker_target=worker_target(cfg))
        else:
            await engine.run(cfg, spool_path, dids, progress=printer,
                                 worker_target=worker_target(cfg))

    try:
        asyncio.run(go())
    finally:
        if printer is not None:
            printer.finish()
    return time.monotonic() - t0


# --------------------------------------------------------------------------- send
@main.command()
@click.option("--recipients", "recipients", required=True,
              type=click.Path(exists=True, dir_okay=False), help="CSV or JSONL file")
@click.option("--message", "message", required=True,
              type=click.Path(exists=True, dir_okay=False), help="RFC 5322 message template")
@click.option("--from", "mail_from", default="", help="envelope sender (default: From:)")
@click.option("--validity", default=None, help="validity period, e.g. 3d, 36h (max 3.5d)")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--spool", "spool_dir", default=None, help="spool directory")
@click.option("--workers", type=int, default=None, help="worker processes (default: cores)")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@click.option("--detach", is_flag=True, help="inject, start the engine in the background, exit")
@click.option("--pool", default="", help="egress pool ([[egress.pools]]; default: by From "
              "domain, [[egress.rules]])")
@click.option("--json", "as_json", is_flag=True, help="print the final report as JSON")
@click.option("--force", is_flag=True,
              help="send even when the compliance pre-flight finds errors (docs/compliance.md)")
@click.option("-v", "--verbose", count=True)
def send(recipients, message, mail_from, validity, config_path, spool_dir, workers, yes,
         detach, pool, as_json, force, verbose) -> None:
    """Analyse, confirm and send a delivery; exits when every recipient is final."""
    from fastmta.delivery import Template, analyze, open_recipients
    from fastmta.engine import entry as engine
    from fastmta.spool import Spool

    _setup_logging(verbose)

    def say(text: str) -> None:  # informational lines: stderr when stdout carries JSON
        click.echo(text, err=as_json)

    try:
        cfg, spool_path = _config(config_path, spool_dir, workers)
        from fastmta.dkim.signers import key_check
        from fastmta.engine.supervisor import engine_running

        if engine_running(spool_path):
            # checked before anything is injected: a second `send` would leave its
            # delivery in the spool without an engine that waits for it
            raise FastMTAError(
                f"another fastmta engine is running on the spool {spool_path}; wait for it "
                "to finish, use another --spool, or queue this delivery with `fastmta "
                "inject` for an engine started with `fastmta run --forever`")
        validity_s = parse_duration(validity) if validity else None
        from fastmta.egress.model import build_model

        build_model(cfg).pool_for("", pool)  # an unknown pool: refused before analysis
        body = Path(message).read_bytes()
        template = Template(body)
        spool = Spool.open(spool_path, cfg.spool)
        reader = open_recipients(recipients)
        try:
            a = analyze(reader, template, mail_from=mail_from, cfg=cfg.delivery,
                        quarantine=spool.precheck, dkim_has_key=key_check(cfg.dkim))
        finally:
            reader.close()
        say(f"Analysis: {a.recipients} recipients, {a.to_deliver} to deliver over "
                   f"{a.domains} domains, {sum(a.excluded.values())} excluded")
        for reason, n in a.excluded.items():
            if n:
                say(f"  excluded {reason}: {n}")
        for w in a.warnings:
            say(f"  warning: {w}")
        if a.to_deliver == 0:
            raise click.ClickException("nothing to deliver")
        from fastmta.compliance import preflight

        findings = preflight.run_preflight(cfg, template, mail_from or a.mail_from)
        for line in preflight.format_findings(findings):
            say(f"  compliance {line}")
        errors = preflight.blocking(findings, cfg, force)
        if errors:
            raise click.ClickException(preflight.refusal(errors))
        if force and any(f.level == "error" for f in findings):
            say("  compliance errors overridden by --force")
        if not yes and not click.confirm(f"Send to {a.to_deliver} recipients?", default=False):
            raise click.Abort()
        t0 = time.monotonic()
        inj = asyncio.run(engine.inject_file(spool, cfg, recipients, body,
                                             mail_from=mail_from, validity_s=validity_s,
                                             pool=pool))
        did = inj.delivery_id
        say(f"Delivery {did}: {inj.to_deliver} recipients pending "
                   f"({time.monotonic() - t0:.1f}s to inject)")
        if detach:
            cmd = [sys.executable, "-m", "fastmta", "run", "--spool", spool_path]
            if config_path:
                cmd += ["--config", config_path]
            if workers:
                cmd += ["--workers", str(workers)]
            proc = subprocess.Popen(cmd, start_new_session=True, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            say(f"engine running in the background (pid {proc.pid}); "
                       f"`fastmta report {did} --spool {spool_path}` shows the progress")
            return
        elapsed = _run_until_done(cfg, spool_path, [did], quiet=False)
        rep = engine.summary(spool, did)
        if as_json:
            click.echo(json.dumps(rep, indent=2))
        else:
            print_report(rep, elapsed)
        if rep["pending"]:
            say(f"stopped with {rep['pending']} recipient(s) pending; `fastmta run "
                       f"--spool {spool_path}` resumes")
    except FastMTAError as exc:
        raise click.ClickException(str(exc)) from exc


# --------------------------------------------------------------------------- run
@main.command("run")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--spool", "spool_dir", default=None, help="spool directory")
@click.option("--workers", type=int, default=None)
@click.option("--forever", is_flag=True, help="keep running when every delivery is final")
@click.option("--http", "http_listen", default=None, metavar="HOST:PORT",
              help="also serve the HTTP API and dashboard (implies --forever)")
@click.option("--token", default=None, envvar="FASTMTA_HTTP_TOKEN",
              help="with --http: bearer token (default: a new one, printed)")
@click.option("-v", "--verbose", count=True)
def run_cmd(config_path, spool_dir, workers, forever, http_listen, token, verbose) -> None:
    """Run the engine on a spool (resumes deliveries after a crash or a stop)."""
    from fastmta.cluster.node import worker_target
    from fastmta.engine import entry as engine
    from fastmta.spool import Spool

    _setup_logging(verbose)
    srv = None
    try:
        cfg, spool_path = _config(config_path, spool_dir, workers)
        spool = Spool.open(spool_path, cfg.spool)
        if http_listen:
            from fastmta.cli.http import announce, make_server

            srv = make_server(cfg, spool_path, http_listen, token, 512).start()
            announce(srv)
            forever = True
        dids = [d.id for d in spool.deliveries() if d.state in ("active", "injecting")]
        if forever:
            asyncio.run(engine.run(cfg, spool_path, [], forever=True, worker_target=worker_target(cfg),
                                   progress=ProgressPrinter(every_s=30)))
            return
        if not dids:
            click.echo("no active delivery in the spool")
            return
        elapsed = _run_until_done(cfg, spool_path, dids, quiet=not sys.stderr.isatty())
        pending = 0
        for did in dids:
            rep = engine.summary(spool, did)
            pending += rep["pending"]
            print_report(rep, elapsed)
        if pending:
            click.echo(f"stopped with {pending} recipient(s) pending; `fastmta run --spool "
                       f"{spool_path}` resumes")
    except (FastMTAError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        if srv is not None:
            srv.stop()


# --------------------------------------------------------------------------- demo
@main.command()
@click.option("--recipients", "count", type=int, default=20_000, show_default=True)
@click.option("--domains", type=int, default=300, show_default=True)
@click.option("--workers", type=int, default=None)
@click.option("--spool", "spool_dir", default=None, help="spool directory (default: temp)")
@click.option("--validity", default="20s", show_default=True,
              help="validity period (short, so soft-failing recipients expire in the demo)")
@click.option("--sim-procs", type=int, default=2, show_default=True,
              help="processes for the simulated MX hosts (0 = inside this process)")
@click.option("--json", "as_json", is_flag=True)
@click.option("--feedback", is_flag=True,
              help="VERP return paths + the inbound listener; during the run the simulated "
                   "providers send async bounces (5%), complaints (0.5%) and auto-replies (1%)")
@click.option("--force", is_flag=True, help="send even if the compliance pre-flight fails")
@click.option("--dashboard", is_flag=True,
              help="serve the HTTP API + dashboard during the run (URL printed) and keep "
                   "serving after it until Ctrl-C")
@click.option("--listen", default="127.0.0.1:8025", show_default=True,
              help="with --dashboard: HOST:PORT")
@click.option("-v", "--verbose", count=True)
def demo(count, domains, workers, spool_dir, validity, sim_procs, as_json, feedback, force,
         dashboard, listen,
         verbose) -> None:
    """Send a sample delivery to a simulated internet started on loopback (its DNS server
    in this process, its MX hosts in --sim-procs processes).  The demo sender is a
    compliant bulk sender (DKIM, SPF, DMARC, reverse DNS, one-click unsubscribe) and
    passes its own pre-flight; bigmail.test publishes an MTA-STS enforce policy."""
    from fastmta.cluster.node import worker_target
    from fastmta.engine import entry as engine
    from fastmta.sim import SimInternet
    from fastmta.spool import Spool

    _setup_logging(verbose)
    tmp = None
    servers: list = []
    if spool_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="fastmta-demo-")
        spool_dir = tmp.name
    try:
        Path(spool_dir).mkdir(parents=True, exist_ok=True)
        world, demo_dkim = demo_sender(demo_world(domains), Path(spool_dir))
        rcpt_path = Path(spool_dir) / "demo-recipients.csv"
        msg_path = Path(spool_dir) / "demo-message.eml"
        Path(spool_dir).mkdir(parents=True, exist_ok=True)
        write_demo_recipients(rcpt_path, world, count)
        msg_path.write_text(DEMO_MESSAGE)
        validity_s = parse_duration(validity)

        async def go() -> tuple[int, float, dict]:
            async with SimInternet(world, workers=max(0, sim_procs),
                                   keep_messages=feedback) as sim:
                cfg = sim_config(sim, validity_s=validity_s, workers=workers)
                r = msgspec.structs.replace
                cfg = r(cfg, dkim=demo_dkim, compliance=r(
                    cfg.compliance, preflight="enforce", source_ips=["127.0.0.1"]))
                from fastmta.compliance import preflight
                from fastmta.delivery import Template

                found = await preflight.arun_preflight(cfg, Template(msg_path.read_bytes()))
                for line in preflight.format_findings(found):
                    click.echo(f"  compliance {line}", err=True)
                errors = preflight.blocking(found, cfg, force)
                if errors:
                    raise click.ClickException(preflight.refusal(errors))
                click.echo("pre-flight: " + ("passed (DKIM, SPF, DMARC, reverse DNS, one-click "
                           "unsubscribe, message format)" if not found else
                           f"{len(found)} finding(s)"), err=as_json)
                spool_path = str(Path(spool_dir) / "spool")
                spool = Spool.open(spool_path, cfg.spool)
                inbound = None
                if feedback:
                    from fastmta.cli.demo_feedback import start_feedback

                    cfg, inbound = await start_feedback(sim, cfg, spool)
                click.echo(f"simulated internet: {len(world.domains)} domains, DNS "
                           f"127.0.0.1:{sim.dns_port}, MX hosts on 127.0.x.y:{sim.smtp_port}",
                           err=as_json)
                if dashboard:
                    from fastmta.cli.http import announce, make_server

                    srv = make_server(cfg, spool_path, listen, None, 512).start()
                    servers.append(srv)
                    announce(srv)
                inj = await engine.inject_file(spool, cfg, rcpt_path, msg_path.read_bytes(),
                                               validity_s=validity_s, name="demo")
                click.echo(f"delivery {inj.delivery_id}: {inj.to_deliver} recipients over "
                           f"{inj.domains} domains; sending...", err=as_json)
                printer = ProgressPrinter()
                t0 = time.monotonic()
                first_final = {}

                def progress(p):
                    printer(p)
                    k = p.kpis.get(inj.delivery_id, {})
                    if "t_sent" not in first_final and k.get("sent", 0) + k.get(
                            "failed", 0) >= 0.95 * inj.to_deliver:
                        first_final["t_sent"] = time.monotonic() - t0
                        first_final["sent"] = k.get("sent", 0)

                try:
                    await engine.run(cfg, spool_path, [inj.delivery_id], progress=progress,
                                     worker_target=worker_target(cfg))
                finally:
                    printer.finish()
                elapsed = time.monotonic() - t0
                if inbound is not None:
                    from fastmta.cli.demo_feedback import send_feedback

                    sent = await send_feedback(sim, inbound)
                    click.echo(f"simulated providers sent feedback: {sent}", err=as_json)
                if verbose:
                    click.echo(json.dumps(printer.last_workers, default=str)[:3000])
                stats = await sim.stats()
                rep = engine.summary(spool, inj.delivery_id)
                if servers:
                    click.echo(f"delivery {inj.delivery_id} finished; still serving "
                               f"{servers[0].dashboard_url} (Ctrl-C to stop)", err=True)
                    try:
                        await asyncio.Event().wait()
                    except asyncio.CancelledError:
                        pass
                rep["sim"] = stats
                rep["compliance"] = preflight.to_json(found)
                rep["throughput"] = {
                    "elapsed_s": round(elapsed, 2),
                    "sent_per_s_until_95pct": round(first_final.get("sent", 0)
                                                    / first_final["t_sent"], 1)
                    if first_final.get("t_sent") else None,
                    "peak_msgs_per_s": round(printer.peak_rate, 1),
                }
                return inj.delivery_id, elapsed, rep

        try:
            _did, elapsed, rep = asyncio.run(go())
        except KeyboardInterrupt:
            if not servers:
                raise
            return
        if as_json:
            click.echo(json.dumps(rep, indent=2, default=str))
        else:
            print_report(rep, elapsed)
            t = rep["throughput"]
            click.echo(f"  throughput: {t['sent_per_s_until_95pct']} msgs/s until 95% of "
                       f"recipients were final (peak {t['peak_msgs_per_s']} msgs/s); the "
                       f"rest waits for greylisting, retries and the {validity} validity")
            click.echo(f"  sink: {rep['sim']['messages']} messages accepted, "
                       f"{rep['sim']['connections']} connections, refusals "
                       f"{rep['sim']['replies']}")
    except FastMTAError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        for srv in servers:
            srv.stop()
        if tmp is not None:
            from fastmta.spool import Spool as _S

            _S.close_all()
            tmp.cleanup()
