"""CLI commands of the compiled core: ``fastmta classify`` (issue #2)."""

from __future__ import annotations

import json
import sys
from importlib import resources

import click

from fastmta import core
from fastmta.cli import main
from fastmta.errors import ConfigError

_OUT_FIELDS = ("code", "enhanced", "bounce_class", "type", "reason", "throttle",
               "throttle_scope", "action", "effect", "rule")


def _result(reply, command, explain: bool = False) -> dict:
    c = core.classify(reply, command)
    out = {"reply": reply, "command": command}
    out.update(c.to_dict())
    if explain:
        from fastmta.classify.explain import explain as _explain

        e = _explain(reply, command)
        out["explain"] = {k: e[k] for k in ("winner", "runner_up", "undetermined")}
        if "note" in e:
            out["explain"]["note"] = e["note"]
    return out


def _explain_text(res: dict) -> str:
    """A human-readable explanation (``--explain`` on a terminal)."""
    e = res["explain"]
    lines = [f"reply    : {res['reply']}",
             f"command  : {res['command'] or 'unknown'}",
             f"verdict  : class {res['bounce_class']} {res['type']} {res['reason']}, "
             f"throttle={str(res['throttle']).lower()} scope={res['throttle_scope']}, "
             f"action {res['action']}"
             + (f", effect {res['effect']}" if res.get("effect", "none") != "none" else "")]
    for label, r in (("rule", e["winner"]), ("runner-up", e["runner_up"])):
        if r is None:
            lines.append(f"{label:9s}: none")
            continue
        kind = " (code-only fallback)" if r["fallback"] else ""
        lines.append(f"{label:9s}: {r['rule']}{kind}  [{r['file']}]")
        lines.append(f"  matched: {'; '.join(r['matched'])}")
        if r["source"]:
            lines.append(f"  source : {r['source']}")
        if label == "runner-up":
            lines.append(f"  would give: class {r['bounce_class']} {r['type']} {r['reason']} "
                         f"action {r['action']}")
    if e.get("note"):
        lines.append(f"note     : {e['note']}")
    return "\n".join(lines)


def _classify_stream(lines, write, explain: bool = False) -> int:
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
            res = _result(obj["reply"], command.lower() if command else None, explain)
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
@click.option("--explain", is_flag=True,
              help="Say why: the deciding rule, the phrases/codes that matched, the rule's "
                   "source, the runner-up; code-only fallbacks are named undetermined.")
@click.option("--json", "as_json", is_flag=True,
              help="With --explain and a single REPLY: JSON instead of text.")
def classify(reply: str | None, command: str | None, sample: bool, rules_file: str | None,
             explain: bool, as_json: bool) -> None:
    """Classify SMTP replies into bounce class, type, reason, throttle, action and effect.

    With REPLY, classify that one reply.  Otherwise read JSONL from stdin, one
    {"reply": ..., "command": ...} per line, and write one JSON object per input line.
    --explain adds why (text for one REPLY, an "explain" object in JSON output).
    """
    try:
        core.load_rules(rules_file) if rules_file else core.default_classifier()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    write = click.echo
    if reply is not None:
        res = _result(reply, command, explain)
        write(_explain_text(res) if explain and not as_json
              else json.dumps(res, ensure_ascii=False))
        return
    if sample:
        text = resources.files("fastmta").joinpath("data/sample_replies.jsonl").read_text("utf-8")
        bad = _classify_stream(text.splitlines(), write, explain)
    else:
        bad = _classify_stream(sys.stdin, write, explain)
    if bad:
        raise SystemExit(1)
