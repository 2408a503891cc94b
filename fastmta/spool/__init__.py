"""The durable spool (LMDB).  No other fastmta module imports lmdb.

- ``Spool.open(path, cfg)``: one handle per path per process (open it after ``spawn``).
- ``ResultWriter``: group-committed results from asyncio (one writer thread).
- ``ScratchSet``: disk-backed set for analysing files larger than memory.
See docs/spool.md and docs/interfaces.md section 3.
"""

from fastmta.records import (
    DeliveryRecord,
    QuarantineEntry,
    Rcpt,
    RecipientIn,
    Result,
    Status,
    WorkItem,
)
from fastmta.spool.base import CommitStats, InjectStats, dedupe_hash, now_ms
from fastmta.spool.errors import DeliveryNotFound, SpoolError, SpoolFullError
from fastmta.spool.scratch import ScratchSet
from fastmta.spool.store import Spool
from fastmta.spool.writer import ResultWriter

__all__ = [
    "CommitStats",
    "DeliveryNotFound",
    "DeliveryRecord",
    "InjectStats",
    "QuarantineEntry",
    "Rcpt",
    "RecipientIn",
    "Result",
    "ResultWriter",
    "ScratchSet",
    "Spool",
    "SpoolError",
    "SpoolFullError",
    "Status",
    "WorkItem",
    "dedupe_hash",
    "now_ms",
]
