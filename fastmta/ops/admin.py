"""Queue operations: durable operator requests through the spool, picked up by workers.

Every action is written to the spool's control table and logged as an ``admin`` event in
the same durable transaction, so it survives restarts and a worker started later obeys
it.  Running workers poll the control generation (``[ops] admin_poll_s``, default 1 s).

- ``suspend(site=...)`` / ``suspend(provider=...)``: no new transactions to that site
  (or any site of that provider) until ``resume`` (or ``duration_s``); queued recipients
  are handed back to the spool (deferred, not failed) and come back every
  ``[ops] suspend_recheck_s`` to check.  ``suspend(delivery=ID)``: the delivery is paused
  (workers stop leasing its recipients).  ``suspend(delivery=ID, provider=P)``: only its
  recipients at mailbox provider P are held (deferred, rechecked like a site's), the
  rest of the delivery goes on (the complaint guard's pause).
- ``cancel(delivery)``: remaining recipients become ``failed`` with reason
  ``delivery_canceled`` (no quarantine).  Recipients in flight finish their current
  attempt; anything still pending afterwards is failed by the next sweep (the running
  pool sweeps cancelled deliveries every second).
- ``bounce_site(site)``: fail every recipient currently queued for the site (reason
  ``bounced_by_admin``): those in the spool now (their domains are resolved to sites
  with the configured DNS), and those queued in workers' memory (for
  ``BOUNCE_WINDOW_S``).
- Inspection from the latest status snapshot the pool writes (``status.json`` in the
  spool directory): top sites by queue depth, last error per site, time in queue,
  current limits (``top_sites``), plus ``suspensions()``.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterable
from pathlib import Path

import msgspec

from fastmta.errors import FastMTAError
from fastmta.records import AdminEvent, Result, Status
from fastmta.spool.keys import pack_rcpt

BOUNCE_WINDOW_S = 120.0  # a bounce order also catches what workers lease meanwhile
STATUS_FILE = "status.json"


class AdminError(FastMTAError):
    """A bad admin request (unknown delivery, nothing to resume...)."""


DELIVERY_PROVIDER = "delivery-provider"  # one delivery at one mailbox provider


class Suspension(msgspec.Struct, kw_only=True):
    """An operator suspension of a site or provider (control ``suspend/KIND/NAME``), or
    of one delivery at one mailbox provider (kind ``delivery-provider``, name
    ``DID/PROVIDER``)."""

    kind: str  # site | provider | delivery-provider
    name: str
    reason: str = ""
    since_ms: int = 0
    until_ms: int = 0  # 0 = until resumed
    user: str = ""

    def active(self, now_ms: int) -> bool:
        return not self.until_ms or now_ms < self.until_ms


class BounceOrder(msgspec.Struct, kw_only=True):
    """Fail what is queued for a site (control ``bounce/site/NAME``)."""

    site: str
    reason: str = "bounced_by_admin"
    ts_ms: int = 0
    until_ms: int = 0
    user: str = ""

    def active(self, now_ms: int) -> bool:
        return now_ms < self.until_ms


_ENC = msgspec.msgpack.Encoder()
_SUSP = msgspec.msgpack.Decoder(Suspension)
_BOUNCE = msgspec.msgpack.Decoder(BounceOrder)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _user() -> str:
    try:
        return os.getlogin()
    except OSError:
        return str(os.getuid())


def read_controls(spool, now_ms: int | None = None
                  ) -> tuple[dict[tuple[str, str], Suspension], dict[str, BounceOrder]]:
    """The active suspensions ((kind, name) -> Suspension) and bounce orders (site ->)."""
    t = now_ms or _now_ms()
    susp: dict[tuple[str, str], Suspension] = {}
    for raw in spool.controls("suspend/").values():
        s = _SUSP.decode(raw)
        if s.active(t):
            susp[(s.kind, s.name)] = s
    bounces: dict[str, BounceOrder] = {}
    for raw in spool.controls("bounce/").values():
        b = _BOUNCE.decode(raw)
        if b.active(t):
            bounces[b.site] = b
    return susp, bounces


class Admin:
    """Operator actions on a spool (used by the CLI and by ``WorkerPool``)."""

    def __init__(self, spool, cfg=None) -> None:
        self.spool = spool
        self.cfg = cfg

    # ------------------------------------------------------------ suspend / resume
    def suspend(self, *, site: str | None = None, provider: str | None = None,
                delivery: int | None = None, reason: str = "", duration_s: float | None = None,
                user: str | None = None) -> Suspension | None:
        """Suspend exactly one of a site, a provider or a delivery (see module doc), or
        one delivery at one mailbox provider (``delivery`` and ``provider`` together)."""
        if delivery is not None and provider and not site:
            return self._suspend_at_provider(int(delivery), provider, reason, duration_s,
                                             user)
        kind, name = _one(site=site, provider=provider, delivery=delivery)
        user = user if user is not None else _user()
        t = _now_ms()
        if kind == "delivery":
            did = int(name)
            self._delivery(did)
            self.spool.set_state(did, "paused", reason or "suspended by operator")
            self.spool.append_events([AdminEvent(ts_ms=t, action="suspend",
                                                 target=f"delivery:{did}", delivery_id=did,
                                                 text=reason, user=user)])
            return None
        until = t + int(duration_s * 1000) if duration_s else 0
        s = Suspension(kind=kind, name=name, reason=reason, since_ms=t, until_ms=until,
                       user=user)
        ev = AdminEvent(ts_ms=t, action="suspend", target=f"{kind}:{name}",
                        text=reason + (f" (for {duration_s:g}s)" if duration_s else ""),
                        user=user)
        self.spool.control_put(f"suspend/{kind}/{name}", _ENC.encode(s), [ev])
        return s

    def resume(self, *, site: str | None = None, provider: str | None = None,
               delivery: int | None = None, user: str | None = None) -> None:
        """Undo ``suspend`` (raises ``AdminError`` when it was not suspended).
        ``delivery`` alone also releases that delivery's per-provider pauses."""
        user = user if user is not None else _user()
        if delivery is not None and provider and not site:
            self._resume_at_provider(int(delivery), provider.lower().rstrip("."), user)
            return
        kind, name = _one(site=site, provider=provider, delivery=delivery)
        t = _now_ms()
        if kind == "delivery":
            did = int(name)
            d = self._delivery(did)
            at = self.paused_providers(did)
            for prov in at:
                self._resume_at_provider(did, prov, user)
            if d.state != "paused":
                if at:
                    return
                raise AdminError(f"delivery {did} is {d.state}, not paused")
            self.spool.set_state(did, "active", "")
            self.spool.append_events([AdminEvent(ts_ms=t, action="resume",
                                                 target=f"delivery:{did}", delivery_id=did,
                                                 user=user)])
            return
        key = f"suspend/{kind}/{name}"
        if key not in self.spool.controls(key):
            raise AdminError(f"{kind} {name!r} is not suspended")
        self.spool.control_put(key, None, [AdminEvent(ts_ms=t, action="resume",
                                                      target=f"{kind}:{name}", user=user)])

    # ------------------------------------------------ one delivery at one provider
    def _suspend_at_provider(self, did: int, provider: str, reason: str,
                             duration_s: float | None, user: str | None) -> Suspension:
        """Pause delivery ``did`` for the recipient domains of one mailbox provider
        (a ``compliance.guards.provider_group`` name: google, yahoo, microsoft, apple, or
        a recipient domain; the CLI maps a domain to its group); the rest keeps going."""
        self._delivery(did)
        prov = provider.lower().rstrip(".")
        user = user if user is not None else _user()
        t = _now_ms()
        until = t + int(duration_s * 1000) if duration_s else 0
        s = Suspension(kind=DELIVERY_PROVIDER, name=f"{did}/{prov}", reason=reason,
                       since_ms=t, until_ms=until, user=user)
        ev = AdminEvent(ts_ms=t, action="suspend", target=f"delivery:{did}/provider:{prov}",
                        delivery_id=did, user=user,
                        text=reason + (f" (for {duration_s:g}s)" if duration_s else ""))
        self.spool.control_put(f"suspend/{DELIVERY_PROVIDER}/{did}/{prov}", _ENC.encode(s),
                               [ev])
        return s

    def _resume_at_provider(self, did: int, prov: str, user: str) -> None:
        key = f"suspend/{DELIVERY_PROVIDER}/{did}/{prov}"
        if key not in self.spool.controls(key):
            raise AdminError(f"delivery {did} is not paused at provider {prov!r}")
        self.spool.control_put(key, None, [AdminEvent(
            ts_ms=_now_ms(), action="resume", target=f"delivery:{did}/provider:{prov}",
            delivery_id=did, user=user)])

    def paused_providers(self, did: int) -> list[str]:
        """The providers at which delivery ``did`` is paused now."""
        t = _now_ms()
        out = []
        for raw in self.spool.controls(f"suspend/{DELIVERY_PROVIDER}/{int(did)}/").values():
            s = _SUSP.decode(raw)
            if s.active(t):
                out.append(s.name.partition("/")[2])
        return sorted(out)

    def suspensions(self) -> list[Suspension]:
        """Active site/provider suspensions."""
        return list(read_controls(self.spool)[0].values())

    # ------------------------------------------------------------ cancel
    def cancel(self, delivery: int, reason: str = "delivery_canceled",
               user: str | None = None) -> int:
        """Cancel a delivery: every remaining recipient fails with ``reason``.  Returns
        how many were failed now (in-flight ones follow at the next sweep)."""
        d = self._delivery(delivery)
        user = user if user is not None else _user()
        if d.state != "cancelled":
            self.spool.set_state(delivery, "cancelled", reason)
        n = self.sweep_cancelled(delivery, reason)
        self.spool.append_events([AdminEvent(ts_ms=_now_ms(), action="cancel",
                                             target=f"delivery:{delivery}",
                                             delivery_id=delivery, count=n, text=reason,
                                             user=user)])
        return n

    def sweep_cancelled(self, delivery: int, reason: str = "delivery_canceled") -> int:
        """Fail the pending, not leased recipients of a cancelled delivery."""
        return self._fail_pending(delivery, reason, lambda email: True)

    def sweep_all_cancelled(self) -> int:
        """``sweep_cancelled`` for every cancelled delivery that still has pending ones."""
        n = 0
        for d in self.spool.deliveries():
            if d.state == "cancelled" and self.spool.kpis(d.id).get("pending", 0) > 0:
                n += self.sweep_cancelled(d.id, d.paused_reason or "delivery_canceled")
        return n

    def _fail_pending(self, did: int, reason: str, want, chunk: int = 2000) -> int:
        leased = {rid for _d, rid, _l in self.spool.leases(did)}
        batch: list[Result] = []
        n = 0
        t = _now_ms()
        for rid, rec in self.spool.recipients(did):
            if rec.status != Status.PENDING or rid in leased or not want(rec.email):
                continue
            batch.append(Result(key=pack_rcpt(did, rid), outcome="canceled", reason=reason,
                                time_ms=t))
            if len(batch) >= chunk:
                n += self.spool.commit(batch).applied
                batch = []
        if batch:
            n += self.spool.commit(batch).applied
        return n

    # ------------------------------------------------------------ bounce a site
    def bounce_site(self, site: str, reason: str = "bounced_by_admin",
                    user: str | None = None) -> int:
        """Fail what is queued for ``site`` (see module doc).  Returns the number failed
        in the spool now; workers fail what they hold in memory."""
        return asyncio.run(self.abounce_site(site, reason, user))

    async def abounce_site(self, site: str, reason: str = "bounced_by_admin",
                           user: str | None = None) -> int:
        user = user if user is not None else _user()
        t = _now_ms()
        order = BounceOrder(site=site, reason=reason, ts_ms=t,
                            until_ms=t + int(BOUNCE_WINDOW_S * 1000), user=user)
        self.spool.control_put(f"bounce/site/{site}", _ENC.encode(order))
        domains = await self._domains_of_site(site)
        n = 0
        for d in self.spool.deliveries():
            if self.spool.kpis(d.id).get("pending", 0) > 0 and domains:
                n += await asyncio.to_thread(
                    self._fail_pending, d.id, reason,
                    lambda email: email.rpartition("@")[2] in domains)
        self.spool.append_events([AdminEvent(ts_ms=_now_ms(), action="bounce_site",
                                             target=f"site:{site}", count=n, text=reason,
                                             user=user)])
        return n

    async def _domains_of_site(self, site: str) -> set[str]:
        from fastmta.config import Config
        from fastmta.dns.resolver import Resolver

        cfg = self.cfg or Config()
        pending: set[str] = set()
        for d in self.spool.deliveries():
            if self.spool.kpis(d.id).get("pending", 0) <= 0:
                continue
            for _rid, rec in self.spool.recipients(d.id):
                if rec.status == Status.PENDING:
                    pending.add(rec.email.rpartition("@")[2])
        resolver = Resolver(cfg.dns, cfg.smtp)
        sem = asyncio.Semaphore(64)
        out: set[str] = set()

        async def one(dom: str) -> None:
            async with sem:
                try:
                    mx = await resolver.resolve_mx(dom)
                except Exception:  # unresolvable now: not this site's
                    return
            if mx.error is None and mx.site == site:
                out.add(dom)

        await asyncio.gather(*(one(d) for d in pending))
        return out

    # ------------------------------------------------------------ inspection
    def status(self) -> dict:
        """The pool's latest status snapshot (empty when no pool has run here)."""
        return read_status(self.spool.path)

    def top_sites(self, n: int = 20, by: str = "queued") -> list[dict]:
        """Sites sorted by ``by`` (``queued``, ``active``, ``failed``, ``throttled``...):
        queue depth, connections, limits, last error, time in queue."""
        return top_sites(self.status(), n, by)

    def _delivery(self, did: int):
        from fastmta.spool import DeliveryNotFound

        try:
            return self.spool.delivery(did)
        except DeliveryNotFound as exc:
            raise AdminError(str(exc)) from None


def _one(**kw) -> tuple[str, str]:
    given = [(k, v) for k, v in kw.items() if v is not None and v != ""]
    if len(given) != 1:
        raise AdminError("give exactly one of site, provider or delivery")
    return given[0][0], str(given[0][1])


def read_status(spool_path: str | os.PathLike) -> dict:
    """The JSON status snapshot written by a running pool (``{}`` if none)."""
    try:
        with open(Path(spool_path) / STATUS_FILE) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def write_status(spool_path: str | os.PathLike, status: dict) -> None:
    """Atomically replace the status snapshot (readers never see half a file)."""
    path = Path(spool_path) / STATUS_FILE
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        json.dump(status, f, separators=(",", ":"), default=str)
    os.replace(tmp, path)


def top_sites(status: dict, n: int = 20, by: str = "queued") -> list[dict]:
    """Rows of ``status["sites"]`` sorted by ``by`` descending."""
    rows: Iterable[dict] = ({"site": k, **v} for k, v in status.get("sites", {}).items())
    return sorted(rows, key=lambda r: (-(r.get(by) or 0), r["site"]))[:n]
