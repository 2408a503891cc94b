"""SMTP AUTH (RFC 4954) for relays: SASL PLAIN (RFC 4616) and LOGIN.  Pure.

``AuthExchange`` produces the lines ``ClientProtocol.auth`` sends and reads the
server's 334 challenges; ``check_auth_allowed`` is the policy: credentials go only over
TLS, or in plain text to a loopback relay when explicitly allowed.
"""

from __future__ import annotations

import base64
import ipaddress

from fastmta.core import Reply
from fastmta.errors import LocalProtocolError
from fastmta.smtp.messages import Capabilities

MECHANISMS = ("PLAIN", "LOGIN")  # in order of preference


def offered(caps: Capabilities) -> list[str]:
    """Mechanisms in the EHLO reply (``AUTH PLAIN LOGIN``, or the old ``AUTH=...``)."""
    words = []
    for key, param in caps.extensions.items():
        if key == "AUTH":
            words += param.split()
        elif key.startswith("AUTH="):
            words += [key[5:], *param.split()]
    return [w.upper() for w in words]


def choose(caps: Capabilities, wanted: str = "") -> str:
    """The mechanism to use; raises ``LocalProtocolError`` when none fits."""
    have = offered(caps)
    if not have:
        raise LocalProtocolError("the relay does not offer AUTH")
    for m in ([wanted.upper()] if wanted else MECHANISMS):
        if m in have and m in MECHANISMS:
            return m
    raise LocalProtocolError(f"the relay offers AUTH {' '.join(have)}, not "
                             f"{wanted.upper() or ' or '.join(MECHANISMS)}")


def check_auth_allowed(tls_active: bool, peer_ip: str, allow_plaintext_loopback: bool) -> None:
    """Credentials only over TLS (or to loopback when explicitly allowed)."""
    if tls_active:
        return
    try:
        loopback = ipaddress.ip_address(peer_ip).is_loopback
    except ValueError:
        loopback = False
    if loopback and allow_plaintext_loopback:
        return
    raise LocalProtocolError(
        "refusing to send AUTH credentials without TLS"
        + ("" if loopback else " (plain text is allowed only to a loopback relay, with "
           "[routing] auth_allow_plaintext_loopback = true)"))


def _b64(data: str) -> bytes:
    return base64.b64encode(data.encode("utf-8"))


class AuthExchange:
    """One AUTH exchange: ``first()`` then ``next(reply)`` for every 334."""

    def __init__(self, mechanism: str, user: str, password: str) -> None:
        for v, what in ((user, "user"), (password, "password")):
            if "\x00" in v or "\r" in v or "\n" in v:
                raise LocalProtocolError(f"AUTH {what} contains NUL, CR or LF")
        self.mechanism = mechanism.upper()
        self.user = user
        self.password = password
        self.step = 0

    def first(self) -> bytes:
        if self.mechanism == "PLAIN":  # initial response (RFC 4954 section 4)
            return b"AUTH PLAIN " + _b64(f"\x00{self.user}\x00{self.password}") + b"\r\n"
        if self.mechanism == "LOGIN":
            return b"AUTH LOGIN\r\n"
        raise LocalProtocolError(f"unsupported AUTH mechanism {self.mechanism}")

    def next(self, reply: Reply) -> bytes:
        """The response to a 334 challenge."""
        self.step += 1
        if self.mechanism == "PLAIN":
            if self.step > 1:
                raise LocalProtocolError("the relay asked PLAIN for more than one response")
            return _b64(f"\x00{self.user}\x00{self.password}") + b"\r\n"
        if self.step > 2:
            raise LocalProtocolError("the relay asked LOGIN for more than two responses")
        challenge = reply.lines[0].strip() if reply.lines else ""
        try:
            prompt = base64.b64decode(challenge).decode("utf-8", "replace").lower()
        except ValueError:
            prompt = ""
        if "pass" in prompt or (self.step == 2 and "user" not in prompt):
            return _b64(self.password) + b"\r\n"
        return _b64(self.user) + b"\r\n"
