"""Pure-Python reference of the compiled core's CSV fast path of injection (``csv_rows``).

Injection reads a CSV with ``csv.reader`` and checks every record the way
``fastmta.delivery.analysis`` does.  Almost every record of a real list is the simple
case: one physical line, the header's column count, a plain ASCII address whose domain
was seen before, clean header fields.  ``csv_rows`` takes up to ``n`` records from the
reader and turns each simple one into a ``RecipientIn`` in one call (the compiled core
does it without a Python frame per record); any other record is handed back as it is,
with its line numbers, for the caller's full checks (and errors).  The caller keeps
``domains`` (domain as written -> (normalised domain, shard)) for domains it has
checked and routed, so per-domain work (IDNA, label syntax, routing) is done once.

A record is *simple* (gives a ``RecipientIn``) when all of these hold, else it is
handed back (``None`` in ``items`` at its position, and ``(position, first line, last
line, record)`` in ``slow``):

- it ends on the line after the previous record (``reader.line_num == last + 1``);
- it has ``ncol`` fields;
- ``rec[ei]`` is ``local@domain`` with ``local`` a dot-atom of ASCII atext (RFC 5322),
  ``domain`` of ``[A-Za-z0-9.-]`` and a key of ``domains``, ``len(local) <= 64`` and
  ``len(address) <= 254``;
- no field holds a lone surrogate (a byte that was not UTF-8, ``surrogateescape``);
- no header field (``hidx``, indexes into the picked values) holds a control
  character (``[\\x00-\\x1f\\x7f\\x85\\u2028\\u2029]``) and no body field (``bidx``)
  holds ``marker`` (the MIME boundary line) when ``marker`` is not empty.

The item is ``RecipientIn(address with the domain normalised, values of the columns
``pick`` in order, shard, line)``.  Returns ``(items, slow, last line)``; fewer than
``n`` items means the reader is exhausted.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from typing import Any

from fastmta.records import RecipientIn

__all__ = ["csv_rows"]

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-]"
_SIMPLE = re.compile(rf"({_ATEXT}+(?:\.{_ATEXT}+)*)@([A-Za-z0-9.\-]+)")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]")
_SURROGATE = re.compile("[\udc80-\udcff]")


def csv_rows(
    reader: Iterator[list[str]] | Any, n: int, last: int, ncol: int, ei: int,
    pick: tuple[int, ...], hidx: tuple[int, ...], bidx: tuple[int, ...], marker: str,
    domains: dict[str, tuple[str, int]],
) -> tuple[list[RecipientIn | None], list[tuple[int, int, int, list[str]]], int]:
    """Up to ``n`` records of a ``csv.reader`` as ``RecipientIn`` (see module doc)."""
    if not all(0 <= k < ncol for k in pick) or not 0 <= ei < ncol:
        raise IndexError("column index out of range")
    if not all(0 <= k < len(pick) for k in hidx + bidx):
        raise IndexError("field index out of range")
    items: list[RecipientIn | None] = []
    slow: list[tuple[int, int, int, list[str]]] = []
    for rec in itertools.islice(reader, n):
        line = reader.line_num
        first, last = last + 1, line
        item = None
        if line == first and len(rec) == ncol:
            item = _simple(rec, line, ei, pick, hidx, bidx, marker, domains)
        if item is None:
            slow.append((len(items), first, line, rec))
        items.append(item)
    return items, slow, last


def _simple(rec: list[str], line: int, ei: int, pick: tuple[int, ...], hidx: tuple[int, ...],
            bidx: tuple[int, ...], marker: str,
            domains: dict[str, tuple[str, int]]) -> RecipientIn | None:
    email = rec[ei]
    m = _SIMPLE.fullmatch(email)
    if m is None:
        return None
    local, domain = m.groups()
    hit = domains.get(domain)
    if hit is None or len(local) > 64 or len(email) > 254:
        return None
    if any(_SURROGATE.search(f) for f in rec):
        return None
    vals = tuple([rec[i] for i in pick])
    if any(_CONTROL.search(vals[i]) for i in hidx):
        return None
    if marker and any(marker in vals[i] for i in bidx):
        return None
    norm, shard = hit
    return RecipientIn(email if norm == domain else f"{local}@{norm}", vals, shard, line, "", False)
