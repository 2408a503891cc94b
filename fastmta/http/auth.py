"""Who may call the HTTP API: pure rules (no sockets), used by the ASGI middleware.

- Bound to loopback, reads (GET/HEAD) need no token; every write (POST/PUT/DELETE) needs
  ``Authorization: Bearer <token>``: a web page the operator visits cannot steer the
  MTA by a cross-site form post, because it can neither know the token nor set the header
  without a CORS preflight, and fastmta answers no CORS.
- Bound to anything else, every request needs the token (``serve`` refuses to start
  without one).
- Bound to loopback, the ``Host`` header must name a loopback host (DNS-rebinding guard).
- ``EventSource`` cannot set headers: GETs may pass ``access_token=`` in the query.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets

READ_METHODS = frozenset({"GET", "HEAD"})
LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    h = host.strip("[]").lower()
    if h in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def host_of(header: str) -> str:
    """The host part of a ``Host`` header (``[::1]:8025`` -> ``::1``)."""
    h = header.strip()
    if h.startswith("["):
        return h[1:h.find("]")] if "]" in h else h
    return h.rpartition(":")[0] if h.count(":") == 1 else h


def new_token() -> str:
    return secrets.token_urlsafe(24)


def bearer(header: str) -> str:
    """The token of an ``Authorization: Bearer X`` header ('' if none)."""
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


class Policy:
    """The access rule for one listener: ``check(...)`` returns None (allowed) or an
    (HTTP status, error code, message) triple."""

    def __init__(self, listen_host: str, token: str) -> None:
        self.loopback = is_loopback(listen_host)
        if not self.loopback and not token:
            raise ValueError(f"listening on {listen_host} (not loopback) needs a token "
                             "(--token or FASTMTA_HTTP_TOKEN)")
        if not token:
            raise ValueError("a token is required (admin actions always need one)")
        self.token = token

    def _ok(self, given: str) -> bool:
        return bool(given) and hmac.compare_digest(given.encode(), self.token.encode())

    def check(self, method: str, host_header: str, auth_header: str,
              query_token: str = "") -> tuple[int, str, str] | None:
        if self.loopback and host_header and not is_loopback(host_of(host_header)):
            return 403, "bad_host", "this server is bound to loopback: use 127.0.0.1"
        given = bearer(auth_header) or (query_token if method in READ_METHODS else "")
        if method in READ_METHODS and self.loopback and not given:
            return None
        if self._ok(given):
            return None
        if given:
            return 401, "bad_token", "the bearer token is wrong"
        return 401, "token_required", ("writes need 'Authorization: Bearer <token>'"
                                        if self.loopback else "a bearer token is required")
