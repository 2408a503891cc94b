"""``fastmta classify --explain``: the deciding rule, what matched, source, runner-up."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from fastmta import _core_py, core
from fastmta.classify.explain import explain
from fastmta.cli import main

SAMPLES = [
    ("450-4.2.1 The user you are trying to contact is receiving mail at a rate that prevents "
     "additional messages from being delivered", "rcpt"),
    ("550 5.1.1 <a@example.net>: Recipient address rejected: User unknown", "rcpt"),
    ("421 mx.example.net Service not available, closing transmission channel", "connect"),
    ("550 5.7.1 Service unavailable, Client host [192.0.2.7] blocked using zen.spamhaus.org", "mail"),
    ("550 Пользователь не найден", "rcpt"),
    ("552 Boîte aux lettres pleine", "rcpt"),
    ("550 5.9.9 frobnicated", "rcpt"),
    ("299 odd", None),
]


@pytest.mark.parametrize("reply,command", SAMPLES)
def test_explain_names_the_rule_classify_used(reply, command):
    e = explain(reply, command)
    assert e["winner"]["rule"] == core.classify(reply, command).rule
    assert e["winner"]["rule"] == _core_py.classify(reply, command).rule
    assert e["winner"]["source"], "every packaged rule names its source"
    if e["runner_up"] is not None:
        assert e["runner_up"]["rule"] != e["winner"]["rule"]


def test_explain_shows_phrases_and_runner_up():
    e = explain(*SAMPLES[0])
    assert e["winner"]["rule"] == "rate-limited-recipient"
    assert "receiving mail at a rate" in e["winner"]["phrases"]
    assert e["runner_up"]["rule"] == "rate-limited"  # the sender-scope reading, second
    assert e["undetermined"] is False


def test_code_only_fallback_is_undetermined():
    e = explain("550 5.9.9 frobnicated", "rcpt")
    assert e["undetermined"] is True and e["winner"]["fallback"] is True
    assert "fallback" in e["note"]
    c = core.classify("550 5.9.9 frobnicated", "rcpt")
    assert (c.bounce_class, c.type) == (1, "soft")


def test_explain_matches_classify_on_a_reply_object():
    p = core.ReplyParser()
    p.expect("rcpt")
    (r,) = p.feed(b"550-5.1.1 The email account that you tried to reach\r\n550 5.1.1 does not exist\r\n")
    assert explain(r)["winner"]["rule"] == core.classify(r).rule


def test_cli_explain_text_and_json():
    run = CliRunner()
    res = run.invoke(main, ["classify", "--explain", "-c", "rcpt", SAMPLES[0][0]])
    assert res.exit_code == 0, res.output
    assert "rate-limited-recipient" in res.output and "runner-up: rate-limited" in res.output
    assert "source" in res.output
    res = run.invoke(main, ["classify", "--explain", "--json", "-c", "rcpt", "550 5.9.9 x"])
    obj = json.loads(res.output)
    assert obj["explain"]["undetermined"] is True and obj["bounce_class"] == 1
    res = run.invoke(main, ["classify", "--explain"], input='{"reply": "552 5.2.2 full", "command": "rcpt"}\n')
    obj = json.loads(res.output)
    assert obj["explain"]["winner"]["rule"] == obj["rule"]


def test_explain_agrees_with_classify_on_the_labelled_set():
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "data" / "replies_labelled.jsonl"
    for line in path.read_text("utf-8").splitlines():
        o = json.loads(line)
        assert explain(o["reply"], o["command"])["winner"]["rule"] == \
            core.classify(o["reply"], o["command"]).rule, o["reply"]
