"""``GET /api/v1/events``: the spool's event log as Server-Sent Events, resumable.

Each event is sent as ``id: <seq>``, ``event: <type>``, ``data: <JSON of fastmta.ops.events>``.
Resume with ``?since=SEQ`` (or the ``Last-Event-ID`` header a browser's ``EventSource``
sends by itself after a reconnect): the stream continues with the first event after SEQ,
so a consumer that remembers the last id it processed sees every event exactly once.
Without either, the stream starts at the end of the log (only new events).

``mode=summary`` (the dashboard's): at most one ``batch`` message per ``interval_s`` when
the log moved, ``{"seq", "from_seq", "new": n}``, read from the log's last sequence
number only (no event is decoded): a browser following a 10,000 msgs/s send gets one
small message a second and refreshes the report, which is where its numbers come from.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import msgspec
from starlette.requests import Request
from starlette.responses import StreamingResponse

from fastmta.http.deliveries import ctx_of
from fastmta.http.errors import ApiError, check_query, query_int
from fastmta.ops import events as E

HEARTBEAT_S = 15.0
_ENC = msgspec.json.Encoder()


def frame(seq: int, typ: str, data: bytes) -> bytes:
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, typ.encode(), data)


async def events(request: Request) -> StreamingResponse:
    check_query(request, {"since", "types", "delivery", "mode", "interval_s", "limit"})
    ctx = ctx_of(request)
    qp = request.query_params
    last_id = request.headers.get("last-event-id", "")
    if last_id.isdigit():
        since = int(last_id)
    elif "since" in qp:
        since = query_int(request, "since", 0, 0)
    else:
        since = ctx.spool.last_event_seq()
    types = [t for t in qp.get("types", "").split(",") if t] or None
    delivery = query_int(request, "delivery", 0, 0) or None
    mode = qp.get("mode", "events")
    if mode not in ("events", "summary"):
        raise ApiError(400, "bad_parameter", "mode must be events or summary")
    limit = query_int(request, "limit", 0, 0)  # stop after this many events (0 = never)
    interval = float(qp.get("interval_s", "1") or 1) if mode == "summary" else 0.0
    try:
        reader = E.EventReader(ctx.spool, since, types=types, delivery_id=delivery,
                               batch=2000)
    except ValueError as exc:
        raise ApiError(400, "bad_parameter", str(exc)) from None
    stopping = ctx.stopping

    cursor = [since]

    def tick() -> list:
        """Summary mode: the new end of the log, if it moved (nothing decoded)."""
        end = ctx.spool.last_event_seq()
        if end <= cursor[0]:
            return []
        got = [(cursor[0], end)]
        cursor[0] = end
        return got

    async def stream() -> AsyncIterator[bytes]:
        sent = 0
        beat = time.monotonic()
        yield b"retry: 2000\n: fastmta events from seq %d\n\n" % since
        while stopping is None or not stopping.is_set():
            got = tick() if mode == "summary" else await asyncio.to_thread(reader.poll)
            if got:
                beat = time.monotonic()
                if mode == "summary":
                    first, end = got[0]
                    yield frame(end, "batch", _ENC.encode(
                        {"seq": end, "from_seq": first, "new": end - first}))
                else:
                    out = []
                    for ev in got:
                        out.append(frame(ev.seq, E.event_type(ev), _ENC.encode(ev)))
                        sent += 1
                        if limit and sent >= limit:
                            break
                    yield b"".join(out)
                    if limit and sent >= limit:
                        return
            elif time.monotonic() - beat > HEARTBEAT_S:
                beat = time.monotonic()
                yield b": ping\n\n"
            if not got or mode == "summary":
                await _wait(stopping, interval or ctx.sse_poll_s)

    return StreamingResponse(stream(), media_type="text/event-stream", headers={
        "Cache-Control": "no-store", "X-Accel-Buffering": "no"})


async def _wait(stopping: asyncio.Event | None, s: float) -> None:
    if stopping is None:
        await asyncio.sleep(s)
        return
    try:
        await asyncio.wait_for(stopping.wait(), s)
    except TimeoutError:
        pass
