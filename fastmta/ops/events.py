"""The operator-facing event stream: one tagged msgspec family over the spool's event log.

The spool writes compact positional records durably in the same transaction as the state
they describe (``records.AttemptEvent``, ``DeliveryEvent``, ``QuarantineEvent``,
``SiteEvent``, ``AdminEvent``).  This module turns them into self-describing events
(``type`` tag, named fields, JSON-friendly) for the API, ``fastmta events``, the
exports and webhooks:

=================  ================================================================
``reception``      recipients accepted into the spool (one per durable batch)
``delivery``       2xx: the recipient is ``sent``
``bounce``         a final failure: hard bounce, or an operator cancel/bounce
                   (``bounce_type`` ``hard`` / ``ignored``; class, reason, reply, MX,
                   source IP)
``transient``      a soft failure (4xx, timeout...); retried on schedule
``deferral``       rescheduled by our own shaping (not a recipient failure)
``expiration``     the validity period ended while pending (``reason`` = last soft one)
``site``           a site/provider was suspended, resumed, or its limits changed
``admin``          an operator action
``delivery_state`` a delivery was created, paused, resumed, cancelled, recovered...
``quarantine``     an address entered or left the quarantine / denylist
=================  ================================================================

Every event carries ``seq`` (its position in the spool's log: a durable, gap-free cursor
for consumers) and ``ts_ms`` (epoch ms).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator

import msgspec

from fastmta.records import (
    AdminEvent,
    AttemptEvent,
    DeliveryEvent,
    FeedbackEvent,
    QuarantineEvent,
    SiteEvent,
)


class _Ev(msgspec.Struct, tag_field="type", kw_only=True, omit_defaults=False):
    seq: int = 0
    ts_ms: int = 0


class Reception(_Ev, tag="reception"):
    """Recipients of a delivery durably accepted into the spool (one injection batch)."""

    delivery_id: int
    count: int = 0
    text: str = ""


class _Attempt(_Ev):
    delivery_id: int
    rcpt_id: int
    email: str
    attempt: int = 0
    code: int = 0
    enhanced: str = ""
    reply: str = ""
    mx: str = ""
    source_ip: str = ""
    tls: str = ""  # TLS protocol and cipher of the session ("" = plain text)


class Delivery(_Attempt, tag="delivery"):
    """The recipient's server accepted the message (status ``sent``)."""


class Bounce(_Attempt, tag="bounce"):
    """Final failure (status ``failed``): a hard bounce or an operator action."""

    bounce_class: int = 0
    bounce_type: str = ""  # hard | ignored (operator action)
    reason: str = ""


class Transient(_Attempt, tag="transient"):
    """A soft failure: the recipient stays ``pending`` and is retried."""

    bounce_class: int = 0
    reason: str = ""


class Deferral(_Attempt, tag="deferral"):
    """Rescheduled by our own shaping (site suspended, throttled, draining...)."""

    reason: str = ""


class Expiration(_Attempt, tag="expiration"):
    """The validity period ended while pending (``reason`` = the last soft reason)."""

    bounce_class: int = 0
    reason: str = ""


class SiteChange(_Ev, tag="site"):
    """A site or provider: ``suspended``, ``resumed``, ``limit``, ``throttled``."""

    site: str
    kind: str
    provider: str = ""
    reason: str = ""
    limit: int = 0
    rate: float = 0.0
    until_ms: int = 0
    worker: int = -1


class AdminAction(_Ev, tag="admin"):
    """An operator action (see ``fastmta.ops.admin``)."""

    action: str
    target: str = ""
    delivery_id: int = 0
    count: int = 0
    text: str = ""
    user: str = ""


class DeliveryState(_Ev, tag="delivery_state"):
    """A delivery's life cycle: created, paused, active, cancelled, recovered, purged..."""

    delivery_id: int
    kind: str
    count: int = 0
    text: str = ""


class QuarantineChange(_Ev, tag="quarantine"):
    """An address entered or left the quarantine / denylist."""

    address: str
    kind: str
    reason: str = ""
    delivery_id: int = 0


class _Feedback(_Ev):
    """Asynchronous feedback applied to a recipient (``fastmta.feedback``)."""

    delivery_id: int
    rcpt_id: int
    email: str
    status: str = ""  # the recipient's status after it
    enhanced: str = ""
    bounce_class: int = 0
    bounce_type: str = ""
    reason: str = ""
    feedback_type: str = ""
    provider: str = ""
    inbound_id: int = 0
    text: str = ""


class AsyncBounce(_Feedback, tag="bounce_async"):
    """A DSN that arrived after the 250 (hard: the recipient became failed)."""


class Complaint(_Feedback, tag="complaint"):
    """An ARF feedback-loop complaint (the address is denylisted, reason complaint)."""


class AutoReply(_Feedback, tag="autoreply"):
    """An automatic reply (out of office, challenge-response): recorded only."""


class Unsubscribe(_Feedback, tag="unsubscribe"):
    """A one-click / mailto unsubscribe (denylisted, reason unsubscribed)."""


_FEEDBACK = {"bounce_async": AsyncBounce, "complaint": Complaint, "autoreply": AutoReply,
             "unsubscribe": Unsubscribe}

OpsEvent = (Reception | Delivery | Bounce | Transient | Deferral | Expiration | SiteChange
            | AdminAction | DeliveryState | QuarantineChange | AsyncBounce | Complaint
            | AutoReply | Unsubscribe)

#: the ``type`` tags, for filters and the CLI
TYPES = ("reception", "delivery", "bounce", "transient", "deferral", "expiration", "site",
         "admin", "delivery_state", "quarantine", "bounce_async", "complaint", "autoreply",
         "unsubscribe")
#: per-recipient outcome events (what a campaign tool usually subscribes to)
RECIPIENT_TYPES = frozenset({"delivery", "bounce", "transient", "expiration"})

_JSON = msgspec.json.Encoder()
_JSON_DECODER = msgspec.json.Decoder(OpsEvent)


def _attempt(cls: type, seq: int, ev: AttemptEvent, **extra) -> _Attempt:
    return cls(seq=seq, ts_ms=ev.ts_ms, delivery_id=ev.delivery_id, rcpt_id=ev.rcpt_id,
               email=ev.email, attempt=ev.attempt, code=ev.code, enhanced=ev.enhanced,
               reply=ev.reply, mx=ev.mx, source_ip=ev.source_ip, tls=ev.tls, **extra)


def from_stored(seq: int, ev: object) -> OpsEvent | None:
    """The public event for a spool event-log record (None for unknown records)."""
    if isinstance(ev, AttemptEvent):
        o = ev.outcome
        if o == "sent":
            return _attempt(Delivery, seq, ev)
        if o in ("hard", "canceled"):
            return _attempt(Bounce, seq, ev, bounce_class=ev.bounce_class,
                            bounce_type="hard" if o == "hard" else "ignored",
                            reason=ev.reason or ("not_defined" if o == "hard"
                                                 else "delivery_canceled"))
        if o == "soft":
            return _attempt(Transient, seq, ev, bounce_class=ev.bounce_class,
                            reason=ev.reason)
        if o == "defer":
            return _attempt(Deferral, seq, ev, reason=ev.reason)
        if o == "expired":
            return _attempt(Expiration, seq, ev, bounce_class=ev.bounce_class,
                            reason=ev.reason)
        return None
    if isinstance(ev, DeliveryEvent):
        if ev.kind == "received":
            return Reception(seq=seq, ts_ms=ev.ts_ms, delivery_id=ev.delivery_id,
                             count=ev.count, text=ev.text)
        if ev.kind == "expired":  # validity sweep: count only, per-recipient ones follow
            return DeliveryState(seq=seq, ts_ms=ev.ts_ms, delivery_id=ev.delivery_id,
                                 kind="expired", count=ev.count, text=ev.text)
        return DeliveryState(seq=seq, ts_ms=ev.ts_ms, delivery_id=ev.delivery_id,
                             kind=ev.kind, count=ev.count, text=ev.text)
    if isinstance(ev, SiteEvent):
        return SiteChange(seq=seq, ts_ms=ev.ts_ms, site=ev.site, kind=ev.kind,
                          provider=ev.provider, reason=ev.reason, limit=ev.limit,
                          rate=ev.rate, until_ms=ev.until_ms, worker=ev.worker)
    if isinstance(ev, AdminEvent):
        return AdminAction(seq=seq, ts_ms=ev.ts_ms, action=ev.action, target=ev.target,
                           delivery_id=ev.delivery_id, count=ev.count, text=ev.text,
                           user=ev.user)
    if isinstance(ev, QuarantineEvent):
        return QuarantineChange(seq=seq, ts_ms=ev.ts_ms, address=ev.address, kind=ev.kind,
                                reason=ev.reason, delivery_id=ev.delivery_id)
    if isinstance(ev, FeedbackEvent):
        cls = _FEEDBACK.get(ev.kind)
        if cls is None:
            return None
        return cls(seq=seq, ts_ms=ev.ts_ms, delivery_id=ev.delivery_id, rcpt_id=ev.rcpt_id,
                   email=ev.email, status=ev.status.name.lower(), enhanced=ev.enhanced,
                   bounce_class=ev.bounce_class, bounce_type=ev.type, reason=ev.reason,
                   feedback_type=ev.feedback_type, provider=ev.provider,
                   inbound_id=ev.inbound_id, text=ev.text)
    return None


def to_json(ev: OpsEvent) -> bytes:
    """One event as compact JSON (no newline)."""
    return _JSON.encode(ev)


def from_json(data: bytes | str) -> OpsEvent:
    """Decode one JSON event (raises ``msgspec.ValidationError`` on bad input)."""
    return _JSON_DECODER.decode(data)


def to_dict(ev: OpsEvent) -> dict:
    """One event as a plain dict (with its ``type``)."""
    return msgspec.to_builtins(ev)


def _matcher(types: Iterable[str] | None, delivery_id: int | None
             ) -> Callable[[OpsEvent], bool] | None:
    """A filter for events (None = everything passes)."""
    wanted = frozenset(types) if types else None
    if wanted is not None:
        bad = wanted - set(TYPES)
        if bad:
            raise ValueError(f"unknown event type(s) {sorted(bad)}; known: {', '.join(TYPES)}")

    if wanted is None and delivery_id is None:
        return None
    tags = _TAGS

    def match(ev: OpsEvent) -> bool:
        if wanted is not None and tags[type(ev)] not in wanted:
            return False
        return delivery_id is None or getattr(ev, "delivery_id", None) == delivery_id

    return match


_TAGS: dict[type, str] = {
    cls: cls.__struct_config__.tag  # type: ignore[attr-defined]
    for cls in (Reception, Delivery, Bounce, Transient, Deferral, Expiration, SiteChange,
                AdminAction, DeliveryState, QuarantineChange, AsyncBounce, Complaint, AutoReply,
                Unsubscribe)
}


def _type_of(ev: OpsEvent) -> str:
    return _TAGS[type(ev)]


def event_type(ev: OpsEvent) -> str:
    """The ``type`` tag of an event (``delivery``, ``bounce``...)."""
    return _type_of(ev)


class EventReader:
    """Reads the spool's event log from a cursor: ``poll()`` returns what is new.

    ``since``: the last sequence number already seen (0 = from the start; use
    ``spool.last_event_seq()`` to start at the end).  ``types`` / ``delivery_id`` filter.
    The cursor (``.seq``) only moves forward; persist it to resume after a restart.
    """

    def __init__(self, spool, since: int = 0, *, types: Iterable[str] | None = None,
                 delivery_id: int | None = None, batch: int = 5000) -> None:
        self.spool = spool
        self.seq = since
        self.batch = batch
        self._match = _matcher(types, delivery_id)

    def poll(self, limit: int | None = None) -> list[OpsEvent]:
        """New events (at most ``limit`` raw log records are read per call)."""
        out: list[OpsEvent] = []
        n = 0
        cap = limit or self.batch
        match = self._match
        for seq, raw in self.spool.events(self.seq, chunk=cap):
            self.seq = seq
            n += 1
            ev = from_stored(seq, raw)
            if ev is not None and (match is None or match(ev)):
                out.append(ev)
            if n >= cap:
                break
        return out

    def follow(self, *, interval_s: float = 0.2, stop: Callable[[], bool] | None = None,
               timeout_s: float | None = None) -> Iterator[OpsEvent]:
        """Yield events as they are written, until ``stop()`` is true or the timeout."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            got = self.poll()
            yield from got
            if stop is not None and stop():
                yield from self.poll()
                return
            if deadline is not None and time.monotonic() >= deadline:
                return
            if not got:
                time.sleep(interval_s)

    async def afollow(self, *, interval_s: float = 0.2,
                      stop: Callable[[], bool] | None = None) -> AsyncIterator[OpsEvent]:
        """``follow`` for asyncio (the spool read runs in a thread)."""
        while True:
            got = await asyncio.to_thread(self.poll)
            for ev in got:
                yield ev
            if stop is not None and stop():
                for ev in await asyncio.to_thread(self.poll):
                    yield ev
                return
            if not got:
                await asyncio.sleep(interval_s)
