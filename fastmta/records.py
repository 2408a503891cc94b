"""Persisted and cross-process records (msgspec structs, tagged and array-like from v1).

Every struct that is written to the spool or sent between processes lives here.  They are
encoded with msgpack as positional arrays (``array_like``): small and fast, but the field
*order* is the format.

Schema evolution rules (see docs/spool.md):

1. Never reorder, rename-in-place with a new meaning, or change the type of a field.
2. Add new fields only at the end, always with a default.  Old records decode with the
   default; old readers ignore nothing (msgspec rejects extra array items), so a spool
   written by a newer version must not be read by an older one -- ``SCHEMA_VERSION`` in
   the spool's meta database guards that.
3. Every record carries an integer tag from v1 (tags cannot be retrofitted, msgspec#968).
   A record that changes meaning gets a new struct with a new tag; the old one stays
   decodable.
4. ``gc=False`` on the structs made by the million (``Rcpt``, ``RecipientIn``): they
   hold only strings, numbers and tuples of strings, so they can never be part of a
   reference cycle, and the cyclic GC neither counts nor scans them (an injection of
   20,000-item batches spent ~15% of its CPU in the collector).
5. Array-like structs encode every field (msgspec does not omit defaults in arrays), so
   a field added later costs about one byte per record when it holds its default.
"""

from __future__ import annotations

from enum import IntEnum

import msgspec

SCHEMA_VERSION = 3  # 2: Rcpt.feedback, the inbound database (issue 15); 3: ``kpilog``


class Status(IntEnum):
    """Per-recipient status (ARCHITECTURE.md section 3)."""

    PENDING = 0  # accepted into the spool (durable); also while soft-bouncing
    SENT = 1  # 2xx to the message
    FAILED = 2  # hard bounce, or validity period ended (reason "expired")
    IGNORED = 3  # excluded at analysis (never sent); reason = exclusion reason


STATUS_NAMES = {s: s.name.lower() for s in Status}


class _Rec(msgspec.Struct, array_like=True, tag_field="t"):
    pass


class DeliveryRecord(_Rec, tag=1, kw_only=True):
    """A delivery (campaign send): one template, many recipients."""

    id: int = 0  # assigned by the spool
    name: str = ""
    mail_from: str = ""  # envelope sender (RFC 5321 MAIL FROM)
    created_ms: int = 0
    expires_ms: int = 0  # end of the validity period
    fields: list[str] = msgspec.field(default_factory=list)  # personalisation columns kept
    state: str = "injecting"  # injecting | active | paused | cancelled
    paused_reason: str = ""
    injected_line: int = 0  # last input line durably injected (resume point)
    source: str = ""  # recipients file, for the operator
    smtputf8: bool = False  # the template needs SMTPUTF8 (UTF-8 addresses in headers)
    pool: str = ""  # egress pool (issue #17); empty: by From domain ([[egress.rules]])


class Rcpt(_Rec, tag=2, gc=False):
    """State of one recipient of one delivery (key: delivery id, recipient id)."""

    email: str
    fields: tuple[str, ...] = ()
    shard: int = 0
    line: int = 0  # input line number
    status: Status = Status.PENDING
    smtputf8: bool = False
    attempts: int = 0  # SMTP attempts that got an answer about this recipient
    first_attempt_ms: int = 0
    last_attempt_ms: int = 0
    done_ms: int = 0  # when it became final (sent / failed / ignored)
    next_attempt_ms: int = 0  # due time while in the scheduled (retry) queue
    reason: str = ""  # campaign reason (failure or exclusion), last soft reason while pending
    type: str = ""  # classification type of the last outcome: hard | soft | ignored
    bounce_class: int = 0
    code: int = 0
    enhanced: str = ""
    reply: str = ""  # last reply text (one line, truncated)
    mx: str = ""
    source_ip: str = ""
    last_soft_reason: str = ""  # kept when the validity period ends
    deferrals: int = 0  # reschedules caused by our own shaping (not failures)
    feedback: str = ""  # asynchronous feedback flags: complained, unsubscribed, bounced_async

    @property
    def domain(self) -> str:
        return self.email.rpartition("@")[2]

    @property
    def status_name(self) -> str:
        return STATUS_NAMES[self.status]


class Lease(_Rec, tag=3):
    """A claimed recipient: who holds it and until when."""

    owner: str
    pid: int
    expires_ms: int
    shard: int
    leased_ms: int = 0


class RecipientIn(msgspec.Struct, array_like=True, gc=False):
    """A recipient handed to ``Spool.add_recipients`` (already syntax-checked).

    ``email`` is normalised (domain lower-cased, IDNA A-label); ``exclude`` is an
    exclusion reason decided before the spool (syntax, empty, bad field) or empty.
    """

    email: str
    fields: tuple[str, ...] = ()
    shard: int = 0
    line: int = 0
    exclude: str = ""
    smtputf8: bool = False


class WorkItem(msgspec.Struct, array_like=True):
    """A leased recipient, ready to be sent (crosses processes as msgpack)."""

    key: bytes  # spool key: delivery id + recipient id (8 bytes)
    delivery_id: int
    rcpt_id: int
    email: str
    shard: int
    fields: dict[str, str] = msgspec.field(default_factory=dict)  # incl. "email"
    attempts: int = 0
    first_attempt_ms: int = 0
    smtputf8: bool = False
    mail_from: str = ""
    expires_ms: int = 0
    last_reason: str = ""

    @property
    def domain(self) -> str:
        return self.email.rpartition("@")[2]


OUTCOMES = ("sent", "hard", "soft", "defer", "expired", "canceled")


class Result(msgspec.Struct, array_like=True, kw_only=True):
    """The outcome of one attempt for one recipient, committed by ``Spool.commit``.

    ``outcome``: ``sent`` | ``hard`` | ``soft`` | ``defer`` | ``expired`` | ``canceled``.
    ``defer`` = rescheduled by our own shaping: attempts are not counted.  ``canceled`` =
    failed by an operator action (``reason``, default ``delivery_canceled``), no
    quarantine.  The classification fields
    are plain values copied from ``fastmta.classify`` (no dependency on it here).
    """

    key: bytes
    outcome: str
    code: int = 0
    enhanced: str = ""
    bounce_class: int = 0
    type: str = ""  # hard | soft | ignored | none
    reason: str = ""
    reply: str = ""
    mx: str = ""
    source_ip: str = ""
    next_attempt_ms: int = 0  # for soft/defer: when to retry (0 = spool default)
    time_ms: int = 0  # when the outcome happened (0 = commit time)
    tls: str = ""  # TLS of the session ("TLSv1.3 TLS_AES_256_GCM_SHA384"; "" = plain text)


class AttemptEvent(_Rec, tag=10):
    """Appended to the event log for every committed result."""

    ts_ms: int
    delivery_id: int
    rcpt_id: int
    email: str
    outcome: str
    status: Status
    attempt: int = 0
    code: int = 0
    enhanced: str = ""
    bounce_class: int = 0
    type: str = ""
    reason: str = ""
    reply: str = ""
    mx: str = ""
    source_ip: str = ""
    tls: str = ""  # TLS protocol and cipher of the session ("" = plain text)


class DeliveryEvent(_Rec, tag=11, kw_only=True):
    """Life-cycle events of a delivery: created, injected, paused, resumed, cancelled,
    expired (sweep), recovered (leases returned)."""

    ts_ms: int
    delivery_id: int
    kind: str
    count: int = 0
    text: str = ""


class QuarantineEvent(_Rec, tag=12, kw_only=True):
    """An address entered or left the quarantine / denylist."""

    ts_ms: int
    address: str
    kind: str  # quarantined | denylisted | released | erroneous
    reason: str = ""
    delivery_id: int = 0


class SiteEvent(_Rec, tag=13, kw_only=True):
    """A site (or provider) changed state in a worker: ``suspended``, ``resumed``,
    ``limit`` (adaptive connection limit / message rate changed), ``throttled``."""

    ts_ms: int
    site: str
    kind: str
    provider: str = ""
    reason: str = ""
    limit: int = 0
    rate: float = 0.0
    until_ms: int = 0
    worker: int = -1


class AdminEvent(_Rec, tag=14, kw_only=True):
    """An operator action (``fastmta.ops.admin``): suspend/resume/cancel/bounce ..."""

    ts_ms: int
    action: str
    target: str = ""  # site:NAME | provider:NAME | delivery:ID
    delivery_id: int = 0
    count: int = 0
    text: str = ""
    user: str = ""


class FeedbackEvent(_Rec, tag=15, kw_only=True):
    """Asynchronous feedback applied to a recipient (``fastmta.feedback``): ``kind`` is
    ``bounce_async`` | ``complaint`` | ``autoreply`` | ``unsubscribe`` | ``delayed_async``."""

    ts_ms: int
    kind: str
    delivery_id: int = 0
    rcpt_id: int = 0
    email: str = ""
    status: Status = Status.SENT  # the recipient's status after it
    enhanced: str = ""
    bounce_class: int = 0
    type: str = ""
    reason: str = ""
    feedback_type: str = ""  # ARF Feedback-Type
    inbound_id: int = 0  # the stored inbound message (fastmta inbound show ID)
    provider: str = ""
    text: str = ""  # diagnostic (truncated)


Event = AttemptEvent | DeliveryEvent | QuarantineEvent | SiteEvent | AdminEvent | FeedbackEvent


class QuarantineEntry(_Rec, tag=20, kw_only=True):
    """Quarantine / denylist state of one address (or ``@domain`` for a whole domain).

    ``state``: ``erroneous`` (soft errors counted, still sent), ``quarantined`` (excluded,
    released after ``quarantine_release_days`` unless ``permanent``), ``denylisted``
    (excluded until removed by hand).
    """

    address: str
    state: str
    reason: str = ""
    bounce_class: int = 0
    reply: str = ""
    first_ms: int = 0
    last_ms: int = 0
    hard_count: int = 0
    soft_count: int = 0
    delivery_id: int = 0
    source: str = ""  # bounce | manual | import
    permanent: bool = False


class InboundRecord(_Rec, tag=21, kw_only=True):
    """One inbound message (bounce, complaint, auto-reply, unsubscribe) as received and
    what it did (key: inbound id).  The raw bytes are stored beside it (truncated)."""

    id: int
    ts_ms: int
    source: str = ""  # smtp | ingest | http
    peer: str = ""
    mail_from: str = ""
    rcpt_to: list[str] = msgspec.field(default_factory=list)
    size: int = 0
    kind: str = ""  # dsn | arf | autoreply | other | unsubscribe
    matched: bool = False
    delivery_id: int = 0
    rcpt_id: int = 0
    email: str = ""
    effect: str = ""  # failed | complained | reason_updated | recorded | unsubscribed | duplicate | unmatched | none
    why: str = ""  # why unmatched / why nothing was done
    status: str = ""
    bounce_class: int = 0
    type: str = ""
    reason: str = ""
    feedback_type: str = ""
    subject: str = ""


ENCODER = msgspec.msgpack.Encoder()
RCPT_DECODER = msgspec.msgpack.Decoder(Rcpt)
DELIVERY_DECODER = msgspec.msgpack.Decoder(DeliveryRecord)
LEASE_DECODER = msgspec.msgpack.Decoder(Lease)
EVENT_DECODER = msgspec.msgpack.Decoder(Event)
QUARANTINE_DECODER = msgspec.msgpack.Decoder(QuarantineEntry)
WORKITEMS_DECODER = msgspec.msgpack.Decoder(list[WorkItem])
RESULTS_DECODER = msgspec.msgpack.Decoder(list[Result])
INBOUND_DECODER = msgspec.msgpack.Decoder(InboundRecord)
