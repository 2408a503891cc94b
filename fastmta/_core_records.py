"""Pure-Python reference of the compiled core's recipient-record functions.

The spool's per-result hot path works on the msgpack bytes of a ``Rcpt`` record
(``fastmta.records``).  These two functions are the specification; ``_core.pyx``
(``_core_records.pxi``) gives byte-for-byte the same answers by reading and writing the
msgpack array in place, without building the structs (the tests in ``tests/core``
compare both on the same records).

- ``rcpt_sent``: the recipient got a 2xx: its new record (status ``sent``, attempt
  counted, reply fields set) and the ``AttemptEvent`` to log, both encoded, plus its
  address.  ``None`` when the record is not ``pending`` (a stale result).
- ``rcpt_claim``: what a lease needs from a record: address, personalisation fields
  (a dict by column name, plus ``email``), attempts, first attempt time, SMTPUTF8, last
  reason.  ``None`` when the record is not ``pending`` (a stale queue entry).
- ``rcpt_batch``: an injection batch encoded: the records, the ready-queue entries, the
  per-domain counts and the exclusions (doubles, reasons decided before the spool).
"""

from __future__ import annotations

import struct

from fastmta.records import ENCODER, RCPT_DECODER, AttemptEvent, Rcpt, RecipientIn, Status

__all__ = ["rcpt_sent", "rcpt_claim", "rcpt_batch"]


def rcpt_sent(
    raw: bytes, t: int, did: int, rid: int, code: int, enhanced: str, bounce_class: int,
    type: str, reply: str, mx: str, source_ip: str, tls: str,
) -> tuple[bytes, bytes, str] | None:
    """(new record, attempt event, address) for a ``sent`` result at time ``t``, or None
    when the record is not pending.  ``reply`` is stored as given (truncate before)."""
    rec = RCPT_DECODER.decode(raw)
    if rec.status != Status.PENDING:
        return None
    attempts = rec.attempts + 1
    new = Rcpt(
        rec.email, rec.fields, rec.shard, rec.line, Status.SENT, rec.smtputf8, attempts,
        rec.first_attempt_ms or t, t, t, 0,
        rec.reason if rec.type == "soft" else "",  # a soft reason stays as history
        type, bounce_class, code, enhanced, reply,
        mx or rec.mx, source_ip or rec.source_ip, rec.last_soft_reason,
        rec.deferrals, rec.feedback,
    )
    ev = AttemptEvent(
        t, did, rid, rec.email, "sent", Status.SENT, attempts, code, enhanced,
        bounce_class, type, "", reply, mx, source_ip, tls,
    )
    return ENCODER.encode(new), ENCODER.encode(ev), rec.email


def rcpt_claim(raw: bytes, names: list[str] | tuple[str, ...]) -> tuple[str, dict[str, str], int, int, bool, str] | None:
    """(address, fields by ``names`` + ``email``, attempts, first_attempt_ms, smtputf8,
    reason) of a pending record, or None."""
    rec = RCPT_DECODER.decode(raw)
    if rec.status != Status.PENDING:
        return None
    fields = dict(zip(names, rec.fields, strict=False)) if names else {}
    fields["email"] = rec.email  # ready for Template.render
    return rec.email, fields, rec.attempts, rec.first_attempt_ms, rec.smtputf8, rec.reason


_KEY = struct.Struct(">II")  # spool.keys: rcpt key / ready value (delivery id, recipient id)
_SHARD = struct.Struct(">H")  # spool.keys.shard_key


def rcpt_batch(
    items: list[RecipientIn], did: int, rid: int, t: int, dups: set[int] | frozenset[int],
) -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]], dict[str, int], list[tuple[int, str]]]:
    """Encode a batch of injected recipients (ids from ``rid`` on) when no quarantine
    check is needed: (rcpt key/record pairs, ready-queue pairs (shard key, rcpt key),
    pending recipients per domain, (index, reason) of the excluded ones).  An item is
    excluded with its own ``exclude`` reason, else as ``double`` when its index is in
    ``dups``; excluded records are ``ignored`` at ``t``."""
    if not (0 <= did <= 0xFFFFFFFF and 0 <= rid and rid + len(items) - 1 <= 0xFFFFFFFF):
        raise OverflowError("delivery or recipient id out of range")
    rcpt_items: list[tuple[bytes, bytes]] = []
    ready: list[tuple[bytes, bytes]] = []
    domains: dict[str, int] = {}
    excluded: list[tuple[int, str]] = []
    encode, pack_key, pack_shard = ENCODER.encode, _KEY.pack, _SHARD.pack
    for idx, item in enumerate(items):
        email = item.email
        reason = item.exclude or ("double" if idx in dups else "")
        if reason:
            rec = Rcpt(email=email, fields=item.fields, shard=item.shard, line=item.line,
                       status=Status.IGNORED, done_ms=t, reason=reason, smtputf8=item.smtputf8)
            excluded.append((idx, reason))
        else:
            rec = Rcpt(email, item.fields, item.shard, item.line, Status.PENDING, item.smtputf8)
            if not 0 <= item.shard <= 0xFFFF:
                raise OverflowError("shard out of range")
            ready.append((pack_shard(item.shard), pack_key(did, rid)))
            dom = email[email.rindex("@") + 1:]
            domains[dom] = domains.get(dom, 0) + 1
        rcpt_items.append((pack_key(did, rid), encode(rec)))
        rid += 1
    return rcpt_items, ready, domains, excluded
