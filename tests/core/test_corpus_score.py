"""The classifier against the Sisimai-labelled corpus, scored by the corpus' own score.py.

Thresholds from issue #2: hard/soft accuracy >= 88%, class agreement >= 80% (with
--exclude-disputed --bounces-only and the fixed fastmta_class_map.json).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from fastmta import core

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("score_corpus", REPO / "benchmarks" / "score_corpus.py")
score_corpus = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("score_corpus", score_corpus)
_spec.loader.exec_module(score_corpus)


def test_corpus_score_meets_thresholds(impl, tmp_path):
    corpus = score_corpus.default_corpus()
    if not (corpus / "replies.jsonl").exists() or not (corpus / "score.py").exists():
        pytest.skip(f"bounce corpus not present at {corpus} (set FASTMTA_BOUNCE_CORPUS)")
    impl.load_rules([])
    out = tmp_path / "summary.json"
    report = score_corpus.score(corpus, impl.classify, str(out))
    summary = json.loads(out.read_text())
    assert summary["missing"] == 0
    assert summary["unmapped_system_reasons"] == {} or set(summary["unmapped_system_reasons"]) == {"0"}
    assert summary["hard_accuracy_bounces"] >= 0.88, report
    assert summary["reason_accuracy"] >= 0.80, report


def test_cli_classify_sample_and_stdin(tmp_path):
    from click.testing import CliRunner

    from fastmta.cli import main

    runner = CliRunner()
    res = runner.invoke(main, ["classify", "--sample"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in res.output.splitlines()]
    assert len(rows) >= 20 and {r["type"] for r in rows} >= {"hard", "soft", "none"}
    stdin = (
        '{"reply": "550 5.1.1 user unknown", "command": "RCPT"}\n'
        "\n"
        '{"reply": "452 4.5.3 Too many recipients", "command": "rcpt"}\n'
        "not json\n"
        '{"command": "rcpt"}\n'
    )
    res = runner.invoke(main, ["classify"], input=stdin)
    assert res.exit_code == 1
    rows = [json.loads(x) for x in res.output.splitlines()]
    assert rows[0]["type"] == "hard" and rows[0]["bounce_class"] == 10
    assert rows[1]["action"] == "retry"
    assert rows[2]["line"] == 4 and "error" in rows[2]
    assert rows[3]["line"] == 5 and "reply" in rows[3]["error"]
    res = runner.invoke(main, ["classify", "421 4.7.0 too many connections", "-c", "connect"])
    assert res.exit_code == 0
    assert json.loads(res.output)["throttle"] is True
    assert core.classify("550 5.1.1 x", "rcpt").type == "hard"


def test_cli_bad_rules_file_is_a_clear_error(tmp_path):
    from click.testing import CliRunner

    from fastmta.cli import main

    bad = tmp_path / "bad.toml"
    bad.write_text('[[rule]]\nname = "x"\n')
    res = CliRunner().invoke(main, ["classify", "--rules", str(bad), "550 x"])
    assert res.exit_code == 1 and "bounce_class" in res.output
    core.load_rules([])
