"""Score fastmta's bounce classifier against the Sisimai-labelled reply corpus.

Usage (from the repository)::

    PYTHONPATH=src python benchmarks/score_corpus.py [CORPUS_DIR] [--json OUT] [--impl NAME]

CORPUS_DIR defaults to ``../shared/corpora/bounces`` relative to the repository (see
``default_corpus``; the corpus README describes the files).  Each reply of ``replies.jsonl`` is classified with its SMTP
phase (``smtp_command``: RCPT/MAIL/DATA/HELO/CONN, or none), the predictions are written
as ``{"reply", "hard", "reason": str(bounce_class)}`` and the corpus' own ``score.py``
scores them with ``--exclude-disputed --bounces-only --mapping fastmta_class_map.json``.
``hard`` is true for type hard, false for soft/ignored, null for type none (2xx).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def default_corpus() -> Path:
    """``$FASTMTA_BOUNCE_CORPUS``, else ``../shared/corpora/bounces`` of the repository
    (also looked up one level higher, for git worktrees kept in a subfolder)."""
    env = os.environ.get("FASTMTA_BOUNCE_CORPUS")
    if env:
        return Path(env)
    for base in (REPO.parent, REPO.parent.parent):
        cand = base / "shared" / "corpora" / "bounces"
        if (cand / "replies.jsonl").exists():
            return cand
    return REPO.parent / "shared" / "corpora" / "bounces"

PHASE = {"RCPT": "rcpt", "MAIL": "mail", "DATA": "data", "HELO": "ehlo", "CONN": "connect"}
HARD = {"hard": True, "soft": False, "ignored": False, "none": None}


def load_replies(corpus: Path) -> list[dict]:
    with open(corpus / "replies.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def predictions(items: list[dict], classify) -> list[dict]:
    out = []
    for o in items:
        c = classify(o["reply"], PHASE.get(o.get("smtp_command") or ""))
        out.append(
            {
                "reply": o["reply"],
                "hard": HARD[c.type],
                "reason": str(c.bounce_class),
                "type": c.type,
                "rule": c.rule,
            }
        )
    return out


def score(corpus: Path, classify, json_out: str | None = None, top: int = 15) -> str:
    """Run the corpus scorer on fresh predictions; return its report text."""
    preds = predictions(load_replies(corpus), classify)
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        for p in preds:
            f.write(json.dumps(p) + "\n")
        path = f.name
    try:
        cmd = [
            sys.executable,
            str(corpus / "score.py"),
            path,
            "--mode",
            "replies",
            "--mapping",
            str(corpus / "fastmta_class_map.json"),
            "--exclude-disputed",
            "--bounces-only",
            "--top",
            str(top),
        ]
        if json_out:
            cmd += ["--json", json_out]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120)
        return res.stdout
    finally:
        os.unlink(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("corpus", nargs="?", default=None)
    ap.add_argument("--json", help="write score.py's summary JSON here")
    ap.add_argument("--impl", choices=["compiled", "pure"], help="default: what fastmta.core picks")
    ap.add_argument("--top", type=int, default=15)
    a = ap.parse_args()
    corpus = Path(a.corpus) if a.corpus else default_corpus()
    if not (corpus / "replies.jsonl").exists():
        sys.exit(f"no corpus at {corpus} (expected replies.jsonl, score.py there)")
    from fastmta import core

    mod = core.implementations()[a.impl] if a.impl else core
    print(f"fastmta core: {a.impl or core.IMPL}   corpus: {corpus}\n")
    print(score(corpus, mod.classify, a.json, a.top))


if __name__ == "__main__":
    main()
