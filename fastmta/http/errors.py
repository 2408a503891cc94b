"""API errors: one JSON shape ``{"error": {"code", "message", ...}}`` with the right status."""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse

from fastmta.delivery.recipients import InputError
from fastmta.delivery.template import TemplateError
from fastmta.errors import FastMTAError
from fastmta.ops.admin import AdminError
from fastmta.spool import DeliveryNotFound


class ApiError(Exception):
    """An error answered as JSON: ``status``, a stable ``code``, a ``message`` and extra
    fields (``line``, ``errors``...)."""

    def __init__(self, status: int, code: str, message: str, **extra) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message, **self.extra}}


def from_exception(exc: BaseException) -> ApiError:
    """The API error for a library exception (unknown ones are 500s, logged)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, DeliveryNotFound):
        return ApiError(404, "not_found", str(exc))
    if isinstance(exc, AdminError):
        return ApiError(409, "admin_refused", str(exc))
    if isinstance(exc, InputError):
        return ApiError(422, "bad_recipients_file", str(exc))
    if isinstance(exc, TemplateError):
        return ApiError(422, "bad_message", str(exc))
    if isinstance(exc, msgspec.ValidationError | msgspec.DecodeError):
        return ApiError(400, "bad_request", str(exc))
    if isinstance(exc, FastMTAError):
        return ApiError(422, "refused", str(exc))
    return ApiError(500, "internal", f"{type(exc).__name__}: {exc}")


def error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status)


async def handle(request: Request, exc: Exception) -> JSONResponse:
    err = from_exception(exc)
    if err.status >= 500:
        import logging

        logging.getLogger("fastmta.http").error("%s %s: %r", request.method,
                                                request.url.path, exc, exc_info=exc)
    return error_response(err)


def query_int(request: Request, name: str, default: int, lo: int = 0,
              hi: int = 2**63 - 1) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        v = int(raw)
    except ValueError:
        raise ApiError(400, "bad_parameter", f"{name} must be an integer, got {raw!r}",
                       parameter=name) from None
    if not lo <= v <= hi:
        raise ApiError(400, "bad_parameter", f"{name} must be in {lo}..{hi}, got {v}",
                       parameter=name)
    return v


def check_query(request: Request, allowed: set[str]) -> None:
    """Refuse unknown query parameters (typos must not silently return everything)."""
    bad = sorted(set(request.query_params) - allowed - {"access_token"})
    if bad:
        raise ApiError(400, "unknown_parameter", f"unknown query parameter(s) {bad}; "
                       f"known: {sorted(allowed)}", parameters=bad)
