"""Deliveries over HTTP: create (streamed upload -> draft + analysis), confirm, list, one
delivery, its report (``fastmta report --json``), recipients, the accounting export, and
the delivery admin actions."""

from __future__ import annotations

import asyncio
import io
import shutil
from collections.abc import AsyncIterator

import msgspec
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from fastmta.engine import entry as engine
from fastmta.engine.retry import parse_duration
from fastmta.http.context import Context
from fastmta.http.drafts import analyse_draft
from fastmta.http.errors import ApiError, check_query, query_int
from fastmta.http.recipients_page import STATUSES, page
from fastmta.ops.report import (
    LOG_COLUMNS,
    attempt_rows,
    build_report,
    build_status,
    fmt_time,
    log_rows,
    write_log,
)
from fastmta.spool.errors import DeliveryNotFound

CREATE_FIELDS = {"recipients", "message", "from", "mail_from", "validity", "name", "pool",
                 "format", "on_invalid", "confirm"}
MAX_MESSAGE_FIELD = 64 * 1024 * 1024


def ctx_of(request: Request) -> Context:
    return request.app.state.ctx


def did_of(request: Request) -> int:
    raw = request.path_params["did"]
    try:
        return int(raw)
    except ValueError:
        raise ApiError(404, "not_found", f"no delivery {raw!r}") from None


def _limited(receive, limit: int):
    seen = 0

    async def wrapped():
        nonlocal seen
        msg = await receive()
        if msg.get("type") == "http.request":
            seen += len(msg.get("body", b""))
            if seen > limit:
                raise ApiError(413, "upload_too_large",
                               f"upload above the limit of {limit:,} bytes (--max-upload-mb)",
                               limit=limit)
        return msg

    return wrapped


async def _read_part(v) -> bytes:
    if isinstance(v, UploadFile):
        return await v.read()
    return str(v).encode("utf-8")


async def create(request: Request) -> Response:
    """POST /api/v1/deliveries (multipart): recipients file + message -> draft + analysis."""
    ctx = ctx_of(request)
    check_query(request, set())
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        raise ApiError(415, "unsupported_media_type",
                       "send multipart/form-data with a 'recipients' file and a 'message'")
    clen = request.headers.get("content-length")
    if clen and clen.isdigit() and int(clen) > ctx.max_upload_bytes:
        raise ApiError(413, "upload_too_large", f"upload of {int(clen):,} bytes above the "
                       f"limit of {ctx.max_upload_bytes:,} bytes", limit=ctx.max_upload_bytes)
    req = Request(request.scope, _limited(request.receive, ctx.max_upload_bytes))
    draft_id, tmp = ctx.drafts.new_dir()
    try:
        async with req.form(max_files=2, max_fields=20, max_part_size=MAX_MESSAGE_FIELD) as form:
            unknown = sorted(set(form.keys()) - CREATE_FIELDS)
            if unknown:
                raise ApiError(400, "unknown_field", f"unknown form field(s) {unknown}; "
                               f"known: {sorted(CREATE_FIELDS)}", fields=unknown)
            rc = form.get("recipients")
            if rc is None or form.get("message") is None:
                raise ApiError(400, "missing_field", "'recipients' and 'message' are required")
            fmt = str(form.get("format") or "")
            fname = rc.filename if isinstance(rc, UploadFile) else ""
            if not fmt:
                fmt = "jsonl" if (fname or "").lower().endswith((".jsonl", ".ndjson")) else "csv"
            if fmt not in ("csv", "jsonl"):
                raise ApiError(400, "bad_parameter", f"format must be csv or jsonl, not {fmt!r}")
            rpath = tmp / f"recipients.{fmt}"
            if isinstance(rc, UploadFile):
                with open(rpath, "wb") as out:
                    await asyncio.to_thread(shutil.copyfileobj, rc.file, out, 1 << 20)
            else:
                rpath.write_text(str(rc))
            message = await _read_part(form["message"])
            params = {k: str(form.get(k) or "") for k in CREATE_FIELDS - {"recipients",
                                                                           "message"}}
    except BaseException:
        ctx.drafts.discard_tmp(tmp)
        raise
    try:
        if params["pool"]:  # an unknown egress pool: refused before anything is created
            _check_pool(ctx, params["pool"])
        if params["on_invalid"] not in ("", "reject", "exclude"):
            raise ApiError(400, "bad_parameter", "on_invalid must be reject or exclude")
        validity_s = None
        if params["validity"]:
            try:
                validity_s = parse_duration(params["validity"])
            except ValueError as exc:
                raise ApiError(400, "bad_parameter", f"validity: {exc}") from None
        mail_from = params["from"] or params["mail_from"]
        (tmp / "message.eml").write_bytes(message)
        analysis = await asyncio.to_thread(
            analyse_draft, ctx.spool, ctx.cfg, rpath, fmt, message, mail_from=mail_from,
            validity_s=validity_s, on_invalid=params["on_invalid"])
        meta = {"draft_id": draft_id, "format": fmt, "mail_from": mail_from,
                "validity_s": validity_s, "name": params["name"] or fname or "http",
                "pool": params["pool"],
                "filename": fname, "analysis": analysis}
        ctx.drafts.publish(draft_id, tmp, meta)
    except BaseException:
        ctx.drafts.discard_tmp(tmp)
        raise
    if params["confirm"] in ("1", "true", "yes"):
        return await _confirm(ctx, draft_id)
    return JSONResponse({**meta, "confirm": f"/api/v1/drafts/{draft_id}/confirm"},
                        status_code=201)


def _check_pool(ctx: Context, pool: str) -> None:
    from fastmta.egress.model import build_model
    from fastmta.errors import ConfigError

    try:
        build_model(ctx.cfg).pool_for("", pool)
    except ConfigError as exc:
        raise ApiError(422, "unknown_pool", str(exc), pool=pool) from None


async def _confirm(ctx: Context, draft_id: str) -> Response:
    async with ctx.lock(f"draft/{draft_id}"):
        meta = ctx.drafts.load(draft_id)
        p = ctx.drafts.path(draft_id)
        body = (p / "message.eml").read_bytes()

        def go():
            return asyncio.run(engine.inject_file(
                ctx.spool, ctx.cfg, p / f"recipients.{meta['format']}", body,
                mail_from=meta["mail_from"], validity_s=meta["validity_s"],
                name=meta["name"], fmt=meta["format"], pool=meta.get("pool", "")))

        inj = await asyncio.to_thread(go)
        ctx.drafts.finish(draft_id, inj.delivery_id)
    out = msgspec.to_builtins(inj)
    return JSONResponse({"delivery_id": inj.delivery_id, "draft_id": draft_id,
                         "analysis": out, "report": f"/api/v1/deliveries/{inj.delivery_id}"
                         "/report"}, status_code=201)


async def confirm(request: Request) -> Response:
    """POST /api/v1/drafts/{draft}/confirm: inject the draft (sending starts when an
    engine runs on the spool)."""
    check_query(request, set())
    return await _confirm(ctx_of(request), request.path_params["draft"])


async def drafts(request: Request) -> Response:
    check_query(request, set())
    return JSONResponse({"items": ctx_of(request).drafts.list()})


async def draft(request: Request) -> Response:
    check_query(request, set())
    ctx = ctx_of(request)
    if request.method == "DELETE":
        ctx.drafts.delete(request.path_params["draft"])
        return JSONResponse({"deleted": request.path_params["draft"]})
    return JSONResponse(ctx.drafts.load(request.path_params["draft"]))


async def list_deliveries(request: Request) -> Response:
    """GET /api/v1/deliveries: newest first, ``limit`` and ``before`` (an id) paginate."""
    check_query(request, {"limit", "before", "state"})
    ctx = ctx_of(request)
    limit = query_int(request, "limit", 100, 1, 1000)
    before = query_int(request, "before", 0, 0)
    state = request.query_params.get("state", "")

    def rows():
        out = []
        for d in sorted(ctx.spool.deliveries(), key=lambda d: -d.id):
            if before and d.id >= before:
                continue
            s = build_status(ctx.spool, d.id)
            if state and s["state"] != state:
                continue
            out.append({**s, "name": d.name, "created": fmt_time(d.created_ms)})
            if len(out) > limit:
                break
        return out

    items = await asyncio.to_thread(rows)
    more = len(items) > limit
    items = items[:limit]
    return JSONResponse({"items": items,
                         "next_before": items[-1]["delivery_id"] if more else None})


async def one(request: Request) -> Response:
    check_query(request, set())
    ctx = ctx_of(request)
    did = did_of(request)
    s = await asyncio.to_thread(build_status, ctx.spool, did)
    d = ctx.spool.delivery(did)
    return JSONResponse({**s, "name": d.name, "mail_from": d.mail_from, "fields": d.fields,
                         "source": d.source})


async def report(request: Request) -> Response:
    """GET /api/v1/deliveries/{id}/report: exactly ``fastmta report --json``."""
    check_query(request, set())
    ctx = ctx_of(request)
    r = await asyncio.to_thread(build_report, ctx.spool, did_of(request))
    return Response(msgspec.json.encode(r), media_type="application/json")


async def timeline(request: Request) -> Response:
    """GET /api/v1/deliveries/{id}/timeline?step=S: the delivery's past for the charts
    (outcomes per interval, status over time), from the spool's event log."""
    check_query(request, {"step"})
    ctx = ctx_of(request)
    step = query_int(request, "step", 0, 0, 86400)
    res = await asyncio.to_thread(ctx.timelines.of, did_of(request), step)
    return Response(msgspec.json.encode(res), media_type="application/json")


async def recipients(request: Request) -> Response:
    """GET /api/v1/deliveries/{id}/recipients: filtered page + cursor."""
    check_query(request, {"status", "reason", "domain", "q", "cursor", "limit"})
    ctx = ctx_of(request)
    qp = request.query_params
    status = qp.get("status", "")
    if status and status not in STATUSES:
        raise ApiError(400, "bad_parameter", f"status must be one of {sorted(STATUSES)}",
                       parameter="status")
    did = did_of(request)
    kw = {"status": status, "reason": qp.get("reason", ""), "domain": qp.get("domain", ""),
          "q": qp.get("q", ""), "cursor": query_int(request, "cursor", 0, 0, 2**32 - 1),
          "limit": query_int(request, "limit", 50, 1, 1000)}

    def go():
        try:
            ctx.spool.delivery(did)
        except DeliveryNotFound:
            ctx.rcpt_indexes.forget(did)  # purged: its index goes too
            raise
        idx = None  # a big delivery and an indexable filter: the recipients index
        if (kw["status"] or kw["reason"] or kw["domain"]) and ctx.rcpt_indexes.wanted(did):
            idx = ctx.rcpt_indexes.get(did)
        return page(ctx.spool, did, index=idx, **kw)

    res = await asyncio.to_thread(go)
    return Response(msgspec.json.encode(res), media_type="application/json")


async def export(request: Request) -> Response:
    """GET /api/v1/deliveries/{id}/export.csv|jsonl: the accounting log, streamed."""
    check_query(request, {"attempts"})
    ctx = ctx_of(request)
    did = did_of(request)
    ctx.spool.delivery(did)
    fmt = request.path_params["fmt"]
    if fmt not in ("csv", "jsonl"):
        raise ApiError(404, "not_found", f"no export format {fmt!r} (csv or jsonl)")
    attempts = request.query_params.get("attempts", "") in ("1", "true", "yes")

    async def body() -> AsyncIterator[bytes]:
        rows = attempt_rows(ctx.spool, did) if attempts else log_rows(ctx.spool, did)

        def chunk() -> bytes:
            buf = io.StringIO()
            batch = []
            for r in rows:
                batch.append(r)
                if len(batch) >= 2000:
                    break
            if not batch:
                return b""
            write_log(iter(batch), buf, fmt)
            return buf.getvalue().encode()

        first = True
        while True:
            data = await asyncio.to_thread(chunk)
            if not data:
                if first and fmt == "csv":
                    yield (",".join(LOG_COLUMNS) + "\n").encode()
                return
            if not first and fmt == "csv":  # one header for the whole file
                data = data.split(b"\n", 1)[1]
            first = False
            yield data

    media = "text/csv; charset=utf-8" if fmt == "csv" else "application/x-ndjson"
    return StreamingResponse(body(), media_type=media, headers={
        "Content-Disposition": f'attachment; filename="delivery-{did}.{fmt}"'})


async def action(request: Request) -> Response:
    """POST /api/v1/deliveries/{id}/suspend|resume|cancel (JSON body: optional reason)."""
    check_query(request, set())
    ctx = ctx_of(request)
    did = did_of(request)
    ctx.spool.delivery(did)  # 404 for an unknown delivery
    body = await request.body()
    reason = ""
    if body:
        reason = msgspec.json.decode(body, type=ReasonIn).reason
    what = request.path_params["action"]
    user = "http"
    if what == "suspend":
        await asyncio.to_thread(ctx.admin.suspend, delivery=did, reason=reason, user=user)
        n = 0
    elif what == "resume":
        await asyncio.to_thread(ctx.admin.resume, delivery=did, user=user)
        n = 0
    elif what == "cancel":
        n = await asyncio.to_thread(ctx.admin.cancel, did, reason or "delivery_canceled",
                                    user)
    else:
        raise ApiError(404, "not_found", f"no delivery action {what!r}")
    return JSONResponse({"delivery_id": did, "action": what, "count": n,
                         "state": ctx.spool.delivery(did).state})


class ReasonIn(msgspec.Struct, forbid_unknown_fields=True):
    reason: str = ""
