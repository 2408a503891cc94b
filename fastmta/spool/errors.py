"""Spool errors."""

from __future__ import annotations

from fastmta.errors import FastMTAError


class SpoolError(FastMTAError):
    """The spool cannot do what was asked (bad id, wrong process, schema mismatch)."""


class SpoolFullError(SpoolError):
    """The LMDB map is full.  Nothing was written by the failed transaction; earlier
    commits are intact.  Free space (purge deliveries) or raise ``[spool] map_size_bytes``
    (then ``Spool.set_map_size`` / ``fastmta spool resize``); work then resumes."""

    def __init__(self, message: str, *, added: int = 0) -> None:
        super().__init__(message)
        self.added = added  # for injection: recipients durably added before the failure


class DeliveryNotFound(SpoolError):
    """No delivery with this id in the spool."""
