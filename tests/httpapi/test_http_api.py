"""The HTTP API against a real server on loopback, a real spool and the simulated
internet: every endpoint, with its bad inputs."""

from __future__ import annotations

import json
import os

import httpx
import pytest
from http_helpers import MESSAGE, TOKEN, cli_report, csv_text, parse_sse, upload, wait_for
from ops_helpers import domains_of, recipients

from fastmta import WorkerPool
from fastmta.http.app import routes
from fastmta.http.auth import Policy
from fastmta.ops.report import build_report

pytestmark = pytest.mark.timeout(120)


def _drafts_on_disk(spool_dir: str) -> list[str]:
    d = os.path.join(spool_dir, "http-drafts")
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


def test_access_rules(client, admin, server):
    assert client.get("/api/v1/deliveries").status_code == 200  # loopback: reads open
    r = client.post("/api/v1/admin/suspend", json={"site": "x"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "token_required"
    r = client.post("/api/v1/admin/suspend", json={"site": "x"},
                    headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "bad_token"
    # a token in the query is for EventSource GETs only, never for writes
    r = client.post(f"/api/v1/admin/suspend?access_token={TOKEN}", json={"site": "x"})
    assert r.status_code == 401
    # DNS rebinding: a page served as evil.example that resolves to 127.0.0.1
    r = client.get("/api/v1/deliveries", headers={"Host": "evil.example:8025"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "bad_host"
    # no CORS: nothing tells a browser that another origin may read the answers
    r = client.get("/api/v1/deliveries", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in r.headers
    r = client.options("/api/v1/deliveries", headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
    assert r.status_code in (401, 405) and "access-control-allow-origin" not in r.headers
    page = client.get("/")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert admin.post("/api/v1/admin/suspend", json={"site": "x"}).status_code == 200


def test_policy_off_loopback_needs_a_token_for_everything():
    with pytest.raises(ValueError):
        Policy("0.0.0.0", "")
    p = Policy("192.0.2.1", "s3cret")
    assert p.check("GET", "192.0.2.1:8025", "")[1] == "token_required"
    assert p.check("GET", "192.0.2.1:8025", "Bearer s3cret") is None
    assert p.check("GET", "192.0.2.1:8025", "", "s3cret") is None  # EventSource
    assert p.check("POST", "x", "", "s3cret")[1] == "token_required"
    lo = Policy("127.0.0.1", "t")
    assert lo.check("GET", "localhost:1", "") is None
    assert lo.check("GET", "[::1]:1", "") is None
    assert lo.check("DELETE", "127.0.0.1:1", "Bearer t") is None


def test_create_confirm_send_report(cfg, sim, world, spool_dir, admin, client):
    rows = recipients(world, 30, ["fast", "unknownusers"], prefix="a-")
    body = csv_text(rows) + csv_text(rows[:2]).split("\n", 1)[1]  # 2 duplicates
    r = upload(admin, body, name="spring", validity="1h")
    assert r.status_code == 201, r.text
    d = r.json()
    a = d["analysis"]
    assert a["recipients"] == 32 and a["to_deliver"] == 30 and a["excluded"]["double"] == 2
    assert [x["line"] for x in a["exclusions"]] == [32, 33]
    assert client.get("/api/v1/drafts").json()["items"][0]["draft_id"] == d["draft_id"]
    assert client.get("/api/v1/deliveries").json()["items"] == []  # nothing injected yet
    r = admin.post(f"/api/v1/drafts/{d['draft_id']}/confirm")
    assert r.status_code == 201, r.text
    did = r.json()["delivery_id"]
    again = admin.post(f"/api/v1/drafts/{d['draft_id']}/confirm")
    assert again.status_code == 409 and again.json()["error"]["delivery_id"] == did
    lst = client.get("/api/v1/deliveries").json()["items"]
    assert [x["delivery_id"] for x in lst] == [did] and lst[0]["name"] == "spring"
    assert lst[0]["pending"] == 30
    with WorkerPool(cfg, spool=spool_dir) as pool:
        pool.delivery(did).wait(timeout_s=60)
    rep = client.get(f"/api/v1/deliveries/{did}/report").json()
    assert rep == cli_report(spool_dir, did)
    assert rep["sent"] + rep["failed"] == 30 and rep["sent"] > 0
    one = client.get(f"/api/v1/deliveries/{did}").json()
    assert one["state"] == "done" and one["progress_pct"] == 100.0
    assert client.get("/api/v1/deliveries/999/report").status_code == 404
    assert client.get("/api/v1/deliveries/abc/report").status_code == 404


def test_bad_uploads_create_nothing(admin, client, spool_dir, server):
    # a CSV line with too many columns: refused with its line number
    r = upload(admin, "email,name\na@d0.fast.test,x\nb@d1.fast.test,y,z,w\n")
    assert r.status_code == 422
    e = r.json()["error"]
    assert e["code"] == "invalid_recipients" and e["line"] == 3
    assert e["errors"][0]["reason"] == "malformed_line"
    r = upload(admin, "email,name\na@d0.fast.test,x\nnot an address,y\n")
    assert r.status_code == 422 and r.json()["error"]["line"] == 3
    assert r.json()["error"]["errors"][0]["reason"] == "unqualified_address"
    r = upload(admin, "name\nx\n")  # no email column
    assert r.status_code == 422 and r.json()["error"]["code"] == "bad_recipients_file"
    r = upload(admin, '{"email": "a@d0.fast.test"}\n{"email": \n', filename="r.jsonl")
    assert r.status_code == 422 and r.json()["error"]["line"] == 2
    r = upload(admin, "email\na@d0.fast.test\n", colour="blue")
    assert r.status_code == 400 and r.json()["error"]["code"] == "unknown_field"
    r = upload(admin, "email\na@d0.fast.test\n", message="no headers at all")
    assert r.status_code == 422
    r = upload(admin, "email\na@d0.fast.test\n", validity="9d")
    assert r.status_code == 422 and "validity" in r.json()["error"]["message"]
    r = upload(admin, "email\na@d0.fast.test\n", validity="soon")
    assert r.status_code == 400
    r = upload(admin, "email\na@d0.fast.test\n", pool="warmup-1")
    assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_pool"
    big = "email\n" + "".join(f"user{i}@d0.fast.test\n" for i in range(150_000))
    assert len(big) > 2 * 1024 * 1024
    r = upload(admin, big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "upload_too_large"
    r = admin.post("/api/v1/deliveries", json={"recipients": []})
    assert r.status_code == 415
    # nothing was created anywhere: no delivery, no draft, no temporary upload
    assert client.get("/api/v1/deliveries").json()["items"] == []
    assert _drafts_on_disk(spool_dir) == []
    # the same bad lines, skipped on request, with their line numbers in the analysis
    r = upload(admin, "email,name\na@d0.fast.test,x\nnot an address,y\n", on_invalid="exclude")
    assert r.status_code == 201
    assert r.json()["analysis"]["exclusions"][0]["line"] == 3
    draft = r.json()["draft_id"]
    assert client.get(f"/api/v1/drafts/{draft}").json()["analysis"]["to_deliver"] == 1
    assert admin.delete(f"/api/v1/drafts/{draft}").status_code == 200
    assert client.get(f"/api/v1/drafts/{draft}").status_code == 404
    assert client.get("/api/v1/drafts/../../etc").status_code == 404


def test_recipients_pages_filters_and_export(cfg, world, spool_dir, admin, client):
    rows = recipients(world, 120, ["fast", "unknownusers"], prefix="p-")
    r = upload(admin, csv_text(rows), confirm="true")
    assert r.status_code == 201, r.text
    did = r.json()["delivery_id"]
    with WorkerPool(cfg, spool=spool_dir) as pool:
        pool.delivery(did).wait(timeout_s=60)
    seen, cursor, pages = [], 0, 0
    while cursor is not None:
        p = client.get(f"/api/v1/deliveries/{did}/recipients",
                       params={"limit": 25, "cursor": cursor}).json()
        seen += [x["rcpt_id"] for x in p["items"]]
        cursor = p["next_cursor"]
        pages += 1
    assert seen == sorted(set(seen)) and len(seen) == 120 and pages == 5
    rep = build_report(pool.spool, did)
    failed = client.get(f"/api/v1/deliveries/{did}/recipients",
                        params={"status": "failed", "limit": 1000}).json()
    assert failed["count"] == rep["failed"] > 0 and failed["complete"]
    assert {x["reason"] for x in failed["items"]} == {"user_unknown"}
    assert all(x["reply"] for x in failed["items"])
    dom = domains_of(world, "fast")[0]
    by_dom = client.get(f"/api/v1/deliveries/{did}/recipients",
                        params={"domain": dom, "limit": 1000}).json()
    assert by_dom["count"] == rep["by_domain"][dom]["to_deliver"]
    q = client.get(f"/api/v1/deliveries/{did}/recipients", params={"q": "p-7"}).json()
    assert {x["email"].split("@")[0] for x in q["items"]} == {"p-7", "p-70", "p-71", "p-72",
                                                              "p-73", "p-74", "p-75", "p-76",
                                                              "p-77", "p-78", "p-79"}
    # a bounded scan: a filter that matches nothing answers at once with a cursor
    from fastmta.http.recipients_page import page

    p = page(pool.spool, did, status="ignored", max_scan=50, budget_s=None)
    assert p["count"] == 0 and p["scanned"] == 50 and p["next_cursor"] == 50
    for bad in ({"status": "lost"}, {"limit": 0}, {"cursor": -1}, {"limti": 5}):
        assert client.get(f"/api/v1/deliveries/{did}/recipients", params=bad
                          ).status_code == 400
    csv_body = client.get(f"/api/v1/deliveries/{did}/export.csv")
    lines = csv_body.text.splitlines()
    assert csv_body.headers["content-type"].startswith("text/csv")
    assert lines[0].startswith("type,timeQueued") and len(lines) == 121
    assert sum(1 for x in lines if x.startswith("type,")) == 1
    j = client.get(f"/api/v1/deliveries/{did}/export.jsonl").text.splitlines()
    assert len(j) == 120 and json.loads(j[0])["jobId"] == did
    att = client.get(f"/api/v1/deliveries/{did}/export.csv", params={"attempts": "1"})
    assert len(att.text.splitlines()) - 1 == rep["attempts"]
    assert client.get(f"/api/v1/deliveries/{did}/export.xml").status_code == 404


def test_messages_endpoint(cfg, world, spool_dir, admin, client):
    dom = domains_of(world, "fast")[0]
    r = admin.post("/api/v1/messages", json={"to": f"one@{dom}", "message": MESSAGE,
                                             "fields": {"name": "Ann"}})
    assert r.status_code == 201, r.text
    did = r.json()["delivery_id"]
    with WorkerPool(cfg, spool=spool_dir) as pool:
        assert pool.delivery(did).wait(timeout_s=30)["sent"] == 1
    n = len(client.get("/api/v1/deliveries").json()["items"])
    for body, status, code in [
            ({"to": "not-an-address", "message": MESSAGE}, 422, "bad_address"),
            ({"to": f"a@{dom}", "message": MESSAGE, "colour": 1}, 400, "bad_request"),
            ({"to": f"a@{dom}"}, 400, "bad_request"),
            ({"to": [], "message": MESSAGE}, 400, "bad_request"),
            ({"to": f"a@{dom}", "message": "Subject: x\n\nno From"}, 422, None)]:
        r = admin.post("/api/v1/messages", json=body)
        assert r.status_code == status, (body, r.text)
        if code:
            assert r.json()["error"]["code"] == code
    r = admin.post("/api/v1/messages", content=b"{not json",
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert len(client.get("/api/v1/deliveries").json()["items"]) == n  # none half-created


def test_admin_endpoints(cfg, world, spool_dir, admin, client):
    r = admin.post("/api/v1/admin/suspend", json={"site": "mx1.slowpoke.sim.test",
                                                  "reason": "complaint", "for_s": 3600})
    assert r.status_code == 200 and r.json()["suspension"]["reason"] == "complaint"
    r = admin.post("/api/v1/admin/suspend", json={"provider": "gmail"})
    assert r.status_code == 200
    items = client.get("/api/v1/admin/suspensions").json()["items"]
    assert {(s["kind"], s["name"]) for s in items} == {("site", "mx1.slowpoke.sim.test"),
                                                       ("provider", "gmail")}
    assert {p["provider"]: p["suspension"] is not None
            for p in client.get("/api/v1/sites").json()["providers"]}["gmail"]
    assert admin.post("/api/v1/admin/resume", json={"provider": "gmail"}).status_code == 200
    r = admin.post("/api/v1/admin/resume", json={"provider": "gmail"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "admin_refused"
    for bad in ({}, {"site": "a", "provider": "b"}, {"site": "a", "sight": 1}, {"site": 3}):
        assert admin.post("/api/v1/admin/suspend", json=bad).status_code in (400, 409), bad
    assert admin.post("/api/v1/admin/suspend", json={"site": "a", "for_s": -1}
                      ).status_code == 400
    rows = recipients(world, 20, ["fast"], prefix="c-")
    did = upload(admin, csv_text(rows), confirm="1").json()["delivery_id"]
    r = admin.post(f"/api/v1/deliveries/{did}/suspend", json={"reason": "hold"})
    assert r.json()["state"] == "paused"
    assert admin.post(f"/api/v1/deliveries/{did}/resume").json()["state"] == "active"
    assert admin.post(f"/api/v1/deliveries/{did}/resume").status_code == 409
    r = admin.post("/api/v1/admin/cancel", json={"delivery": did})
    assert r.status_code == 200 and r.json()["count"] == 20
    assert client.get(f"/api/v1/deliveries/{did}/report").json()["by_reason"] == {
        "delivery_canceled": 20}
    assert admin.post(f"/api/v1/deliveries/{did}/explode").status_code == 404
    assert admin.post("/api/v1/deliveries/4242/cancel").status_code == 404
    r = admin.post("/api/v1/admin/bounce-site", json={"site": "mx1.slowpoke.sim.test"})
    assert r.status_code == 200 and r.json()["count"] == 0
    assert client.get("/api/v1/status").status_code == 200


def test_sse_resumes_from_a_sequence_number_without_gaps(cfg, world, spool_dir, admin,
                                                        server):
    rows = recipients(world, 40, ["fast", "unknownusers"], prefix="e-")
    did = upload(admin, csv_text(rows), confirm="1").json()["delivery_id"]
    with WorkerPool(cfg, spool=spool_dir) as pool:
        pool.delivery(did).wait(timeout_s=60)
        last = pool.spool.last_event_seq()
    assert last > 43  # reception + state + 40 outcomes (+ retries)

    def read(params=None, headers=None, n=20):
        with httpx.Client(base_url=server.url, timeout=30) as c, c.stream(
                "GET", "/api/v1/events", params={**(params or {}), "limit": n},
                headers=headers or {}) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            return parse_sse(r.iter_lines())

    got = read({"since": 0})
    assert [int(f["id"]) for f in got] == list(range(1, 21))
    resumed = read({"since": got[-1]["id"]})  # a reconnect with the last id seen
    assert [int(f["id"]) for f in resumed] == list(range(21, 41))
    via_header = read(headers={"Last-Event-ID": resumed[-1]["id"]}, n=3)
    assert [int(f["id"]) for f in via_header] == list(range(41, 44))
    first = json.loads(got[0]["data"])
    assert first["seq"] == 1 and got[0]["event"] == first["type"]
    n_bounces = pool.spool.kpis(did).get("failed", 0)
    assert n_bounces > 0
    bounces = read({"since": 0, "types": "bounce", "delivery": did}, n=n_bounces)
    assert {f["event"] for f in bounces} == {"bounce"}
    assert all(json.loads(f["data"])["delivery_id"] == did for f in bounces)
    # summary mode: one tick saying how far the log moved since the cursor
    with httpx.Client(base_url=server.url, timeout=30) as c, c.stream(
            "GET", "/api/v1/events", params={"since": 0, "mode": "summary"}) as r:
        lines = r.iter_lines()
        frames = parse_sse(next(lines) for _ in range(7))
    b = json.loads(frames[0]["data"])
    end = server.ctx.spool.last_event_seq()  # (stopping the pool logged its own events)
    assert b == {"seq": end, "from_seq": 0, "new": end} and frames[0]["id"] == str(end)
    with httpx.Client(base_url=server.url, timeout=30) as c:
        assert c.get("/api/v1/events", params={"types": "nonsense"}).status_code == 400
        assert c.get("/api/v1/events", params={"since": "x"}).status_code == 400


def test_openapi_lists_every_route(client):
    spec = client.get("/api/v1/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    paths = set(spec["paths"])
    for r in routes():
        path = getattr(r, "path", "")
        if path.startswith("/api/"):
            assert path.replace("{did}", "{did}") in paths, path
    assert "MessageIn" in spec["components"]["schemas"]


def test_sites_endpoint_during_a_send(cfg, world, spool_dir, admin, client):
    rows = recipients(world, 40, ["fast", "slowpoke"], prefix="s-")
    did = upload(admin, csv_text(rows), confirm="1").json()["delivery_id"]
    with WorkerPool(cfg, spool=spool_dir) as pool:
        pool.delivery(did).wait(timeout_s=60)
        def snapshot():  # the engine's status file, rewritten every status_interval_s
            got = [s for s in client.get("/api/v1/sites").json()["sites"] if s["sent"]]
            return got if sum(s["sent"] for s in got) == 40 else None

        sites = wait_for(snapshot, timeout=30)
    names = {s["site"] for s in sites}
    assert "mx1.slowpoke.sim.test" in names and "mx1.fast.sim.test" in names
    assert all(s["limit"] >= 1 for s in sites)
