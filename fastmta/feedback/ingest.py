"""``fastmta inbound ingest FILE|DIR|-``: feedback that lands in an existing mailbox or
comes through a pipe (Postfix ``pipe(8)``, a ``.forward``, procmail): mbox files,
Maildir folders (``cur/`` and ``new/``), a directory of ``.eml`` files, or one message
on stdin.  Same parsing and effects as the listener; committed in groups."""

from __future__ import annotations

import mailbox
import os
import sys
import time
from collections.abc import Iterator

from fastmta.feedback.apply import Processor
from fastmta.records import InboundRecord


def _is_mbox(path: str) -> bool:
    with open(path, "rb") as fh:
        return fh.read(5) == b"From "


def messages(source: str) -> Iterator[tuple[str, bytes]]:
    """(where, raw bytes) of every message in ``source``."""
    if source == "-":
        yield "stdin", sys.stdin.buffer.read()
        return
    if os.path.isdir(source):
        if os.path.isdir(os.path.join(source, "cur")) or os.path.isdir(os.path.join(source, "new")):
            md = mailbox.Maildir(source, factory=None, create=False)
            for key in md.iterkeys():
                with md.get_file(key) as fh:
                    yield f"{source}:{key}", fh.read()
            return
        for name in sorted(os.listdir(source)):
            p = os.path.join(source, name)
            if os.path.isfile(p):
                yield from messages(p)
        return
    if _is_mbox(source):
        box = mailbox.mbox(source, factory=None, create=False)
        for key in box.iterkeys():
            with box.get_file(key) as fh:
                raw = fh.read()
            # the mbox "From " line is not part of the message
            if raw.startswith(b"From "):
                raw = raw.split(b"\n", 1)[1] if b"\n" in raw else b""
            yield f"{source}:{key}", raw
        return
    with open(source, "rb") as fh:
        yield source, fh.read()


def ingest(proc: Processor, source: str, *, batch: int = 256,
           recipient: str = "") -> list[InboundRecord]:
    """Parse, match and apply every message of ``source``; the records, in order.
    ``recipient``: the envelope recipient when the pipe knows it (``$RECIPIENT``)."""
    out: list[InboundRecord] = []
    items = []
    for where, raw in messages(source):
        now = time.time_ns() // 1_000_000
        items.append(proc.prepare(raw, source="ingest", peer=where[:200], now_ms=now,
                                  rcpt_to=[recipient] if recipient else []))
        if len(items) >= batch:
            out.extend(proc.commit(items))
            items = []
    if items:
        out.extend(proc.commit(items))
    return out
