"""The dashboard's sources/warm-up page and the delivery charts' history, in Debian's
chromium (Playwright): the page equals ``fastmta egress status --json`` after a pooled
send over two loopback sources; a delivery page opened after its send shows the send's
whole past (from the spool's event log), equal to the report."""

from __future__ import annotations

import time

import httpx
import pytest
from history_helpers import CLOCK_FIELDS, cli_egress, egress_config
from http_helpers import TOKEN, cli_report, csv_text, upload
from ops_helpers import recipients

from fastmta import WorkerPool
from fastmta.http.server import HttpServer

pytestmark = [pytest.mark.timeout(180)]  # browser and page: conftest.py


def cells(page, selector: str) -> list[dict[str, str]]:
    """Each row's data-field -> data-value, plus its data-source / data-provider."""
    return page.eval_on_selector_all(selector, """rows => rows.map(r => Object.assign(
        {source: r.getAttribute('data-source'), provider: r.getAttribute('data-provider'),
         site: r.getAttribute('data-site')},
        Object.fromEntries([...r.querySelectorAll('[data-field]')].map(
            c => [c.getAttribute('data-field'), c.getAttribute('data-value')]))))""")


def same(shown: str, want) -> bool:
    """A data-value (JavaScript's String(v)) against the JSON value."""
    if want is None:
        return shown == "null"
    if isinstance(want, bool) or not isinstance(want, int | float):
        return shown == str(want)
    return float(shown) == want


def test_egress_page_equals_the_cli(cfg, world, spool_dir, page, tmp_path):
    eg = egress_config(cfg)
    srv = HttpServer(eg, spool_dir, "127.0.0.1:0", token=TOKEN)
    srv.start()
    try:
        page.goto(f"{srv.url}/egress")
        page.wait_for_selector("body[data-loaded]")
        assert page.eval_on_selector_all("div.card[data-source]",
                                         "els => els.map(e => e.getAttribute('data-source'))"
                                         ) == ["warm1", "cold1"]
        assert "no traffic yet" in page.text_content("div.card[data-source=cold1]")
        rows = recipients(world, 150, ["fast"], prefix="egp-")
        with httpx.Client(base_url=srv.url, timeout=30,
                          headers={"Authorization": f"Bearer {TOKEN}"}) as c:
            r = upload(c, csv_text(rows), confirm="1", pool="mix")
            assert r.status_code == 201, r.text
        with WorkerPool(eg, spool=spool_dir) as pool:
            assert pool.delivery(r.json()["delivery_id"]).wait(timeout_s=90)["sent"] == 150
        cli = cli_egress(spool_dir, eg, tmp_path)
        cold = next(s for s in cli["sources"] if s["name"] == "cold1")
        want_used = str(cold["providers"][0]["used_today"])
        # the page follows without a reload (event stream / periodic refresh)
        page.wait_for_function(
            "(() => { const c = document.querySelector(\"tr[data-source=cold1] "
            f"[data-field=used_today]\"); return c && c.getAttribute('data-value') == "
            f"'{want_used}'; }})()", timeout=30_000)
        # every source's counters, not only cold1's: a warm source's attempts reach the
        # spool with the 1-s counter flush, after the cold source's durable reservations
        import json as _json

        expect = _json.dumps([[s["name"], r["provider"], str(r.get("attempts_today", ""))]
                              for s in cli["sources"] for r in s["providers"]])
        page.wait_for_function(
            f"(() => {expect}.every(([src, prov, v]) => {{ const c = document.querySelector("
            "`tr[data-source=\"${src}\"][data-provider=\"${prov}\"] "
            "[data-field=attempts_today]`); return !c || c.getAttribute('data-value') == v; "
            "}))()", timeout=30_000)
        shown = cells(page, "div.card tr[data-source]")
        want = [(s["name"], r) for s in cli["sources"] for r in s["providers"]]
        assert len(shown) == len(want) > 0
        for got, (name, r) in zip(shown, want, strict=True):
            assert (got["source"], got["provider"]) == (name, r["provider"])
            for k, v in got.items():
                if k in ("source", "provider", "site"):
                    continue
                assert same(v, r[k]), (name, r["provider"], k, v, r[k])
        learned = cells(page, "#learned tbody tr")
        assert len(learned) == len(cli["learned"]) > 0
        for got, r in zip(learned, cli["learned"], strict=True):
            assert (got["site"], got["source"]) == (r["site"], r["source"])
            for k, v in got.items():
                if k not in ("source", "provider", "site") and k not in CLOCK_FIELDS:
                    assert same(v, r[k]), (r["site"], k, v, r[k])
        card = page.text_content("div.card[data-source=cold1]")
        assert "warming up: plan tiny, day 1" in card and "127.0.0.6" in card
        assert page.errors == []
    finally:
        srv.stop()


def test_delivery_page_opened_after_the_send_shows_its_history(cfg, world, spool_dir,
                                                               server, admin, page):
    rows = recipients(world, 400, ["fast", "unknownusers", "slowpoke"], prefix="hist-")
    did = upload(admin, csv_text(rows), confirm="1").json()["delivery_id"]
    with WorkerPool(cfg, spool=spool_dir) as pool:
        pool.delivery(did).wait(timeout_s=90)
    rep = cli_report(spool_dir, did)
    assert rep["pending"] == 0 and rep["sent"] > 0 and rep["failed"] > 0
    opened = time.time()
    page.goto(f"{server.url}/deliveries/{did}")
    page.wait_for_selector("body[data-loaded='1']")
    rate = page.eval_on_selector("#chart-rate", "e => Object.fromEntries("
                                 "[...e.attributes].map(a => [a.name, a.value]))")
    status = page.eval_on_selector("#chart-status", "e => Object.fromEntries("
                                   "[...e.attributes].map(a => [a.name, a.value]))")
    # the whole send, from before the page was opened
    assert int(rate["data-points"]) >= 1 and int(rate["data-first-ts"]) <= int(opened)
    assert int(rate["data-total-sent"]) == rep["sent"]
    assert int(rate["data-total-failed"]) == rep["failed"]
    assert float(rate["data-peak-rate"]) > 0
    assert (int(status["data-last-sent"]), int(status["data-last-failed"]),
            int(status["data-last-pending"])) == (rep["sent"], rep["failed"], 0)
    assert page.eval_on_selector_all("#chart-rate canvas, #chart-status canvas",
                                     "els => els.length") == 2
    # and the tiles agree with the charts
    assert page.get_attribute("[data-kpi=sent]", "data-value") == str(rep["sent"])
    assert page.errors == []
