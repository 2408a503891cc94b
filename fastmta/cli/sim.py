"""CLI of the simulated internet: ``fastmta sim serve|profiles|expected`` (issue #4)."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import click

from fastmta.cli import main


@main.group()
def sim() -> None:
    """The simulated internet: DNS + MX hosts on loopback, for tests and benchmarks."""


@sim.command("profiles")
def profiles_cmd() -> None:
    """List the bundled profiles."""
    from fastmta.sim.world import PROFILE_DIR, load_world

    for p in sorted(PROFILE_DIR.glob("*.toml")):
        w = load_world(str(p))
        click.echo(f"{p.stem:12} {len(w.domains):5} domains {len(w.hosts):4} MX hosts  "
                   f"{w.spec.description}")


@sim.command("expected")
@click.option("--profile", default="default", show_default=True)
@click.argument("addresses", nargs=-1, required=True)
def expected_cmd(profile: str, addresses: tuple[str, ...]) -> None:
    """What a correct MTA must end with for each ADDRESS (one JSON line each)."""
    from fastmta.sim.world import load_world

    w = load_world(profile)
    for a in addresses:
        status, reason = w.expected(a)
        click.echo(json.dumps({"address": a, "status": status, "reason": reason}))


def _write_routes(path: Path, routes: dict[str, list[str]], fmt: str) -> None:
    if fmt == "json":
        path.write_text(json.dumps(routes, indent=1, sort_keys=True) + "\n")
        return
    # Postfix transport(5) map: first MX host; smtp:[ip]:port skips MX lookups
    lines = []
    for d, hosts in sorted(routes.items()):
        if hosts:
            ip, port = hosts[0].rsplit(":", 1)
            lines.append(f"{d}\tsmtp:[{ip}]:{port}")
    path.write_text("\n".join(lines) + "\n")


@sim.command("serve")
@click.option("--profile", default="default", show_default=True,
              help="Bundled profile name or path to a TOML file.")
@click.option("--dns-port", type=int, default=None,
              help="UDP/TCP port of the DNS server on 127.0.0.1 (default: the profile's; 0 = any).")
@click.option("--smtp-port", type=int, default=None,
              help="Port of every MX host (default: the profile's; 0 = any).")
@click.option("--workers", type=int, default=1, show_default=True,
              help="MX worker processes (0 = in this process).")
@click.option("--routes", "routes_path", type=click.Path(dir_okay=False), default="sim-routes.txt",
              show_default=True, help="Where to write the route file.")
@click.option("--routes-format", type=click.Choice(["postfix", "json"]), default="postfix",
              show_default=True)
@click.option("--keep-messages", is_flag=True, help="Keep accepted messages in memory.")
@click.option("--duration", type=float, default=0.0, help="Stop after this many seconds (0 = run until Ctrl-C).")
def serve_cmd(profile, dns_port, smtp_port, workers, routes_path, routes_format, keep_messages,
              duration) -> None:
    """Run the simulated internet until interrupted; print its ports and write routes."""
    from fastmta.errors import ConfigError
    from fastmta.runtime import run
    from fastmta.sim import SimInternet, load_world

    try:
        world = load_world(profile)
    except (ConfigError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    dns_port = world.spec.dns_port if dns_port is None else dns_port
    smtp_port = world.spec.smtp_port if smtp_port is None else smtp_port

    async def go() -> None:
        sim_ = SimInternet(world, dns_port=dns_port, smtp_port=smtp_port, workers=workers,
                           keep_messages=keep_messages)
        try:
            await sim_.start()
        except OSError as exc:
            raise click.ClickException(f"cannot start the simulated internet: {exc}") from None
        path = Path(routes_path)
        _write_routes(path, sim_.routes(), routes_format)
        click.echo(json.dumps({
            "profile": world.spec.name, "dns": f"127.0.0.1:{sim_.dns_port}",
            "dns_port": sim_.dns_port, "smtp_port": sim_.smtp_port,
            "domains": len(world.domains), "mx_hosts": len(world.hosts),
            "workers": workers, "routes": str(path.resolve()),
        }))
        click.echo(f"DNS on 127.0.0.1:{sim_.dns_port} (UDP+TCP); MX hosts on "
                   f"{len(world.hosts)} loopback addresses port {sim_.smtp_port}; "
                   f"config: [dns] nameservers=[\"127.0.0.1\"] port={sim_.dns_port}", err=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            if duration > 0:
                try:
                    await asyncio.wait_for(stop.wait(), duration)
                except TimeoutError:
                    pass
            else:
                await stop.wait()
            stats = await sim_.stats()
            accepted = await sim_.accepted()
            stats["recipients_accepted"] = sum(accepted.values())
            stats["distinct_recipients"] = len(accepted)
            click.echo(json.dumps({"stats": stats}))
        finally:
            await sim_.stop()

    run(go())
    sys.stdout.flush()
