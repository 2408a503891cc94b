"""Replies in wording no shipped bounce rule knows: the long tail's own texts.

Real providers answer with texts that no rule set has seen: a small ISP's local policy
wording, a corporate gateway's made-up reject codes, a mail store that defers while it
migrates.  The engine classifies them with a code-only fallback rule (class 1,
undetermined) and records them for ``fastmta rules suggest`` (the unknown-reply loop of
issue #16); the sim emits such texts so that the loop has something to learn from.

Two bounded pools (the count of distinct templates a run can show is bounded by their
sizes): ``REFUSALS`` (5xx to RCPT, permanent: the engine retries an undetermined reply
until the recipient expires) and ``DEFERRALS`` (4xx to RCPT, cleared after a delay like
greylisting).  Each provider words its replies in two texts of each pool, chosen by a
hash of its name; the recipient picks one of the two.  The variable parts (address,
numbers, hex IDs, host names) differ per recipient and are masked by
``fastmta.classify.templates.template``, so one text gives one template.  Pure.
"""

from __future__ import annotations

import zlib

__all__ = ["REFUSALS", "DEFERRALS", "odd_reply", "magic_odd_reply"]

# {a}: the recipient, {n}/{m}: numbers, {id}: an 8-hex-digit ID, {host}: a host name
REFUSALS: tuple[str, ...] = (
    "550 5.0.0 MX-Guard verdict {id} for <{a}> (rule set {n})",
    "554 5.0.0 Transaction halted by gateway gw{n}.{host} ref {id}",
    "553 5.3.0 <{a}>: address held by compliance archive (ca-{m})",
    "550 5.0.0 Routing profile {n} has no path for <{a}>",
    "554 5.0.0 Reject code EXT-{m}: see the tenant portal, case {id}",
    "551 5.0.0 Envelope fingerprint {id} matched tenant rule {n}",
    "550 5.0.0 Mailbox <{a}> frozen pending legal hold LH-{m}",
    "550 Nachricht an <{a}> abgewiesen: Regelwerk {n} greift",
    "554 5.0.0 Acheminement interrompu par le filtre local (code FL-{m})",
    "550 5.0.0 Entrega interrompida pela regra local {n} para <{a}>",
    "550 #5.0.0 X-Verdict=DROP;cat={n};id={id}",
)
DEFERRALS: tuple[str, ...] = (
    "451 4.0.0 Hold on: tenant {n} sync in progress for <{a}>",
    "450 4.0.0 Directory lookup for <{a}> pending at dir{n}.{host} (job {m})",
    "451 4.0.0 Scan engine backlog, slot {n} of {m}",
    "451 4.0.0 Access window closed for this relay, code AW-{m}",
    "451 4.0.0 Traitement differe pour <{a}> (lot {m})",
    "450 4.0.0 Provisioning of <{a}> not finished (step {n})",
    "451 4.0.0 Mailstore shard {n} is being migrated (epoch {m})",
    "451 4.0.0 Vorgang {m} fuer <{a}> wurde zurueckgestellt",
)


def odd_reply(pool: tuple[str, ...], provider: str, address: str) -> bytes:
    """The reply line (CRLF-terminated) that ``provider`` gives ``address`` from ``pool``."""
    h = zlib.crc32(address.lower().encode("utf-8", "replace"))
    i = (zlib.crc32(provider.encode("utf-8")) + (h & 1)) % len(pool)
    domain = address.rpartition("@")[2] or "sim.test"
    text = pool[i].format(a=address, n=h % 97 + 1, m=(h >> 8) % 90000 + 10000,
                          id=f"{h:08x}", host=domain)
    return text.encode("utf-8", "replace") + b"\r\n"


def magic_odd_reply(address: str) -> bytes:
    """The reply to the ``oddreply*`` magic local part (a refusal in no provider's
    documentation; the unknown-reply loop's test text)."""
    h = zlib.crc32(address.encode("utf-8", "replace"))
    return b"550 5.9.0 Frobnication store %d declined <%s> (ticket %08x)\r\n" % (
        h % 97, address.encode("utf-8", "replace"), h)
