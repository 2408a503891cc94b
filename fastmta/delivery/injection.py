"""Injection of a delivery into the spool: ``inject()`` and the items it streams.

The rows are checked as ``analyze`` checks them (``analysis._Prechecker``), routed to a
shard (``shard_of``, default ``HashShard``) and streamed into the spool as
``RecipientIn`` items, durable per batch; duplicates, denylisted and quarantined
addresses are found by the spool itself.  A CSV's simple records are checked and
routed a batch at a time by the compiled core (``csv_rows``, see ``_csv_batches``), the
others one by one.  With ``parallel`` a spawned process reads and checks the input
while this one writes the spool.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import pickle
import queue
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import msgspec

from fastmta.config import DeliveryConfig
from fastmta.core import csv_rows
from fastmta.delivery.addresses import (
    CONTROL_RE,
    DOMAIN_CACHE,
    FAST_ADDRESS_RE,
    check_address,
    domain_shard,
)
from fastmta.delivery.analysis import (
    REASONS,
    Analysis,
    Exclusion,
    _columns,
    _finish,
    _Prechecker,
    check_size,
    checked_sender,
    template_warnings,
)
from fastmta.delivery.recipients import InputError, RecipientReader, Row, open_recipients
from fastmta.delivery.template import Template
from fastmta.errors import FastMTAError
from fastmta.records import DeliveryRecord, RecipientIn

if TYPE_CHECKING:  # the spool is passed in; injection itself never opens LMDB
    from fastmta.spool import Spool


def check_delivery_inputs(template_bytes: bytes, *, mail_from: str = "",
                          validity_s: float | None = None,
                          cfg: DeliveryConfig | None = None) -> tuple[float, Template, str]:
    """The checks that need no recipient: validity range, template, envelope sender,
    message size.  Returns (validity_s, template, normalised sender); raises the user's
    error.  ``inject`` runs them first; callers that do work before injecting (MX
    routing) call this before that work."""
    cfg = cfg or DeliveryConfig()
    validity_s = cfg.validity_s if validity_s is None else validity_s
    if not 0 < validity_s <= cfg.max_validity_s:
        raise FastMTAError(
            f"validity {validity_s:.0f}s out of range (max {cfg.max_validity_s:.0f}s = 3.5 days)"
        )
    template = Template(template_bytes)
    mail_from = mail_from or template.from_address
    norm_from = checked_sender(mail_from)
    check_size(len(template_bytes), cfg)
    return validity_s, template, norm_from


def inject(
    spool: Spool,
    reader: RecipientReader | Iterable[Row],
    template_bytes: bytes,
    *,
    mail_from: str = "",
    validity_s: float | None = None,
    cfg: DeliveryConfig | None = None,
    shard_of: Callable[[str], int] | None = None,
    shards: int = 64,
    name: str = "",
    on_excluded: Callable[[Exclusion], None] | None = None,
    dkim_has_key: Callable[[str], bool] | None = None,
    delivery_id: int | None = None,
    parallel: bool | None = None,
    pool: str = "",
) -> Analysis:
    """Create a delivery and stream its recipients into the spool (durable per batch).

    ``parallel``: read and check the input in a second (spawned) process while this one
    writes the spool.  Off by default (it only pays with a spare core: see
    docs/spool.md); ``FASTMTA_INJECT_PARALLEL=1`` turns it on for files over 16 MB.

    ``shard_of(domain) -> shard`` routes each domain (the engine passes its MX-site
    router); the default is a stable hash of the domain over ``shards``.  Pass
    ``delivery_id`` (with the same input) to resume an interrupted injection.  The
    returned ``Analysis`` has ``delivery_id`` set; the delivery is left ``active``."""
    cfg = cfg or DeliveryConfig()
    validity_s, template, norm_from = check_delivery_inputs(
        template_bytes, mail_from=mail_from, validity_s=validity_s, cfg=cfg)
    pre = _Prechecker(template, _columns(reader))
    if shard_of is None:
        shard_of = HashShard(shards)
    if parallel is None:
        parallel = os.environ.get("FASTMTA_INJECT_PARALLEL") == "1" and _worth_a_process(reader, shard_of)

    if delivery_id is None:
        from fastmta.spool import now_ms

        t0 = now_ms()
        rec = DeliveryRecord(
            name=name, mail_from=norm_from, created_ms=t0, expires_ms=t0 + int(validity_s * 1000),
            fields=template.fields, source=os.fspath(getattr(reader, "name", "")), smtputf8=template.smtputf8,
            pool=pool,
        )
        delivery_id = spool.create_delivery(rec, template_bytes)
    a = Analysis(message_bytes=template.size, fields=template.fields, mail_from=norm_from,
                 delivery_id=delivery_id)
    warnings = template_warnings(template, mail_from=norm_from, cfg=cfg, dkim_has_key=dkim_has_key)
    counts = {"smtputf8": 0}
    details: dict[int, str] = {}

    items: Iterable[RecipientIn]
    if parallel:
        assert isinstance(reader, RecipientReader)
        items = _items_from_process(reader, template_bytes, shard_of, pre, counts, details)
    elif isinstance(reader, RecipientReader) and reader.fmt == "csv":
        items = itertools.chain.from_iterable(
            _csv_batches(pre, reader, shard_of, counts, details))
    else:
        items = _items(pre, pre.rows(reader), shard_of, counts, details)

    def excluded(item: RecipientIn, reason: str) -> None:
        if on_excluded is not None:
            on_excluded(Exclusion(item.line, item.email, reason, details.pop(item.line, "")))
        else:
            details.pop(item.line, None)

    try:
        stats = spool.add_recipients(delivery_id, items, on_excluded=excluded)
    except InputError as exc:
        # bad input found part-way: the recipients before it are in the spool; cancel
        # the delivery so that nothing of a half-read file is ever sent
        spool.set_state(delivery_id, "cancelled", f"injection failed: {exc}")
        raise InputError(f"{exc} -- delivery {delivery_id} cancelled, nothing was sent; "
                         "fix the file and inject it again") from None
    spool.set_state(delivery_id, "active")
    k = spool.kpis(delivery_id)
    a.recipients = k.get("recipients", 0)
    a.to_deliver = k.get("to_deliver", 0)
    a.excluded = {r: 0 for r in REASONS[:5]}
    for key, v in k.items():
        if key.startswith("excluded/"):
            a.excluded[key[9:]] = v
    a.smtputf8 = counts["smtputf8"]
    doms = Counter({key.split("/")[1]: v for key, v in k.items()
                    if key.startswith("domain/") and key.endswith("/to_deliver")})
    del stats
    return _finish(a, pre, doms, warnings)


class HashShard:
    """Default router: stable hash of the domain over ``shards`` (picklable, cached)."""

    def __init__(self, shards: int) -> None:
        self.shards = shards
        self._cache: dict[str, int] = {}

    def __call__(self, domain: str) -> int:
        s = self._cache.get(domain)
        if s is None:
            if len(self._cache) > 100_000:
                self._cache.clear()
            s = self._cache[domain] = domain_shard(domain, self.shards)
        return s

    def __getstate__(self) -> dict[str, int]:
        return {"shards": self.shards}

    def __setstate__(self, state: dict[str, int]) -> None:
        self.__init__(state["shards"])  # type: ignore[misc]


def _items(
    pre: _Prechecker,
    rows: Iterable[tuple[int, str, tuple[str, ...], str]],
    shard_of: Callable[[str], int],
    counts: dict[str, int],
    details: dict[int, str],
) -> Iterator[RecipientIn]:
    check = pre.check
    # Fast path for the common row (plain ASCII address of a known-good domain, clean
    # header fields): the same decisions as ``check`` without its calls.  Anything else
    # goes through ``check``.
    fast = FAST_ADDRESS_RE.fullmatch
    dcache = DOMAIN_CACHE
    ctl = CONTROL_RE.search
    hidx = pre.hidx
    all_header = len(hidx) == len(pre.fields)
    fast_ok = not pre.bidx
    scache = shard_of._cache if isinstance(shard_of, HashShard) else None
    for line, email, vals, error in rows:
        if fast_ok and not error:
            m = fast(email)
            if m is not None:
                local, domain = m.groups()
                dom = dcache.get(domain)
                if (
                    dom is not None and len(local) <= 64 and len(email) <= 254
                    and not (hidx and ctl(" ".join(vals) if all_header
                                          else " ".join([vals[i] for i in hidx])))
                ):
                    shard = scache.get(dom) if scache is not None else None
                    if shard is None:
                        shard = shard_of(dom)
                    yield RecipientIn(email if dom == domain else f"{local}@{dom}", vals,
                                      shard, line, "", False)
                    continue
        reason, detail, norm, utf8 = check(email, vals, error)
        if reason:
            if detail:
                details[line] = detail
            yield RecipientIn(email=norm or email.strip()[:320], line=line, exclude=reason)
            continue
        if utf8:
            counts["smtputf8"] += 1
        yield RecipientIn(norm, vals, shard_of(norm[norm.rindex("@") + 1:]), line, "", utf8)


_CSV_BATCH = 4096  # records per ``csv_rows`` call
_DOMAIN_MEMO_MAX = 200_000


def _csv_batches(
    pre: _Prechecker,
    reader: RecipientReader,
    shard_of: Callable[[str], int],
    counts: dict[str, int],
    details: dict[int, str],
) -> Iterator[list[RecipientIn]]:
    """The items of a CSV, in input order, a batch at a time: the simple records are
    checked and routed by the core's ``csv_rows`` (see ``fastmta._core_rows``), the
    others one by one with the full checks (``reader.record`` then ``pre.check``), and
    each valid domain's normalised form and shard is memoised for the simple path."""
    ncol, ei, pick_idx = reader.csv_columns(pre.fields)
    pick = reader._picker(pre.fields)
    rd = reader._csv
    hidx, bidx, marker = tuple(pre.hidx), tuple(pre.bidx), pre.marker
    domains: dict[str, tuple[str, int]] = {}
    last = rd.line_num
    while True:
        items, slow, last = csv_rows(rd, _CSV_BATCH, last, ncol, ei, pick_idx, hidx, bidx,
                                     marker, domains)
        n = len(items)
        if slow:
            blank = False
            for pos, first, line, rec in slow:
                row = reader.record(first, line, rec, pick)
                if row is None:
                    blank = True
                    continue
                items[pos] = _checked(pre, row, shard_of, counts, details, domains)
            if blank:
                items = [x for x in items if x is not None]
        if items:
            yield items  # type: ignore[misc]  # no None left
        if n < _CSV_BATCH:
            return


def _checked(
    pre: _Prechecker, row: tuple[int, str, tuple[str, ...], str], shard_of: Callable[[str], int],
    counts: dict[str, int], details: dict[int, str], domains: dict[str, tuple[str, int]],
) -> RecipientIn:
    """One row through the full checks; a valid address's domain (as written) is
    memoised with its normalised form and shard."""
    line, email, vals, error = row
    reason, detail, norm, utf8 = pre.check(email, vals, error)
    if reason:
        if detail:
            details[line] = detail
        return RecipientIn(email=norm or email.strip()[:320], line=line, exclude=reason)
    if utf8:
        counts["smtputf8"] += 1
    dom = norm[norm.rindex("@") + 1:]
    shard = shard_of(dom)
    _memo_domain(domains, email, dom, shard)
    return RecipientIn(norm, vals, shard, line, "", utf8)


def _memo_domain(memo: dict[str, tuple[str, int]], email: str, dom: str, shard: int) -> None:
    """Remember a valid address's domain as written -> (normalised, shard) for the fast
    path of ``csv_rows`` (the normalised domain is a function of the written one,
    ``check_address``); bounded at ``_DOMAIN_MEMO_MAX`` domains."""
    if len(memo) >= _DOMAIN_MEMO_MAX:
        memo.clear()
    memo[email.strip().rpartition("@")[2]] = (dom, shard)


def valid_domains(reader: RecipientReader) -> set[str]:
    """The distinct (normalised) domains of the valid addresses of a recipients file,
    streamed: what routing by MX site resolves before injecting.  A CSV goes through
    the fast path of ``_csv_batches`` (each domain checked once); JSONL row by row."""
    domains: set[str] = set()
    if reader.fmt != "csv":
        for row in reader:
            norm, _utf8, err = check_address(row.email)
            if not err:
                domains.add(norm.rpartition("@")[2])
        return domains
    ncol, ei, _ = reader.csv_columns([])
    pick = reader._picker([])
    rd = reader._csv
    memo: dict[str, tuple[str, int]] = {}
    last = rd.line_num
    while True:
        items, slow, last = csv_rows(rd, _CSV_BATCH, last, ncol, ei, (), (), (), "", memo)
        for _pos, first, line, rec in slow:
            row = reader.record(first, line, rec, pick)
            if row is None or row[3]:
                continue
            norm, _utf8, err = check_address(row[1])
            if not err:
                dom = norm.rpartition("@")[2]
                domains.add(dom)
                _memo_domain(memo, row[1], dom, 0)
        if len(items) < _CSV_BATCH:
            return domains


_PARALLEL_MIN_BYTES = 16 * 1024 * 1024
_CHUNK = 5000


def _worth_a_process(reader: Any, shard_of: Callable[[str], int]) -> bool:
    if not isinstance(reader, RecipientReader):
        return False
    try:
        if os.path.getsize(reader.name) < _PARALLEL_MIN_BYTES:
            return False
        pickle.dumps(shard_of)
    except (OSError, pickle.PicklingError, TypeError, AttributeError):
        return False
    return True


class _Chunk(msgspec.Struct, array_like=True):
    items: list[RecipientIn]
    details: dict[int, str]
    done: bool = False
    smtputf8: int = 0
    missing: dict[str, int] = msgspec.field(default_factory=dict)
    error: str = ""


def _reader_process(path: str, fmt: str, template_bytes: bytes, shard_of: Callable[[str], int],
                    conn: Any) -> None:
    """Child: read + check the input, send chunks of RecipientIn (the pipe's buffer is the
    backpressure: at most about one chunk waits)."""
    enc = msgspec.msgpack.Encoder()
    try:
        template = Template(template_bytes)
        with open_recipients(path, fmt) as reader:
            pre = _Prechecker(template, _columns(reader))
            counts = {"smtputf8": 0}
            details: dict[int, str] = {}
            buf: list[RecipientIn] = []
            rows = (itertools.chain.from_iterable(_csv_batches(pre, reader, shard_of, counts, details))
                    if reader.fmt == "csv" else _items(pre, pre.rows(reader), shard_of, counts, details))
            for item in rows:
                buf.append(item)
                if len(buf) >= _CHUNK:
                    conn.send_bytes(enc.encode(_Chunk(buf, details)))
                    buf, details = [], {}
            conn.send_bytes(b"\x00" + enc.encode(_Chunk(buf, details, True, counts["smtputf8"],
                                                         pre.missing_counts())))
    except Exception as exc:  # reported to the parent, which raises it
        conn.send_bytes(b"\x00" + enc.encode(_Chunk([], {}, True,
                                                     error=f"{type(exc).__name__}: {exc}")))
    finally:
        conn.close()


def _items_from_process(
    reader: RecipientReader, template_bytes: bytes, shard_of: Callable[[str], int],
    pre: _Prechecker, counts: dict[str, int], details: dict[int, str],
) -> Iterator[RecipientIn]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_reader_process, name="fastmta-inject-reader",
                    args=(os.fspath(reader.name), reader.fmt, template_bytes, shard_of, child),
                    daemon=True)
    p.start()
    child.close()
    dec = msgspec.msgpack.Decoder(_Chunk)
    # A receiving thread keeps a few chunks buffered so that the child keeps reading
    # while this process commits (bounded: at most 8 chunks in memory).
    buf: queue.Queue[bytes | None] = queue.Queue(maxsize=8)

    def pump() -> None:
        try:
            while True:
                data = parent.recv_bytes()
                buf.put(data)
                if data[:1] == b"\x00":  # the final chunk (see _reader_process)
                    return
        except (EOFError, OSError):
            buf.put(None)

    th = threading.Thread(target=pump, name="fastmta-inject-pump", daemon=True)
    th.start()
    try:
        while True:
            data = buf.get()
            if data is None:
                raise FastMTAError("the recipient reader process died")
            msg = dec.decode(data[1:] if data[:1] == b"\x00" else data)
            if msg.error:
                raise FastMTAError(f"reading {reader.name}: {msg.error}")
            details.update(msg.details)
            yield from msg.items
            if msg.done:
                counts["smtputf8"] += msg.smtputf8
                pre.missing.update(msg.missing)
                return
    finally:
        parent.close()
        p.join(5)
        if p.is_alive():
            p.kill()
