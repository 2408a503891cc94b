"""The dashboard as an operator uses it: Debian's chromium, headless, driven by Playwright
(launched with /usr/bin/chromium: no browser download), against a real server, spool,
engine and simulated internet."""

from __future__ import annotations

import pytest
from http_helpers import HOSTILE, TOKEN, cli_report, csv_text, upload, wait_for
from ops_helpers import domains_of, recipients

from fastmta import WorkerPool
from fastmta.ops.admin import read_status

pytestmark = [pytest.mark.timeout(180)]  # browser and page: conftest.py

KPIS = ["to_deliver", "success_pct", "sent", "pending", "failed", "failed_hard",
        "failed_expired", "soft_bounces", "excluded", "recipients", "attempts", "deferrals"]


def tiles(page) -> dict[str, str]:
    return page.eval_on_selector_all(
        "[data-kpi]", "els => Object.fromEntries(els.map(e => "
        "[e.getAttribute('data-kpi'), e.getAttribute('data-value')]))")


def accepted_of(sim, rows) -> int:
    acc = sim.accepted()
    return sum(acc.get(r["email"], 0) for r in rows)


def test_delivery_page_follows_a_running_send(cfg, sim, world, spool_dir, server, admin, page):
    rows = recipients(world, 400, ["fast", "greylister", "unknownusers", "slowpoke"],
                      prefix="live-")
    grey = set(domains_of(world, "greylister"))
    held = sum(r["email"].rpartition("@")[2] in grey for r in rows)
    did = upload(admin, csv_text(rows), confirm="1").json()["delivery_id"]
    # the greylister's site is suspended: part of the send is held until it is resumed
    site = "mx1.greylister.sim.test"
    assert admin.post("/api/v1/admin/suspend", json={"site": site}).status_code == 200
    page.goto(f"{server.url}/deliveries/{did}")
    page.wait_for_selector("body[data-loaded='1']")
    assert tiles(page)["pending"] == "400" and tiles(page)["sent"] == "0"
    with WorkerPool(cfg, spool=spool_dir) as pool:
        h = pool.delivery(did)
        # everything but the held part becomes final; the tiles follow without a reload
        page.wait_for_function(
            f"document.querySelector('[data-kpi=pending]').getAttribute('data-value') == "
            f"'{held}'", timeout=60_000)
        mid = cli_report(spool_dir, did)  # the same moment: the numbers are at rest
        shown = tiles(page)
        for k in KPIS:
            if k != "deferrals":  # the held recipients are re-checked every second
                assert shown[k] == str(mid[k]), (k, shown[k], mid[k])
        assert mid["pending"] == held and mid["sent"] > 0
        assert admin.post("/api/v1/admin/resume", json={"site": site}).status_code == 200
        page.wait_for_function(
            "document.querySelector('[data-kpi=pending]').getAttribute('data-value') == '0'",
            timeout=60_000)
        assert h.done()
    rep = cli_report(spool_dir, did)
    page.wait_for_timeout(1200)  # one more refresh at most 1 s later must not move them
    shown = tiles(page)
    for k in KPIS:
        assert shown[k] == str(rep[k]), (k, shown[k], rep[k])
    assert rep["sent"] == mid["sent"] + held and rep["failed"] > 0  # all held ones sent
    assert page.text_content("[data-kpi=sent]") == f"{rep['sent']:,}"
    # breakdowns and the searchable log
    assert "user_unknown" in page.text_content("#by-reason")
    page.fill("#search input[name=q]", "live-1")
    page.select_option("#search select[name=status]", "sent")
    page.click("#search button[type=submit]")
    page.wait_for_function("document.querySelectorAll('#log tbody tr').length > 0")
    emails = page.eval_on_selector_all("#log td.email", "els => els.map(e => e.textContent)")
    assert emails and all(e.startswith("live-1") for e in emails)
    assert page.errors == []


def test_click_suspend_on_a_site_stops_sending_to_it(cfg, sim, world, spool_dir, server,
                                                     admin, page):
    site = "mx1.slowpoke.sim.test"
    warm = recipients(world, 10, ["slowpoke", "fast"], prefix="warm-")
    slow = recipients(world, 30, ["slowpoke"], prefix="ss-")
    fast = recipients(world, 30, ["fast"], prefix="sf-")
    d1 = upload(admin, csv_text(warm), confirm="1").json()["delivery_id"]
    with WorkerPool(cfg, spool=spool_dir) as pool:
        pool.delivery(d1).wait(timeout_s=60)
        page.goto(f"{server.url}/sites#token={TOKEN}")
        row = f"tr[data-site='{site}']"
        page.wait_for_selector(row, timeout=20_000)
        page.click(f"{row} button[data-action=suspend]")
        page.wait_for_selector(f"{row}[data-state=suspended]", timeout=20_000)
        assert "suspended by operator" in page.text_content(row)
        # the worker has applied it (its own snapshot says so), then a new delivery comes
        wait_for(lambda: read_status(spool_dir).get("sites", {}).get(site, {})
                 .get("admin_suspended"), timeout=20)
        d2 = upload(admin, csv_text(slow + fast), confirm="1").json()["delivery_id"]
        wait_for(lambda: accepted_of(sim, fast) == 30, timeout=60)
        h = pool.delivery(d2)
        wait_for(lambda: h.status()["pending"] == 30, timeout=30)
        assert accepted_of(sim, slow) == 0  # not one message to the suspended site
        page.click(f"{row} button[data-action=resume]")
        page.wait_for_selector(f"{row}[data-state=normal]", timeout=20_000)
        assert h.wait(timeout_s=60)["sent"] == 60
    assert accepted_of(sim, slow) == 30
    assert page.errors == []


def test_hostile_reply_text_is_inert(cfg, sim, world, spool_dir, server, admin, page):
    dom = domains_of(world, "hostile")[0]
    rows = [{"email": f"victim{i}@{dom}", "name": "x"} for i in range(3)]
    did = upload(admin, csv_text(rows), confirm="1").json()["delivery_id"]
    with WorkerPool(cfg, spool=spool_dir) as pool:
        wait_for(lambda: any("<script>" in r.reply
                             for _i, r in pool.spool.recipients(did)), timeout=60)
        wait_for(lambda: "<script>" in str(read_status(spool_dir).get("sites", {})),
                 timeout=20)
        page.goto(f"{server.url}/deliveries/{did}")
        page.wait_for_selector("#log tbody tr td.reply")
        wait_for(lambda: "<script>" in page.text_content("#log"), timeout=10)
        replies = page.eval_on_selector_all("#log td.reply", "els => els.map(e => e.textContent)")
        assert any("<script>window.__pwned=1</script>" in r for r in replies)
        assert page.eval_on_selector_all("main script, main img", "els => els.length") == 0
        page.goto(f"{server.url}/sites")
        page.wait_for_function("document.querySelector('#sites').textContent"
                               ".includes('<script>')", timeout=20_000)
        assert page.eval_on_selector_all("main script, main img", "els => els.length") == 0
        assert page.evaluate("typeof window.__pwned") == "undefined"
        assert HOSTILE.split(" go away")[0][-40:] in page.text_content("#sites")
        admin.post(f"/api/v1/deliveries/{did}/cancel")
    assert page.errors == []


def test_deliveries_list_and_no_outside_request(cfg, world, spool_dir, server, admin, page):
    urls: list[str] = []
    page.on("request", lambda r: urls.append(r.url))
    rows = recipients(world, 12, ["fast"], prefix="list-")
    did = upload(admin, csv_text(rows), name="<b>spring</b>", confirm="1").json()["delivery_id"]
    with WorkerPool(cfg, spool=spool_dir) as pool:
        pool.delivery(did).wait(timeout_s=60)
    page.goto(f"{server.url}/")
    row = f"tr[data-delivery='{did}']"
    page.wait_for_selector(row)
    page.wait_for_function(f"document.querySelector(\"{row}\").textContent.includes('100.00')")
    assert "<b>spring</b>" in page.text_content(row)  # the name as text, not markup
    assert page.eval_on_selector_all("main b", "els => els.length") == 0
    page.click(f"{row} a")
    page.wait_for_selector("body[data-loaded='1']")
    assert tiles(page)["sent"] == "12"
    page.goto(f"{server.url}/sites")
    page.wait_for_selector("body[data-loaded='1']")
    # every asset comes from fastmta itself: the pages work offline (no CDN)
    assert urls and all(u.startswith(server.url) for u in urls), urls
    assert any(u.endswith("/static/vendor/uPlot.iife.min.js") for u in urls)
    assert page.errors == []
