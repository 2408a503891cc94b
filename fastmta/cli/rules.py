"""``fastmta rules suggest|test|add``: the unknown-reply feedback loop (issue #16).

- ``suggest``: cluster the replies no rule recognised (the spool's ``unknown`` table, or a
  JSONL file with ``--replies``) and propose TOML rules (``--json``: the clusters).
- ``test FILE.toml``: what a candidate rule file would change on those replies (before /
  after counts per rule and class, and the changed examples), before adopting it.
- ``add FILE.toml``: validate and append the rules to the operator rule file
  (``[classify] rules_file`` or ``$FASTMTA_BOUNCE_RULES`` or ``--to``); running workers
  reload it without a restart (they check its mtime).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter

import click

from fastmta.cli import main
from fastmta.cli.delivery import _cfg, _open_spool, parse_duration, spool_options
from fastmta.errors import ConfigError


@main.group()
def rules() -> None:
    """Turn unknown replies into bounce rules: suggest, test, add."""


def _load_replies(path: str) -> list[dict]:
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                o = json.loads(line)
            except ValueError as exc:
                raise click.ClickException(f"{path}:{n}: not JSON ({exc})") from exc
            if isinstance(o, str):
                o = {"reply": o}
            if not isinstance(o, dict) or not isinstance(o.get("reply"), str):
                raise click.ClickException(f'{path}:{n}: expected {{"reply": ..., "command": ...}}')
            out.append(o)
    return out


def _base_classifier():
    """The packaged rules plus the operator file if it exists (as the workers run)."""
    from fastmta import core
    from fastmta.classify import rules as _rules

    files = [p for p in _rules.default_rule_files() if os.path.exists(p)]
    try:
        return core.Classifier(_rules.compile_rules(files))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


def _entries(config, spool, replies, since) -> list[dict]:
    from fastmta.classify.suggest import entries_from_replies

    if replies:
        return entries_from_replies(_load_replies(replies), _base_classifier().classify)
    from fastmta.spool.unknown import read_unknown

    cfg = _cfg(config)
    since_ms = int((time.time() - parse_duration(since)) * 1000) if since else 0
    sp = _open_spool(spool, cfg)
    try:
        return read_unknown(sp, since_ms)
    finally:
        sp.close()


def _replies_option(f):
    f = click.option("--replies", type=click.Path(exists=True, dir_okay=False), default=None,
                     help='JSONL of {"reply": ..., "command": ...} instead of the spool.')(f)
    f = click.option("--since", default=None,
                     help="Only templates seen in this period (7d, 36h, 90m), spool only.")(f)
    return spool_options(f)


@rules.command()
@_replies_option
@click.option("--json", "as_json", is_flag=True, help='{"clusters": [...]} instead of TOML.')
@click.option("--similarity", type=float, default=0.5, show_default=True,
              help="Drain similarity threshold (higher = more, tighter clusters).")
def suggest(config, spool, replies, since, as_json, similarity) -> None:
    """Cluster unknown replies and propose rules (TOML to review, or --json)."""
    from fastmta.classify.suggest import suggest as _suggest
    from fastmta.classify.suggest import to_toml

    clusters = _suggest(_entries(config, spool, replies, since), _base_classifier().rules,
                        sim_th=similarity)
    if as_json:
        click.echo(json.dumps({"clusters": clusters}, ensure_ascii=False, indent=1))
    elif clusters:
        click.echo(to_toml(clusters))
    else:
        click.echo("# no unknown replies recorded", err=True)


def _compile(path: str):
    from fastmta.classify import rules as _rules

    try:
        return _rules.compile_rules([path])
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


@rules.command(name="test")
@click.argument("rules_file", type=click.Path(exists=True, dir_okay=False))
@_replies_option
@click.option("--json", "as_json", is_flag=True, help="JSON report.")
def test_rules(rules_file, config, spool, replies, since, as_json) -> None:
    """Show what RULES_FILE (tried before the packaged rules) changes on stored replies."""
    from fastmta import core
    from fastmta.classify import rules as _rules

    base = [p for p in _rules.default_rule_files() if os.path.exists(p)]
    try:
        after_clf = core.Classifier(_rules.compile_rules([rules_file] + base))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    before_clf = _base_classifier()
    entries = _entries(config, spool, replies, since)
    before, after = Counter(), Counter()
    changed = []
    for e in entries:
        x = e.get("example") or e["template"]
        b = before_clf.classify(x, e.get("command"))
        a = after_clf.classify(x, e.get("command"))
        before[f"{b.rule} (class {b.bounce_class} {b.type})"] += e["count"]
        after[f"{a.rule} (class {a.bounce_class} {a.type})"] += e["count"]
        if (a.rule, a.bounce_class, a.type, a.action) != (b.rule, b.bounce_class, b.type, b.action):
            changed.append({"count": e["count"], "reply": x,
                            "before": {k: b.to_dict()[k] for k in ("rule", "bounce_class", "type", "action")},
                            "after": {k: a.to_dict()[k] for k in ("rule", "bounce_class", "type", "action")}})
    total = sum(e["count"] for e in entries)
    report = {"replies": total, "changed": sum(c["count"] for c in changed),
              "before": dict(before.most_common()), "after": dict(after.most_common()),
              "examples": changed[:20]}
    if as_json:
        click.echo(json.dumps(report, ensure_ascii=False, indent=1))
        return
    click.echo(f"{total} replies, {report['changed']} would change with {rules_file}")
    for title, cnt in (("before", before), ("after", after)):
        click.echo(f"{title}:")
        for k, v in cnt.most_common(15):
            click.echo(f"  {v:7d}  {k}")
    for c in changed[:20]:
        click.echo(f"  x{c['count']} {c['reply'][:100]!r}: {c['before']['rule']} -> "
                   f"{c['after']['rule']} (class {c['after']['bounce_class']} "
                   f"{c['after']['type']}, {c['after']['action']})")


def _operator_file(config, to) -> str:
    from fastmta.classify import rules as _rules

    if to:
        return to
    if config or os.environ.get("FASTMTA_CONFIG"):
        cfg = _cfg(config)
        if cfg.classify.rules_file:
            return cfg.classify.rules_file
    env = _rules.default_rule_files()
    if env:
        return env[0]
    raise click.ClickException("no operator rule file: set [classify] rules_file, "
                               "$FASTMTA_BOUNCE_RULES or pass --to FILE")


@rules.command()
@click.argument("rules_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--config", "config", type=click.Path(dir_okay=False), default=None,
              help="TOML configuration file (its [classify] rules_file).")
@click.option("--to", type=click.Path(dir_okay=False), default=None,
              help="The operator rule file to append to (default: [classify] rules_file, "
                   "then $FASTMTA_BOUNCE_RULES).")
def add(rules_file, config, to) -> None:
    """Validate RULES_FILE and append its rules to the operator rule file.

    Workers reload the operator file when its modification time changes."""
    target = _operator_file(config, to)
    new = open(rules_file, encoding="utf-8").read()
    _compile(rules_file)  # valid on its own
    old = open(target, encoding="utf-8").read() if os.path.exists(target) else ""
    merged = old.rstrip("\n") + ("\n\n" if old.strip() else "") + new.strip("\n") + "\n"
    tmp = target + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(merged)
    try:
        compiled = _compile(tmp)  # the merged file must load (unique names, valid TOML)
        names = [r.name for r in compiled.rules if r.source == tmp]
        dup = [n for n, c in Counter(names).items() if c > 1]
        if dup:
            raise click.ClickException(f"rule names already in {target}: {', '.join(dup)}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    click.echo(f"{target}: {len(names)} operator rules (running workers reload it)",
               err=sys.stderr.isatty())
