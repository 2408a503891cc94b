"""Score `fastmta inbound parse` on the Sisimai-labelled bounce corpus, side by side with
flufl.bounce (Mailman's bounce detector).

    python benchmarks/feedback_corpus.py [--corpus ../shared/corpora/bounces] [--json OUT]

Per email: kind (dsn / arf / autoreply, from the label's reason), recipients found
(labels carry one result per failed recipient, without the address: found =
min(predicted, labelled) per email, precision = found / predicted), hard/soft agreement
with the label's ``hard`` (bounces only), status class (first digit) where the label has
one, bounce class through the corpus's fixed ``fastmta_class_map.json``, and the ARF
feedback type.  flufl.bounce finds addresses only (``scan_message``), so it is scored on
recipients and on "is a bounce".  Also prints parse time per message.
"""

from __future__ import annotations

import argparse
import collections
import email
import json
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fastmta.feedback.parse import parse  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "corpora", "bounces"))


def gold_kind(reason: str) -> str:
    return {"feedback": "arf", "vacation": "autoreply"}.get(reason, "dsn")


def flufl_scan(raw: bytes):
    try:
        from flufl.bounce import scan_message
    except ImportError:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return scan_message(email.message_from_bytes(raw))
        except Exception:
            return set()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default=os.environ.get("FASTMTA_BOUNCE_CORPUS", DEFAULT))
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--show", type=int, default=0, help="print N disagreements per metric")
    a = ap.parse_args()
    labels = [json.loads(line) for line in open(os.path.join(a.corpus, "labels.jsonl"))]
    cmap = json.load(open(os.path.join(a.corpus, "fastmta_class_map.json")))
    by: dict[str, list[dict]] = collections.defaultdict(list)
    for lab in labels:
        by[lab["file"]].append(lab)
    c = collections.Counter()
    misses: dict[str, list] = collections.defaultdict(list)
    t_fast = t_flufl = 0.0
    flufl_ok = True
    for f, ls in sorted(by.items()):
        ls.sort(key=lambda x: x["index"])
        raw = open(os.path.join(a.corpus, f), "rb").read()
        t0 = time.perf_counter()
        r = parse(raw)
        t_fast += time.perf_counter() - t0
        gk = gold_kind(ls[0]["reason"])
        c["emails"] += 1
        c["kind_ok"] += r.kind == gk
        if r.kind != gk:
            misses["kind"].append((f, gk, r.kind, r.why))
        c["gold"] += len(ls)
        c["pred"] += len(r.recipients)
        c["found"] += min(len(ls), len(r.recipients))
        for i, lab in enumerate(ls):
            rp = r.recipients[i] if i < len(r.recipients) else None
            if lab["hard"] is not None:
                c["hard_n"] += 1
                if rp is not None and (rp.type == "hard") == lab["hard"]:
                    c["hard_ok"] += 1
                else:
                    misses["hard"].append((f, lab["reason"], lab["hard"],
                                           rp and rp.reason, rp and rp.diagnostic[:80]))
                c["class_n"] += 1
                if rp is not None and lab["reason"] in cmap.get(str(rp.bounce_class), []):
                    c["class_ok"] += 1
            if lab["status"][:1] in ("2", "4", "5"):
                c["status_n"] += 1
                c["status_ok"] += bool(rp and rp.status and rp.status[0] == lab["status"][0])
            if lab.get("feedback_type"):
                c["ftype_n"] += 1
                c["ftype_ok"] += r.feedback_type == lab["feedback_type"]
        t0 = time.perf_counter()
        fl = flufl_scan(raw)
        t_flufl += time.perf_counter() - t0
        if fl is None:
            flufl_ok = False
            continue
        bounces = [x for x in ls if x["reason"] not in ("feedback", "vacation", "delivered")]
        c["fl_pred"] += len(fl)
        c["fl_found"] += min(len(ls), len(fl))
        if bounces:
            c["fl_bounce_n"] += 1
            c["fl_bounce_ok"] += bool(fl)
            c["fa_bounce_ok"] += r.kind == "dsn" and bool(r.recipients)

    def pct(x: str, n: str) -> float:
        return round(100.0 * c[x] / c[n], 2) if c[n] else 0.0

    out = {
        "emails": c["emails"], "labelled_results": c["gold"],
        "fastmta": {
            "kind_pct": pct("kind_ok", "emails"),
            "recipients_found_pct": pct("found", "gold"),
            "recipients_precision_pct": pct("found", "pred"),
            "hard_soft_pct": pct("hard_ok", "hard_n"),
            "status_class_pct": pct("status_ok", "status_n"),
            "bounce_class_pct": pct("class_ok", "class_n"),
            "arf_feedback_type_pct": pct("ftype_ok", "ftype_n"),
            "bounce_detected_pct": pct("fa_bounce_ok", "fl_bounce_n"),
            "ms_per_email": round(1000 * t_fast / max(1, c["emails"]), 3),
        },
    }
    if flufl_ok:
        out["flufl.bounce"] = {
            "recipients_found_pct": pct("fl_found", "gold"),
            "recipients_precision_pct": pct("fl_found", "fl_pred"),
            "bounce_detected_pct": pct("fl_bounce_ok", "fl_bounce_n"),
            "ms_per_email": round(1000 * t_flufl / max(1, c["emails"]), 3),
        }
    print(f"corpus: {a.corpus} ({c['emails']} emails, {c['gold']} labelled results)")
    print(f"{'metric':34} {'fastmta':>9} {'flufl.bounce':>13}")
    fl = out.get("flufl.bounce", {})
    for k, v in out["fastmta"].items():
        other = fl.get(k, "-")
        print(f"{k:34} {v:>9} {other!s:>13}")
    for name, rows in misses.items():
        for row in rows[: a.show]:
            print(name, *row)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
