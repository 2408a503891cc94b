"""Operations commands: ``events``, ``export``, ``admin`` (+ ``suspend``/``resume``/``cancel``
shortcuts) and ``top``.  Thin: the logic is in ``fastmta.ops.events``, ``fastmta.ops.exports``,
``fastmta.ops.admin``."""

from __future__ import annotations

import json
import sys
import time

import click

from fastmta.cli import main
from fastmta.cli.delivery import _cfg, _open_spool, parse_duration, spool_options


def _admin(spool: str | None, config: str | None):
    from fastmta.ops.admin import Admin

    cfg = _cfg(config)
    return Admin(_open_spool(spool, cfg), cfg)


def _fail(exc: Exception) -> click.ClickException:
    return click.ClickException(str(exc))


# ------------------------------------------------------------------ events
@main.command()
@spool_options
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events (Ctrl-C stops).")
@click.option("--since", type=int, default=None,
              help="Start after this sequence number (default: the beginning; with "
                   "--follow: the end).")
@click.option("--type", "types", multiple=True, help="Only these event types (repeatable).")
@click.option("--delivery", "delivery_id", type=int, default=None)
@click.option("--timeout", "timeout_s", type=float, default=None,
              help="With --follow: stop after this many seconds.")
def events(spool, config, follow, since, types, delivery_id, timeout_s) -> None:
    """Print the event log as JSON lines (reception, delivery, bounce, transient,
    expiration, site, admin...)."""
    from fastmta.ops import events as E

    sp = _open_spool(spool, _cfg(config))
    start = since if since is not None else (sp.last_event_seq() if follow else 0)
    try:
        reader = E.EventReader(sp, start, types=types or None, delivery_id=delivery_id)
    except ValueError as exc:
        raise _fail(exc) from exc
    out = sys.stdout.buffer
    try:
        if follow:
            for ev in reader.follow(timeout_s=timeout_s):
                out.write(E.to_json(ev) + b"\n")
                out.flush()
        else:
            while True:
                got = reader.poll()
                for ev in got:
                    out.write(E.to_json(ev) + b"\n")
                if reader.seq >= sp.last_event_seq():
                    break
            out.flush()
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # `fastmta events | head`
        pass


# ------------------------------------------------------------------ exports
@main.group("export")
def export_group() -> None:
    """Export the event log (durable cursor per export: re-running continues)."""


def _run_export(ex, follow: bool, timeout_s: float | None) -> None:
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    total = 0
    try:
        while True:
            n = ex.step()
            total += n
            if n:
                continue
            if getattr(ex, "failures", 0) and ex.next_try > time.monotonic():
                if deadline is not None and time.monotonic() >= deadline:
                    break
                time.sleep(min(1.0, ex.next_try - time.monotonic()))
                continue
            if not follow or (deadline is not None and time.monotonic() >= deadline):
                break
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        ex.close()
    click.echo(f"{ex.name}: {total} events exported (cursor {ex.cursor.acked})", err=True)
    if getattr(ex, "failures", 0):
        raise click.ClickException(f"{ex.name}: still failing, will resume from the cursor")


def _export_options(f):
    f = click.option("--follow", is_flag=True, help="Keep exporting new events.")(f)
    f = click.option("--timeout", "timeout_s", type=float, default=None)(f)
    f = click.option("--name", default=None, help="Cursor name (default: the export kind).")(f)
    return spool_options(f)


@export_group.command("jsonl")
@click.option("--dir", "directory", required=True, type=click.Path(file_okay=False))
@click.option("--max-bytes", type=int, default=64 << 20, show_default=True)
@click.option("--max-age", default="1h", show_default=True)
@click.option("--type", "types", multiple=True)
@_export_options
def export_jsonl(directory, max_bytes, max_age, types, follow, timeout_s, name, spool,
                 config) -> None:
    """JSON lines in DIR/events.jsonl, rotated by size or age."""
    from fastmta.ops.exports import JsonlExporter

    sp = _open_spool(spool, _cfg(config))
    ex = JsonlExporter(sp, directory, max_bytes=max_bytes, max_age_s=parse_duration(max_age),
                       name=name, types=types or None)
    _run_export(ex, follow, timeout_s)


@export_group.command("csv")
@click.option("--output", "path", required=True, type=click.Path(dir_okay=False))
@click.option("--max-bytes", type=int, default=64 << 20, show_default=True)
@click.option("--max-age", default="1h", show_default=True)
@_export_options
def export_csv(path, max_bytes, max_age, follow, timeout_s, name, spool, config) -> None:
    """PowerMTA-style accounting CSV (d/b/t/r records), rotated by size or age."""
    from fastmta.ops.exports import CsvExporter

    sp = _open_spool(spool, _cfg(config))
    ex = CsvExporter(sp, path, max_bytes=max_bytes, max_age_s=parse_duration(max_age),
                     name=name)
    _run_export(ex, follow, timeout_s)


@export_group.command("webhook")
@click.option("--url", required=True)
@click.option("--batch", type=int, default=500, show_default=True)
@click.option("--token", default="", help="Sent as 'Authorization: Bearer TOKEN'.")
@click.option("--type", "types", multiple=True)
@_export_options
def export_webhook(url, batch, token, types, follow, timeout_s, name, spool, config) -> None:
    """Batched HTTP POST (JSON, batch_id for de-duplication), retried with backoff."""
    from fastmta.ops.exports import WebhookExporter

    sp = _open_spool(spool, _cfg(config))
    try:
        ex = WebhookExporter(sp, url, batch=batch, token=token, name=name,
                             types=types or None)
    except ValueError as exc:
        raise _fail(exc) from exc
    _run_export(ex, follow, timeout_s)


# ------------------------------------------------------------------ admin
@main.group("admin")
def admin_group() -> None:
    """Queue operations: suspend/resume, cancel, bounce a site's queue, inspect."""


def _target_options(f):
    f = click.option("--delivery", type=int, default=None)(f)
    f = click.option("--provider", default=None)(f)
    f = click.option("--site", default=None, help="Site name (sorted MX hosts, comma-joined).")(f)
    return spool_options(f)


def _at_provider(provider, delivery, site):
    """``--delivery N --provider P``: P is a mailbox provider group (gmail.com -> google)."""
    if delivery is None or not provider or site:
        return provider
    from fastmta.compliance.guards import provider_group

    return provider_group(provider)


def _do_suspend(site, provider, delivery, reason, duration, spool, config) -> None:
    from fastmta.ops.admin import AdminError

    adm = _admin(spool, config)
    provider = _at_provider(provider, delivery, site)
    try:
        adm.suspend(site=site, provider=provider, delivery=delivery, reason=reason,
                    duration_s=parse_duration(duration) if duration else None)
    except AdminError as exc:
        raise _fail(exc) from exc
    what = (delivery is not None and provider and f"delivery {delivery} at {provider}"
            or site and f"site {site}" or provider and f"provider {provider}"
            or f"delivery {delivery}")
    click.echo(f"suspended {what}" + (f" for {duration}" if duration else ""))


def _do_resume(site, provider, delivery, spool, config) -> None:
    from fastmta.ops.admin import AdminError

    adm = _admin(spool, config)
    provider = _at_provider(provider, delivery, site)
    try:
        adm.resume(site=site, provider=provider, delivery=delivery)
    except AdminError as exc:
        raise _fail(exc) from exc
    click.echo("resumed")


def _do_cancel(delivery, reason, spool, config) -> None:
    from fastmta.ops.admin import AdminError

    adm = _admin(spool, config)
    try:
        n = adm.cancel(delivery, reason)
    except AdminError as exc:
        raise _fail(exc) from exc
    click.echo(f"delivery {delivery} cancelled: {n} recipients failed ({reason}); "
               "recipients in flight follow")


def _suspend_options(f):
    f = click.option("--for", "duration", default=None,
                     help="Lift by itself after this long (e.g. 30m).")(f)
    return click.option("--reason", default="")(f)


@admin_group.command("suspend")
@_target_options
@_suspend_options
def admin_suspend(site, provider, delivery, reason, duration, spool, config) -> None:
    """Suspend a site, a provider or a delivery; --delivery N --provider P pauses
    delivery N only at mailbox provider P (google, yahoo, microsoft, apple or a
    recipient domain; gmail.com means google)."""
    _do_suspend(site, provider, delivery, reason, duration, spool, config)


@admin_group.command("resume")
@_target_options
def admin_resume(site, provider, delivery, spool, config) -> None:
    """Resume a suspended site, provider or delivery (--delivery N also releases its
    per-provider pauses; with --provider P only that one)."""
    _do_resume(site, provider, delivery, spool, config)


@admin_group.command("cancel")
@click.argument("delivery", type=int)
@click.option("--reason", default="delivery_canceled", show_default=True)
@spool_options
def admin_cancel(delivery, reason, spool, config) -> None:
    """Cancel a delivery: its remaining recipients fail (reason delivery_canceled)."""
    _do_cancel(delivery, reason, spool, config)


@admin_group.command("bounce-site")
@click.argument("site")
@click.option("--reason", default="bounced_by_admin", show_default=True)
@spool_options
def admin_bounce_site(site, reason, spool, config) -> None:
    """Fail every recipient queued for SITE (in the spool and in running workers)."""
    adm = _admin(spool, config)
    n = adm.bounce_site(site, reason)
    click.echo(f"site {site}: {n} queued recipients failed ({reason}); workers fail what "
               "they hold")


@admin_group.command("suspensions")
@spool_options
@click.option("--json", "as_json", is_flag=True)
def admin_suspensions(spool, config, as_json) -> None:
    """Active site/provider suspensions."""
    import msgspec

    rows = [msgspec.to_builtins(s) for s in _admin(spool, config).suspensions()]
    if as_json:
        click.echo(json.dumps(rows))
        return
    if not rows:
        click.echo("no suspensions")
    for r in rows:
        until = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r["until_ms"] / 1000)) \
            if r["until_ms"] else "until resumed"
        click.echo(f"{r['kind']:9} {r['name']:40} {until:20} {r['reason']} ({r['user']})")


@admin_group.command("inspect")
@spool_options
@click.option("-n", "count", type=int, default=20, show_default=True)
@click.option("--by", default="queued", show_default=True,
              type=click.Choice(["queued", "active", "failed", "sent", "throttles",
                                 "queue_ms_avg"]))
@click.option("--json", "as_json", is_flag=True)
def admin_inspect(spool, config, count, by, as_json) -> None:
    """Top sites (queue depth, connections, limits, last error, time in queue) from the
    running pool's status snapshot."""
    adm = _admin(spool, config)
    status = adm.status()
    rows = adm.top_sites(count, by)
    if as_json:
        click.echo(json.dumps({"ts_ms": status.get("ts_ms"), "sites": rows,
                               "queues": status.get("queues", {}),
                               "suspensions": status.get("suspensions", [])}))
        return
    click.echo(render_top(status, count, by))


# top-level shortcuts: the same commands under a shorter name
main.add_command(admin_suspend, "suspend")
main.add_command(admin_resume, "resume")
main.add_command(admin_cancel, "cancel")


# ------------------------------------------------------------------ top
def _age(ms: int) -> str:
    s = ms / 1000
    return f"{s:.0f}s" if s < 120 else f"{s / 60:.0f}m" if s < 7200 else f"{s / 3600:.1f}h"


def render_top(status: dict, count: int = 20, by: str = "queued") -> str:
    """The ``top`` screen as text (from a status snapshot)."""
    from fastmta.ops.admin import top_sites

    if not status:
        return "no status: is a pool running on this spool?"
    lines = []
    age = (time.time() * 1000 - status.get("ts_ms", 0)) / 1000
    q = status.get("queues", {})
    sp = status.get("spool", {})
    ws = status.get("workers", [])
    alive = sum(1 for w in ws if w.get("alive"))
    lines.append(f"fastmta top  (status {age:.1f}s old)  workers {alive}/{len(ws)} alive  "
                 f"ready {q.get('ready', 0)}  scheduled {q.get('sched', 0)}  "
                 f"leased {q.get('lease', 0)}  spool {sp.get('used_bytes', 0) >> 20} MiB / "
                 f"{(sp.get('map_size') or 0) >> 20} MiB")
    for s in status.get("suspensions", []):
        lines.append(f"  SUSPENDED {s['kind']} {s['name']}: {s.get('reason', '')}")
    lines.append(f"{'site':38} {'queued':>7} {'conns':>5} {'limit':>5} {'rate':>7} "
                 f"{'sent':>7} {'failed':>6} {'soft':>6} {'thr':>4} {'t-queue':>7}  last error")
    for r in top_sites(status, count, by):
        err = r.get("last_error") or {}
        etext = f"{err.get('code', '')} {err.get('reply', '')}"[:50] if err else ""
        flag = "S" if r.get("suspended") else " "
        rate = r.get("rate") or 0
        lines.append(
            f"{flag}{r.get('label') or r['site']:37.37} {r.get('queued', 0):>7} "
            f"{r.get('active', 0):>5} {r.get('limit', 0):>5} "
            f"{(f'{rate:.0f}/s' if rate else '-'):>7} {r.get('sent', 0):>7} "
            f"{r.get('failed', 0):>6} {r.get('soft', 0):>6} {r.get('throttles', 0):>4} "
            f"{_age(r.get('queue_ms_avg', 0)):>7}  {etext}")
    return "\n".join(lines)


@main.command()
@spool_options
@click.option("--interval", type=float, default=1.0, show_default=True)
@click.option("-n", "count", type=int, default=20, show_default=True)
@click.option("--by", default="queued", show_default=True)
@click.option("--once", is_flag=True, help="Print one screen and exit.")
@click.option("--json", "as_json", is_flag=True, help="With --once: the raw status snapshot.")
def top(spool, config, interval, count, by, once, as_json) -> None:
    """Live view of a running pool: sites by queue depth, limits, errors (Ctrl-C quits)."""
    from fastmta.ops.admin import read_status

    cfg = _cfg(config)
    path = spool or cfg.spool.path
    if once:
        st = read_status(path)
        click.echo(json.dumps(st) if as_json else render_top(st, count, by))
        return
    try:
        while True:
            screen = render_top(read_status(path), count, by)
            click.echo("\x1b[H\x1b[2J" + screen if sys.stdout.isatty() else screen + "\n")
            time.sleep(interval)
    except KeyboardInterrupt:
        pass
