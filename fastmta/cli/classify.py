"""CLI commands of the compiled core: ``fastmta classify`` (issue #2)."""

from __future__ import annotations

import json
import sys
from importlib import resources

import click

from fastmta import core
from fastmta.cli import main
from fastmta.errors import ConfigError

_OUT_FIELDS = ("code", "enhanced", "bounce_class", "type", "reason", "throttle", "action", "rule")


def _result(reply, command) -> dict:
    c = core.classify(reply, command)
    out = {"reply": reply, "command": command}
    out.update(c.to_dict())
    return out


def _classify_stream(lines, write) -> int:
    """Classify JSONL lines; bad lines give an ``{"error": ...}`` object.  Returns the count
    of bad lines."""
    bad = 0
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
            if isinstance(obj, str):
                obj = {"reply": obj}
            if not isinstance(obj, dict) or not isinstance(obj.get("reply"), str):
                raise ValueError('expected an object with a string "reply"')
            command = obj.get("command")
            if command is not None and not isinstance(command, str):
                raise ValueError('"command" must be a string or null')
            res = _result(obj["reply"], command.lower() if command else None)
        except ValueError as exc:
            bad += 1
            res = {"error": str(exc), "line": n}
        write(json.dumps(res, ensure_ascii=False))
    return bad


@main.command()
@click.argument("reply", required=False)
@click.option("--command", "-c", "command", default=None,
              help="SMTP phase of a single REPLY: connect, ehlo, mail, rcpt, data, dot, ...")
@click.option("--sample", is_flag=True, help="Classify the bundled sample replies.")
@click.option("--rules", "rules_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Operator bounce rules (TOML), tried before the packaged rules "
                   "(default: $FASTMTA_BOUNCE_RULES).")
def classify(reply: str | None, command: str | None, sample: bool, rules_file: str | None) -> None:
    """Classify SMTP replies into bounce class, type, reason, throttle and action.

    With REPLY, classify that one reply.  Otherwise read JSONL from stdin, one
    {"reply": ..., "command": ...} per line, and write one JSON object per input line.
    """
    try:
        core.load_rules(rules_file) if rules_file else core.default_classifier()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    write = click.echo
    if reply is not None:
        write(json.dumps(_result(reply, command), ensure_ascii=False))
        return
    if sample:
        text = resources.files("fastmta").joinpath("data/sample_replies.jsonl").read_text("utf-8")
        bad = _classify_stream(text.splitlines(), write)
    else:
        bad = _classify_stream(sys.stdin, write)
    if bad:
        raise SystemExit(1)
