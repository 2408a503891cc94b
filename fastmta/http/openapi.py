"""The OpenAPI 3.1 description served at ``/api/v1/openapi.json`` (bodies from the msgspec
structs, so the schema and the decoder cannot disagree)."""

from __future__ import annotations

from typing import Any

import msgspec

from fastmta.http.admin import BounceIn, MessageIn, TargetIn
from fastmta.http.deliveries import ReasonIn

_ERR = {"description": "error", "content": {"application/json": {"schema": {
    "$ref": "#/components/schemas/Error"}}}}


def _q(name: str, desc: str, typ: str = "string") -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": desc,
            "schema": {"type": typ}}


def _p(name: str, typ: str = "integer") -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": typ}}


def _op(summary: str, *, params=(), body: str | None = None, ok: str = "200",
        content: str = "application/json", write: bool = False) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "parameters": list(params),
                          "responses": {ok: {"description": "ok", "content": {content: {}}},
                                        "4XX": _ERR}}
    if body:
        op["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{body}"}}}}
    if write:
        op["security"] = [{"bearer": []}]
    return op


_MULTIPART = {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["recipients", "message"], "properties": {
        "recipients": {"type": "string", "format": "binary",
                       "description": "CSV (header with an email column) or JSONL"},
        "message": {"type": "string", "format": "binary", "description": "RFC 5322 template"},
        "from": {"type": "string"}, "validity": {"type": "string", "example": "36h"},
        "name": {"type": "string"}, "pool": {"type": "string"},
        "format": {"enum": ["csv", "jsonl"]}, "on_invalid": {"enum": ["reject", "exclude"]},
        "confirm": {"type": "boolean"}}}}}}


def spec() -> dict[str, Any]:
    _s, comps = msgspec.json.schema_components([TargetIn, BounceIn, MessageIn, ReasonIn],
                                               ref_template="#/components/schemas/{name}")
    comps["Error"] = {"type": "object", "properties": {"error": {"type": "object",
                      "properties": {"code": {"type": "string"},
                                     "message": {"type": "string"},
                                     "line": {"type": "integer"}}}}}
    did = _p("did")
    create = _op("Upload recipients + message: a draft with its analysis (streamed)",
                 ok="201", write=True)
    create["requestBody"] = _MULTIPART
    paths = {
        "/api/v1/deliveries": {
            "get": _op("Deliveries, newest first", params=[
                _q("limit", "1..1000", "integer"), _q("before", "delivery id", "integer"),
                _q("state", "filter by state")]),
            "post": create},
        "/api/v1/drafts": {"get": _op("Drafts not yet confirmed")},
        "/api/v1/drafts/{draft}": {"get": _op("One draft", params=[_p("draft", "string")]),
                                   "delete": _op("Discard a draft", write=True,
                                                 params=[_p("draft", "string")])},
        "/api/v1/drafts/{draft}/confirm": {"post": _op("Inject the draft", ok="201",
                                                       write=True,
                                                       params=[_p("draft", "string")])},
        "/api/v1/deliveries/{did}": {"get": _op("Status of one delivery", params=[did])},
        "/api/v1/deliveries/{did}/report": {"get": _op(
            "The report (same JSON as `fastmta report --json`)", params=[did])},
        "/api/v1/deliveries/{did}/timeline": {"get": _op(
            "The delivery's past for charts: outcomes per interval, status over time "
            "(from the event log)", params=[did, _q("step", "seconds per point", "integer")])},
        "/api/v1/deliveries/{did}/recipients": {"get": _op(
            "Recipients filtered, by cursor (bounded scan per request)", params=[
                did, _q("status", "pending|sent|failed|ignored|excluded"),
                _q("reason", "failure/exclusion reason"), _q("domain", "recipient domain"),
                _q("q", "substring of the address"), _q("cursor", "next_cursor", "integer"),
                _q("limit", "1..1000", "integer")])},
        "/api/v1/deliveries/{did}/export.{fmt}": {"get": _op(
            "Accounting log (PowerMTA-style CSV, or JSONL), streamed", content="text/csv",
            params=[did, _p("fmt", "string"), _q("attempts", "one row per attempt",
                                                  "boolean")])},
        "/api/v1/deliveries/{did}/{action}": {"post": _op(
            "suspend | resume | cancel", body="ReasonIn", write=True,
            params=[did, _p("action", "string")])},
        "/api/v1/messages": {"post": _op("One transactional message", body="MessageIn",
                                         ok="201", write=True)},
        "/api/v1/admin/suspend": {"post": _op("Suspend a site, provider or delivery",
                                              body="TargetIn", write=True)},
        "/api/v1/admin/resume": {"post": _op("Resume it", body="TargetIn", write=True)},
        "/api/v1/admin/cancel": {"post": _op("Cancel a delivery", body="TargetIn",
                                             write=True)},
        "/api/v1/admin/bounce-site": {"post": _op("Fail what is queued for a site",
                                                  body="BounceIn", write=True)},
        "/api/v1/admin/suspensions": {"get": _op("Active site/provider suspensions")},
        "/api/v1/sites": {"get": _op("Sites: live limits, rates, throttles, suspensions",
                                     params=[_q("provider", "provider name"),
                                             _q("q", "substring of the site")])},
        "/api/v1/status": {"get": _op("The running pool's status snapshot")},
        "/api/v1/egress": {"get": _op(
            "Sources and IP warm-up (same JSON as `fastmta egress status --json`)",
            params=[_q("source", "one source's name")])},
        "/api/v1/events": {"get": _op(
            "Server-Sent Events, resumable by sequence number", content="text/event-stream",
            params=[_q("since", "last seq seen (or the Last-Event-ID header)", "integer"),
                    _q("types", "comma-separated event types"),
                    _q("delivery", "delivery id", "integer"),
                    _q("mode", "events | summary"), _q("limit", "stop after N", "integer")])},
        "/api/v1/openapi.json": {"get": _op("This document")},
    }
    return {"openapi": "3.1.0",
            "info": {"title": "fastmta HTTP API", "version": "1"},
            "paths": paths,
            "components": {"schemas": comps, "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"}}}}
