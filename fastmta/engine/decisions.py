"""What the engine does with one classified reply: the reply -> decision policy.  Pure.

The classification (``fastmta.core.classify``) already says what a reply means
(``type``, ``throttle``, ``throttle_scope``, ``action``, ``rule``); this module turns it
into one engine decision, so that ``connections.py`` applies decisions and never reads
reply texts.  Table-tested in ``tests/unit/test_decisions.py``.

Decisions for a recipient's reply (``decide``), in precedence order:

- ``sent``: 2xx.
- ``requeue_session``: a per-session message cap (rule ``effect = "session_cap"``,
  answered to MAIL): learn the cap, send the rest on a new connection (not a failure,
  not a throttle).
- ``requeue_split``: too many recipients in this transaction (RFC 5321 4.5.3.1.10, x.5.3,
  or rule ``effect = "too_many_recipients"``): the rest go in the next transaction (when
  some were accepted: learn the cap).
- ``suspend``: the site blocks us (reputation block, DNSBL, banned IP): suspend the
  site, the recipient is retried after the suspension; not a hard bounce.
- ``defer_recipient``: a recipient-scope limit (this mailbox receives too fast): only
  this recipient waits (its own retry backoff); the site keeps its speed.
- ``throttle``: a sender-scope slow-down (rate, connections, volume): the site's
  adaptive limits are cut (``shaper_kind`` = ``connections`` for a rule with
  ``effect = "connection_limit"`` or a refusal at connect/EHLO, else ``rate``); the
  recipient is queued again.
- ``hard``: the recipient cannot receive: bounce.
- ``soft``: anything else (a generic 421, timeouts, policy deferrals): a counted soft
  failure with the retry schedule; the site's limits are not touched.

The effects are fields of the rule data (``fastmta/data/bounce_rules.toml``, or an
operator's rule), never rule names: an operator rule can carry them.

``close``: the session must end (421 closes the channel, RFC 5321 3.8).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Decision", "decide", "decide_connect"]

_CONNECT_PHASES = frozenset({"connect", "ehlo", "helo"})


@dataclass(frozen=True, slots=True)
class Decision:
    """One engine decision (see module docstring)."""

    kind: str
    close: bool = False
    shaper_kind: str = ""  # for "throttle": "connections" | "rate"


def _throttle_kind(cls, command: str | None) -> str:
    return "connections" if command in _CONNECT_PHASES or \
        getattr(cls, "effect", "none") == "connection_limit" else "rate"


def decide(cls, code: int, command: str | None, enhanced: str | None = None) -> Decision:
    """The decision for one recipient's reply ``code`` to ``command`` classified ``cls``."""
    close = code == 421
    if 200 <= code < 300:
        return Decision("sent")
    effect = getattr(cls, "effect", "none")  # local outcomes (no server reply): none
    if effect == "session_cap" and command == "mail":
        return Decision("requeue_session", close=True)
    if 400 <= code < 500 and command == "rcpt" and (
            enhanced == "4.5.3" or effect == "too_many_recipients"):
        return Decision("requeue_split", close=close)
    if cls.action == "suspend_site":
        return Decision("suspend", close=True)
    scope = getattr(cls, "throttle_scope", "sender" if cls.throttle else "none")
    if cls.throttle and (scope == "recipient" or cls.action == "defer_recipient"):
        return Decision("defer_recipient", close=close)
    if cls.throttle:
        return Decision("throttle", close=close, shaper_kind=_throttle_kind(cls, command))
    if cls.type == "hard" or cls.action == "bounce":
        return Decision("hard", close=close)
    return Decision("soft", close=close)


def decide_connect(cls, kind: str) -> Decision:
    """The decision when opening a connection failed (``kind``: the ConnectFailed kind:
    ``greeting``, ``ehlo``, ``connect_failed``, ``connect_timeout``, ...)."""
    if cls.action == "suspend_site":
        return Decision("suspend")
    if cls.throttle and getattr(cls, "throttle_scope", "sender") != "recipient":
        # a server's reply (greeting, EHLO, closing) refuses this connection: the
        # connection level is what to cut; local failures (timeouts) count towards the
        # site's connect failures as well
        shaper_kind = "connections" if kind in ("greeting", "ehlo", "closing") \
            else "connect_failure"
        return Decision("throttle", shaper_kind=shaper_kind)
    return Decision("connect_failure")
