"""Score the classifier on fastmta's own labelled replies (tests/data/replies_labelled.jsonl).

Usage::

    python benchmarks/score_replies.py [--impl compiled|pure] [--file F.jsonl] [--json] [--show-errors]

``--file tests/data/replies_heldout_proxy.jsonl`` scores the held-out proxy instead (``_fresh`` and
``_third`` are two later batches; ``_third`` was scored once and never tuned on): real
reply texts quoted from providers' pages, the SMTP Field Manual data and field reports
(each with its URL), collected after the rules and labelled by issue 16's definitions;
none of them is in the own set.  ``_sixth`` (102 replies) is the sixth batch, collected
2026-12-08 (mostly from other pages than the earlier batches) and unseen by the rules at
collection time; none of its normalised texts is in ``tests/data`` or the shared corpus.

Each line of the file is one reply written after a provider's published postmaster page,
an MTA manual or an RFC (its ``source``), with the command it answers, its ``kind`` (what
a deliverability engineer calls it), its language and the expected ``hard``, ``throttle``
and ``throttle_scope``.  Prints per-kind recall (all three right), hard/soft accuracy,
throttle precision/recall, scope accuracy and class agreement (the bounce class is one
of the classes that kind allows: ``KIND_CLASSES``), per language as well.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DATA = REPO / "tests" / "data" / "replies_labelled.jsonl"

# Bounce classes a kind may get (Momentum/SparkPost classes, docs/classification.md).
KIND_CLASSES = {
    "user_unknown": {10},
    "invalid_domain": {21, 54},  # 54 Relaying Denied: "will not relay for it" is hard too
    "account_disabled": {10},
    "mailbox_full": {22},
    "rate_recipient": {70, 20},
    "rate_sender": {70, 51},
    "transient_421": {20, 24, 70},
    "policy_deferral": {50},
    "reputation_block": {50, 51},
    "sender_policy": {50, 51, 52},
    "too_many_recipients": {70},
    "greylisting": {20, 70},
    "session_cap": {70},  # a cap of messages per session (held-out proxy only)
}


def load(path: Path = DATA) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def score(items: list[dict], classify) -> dict:
    """Figures for ``items`` classified with ``classify(reply, command)``."""
    per_kind: dict[str, Counter] = defaultdict(Counter)
    per_lang: dict[str, Counter] = defaultdict(Counter)
    tp = fp = fn = 0
    hard_ok = scope_ok = class_ok = 0
    errors = []
    for o in items:
        c = classify(o["reply"], o.get("command"))
        hard = c.type == "hard"
        ok_hard = hard == o["hard"]
        ok_thr = bool(c.throttle) == o["throttle"]
        ok_scope = c.throttle_scope == o["throttle_scope"]
        ok_class = c.bounce_class in KIND_CLASSES[o["kind"]]
        ok = ok_hard and ok_thr and ok_scope and ok_class
        hard_ok += ok_hard
        scope_ok += ok_scope
        class_ok += ok_class
        tp += c.throttle and o["throttle"]
        fp += c.throttle and not o["throttle"]
        fn += (not c.throttle) and o["throttle"]
        for d, k in ((per_kind, o["kind"]), (per_lang, o["lang"])):
            d[k]["n"] += 1
            d[k]["ok"] += ok
        if not ok:
            errors.append({"reply": o["reply"], "kind": o["kind"], "rule": c.rule,
                           "got": [c.bounce_class, c.type, c.throttle, c.throttle_scope]})
    n = len(items)
    return {
        "replies": n,
        "hard_soft": hard_ok / n,
        "throttle_precision": tp / (tp + fp) if tp + fp else 1.0,
        "throttle_recall": tp / (tp + fn) if tp + fn else 1.0,
        "scope": scope_ok / n,
        "class_agreement": class_ok / n,
        "per_kind": {k: v["ok"] / v["n"] for k, v in sorted(per_kind.items())},
        "per_kind_n": {k: v["n"] for k, v in sorted(per_kind.items())},
        "per_lang": {k: v["ok"] / v["n"] for k, v in sorted(per_lang.items())},
        "per_lang_n": {k: v["n"] for k, v in sorted(per_lang.items())},
        "errors": errors,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--impl", choices=("compiled", "pure"), default="compiled")
    ap.add_argument("--file", type=Path, default=DATA)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--show-errors", action="store_true")
    a = ap.parse_args(argv)
    if a.impl == "pure":
        from fastmta import _core_py as impl
    else:
        from fastmta import _core as impl
    res = score(load(a.file), impl.classify)
    if a.json:
        print(json.dumps(res, indent=1, ensure_ascii=False))
        return 0
    print(f"{res['replies']} labelled replies ({a.file.name}, {a.impl})")
    print(f"  hard/soft accuracy   : {res['hard_soft']:.1%}")
    print(f"  throttle precision   : {res['throttle_precision']:.1%}")
    print(f"  throttle recall      : {res['throttle_recall']:.1%}")
    print(f"  throttle scope       : {res['scope']:.1%}")
    print(f"  class agreement      : {res['class_agreement']:.1%}")
    print("  recall per kind (hard, throttle, scope and class all right):")
    for k, v in res["per_kind"].items():
        print(f"    {k:20s} {v:6.1%}  ({res['per_kind_n'][k]})")
    print("  per language:")
    for k, v in res["per_lang"].items():
        print(f"    {k:4s} {v:6.1%}  ({res['per_lang_n'][k]})")
    if a.show_errors or res["errors"]:
        print(f"  errors ({len(res['errors'])}):")
        for e in res["errors"]:
            print(f"    [{e['kind']}] {e['reply'][:90]!r} -> {e['got']} ({e['rule']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
