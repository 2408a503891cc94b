"""Client TLS for SMTP: the STARTTLS policies and the (cached) client SSL contexts."""

from __future__ import annotations

import ssl

__all__ = ["TLS_POLICIES", "client_ssl_context"]

TLS_POLICIES = ("none", "opportunistic", "required", "verify")

_ctx_cache: dict[tuple, ssl.SSLContext] = {}


def client_ssl_context(verify: bool, cafile: str | None = None) -> ssl.SSLContext:
    """A cached client SSL context: unverified for opportunistic/required, else verified."""
    key = (verify, cafile)
    ctx = _ctx_cache.get(key)
    if ctx is None:
        if verify:
            ctx = ssl.create_default_context(cafile=cafile)
        else:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        _ctx_cache[key] = ctx
    return ctx
