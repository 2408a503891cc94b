"""``fastmta rules suggest``: cluster unknown replies and propose rules.  Pure.

Input: entries ``{template, count, example, command, code, enhanced, sites}`` (from the
spool's ``unknown`` sub-database, or built from a JSONL file of replies with
``entries_from_replies``).  Templates are clustered with Drain (``drain3``, the log
template miner of IBM's Drain3 project: a fixed-depth prefix tree over tokens, a
similarity threshold per leaf), after our own masking (``templates.template``) so that
addresses, IDs and numbers never split a cluster.  Each cluster gets a proposed rule:
its codes, its longest constant phrase as ``text_all``, and the outcome of the nearest
existing rule (most pattern words shared with the template, compatible code) or of the
reply code alone when no rule is near.  Counts add up to the replies read.
"""

from __future__ import annotations

import re
from collections import Counter

from fastmta.classify import rules as _rules
from fastmta.classify.templates import template

__all__ = ["entries_from_replies", "cluster", "suggest", "to_toml"]

_MASK = re.compile(r"<[a-z*]+>")
_WORD = re.compile(r"[^\W\d_]{3,}", re.UNICODE)


def entries_from_replies(replies: list[dict], classify=None) -> list[dict]:
    """Aggregate ``{"reply", "command"}`` objects by template (count 1 each)."""
    if classify is None:
        from fastmta import core

        classify = core.classify
    by: dict[str, dict] = {}
    for o in replies:
        text, cmd = o["reply"], o.get("command")
        cls = classify(text, cmd)
        t = template(text)
        e = by.get(t)
        if e is None:
            e = by[t] = {"template": t, "count": 0, "example": text, "examples": [],
                         "command": cmd, "code": cls.code, "enhanced": cls.enhanced,
                         "rule": cls.rule, "sites": []}
        e["count"] += 1
        if len(e["examples"]) < 3 and text not in e["examples"]:
            e["examples"].append(text)
    return list(by.values())


def _miner(sim_th: float):
    from drain3 import TemplateMiner
    from drain3.template_miner_config import TemplateMinerConfig

    cfg = TemplateMinerConfig()
    cfg.drain_sim_th = sim_th
    cfg.drain_depth = 4
    cfg.masking_instructions = []  # masked already
    cfg.parametrize_numeric_tokens = True
    return TemplateMiner(config=cfg)


def cluster(entries: list[dict], sim_th: float = 0.5) -> list[dict]:
    """Group entries into clusters: ``{template, count, examples, entries}``."""
    miner = _miner(sim_th)
    members: dict[int, list[dict]] = {}
    for e in entries:
        # the reply code leads the template: clusters never mix 4xx and 5xx
        r = miner.add_log_message(e["template"])
        members.setdefault(r["cluster_id"], []).append(e)
    out = []
    for cid, es in members.items():
        c = miner.drain.id_to_cluster[cid]
        examples: list[str] = []
        for e in sorted(es, key=lambda e: -e["count"]):
            for x in e.get("examples") or [e["example"]]:
                if x not in examples and len(examples) < 3:
                    examples.append(x)
        out.append({"template": c.get_template(), "count": sum(e["count"] for e in es),
                    "examples": examples, "entries": es})
    out.sort(key=lambda c: -c["count"])
    return out


def _phrases(tpl: str) -> list[str]:
    """The constant parts of a template (between masks), normalized, longest first: those
    of two words or more, else those holding one word of 4 letters or more (a proposal
    without any phrase would match every reply with that code)."""
    body = re.sub(r"^[245]\d\d (?:[245]\.\d{1,3}\.\d{1,3} )?", "", tpl)
    parts = [_rules.normalize(p).strip(" .,;:-()[]<>\"'") for p in _MASK.split(body)]
    parts = [p for p in parts if p and "  " not in p]
    strong = [p for p in parts if len(_WORD.findall(p)) >= 2]
    weak = [p for p in parts if any(len(w) >= 4 for w in _WORD.findall(p))]
    return sorted(dict.fromkeys(strong or weak), key=len, reverse=True)


def _nearest(tpl: str, code: int, compiled) -> tuple[object | None, float]:
    words = set(_WORD.findall(_rules.normalize(tpl)))
    best, best_score = None, 0.0
    for r in compiled.rules:
        if r.fallback or r.type == "none":
            continue
        cm = code if code else 0
        if r.code_bits and cm and not (r.code_bits >> cm) & 1:
            continue
        score = 0.0
        for pid in r.any_ids + r.all_ids:
            pw = set(_WORD.findall(compiled.patterns[pid]))
            if pw and pw <= words:
                score = max(score, float(len(pw)))
        if score > best_score:
            best, best_score = r, score
    return best, best_score


def _propose(c: dict, n: int, compiled) -> dict:
    es = c["entries"]
    codes = Counter(e["code"] for e in es for _ in range(e["count"]))
    code = codes.most_common(1)[0][0] if codes else 0
    enh = {e["enhanced"] for e in es}
    commands = sorted({e["command"] for e in es if e["command"]})
    near, score = _nearest(c["template"], code, compiled)
    prop: dict = {"name": f"suggested-{n}"}
    if commands:
        prop["command"] = commands
    if len(codes) == 1 and code:
        prop["code"] = [str(code)]
    elif code:
        prop["code"] = [f"{code // 100}xx"]
    if len(enh) == 1 and None not in enh:
        prop["enhanced"] = [enh.pop()]
    phrases = _phrases(c["template"])
    if phrases:
        prop["text_all"] = phrases[:2]
    if near is not None:
        rtype = near.type
        if rtype == "hard" and code and code < 500:
            rtype = "soft"  # a 4xx is never hard
        prop.update(bounce_class=near.bounce_class, type=rtype, reason=near.reason,
                    throttle_scope=near.throttle_scope,
                    action="retry" if (rtype == "soft" and near.action == "bounce")
                    else near.action)
        if near.effect != "none":
            prop["effect"] = near.effect
        basis = f"nearest rule {near.name!r} ({int(score)} pattern words shared)"
    else:
        prop.update(bounce_class=40 if code >= 500 else 20, type="soft", reason="not_defined",
                    throttle_scope="none", action="retry")
        basis = "reply code only (no rule near)"
    prop["source"] = (f"fastmta rules suggest: {c['count']} replies like "
                      f"{c['examples'][0][:120]!r}; outcome from {basis}; REVIEW before adding")
    return prop


def suggest(entries: list[dict], rules=None, sim_th: float = 0.5) -> list[dict]:
    """Clusters with a proposed rule each: ``{template, count, examples, proposed}``."""
    if rules is None:
        from fastmta import core

        rules = core.default_classifier().rules
    out = []
    for n, c in enumerate(cluster(entries, sim_th), 1):
        out.append({"template": c["template"], "count": c["count"], "examples": c["examples"],
                    "proposed": _propose(c, n, rules)})
    return out


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'


def to_toml(clusters: list[dict]) -> str:
    """The proposed rules as a TOML snippet (commented with counts and examples)."""
    out = ["# Rules proposed by `fastmta rules suggest` -- review, then `fastmta rules test`",
           "# and `fastmta rules add`.", ""]
    for c in clusters:
        out.append(f"# {c['count']} replies: {c['template'][:150]}")
        for x in c["examples"]:
            out.append(f"#   e.g. {x[:150]}")
        out.append("[[rule]]")
        for k, v in c["proposed"].items():
            out.append(f"{k} = {_toml_value(v)}")
        out.append("")
    return "\n".join(out)
