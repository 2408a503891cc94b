"""``fastmta egress status [--json]``: sources, warm-up and the delivery memory."""

from __future__ import annotations

import json
import time

import click

from fastmta.cli import main
from fastmta.cli.delivery import _cfg, _open_spool, spool_options
from fastmta.errors import FastMTAError


@main.group("egress")
def egress_group() -> None:
    """Source addresses, pools, IP warm-up and learned per-site state."""


def _caps(r: dict) -> str:
    if r["daily_cap"] is None:
        return f"{r['used_today']} today, {r['used_this_hour']} this hour (no cap: warm)"
    return (f"stage {r['stage']}: {r['used_today']}/{r['daily_cap']} today, "
            f"{r['used_this_hour']}/{r['hourly_cap']} this hour")


def _ago(t: float | None, now: float) -> str:
    return "never" if t is None else f"{max(0.0, now - t):.0f} s ago"


def _usage(s: dict, now: float) -> str:
    """A source's totals line (warm sources too)."""
    cap = (f"/{s['daily_allowance']}" if s["daily_allowance"] is not None else "")
    hcap = (f"/{s['hourly_allowance']}" if s["hourly_allowance"] is not None else "")
    return (f"  used {s['used_today']}{cap} today, {s['used_this_hour']}{hcap} this hour; "
            f"{s['attempts_today']} attempts, {s['throttles_today']} throttles, "
            f"{s['blocks_today']} blocks, {s['deferred_today']} deferrals today; "
            f"last used {_ago(s['last_used'], now)}")


@egress_group.command("status")
@spool_options
@click.option("--json", "as_json", is_flag=True, help="one JSON document")
def egress_status_cmd(spool, config, as_json) -> None:
    """Each source's day, caps, use today/this hour (totals and per provider, warm
    sources too), deferrals, last use, signals and what the ramp does next; what each
    (site, source) learned (connections, rate, suspension)."""
    from fastmta.egress.status import egress_status

    cfg = _cfg(config)
    sp = _open_spool(spool, cfg)
    try:
        doc = egress_status(cfg, sp.egress_items(), time.time())
    except FastMTAError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(doc, indent=1, sort_keys=True))
        return
    e = click.echo
    for s in doc["sources"]:
        e(f"source {s['name']} ({s['source_ip'] or 'OS-chosen address'}, EHLO "
          f"{s['ehlo_name']}) pools {', '.join(s['pools']) or '-'}: "
          + (f"warm-up plan {s['plan']}, day {s['day']}" if s["warmup"] else "warm"))
        e(_usage(s, doc["egress_time"]))
        for r in s["providers"]:
            e(f"  {r['provider']:<20} {_caps(r)}; throttles {r['throttles_today']} "
              f"({r['throttle_pct_today']}%), blocks {r['blocks_today']}, deferrals "
              f"{r['deferred_today']} today; last used {_ago(r['last_used'], doc['egress_time'])}"
              f"; next: {r['next']}")
    if doc["learned"]:
        e("learned per (site, source):")
    for r in doc["learned"]:
        susp = f", suspended {r['suspended_for_s']:.0f} s ({r['suspend_reason']})" \
            if r["suspended_for_s"] else ""
        e(f"  {r['provider'] or r['site']} @ {r['source']}: {r['connections']} connections"
          f" (throttled at {r['throttled_at']}), rate {r['rate_per_s']}/s{susp}; "
          f"{r['sent']} sent, {r['throttles']} throttles, {r['blocks']} blocks")
