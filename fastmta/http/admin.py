"""Admin, sites and single messages over HTTP: the same ``fastmta.ops.admin.Admin`` calls
as ``fastmta suspend/resume/cancel/admin``, the pool's status snapshot, and
``WorkerPool.send`` for one transactional message."""

from __future__ import annotations

import asyncio
import time

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from fastmta.delivery.addresses import check_address
from fastmta.delivery.injection import check_delivery_inputs
from fastmta.http.deliveries import ctx_of
from fastmta.http.errors import ApiError, check_query
from fastmta.ops.admin import read_status


class TargetIn(msgspec.Struct, forbid_unknown_fields=True):
    """Exactly one of ``site``, ``provider`` or ``delivery``."""

    site: str | None = None
    provider: str | None = None
    delivery: int | None = None
    reason: str = ""
    for_s: float | None = None  # suspend only: lifts by itself after this many seconds


class BounceIn(msgspec.Struct, forbid_unknown_fields=True):
    site: str
    reason: str = "bounced_by_admin"


class MessageIn(msgspec.Struct, forbid_unknown_fields=True):
    """A single message: ``to`` (one address or a list), the RFC 5322 ``message`` (a
    template: ``{{field}}`` placeholders are filled from ``fields``)."""

    to: str | list[str]
    message: str
    mail_from: str = ""
    fields: dict[str, str] = {}
    validity_s: float | None = None


async def _body(request: Request, typ):
    raw = await request.body()
    if not raw:
        raise ApiError(400, "bad_request", "a JSON body is required")
    if "json" not in request.headers.get("content-type", "application/json"):
        raise ApiError(415, "unsupported_media_type", "send application/json")
    return msgspec.json.decode(raw, type=typ)


async def suspend(request: Request) -> Response:
    """POST /api/v1/admin/suspend {site|provider|delivery, reason, for_s}."""
    check_query(request, set())
    ctx = ctx_of(request)
    b = await _body(request, TargetIn)
    if b.for_s is not None and not 0 < b.for_s <= 7 * 86400:
        raise ApiError(400, "bad_parameter", "for_s must be in (0, 604800]")
    s = await asyncio.to_thread(ctx.admin.suspend, site=b.site, provider=b.provider,
                                delivery=b.delivery, reason=b.reason, duration_s=b.for_s,
                                user="http")
    return JSONResponse({"action": "suspend",
                         "suspension": msgspec.to_builtins(s) if s is not None else None,
                         "target": _target(b)})


async def resume(request: Request) -> Response:
    check_query(request, set())
    ctx = ctx_of(request)
    b = await _body(request, TargetIn)
    await asyncio.to_thread(ctx.admin.resume, site=b.site, provider=b.provider,
                            delivery=b.delivery, user="http")
    return JSONResponse({"action": "resume", "target": _target(b)})


async def cancel(request: Request) -> Response:
    check_query(request, set())
    ctx = ctx_of(request)
    b = await _body(request, TargetIn)
    if b.delivery is None or b.site or b.provider:
        raise ApiError(400, "bad_request", "cancel takes a delivery")
    ctx.spool.delivery(b.delivery)  # 404 for an unknown delivery
    n = await asyncio.to_thread(ctx.admin.cancel, b.delivery, b.reason or "delivery_canceled",
                                "http")
    return JSONResponse({"action": "cancel", "target": _target(b), "count": n})


async def bounce_site(request: Request) -> Response:
    check_query(request, set())
    ctx = ctx_of(request)
    b = await _body(request, BounceIn)
    n = await ctx.admin.abounce_site(b.site, b.reason, "http")
    return JSONResponse({"action": "bounce_site", "target": f"site:{b.site}", "count": n})


def _target(b: TargetIn) -> str:
    if b.site:
        return f"site:{b.site}"
    if b.provider:
        return f"provider:{b.provider}"
    return f"delivery:{b.delivery}"


async def suspensions(request: Request) -> Response:
    check_query(request, set())
    ctx = ctx_of(request)
    return JSONResponse({"items": [msgspec.to_builtins(s) for s in ctx.admin.suspensions()]})


async def status(request: Request) -> Response:
    """GET /api/v1/status: the running pool's status snapshot ({} when none ran)."""
    check_query(request, set())
    return JSONResponse(read_status(ctx_of(request).spool_path))


async def sites(request: Request) -> Response:
    """GET /api/v1/sites: live per-site limits, rates, throttles, suspensions (from the
    pool's snapshot) and the operator suspensions (from the spool)."""
    check_query(request, {"provider", "q"})
    ctx = ctx_of(request)
    st = read_status(ctx.spool_path)
    now = int(time.time() * 1000)
    susp = {(s.kind, s.name): msgspec.to_builtins(s) for s in ctx.admin.suspensions()}
    prov_q = request.query_params.get("provider", "")
    q = request.query_params.get("q", "").lower()
    rows = []
    for name, r in sorted(st.get("sites", {}).items()):
        if prov_q and r.get("provider") != prov_q:
            continue
        if q and q not in name.lower() and q not in str(r.get("label", "")).lower():
            continue
        rows.append({"site": name, "label": r.get("label", name),
                     "provider": r.get("provider", ""), "connections": r.get("active", 0),
                     "limit": r.get("limit", 0), "rate": r.get("rate", 0.0),
                     "queued": r.get("queued", 0), "sent": r.get("sent", 0),
                     "failed": r.get("failed", 0), "soft": r.get("soft", 0),
                     "deferred": r.get("deferred", 0), "throttles": r.get("throttles", 0),
                     "suspended": bool(r.get("suspended")),
                     "admin_suspended": bool(r.get("admin_suspended"))
                     or ("site", name) in susp,
                     "operator_suspension": susp.get(("site", name)),
                     "last_error": r.get("last_error"), "worker": r.get("worker"),
                     "queue_ms_avg": r.get("queue_ms_avg", 0)})
    providers = sorted({p.name for p in ctx.cfg.providers}
                       | {r["provider"] for r in rows if r["provider"]}
                       | {name for kind, name in susp if kind == "provider"})
    return JSONResponse({
        "ts_ms": st.get("ts_ms", 0), "age_s": round((now - st["ts_ms"]) / 1000, 1)
        if st.get("ts_ms") else None, "engine_running": bool(st) and now - st.get(
            "ts_ms", 0) < 10_000, "sites": rows,
        "providers": [{"provider": p, "suspension": susp.get(("provider", p))}
                      for p in providers],
        "suspensions": list(susp.values()), "queues": st.get("queues", {}),
        "workers": st.get("workers", [])})


async def message(request: Request) -> Response:
    """POST /api/v1/messages: one transactional message (a delivery of its own)."""
    check_query(request, set())
    ctx = ctx_of(request)
    b = await _body(request, MessageIn)
    to = [b.to] if isinstance(b.to, str) else b.to
    if not 1 <= len(to) <= 100:
        raise ApiError(400, "bad_request", "'to' takes 1 to 100 addresses")
    for i, addr in enumerate(to):
        _n, _u, err = check_address(addr)
        if err:
            raise ApiError(422, "bad_address", f"to[{i}] {addr!r}: {err}", index=i)
    body = b.message.encode("utf-8")
    check_delivery_inputs(body, mail_from=b.mail_from, validity_s=b.validity_s,
                          cfg=ctx.cfg.delivery)
    h = await asyncio.to_thread(ctx.pool.send, to, body, mail_from=b.mail_from,
                                fields=b.fields, validity_s=b.validity_s)
    a = h.analysis
    return JSONResponse({"delivery_id": h.id, "to_deliver": a.to_deliver,
                         "excluded": {k: v for k, v in a.excluded.items() if v},
                         "report": f"/api/v1/deliveries/{h.id}/report"}, status_code=201)
