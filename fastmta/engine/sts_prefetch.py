"""The ``_mta-sts`` TXT lookups of a delivery, done once at injection (RFC 8461 3.1).

Injection already resolves the MX of every distinct domain (``entry.domain_router``);
the ``_mta-sts.<domain>`` TXT record is looked up beside it, in the same pass, and the
answers are written to ``<spool>/mta-sts/txt.msgpack`` (``domain -> [wall time, id]``,
id ``""``: no STSv1 record).  Workers (``mta_sts_gate.StsGate``) read that table so
that the large majority of domains, which publish no policy, cost them no DNS query;
only domains with a record (or an error, or no fresh answer) go through the full fetch.

The answer is trusted for ``FRESH_S`` after the lookup (the worker's own no-policy
memo is the same hour), and never over a policy the worker still holds in its cache
(RFC 8461 5.1: a valid cached policy outlives a missing TXT record).  Lookup errors
and invalid records are not written: the worker looks those domains up itself.
Concurrent injections merge into the table; a lost update only means a worker does
the lookup itself.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import msgspec

__all__ = ["FRESH_S", "PrefetchedTxt", "load", "lookup", "save", "table_path"]

FRESH_S = 3600.0
MAX_ENTRIES = 500_000  # older answers are dropped past this (the worker then asks)

_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(dict[str, tuple[float, str]])


def table_path(spool_path: str | os.PathLike[str]) -> Path:
    return Path(spool_path) / "mta-sts" / "txt.msgpack"


def fetcher_for(cfg):
    """A ``PolicyFetcher`` on the configured resolver (its TXT lookup is used here)."""
    from fastmta.smtp.mta_sts_fetch import PolicyFetcher

    c = cfg.compliance
    return PolicyFetcher(list(cfg.dns.nameservers), cfg.dns.port, https_port=c.mta_sts_port,
                         cafile=c.mta_sts_cafile or None, timeout_s=c.mta_sts_timeout_s,
                         allow_loopback=cfg.dns.allow_loopback_mx)


async def lookup(fetcher, domain: str) -> str | None:
    """The policy id of ``domain`` (``""``: no record); None when it cannot be said."""
    try:
        return await fetcher.policy_id(domain)
    except Exception:  # never fail an injection over this: the worker asks itself
        return None


def _read(path: Path) -> dict[str, tuple[float, str]]:
    try:
        return dict(_dec.decode(path.read_bytes()))
    except (OSError, msgspec.DecodeError, ValueError):
        return {}


def load(spool_path: str | os.PathLike[str]) -> dict[str, tuple[float, str]]:
    """The table (``domain -> (wall time, id)``); empty when missing or unreadable."""
    return _read(table_path(spool_path))


def save(spool_path: str | os.PathLike[str], answers: dict[str, str],
         now: float | None = None) -> int:
    """Merge ``domain -> id`` answers into the spool's table (atomic replace)."""
    if not answers:
        return 0
    path = table_path(spool_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t = time.time() if now is None else now
    table = {d: v for d, v in _read(path).items() if t - v[0] < FRESH_S}
    for d, pid in answers.items():
        table[d.lower().rstrip(".")] = (t, pid)
    if len(table) > MAX_ENTRIES:
        keep = sorted(table.items(), key=lambda kv: kv[1][0])[-MAX_ENTRIES:]
        table = dict(keep)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(_enc.encode(table))
    os.replace(tmp, path)
    return len(answers)


class PrefetchedTxt:
    """The worker's view of the table, re-read when the file changes (checked at most
    every ``check_s``)."""

    def __init__(self, spool_path: str | os.PathLike[str], *, clock=time.time,
                 check_s: float = 2.0) -> None:
        self.path = table_path(spool_path)
        self.clock = clock
        self.check_s = check_s
        self._table: dict[str, tuple[float, str]] = {}
        self._mtime = -1.0
        self._checked = float("-inf")
        self.hits = 0  # lookups saved (tests and the bench check it)

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < self.check_s:
            return
        self._checked = now
        try:
            mtime = self.path.stat().st_mtime
        except OSError:
            return
        if mtime != self._mtime:
            self._mtime = mtime
            self._table = _read(self.path)

    def no_policy_until(self, domain: str) -> float:
        """Wall time until which ``domain`` is known to publish no policy (0: unknown)."""
        self._refresh()
        hit = self._table.get(domain)
        if hit is None or hit[1]:
            return 0.0
        until = hit[0] + FRESH_S
        if until <= self.clock():
            return 0.0
        self.hits += 1
        return until
