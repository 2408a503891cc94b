"""fastmta's own labelled replies (tests/data/replies_labelled.jsonl) on both cores."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("score_replies", ROOT / "benchmarks" / "score_replies.py")
score_replies = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(score_replies)

ITEMS = score_replies.load()
LANGS = {"en", "de", "fr", "es", "pt", "it", "ru", "ja", "zh"}


def test_labelled_set_covers_every_kind_and_language_with_sources():
    kinds = {o["kind"] for o in ITEMS}
    assert set(score_replies.KIND_CLASSES) - kinds <= {"session_cap"}  # proxy-only kind
    assert kinds <= set(score_replies.KIND_CLASSES)
    assert {o["lang"] for o in ITEMS} == LANGS
    for lang in LANGS:  # each language has a hard and a soft failure at least
        kinds_l = {o["kind"] for o in ITEMS if o["lang"] == lang}
        assert kinds_l & {"user_unknown", "account_disabled", "invalid_domain"}, lang
        assert kinds_l - {"user_unknown", "account_disabled", "invalid_domain"}, lang
    for o in ITEMS:
        assert o["source"].startswith(("http", "RFC", "qmail")), o
        assert o["throttle"] == (o["throttle_scope"] != "none"), o


@pytest.mark.parametrize("impl_name", ["compiled", "pure"])
def test_labelled_scores(impl_name):
    if impl_name == "pure":
        from fastmta import _core_py as impl
    else:
        impl = pytest.importorskip("fastmta._core")
    res = score_replies.score(ITEMS, impl.classify)
    assert res["hard_soft"] >= 0.95, res["errors"]
    assert res["throttle_recall"] >= 0.90 and res["throttle_precision"] >= 0.90, res["errors"]
    assert res["scope"] >= 0.95, res["errors"]
    assert res["class_agreement"] >= 0.90, res["errors"]
    for kind, recall in res["per_kind"].items():
        assert recall >= 0.75, (kind, res["errors"])
    for lang, recall in res["per_lang"].items():
        assert recall >= 0.75, (lang, res["errors"])


def test_both_cores_agree_on_the_labelled_set_as_text_and_as_reply_objects():
    comp = pytest.importorskip("fastmta._core")
    from fastmta import _core_py as pure

    for o in ITEMS:
        text, cmd = o["reply"], o["command"]
        assert comp.classify(text, cmd) == pure.classify(text, cmd), text
        raw = text.encode("utf-8") + b"\r\n"
        for impl in (comp, pure):
            p = impl.ReplyParser()
            p.expect(cmd)
            (r,) = p.feed(raw)
            assert comp.classify(r) == pure.classify(r), text
            assert impl.classify(r).rule == impl.classify(text, cmd).rule, text


PROXY = score_replies.load(ROOT / "tests" / "data" / "replies_heldout_proxy.jsonl")


def _norm(text: str) -> str:
    return " ".join("".join(ch if ch.isalnum() else " " for ch in text.lower()).split())


FRESH = score_replies.load(ROOT / "tests" / "data" / "replies_heldout_fresh.jsonl")
# third batch (branch issue16c): collected after the fresh batch's rules, labelled, scored
# once and never used to write a rule; its figure is the unseen estimate (docs/classification.md)
THIRD = score_replies.load(ROOT / "tests" / "data" / "replies_heldout_third.jsonl")
# fourth batch (branch issue16d): new providers, labelled before scoring, scored once, never tuned on
FOURTH = score_replies.load(ROOT / "tests" / "data" / "replies_heldout_fourth.jsonl")
# fifth batch (branch issue16e): new sources, labelled before scoring, scored once, never tuned on
FIFTH = score_replies.load(ROOT / "tests" / "data" / "replies_heldout_fifth.jsonl")


def test_heldout_proxy_is_sourced_labelled_and_disjoint_from_the_own_set():
    own = {_norm(o["reply"]) for o in ITEMS}
    proxy = {_norm(o["reply"]) for o in PROXY}
    assert len(PROXY) >= 150
    fresh = {_norm(o["reply"]) for o in FRESH}
    assert not fresh & (own | proxy)
    assert len(THIRD) >= 30 and not {_norm(o["reply"]) for o in THIRD} & (own | proxy | fresh)
    seen = own | proxy | fresh | {_norm(o["reply"]) for o in THIRD}
    assert len(FOURTH) >= 25 and not {_norm(o["reply"]) for o in FOURTH} & seen
    seen |= {_norm(o["reply"]) for o in FOURTH}
    assert len(FIFTH) >= 25 and not {_norm(o["reply"]) for o in FIFTH} & seen
    for o in PROXY + FRESH + THIRD + FOURTH + FIFTH:
        assert o["source"].startswith("http"), o
        assert o["kind"] in score_replies.KIND_CLASSES, o
        assert o["throttle"] == (o["throttle_scope"] != "none"), o
        assert _norm(o["reply"]) not in own, o


@pytest.mark.parametrize("impl_name", ["compiled", "pure"])
def test_heldout_proxy_meets_the_issue_aims(impl_name):
    """The issue's aims on the held-out set, checked on the proxy (guards a regression)."""
    if impl_name == "pure":
        from fastmta import _core_py as impl
    else:
        impl = pytest.importorskip("fastmta._core")
    res = score_replies.score(PROXY, impl.classify)
    assert res["hard_soft"] >= 0.95, res["errors"]
    assert res["throttle_recall"] >= 0.90 and res["throttle_precision"] >= 0.85, res["errors"]
    assert res["class_agreement"] >= 0.90, res["errors"]


def test_both_cores_agree_on_the_heldout_proxy():
    comp = pytest.importorskip("fastmta._core")
    from fastmta import _core_py as pure

    for o in PROXY + THIRD:
        for cmd in (o["command"], None):
            assert comp.classify(o["reply"], cmd) == pure.classify(o["reply"], cmd), o["reply"]
