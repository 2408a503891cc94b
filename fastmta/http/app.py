"""The ASGI application: ``/api/v1`` routes, the dashboard pages and their vendored
assets, access control (``auth.Policy``) and security headers."""

from __future__ import annotations

from pathlib import Path

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from fastmta.errors import FastMTAError
from fastmta.http import admin as adm
from fastmta.http import deliveries as dlv
from fastmta.http import errors, sse
from fastmta.http.context import Context
from fastmta.http.egress_api import egress
from fastmta.http.errors import ApiError, error_response
from fastmta.http.openapi import spec

STATIC = Path(__file__).parent / "static"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"content-security-policy", CSP.encode())]


class Guard:
    """Access control before routing, and security headers on every answer."""

    def __init__(self, app: ASGIApp, ctx: Context) -> None:
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        req = Request(scope)
        denied = None
        if scope["path"].startswith("/api/") or scope["method"] not in ("GET", "HEAD"):
            denied = self.ctx.policy.check(scope["method"], req.headers.get("host", ""),
                                           req.headers.get("authorization", ""),
                                           req.query_params.get("access_token", ""))
        elif self.ctx.policy.loopback:  # pages: Host check only (they hold no data)
            denied = self.ctx.policy.check("GET", req.headers.get("host", ""), "", "")
        else:
            denied = None  # pages are static; their API calls carry the token

        async def send_with_headers(msg):
            if msg["type"] == "http.response.start":
                msg["headers"] = list(msg.get("headers", [])) + SECURITY_HEADERS
            await send(msg)

        if denied is not None:
            status, code, message = denied
            resp = error_response(ApiError(status, code, message))
            if status == 401:
                resp.headers["www-authenticate"] = 'Bearer realm="fastmta"'
            await resp(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)


def _page(name: str):
    async def page(request: Request) -> Response:
        return FileResponse(STATIC / name, media_type="text/html; charset=utf-8",
                            headers={"Cache-Control": "no-store"})

    return page


async def openapi(request: Request) -> Response:
    return JSONResponse(spec())


async def not_found(request: Request, exc: Exception) -> Response:
    return error_response(ApiError(404, "not_found", f"no route {request.url.path}"))


async def bad_method(request: Request, exc: Exception) -> Response:
    return error_response(ApiError(405, "method_not_allowed",
                                   f"{request.method} is not allowed on {request.url.path}"))


def routes() -> list:
    v = "/api/v1"
    return [
        Route(f"{v}/openapi.json", openapi),
        Route(f"{v}/deliveries", dlv.list_deliveries, methods=["GET"]),
        Route(f"{v}/deliveries", dlv.create, methods=["POST"]),
        Route(f"{v}/drafts", dlv.drafts, methods=["GET"]),
        Route(f"{v}/drafts/{{draft}}", dlv.draft, methods=["GET", "DELETE"]),
        Route(f"{v}/drafts/{{draft}}/confirm", dlv.confirm, methods=["POST"]),
        Route(f"{v}/deliveries/{{did}}", dlv.one, methods=["GET"]),
        Route(f"{v}/deliveries/{{did}}/report", dlv.report, methods=["GET"]),
        Route(f"{v}/deliveries/{{did}}/recipients", dlv.recipients, methods=["GET"]),
        Route(f"{v}/deliveries/{{did}}/timeline", dlv.timeline, methods=["GET"]),
        Route(f"{v}/deliveries/{{did}}/export.{{fmt}}", dlv.export, methods=["GET"]),
        Route(f"{v}/deliveries/{{did}}/{{action}}", dlv.action, methods=["POST"]),
        Route(f"{v}/messages", adm.message, methods=["POST"]),
        Route(f"{v}/admin/suspend", adm.suspend, methods=["POST"]),
        Route(f"{v}/admin/resume", adm.resume, methods=["POST"]),
        Route(f"{v}/admin/cancel", adm.cancel, methods=["POST"]),
        Route(f"{v}/admin/bounce-site", adm.bounce_site, methods=["POST"]),
        Route(f"{v}/admin/suspensions", adm.suspensions, methods=["GET"]),
        Route(f"{v}/sites", adm.sites, methods=["GET"]),
        Route(f"{v}/status", adm.status, methods=["GET"]),
        Route(f"{v}/egress", egress, methods=["GET"]),
        Route(f"{v}/events", sse.events, methods=["GET"]),
        Route("/", _page("index.html"), methods=["GET"]),
        Route("/deliveries/{did:int}", _page("delivery.html"), methods=["GET"]),
        Route("/sites", _page("sites.html"), methods=["GET"]),
        Route("/egress", _page("egress.html"), methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]


def create_app(ctx: Context) -> ASGIApp:
    """The application for one spool (no CORS middleware: cross-origin pages get no
    answer they can read)."""
    app = Starlette(routes=routes(), exception_handlers={
        404: not_found, 405: bad_method, Exception: errors.handle,
        ApiError: errors.handle, FastMTAError: errors.handle,
        msgspec.ValidationError: errors.handle, msgspec.DecodeError: errors.handle})
    app.state.ctx = ctx
    return Guard(app, ctx)
