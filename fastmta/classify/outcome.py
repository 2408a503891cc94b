"""Classifications attached to SMTP client outcomes.

Two things live here:

* ``classify_reply(reply)``: the seam to the core classifier (``fastmta.core.classify``,
  compiled or pure), using the command the reply answers.
* ``local(kind, command, detail)``: outcomes that have no server reply (connection
  refused, timeout, connection lost, TLS failure, local refusal).  Each gets a synthetic
  ``Reply`` (so the delivery log always has a code and text) and a ``Classification``.

Pure module: no asyncio, sockets or clock.
"""

from __future__ import annotations

import msgspec

from fastmta import core as _core
from fastmta.core import Reply

__all__ = ["Classification", "classify_reply", "local", "LOCAL_KINDS"]


class Classification(msgspec.Struct, frozen=True, kw_only=True):
    """Same fields as ``fastmta.core.Classification`` (docs/interfaces.md section 1)."""

    code: int
    enhanced: str | None
    bounce_class: int
    type: str  # hard | soft | ignored | none
    reason: str
    throttle: bool = False
    # deliver_ok | retry | bounce | suspend_site | reduce_rate | defer_recipient
    action: str = "retry"
    throttle_scope: str = "none"  # none | recipient | sender
    effect: str = "none"  # none | session_cap | too_many_recipients | connection_limit

    def to_dict(self) -> dict:
        return msgspec.structs.asdict(self)


_core_classify = _core.classify


def classify_reply(reply: Reply):
    """Classify a server reply (tagged with the command it answers) with the core."""
    return _core_classify(reply, reply.command)


# kind -> (code, enhanced, bounce_class, type, reason, throttle, action, text)
LOCAL_KINDS: dict[str, tuple] = {
    # could not reach the host at all (refused, unreachable, connect timeout)
    "connect_failed": (421, "4.4.1", 24, "soft", "unreachable", False, "retry",
                       "connection failed"),
    "connect_timeout": (421, "4.4.1", 24, "soft", "unreachable", True, "retry",
                        "connection timed out"),
    # connected, but no greeting in time (or the peer closed before greeting)
    "greeting_timeout": (421, "4.4.2", 24, "soft", "unreachable", True, "retry",
                         "no greeting from the server"),
    # a command got no reply in time
    "timeout": (421, "4.4.2", 24, "soft", "not_connected", True, "retry",
                "timed out waiting for the reply"),
    # the connection closed or was reset while we waited for a reply
    "connection_lost": (421, "4.4.2", 24, "soft", "not_connected", True, "retry",
                        "connection lost"),
    # the peer sent bytes that are not SMTP replies
    "protocol_error": (421, "4.5.0", 70, "soft", "not_connected", False, "retry",
                       "protocol error"),
    # STARTTLS required by policy but not offered, refused, or the handshake failed
    "tls_failed": (421, "4.7.10", 70, "soft", "unreachable", False, "retry",
                   "TLS not available"),
    # a smarthost relay's AUTH could not be done (policy, mechanism) -- issue #17
    "auth_failed": (454, "4.7.0", 70, "soft", "unreachable", False, "retry",
                    "relay authentication not possible"),
    # the message exceeds the SIZE the server announced
    "too_large": (552, "5.3.4", 23, "hard", "refused", False, "bounce",
                  "message larger than the server accepts"),
    # SMTPUTF8 needed but not offered by the server
    "smtputf8_unsupported": (553, "5.6.7", 40, "hard", "refused", False, "bounce",
                             "SMTPUTF8 required but not offered"),
}


def local(kind: str, command: str | None, detail: str = "") -> tuple[Reply, Classification]:
    """A synthetic reply and its classification for an outcome with no server reply."""
    code, enh, bclass, typ, reason, throttle, action, text = LOCAL_KINDS[kind]
    if detail:
        text = f"{text}: {detail}"
    text = text.replace("\r", " ").replace("\n", " ")
    raw = f"{code} {enh} {text}"
    reply = Reply(code, enh, (text,), raw, command)
    cls = Classification(
        code=code, enhanced=enh, bounce_class=bclass, type=typ, reason=reason,
        throttle=throttle, action=action, throttle_scope="sender" if throttle else "none",
    )
    return reply, cls
