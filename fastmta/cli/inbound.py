"""``fastmta inbound``: parse, receive (SMTP listener + one-click unsubscribe HTTP),
ingest, list and show asynchronous feedback (docs/feedback.md)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import click
import msgspec

from fastmta import runtime
from fastmta.cli import main
from fastmta.cli.delivery import _cfg, _open_spool, spool_options


@main.group()
def inbound() -> None:
    """Asynchronous feedback: bounce mail (DSN), complaints (ARF), auto-replies, unsubscribes."""


def _hostport(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise click.BadParameter(f"{what} must be HOST:PORT, not {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _with_domains(cfg: Any, domains: tuple[str, ...]) -> Any:
    if not domains:
        return cfg
    fb = msgspec.structs.replace(cfg.feedback, domains=[d.lower() for d in domains])
    return msgspec.structs.replace(cfg, feedback=fb)


@inbound.command("parse")
@click.argument("file", type=click.Path(allow_dash=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the JSON object (the default).")
@click.option("--spool", type=click.Path(file_okay=False), default=None,
              help="Match tokens against this spool's key (delivery, matched).")
@click.option("--config", type=click.Path(dir_okay=False), default=None)
@click.option("--all", "full", is_flag=True, help="Also print the fields beyond the contract.")
def parse_cmd(file: str, as_json: bool, spool: str | None, config: str | None, full: bool) -> None:
    """Parse one raw RFC 5322 message (FILE, or - for stdin) into
    {"kind", "recipients", "feedback_type", "delivery", "matched"}."""
    from fastmta.feedback.apply import match
    from fastmta.feedback.parse import parse
    from fastmta.feedback.tokens import Tokens

    try:
        raw = sys.stdin.buffer.read() if file == "-" else open(file, "rb").read()
    except OSError as exc:
        raise click.ClickException(f"cannot read {file}: {exc.strerror}") from exc
    rep = parse(raw)
    out = rep.contract()
    if spool:
        cfg = _cfg(config)
        sp = _open_spool(spool, cfg)
        key = sp.feedback_key()
        m = match(rep, key, (), Tokens(key, cfg.feedback.bounce_domain or "invalid"))
        rcpt = sp.recipient(*m.target) if m.target is not None else None
        out["delivery"] = str(m.target[0]) if rcpt is not None else None
        out["matched"] = rcpt is not None
        if m.target is not None and rcpt is None:
            out["why"] = "token of a recipient not in this spool"
        elif m.target is None:
            out["why"] = out.get("why") or m.why
    keys = ["kind", "recipients", "feedback_type", "delivery", "matched"]
    if not full:
        out = {k: out[k] for k in keys} | ({"why": out["why"]} if out.get("why") else {})
    click.echo(json.dumps(out, ensure_ascii=False))


@inbound.command("ingest")
@click.argument("source", type=click.Path(allow_dash=True))
@spool_options
@click.option("--recipient", default="", help="Envelope recipient (e.g. $RECIPIENT from pipe(8)).")
@click.option("--quiet", "-q", is_flag=True, help="Only the summary line.")
def ingest_cmd(source: str, spool, config, recipient: str, quiet: bool) -> None:
    """Ingest feedback from an mbox file, a Maildir, a directory of messages or stdin (-)."""
    from fastmta.feedback.apply import Processor
    from fastmta.feedback.ingest import ingest

    if source != "-" and not os.path.exists(source):
        raise click.ClickException(f"no such file or directory: {source}")
    cfg = _cfg(config)
    sp = _open_spool(spool, cfg)
    try:
        recs = ingest(Processor(sp, cfg), source, recipient=recipient)
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"cannot read {source}: {exc}") from exc
    counts: dict[str, int] = {}
    for r in recs:
        counts[r.effect] = counts.get(r.effect, 0) + 1
        if not quiet:
            click.echo(json.dumps(_rec(r), ensure_ascii=False))
    click.echo(json.dumps({"ingested": len(recs), "effects": counts}), err=not quiet)


def _rec(r: Any) -> dict:
    return msgspec.to_builtins(msgspec.structs.asdict(r))


@inbound.command("list")
@spool_options
@click.option("--unmatched", is_flag=True, help="Only unmatched messages.")
@click.option("--effect", default=None, help="Only this effect (failed, complained, duplicate...).")
@click.option("--limit", type=int, default=100, show_default=True)
@click.option("--after", type=int, default=0, help="Start after this inbound id.")
def list_cmd(spool, config, unmatched: bool, effect: str | None, limit: int, after: int) -> None:
    """Stored inbound messages (JSON lines) and, on stderr, the counters."""
    sp = _open_spool(spool, _cfg(config))
    for r in sp.inbound_list(effect="unmatched" if unmatched else effect, after=after,
                             limit=limit):
        click.echo(json.dumps(_rec(r), ensure_ascii=False))
    click.echo(json.dumps({"counters": sp.inbound_counters()}), err=True)


@inbound.command("show")
@click.argument("inbound_id", type=int)
@spool_options
@click.option("--raw", "raw_only", is_flag=True, help="Print only the stored raw message.")
def show_cmd(inbound_id: int, spool, config, raw_only: bool) -> None:
    """One stored inbound message: its record, then the raw copy kept for audit."""
    sp = _open_spool(spool, _cfg(config))
    got = sp.inbound_get(inbound_id)
    if got is None:
        raise click.ClickException(f"no inbound message {inbound_id}")
    rec, raw = got
    if not raw_only:
        click.echo(json.dumps(_rec(rec), ensure_ascii=False))
        click.echo("")
    sys.stdout.buffer.write(raw or b"(raw copy purged)\n")


@inbound.command("serve")
@click.option("--listen", default="127.0.0.1:2525", show_default=True,
              help="HOST:PORT of the SMTP listener (loopback by default).")
@click.option("--domain", "domains", multiple=True,
              help="A domain to receive for (repeatable; default: [feedback] domains).")
@click.option("--http", "http_listen", default=None,
              help="HOST:PORT of the one-click unsubscribe endpoint (POST /u/TOKEN).")
@click.option("--processes", type=click.IntRange(min=1), default=None,
              help="Listener processes on the address (SO_REUSEPORT; default: "
                   "[feedback] listen_processes, 1).")
@spool_options
def serve_cmd(listen: str, domains: tuple[str, ...], http_listen: str | None,
              processes: int | None, spool, config) -> None:
    """Receive bounces, complaints, auto-replies and mailto unsubscribes by SMTP for the
    feedback domains only (never a relay); apply them to the spool."""
    from fastmta.feedback.listener import InboundServer

    cfg = _with_domains(_cfg(config), domains)
    if processes is not None:
        cfg = msgspec.structs.replace(cfg, feedback=msgspec.structs.replace(
            cfg.feedback, listen_processes=processes))
    if not (cfg.feedback.domains or cfg.feedback.bounce_domain):
        raise click.ClickException("no feedback domain: use --domain or [feedback] domains")
    sp = _open_spool(spool, cfg, must_exist=False)
    host, port = _hostport(listen, "--listen")
    http = http_listen if http_listen is not None else (cfg.feedback.http_listen or None)

    async def run() -> None:
        srv = InboundServer(cfg, sp)
        h, p = await srv.start(host, port)
        click.echo(f"fastmta inbound: SMTP on {h}:{p} for {', '.join(sorted(srv.domains))}",
                   err=True)
        web = None
        if http:
            from fastmta.feedback.unsubscribe import UnsubscribeServer

            web = UnsubscribeServer(srv.proc, srv.committer)
            hh, hp = await web.start(*_hostport(http, "--http"))
            click.echo(f"fastmta inbound: one-click unsubscribe on http://{hh}:{hp}/u/TOKEN",
                       err=True)
        try:
            await asyncio.Event().wait()
        finally:
            if web is not None:
                await web.close()
            await srv.close()

    try:
        runtime.run(run())
    except KeyboardInterrupt:
        pass
