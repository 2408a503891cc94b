"""``GET /api/v1/egress``: the sources, their IP warm-up per provider and what each
(site, source) learned -- the document of ``fastmta egress status --json``, computed by
the same pure function (``fastmta.egress.status``) from the spool's egress records."""

from __future__ import annotations

import asyncio
import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from fastmta.egress.status import egress_status
from fastmta.http.deliveries import ctx_of
from fastmta.http.errors import check_query


def egress_doc(ctx) -> dict:
    """The status document at this moment (blocking: call it in a thread)."""
    return egress_status(ctx.cfg, ctx.spool.egress_items(), time.time())


async def egress(request: Request) -> Response:
    """GET /api/v1/egress: each source's day, caps, used today / this hour per provider,
    throttle and block signals, the ramp's next action; the learned per-site state."""
    check_query(request, {"source"})
    ctx = ctx_of(request)
    doc = await asyncio.to_thread(egress_doc, ctx)
    want = request.query_params.get("source", "")
    if want:
        doc["sources"] = [s for s in doc["sources"] if s["name"] == want]
        doc["learned"] = [r for r in doc["learned"] if r["source"] == want]
    return JSONResponse(doc)
