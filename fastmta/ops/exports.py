"""Exports of the event log: accounting CSV, rotated JSONL files, webhooks.

Each exporter reads the spool's event log from a cursor (a small JSON file under
``<spool>/exports/``, replaced atomically) and advances it only after its output is
durable (file fsynced, or HTTP 2xx), so a crash or restart repeats at most the last
batch: at-least-once (the cursor file is not fsynced: after a power loss an export may
repeat more, never skip).  Webhook batches carry a ``batch_id`` (exporter name + first and
last sequence number) that stays the same when a batch is re-sent, even after a
restart, so a receiver can drop duplicates.

- ``JsonlExporter(spool, directory, max_bytes, max_age_s)``: one JSON event per line in
  ``events.jsonl``; rotated to ``events-YYYYmmddTHHMMSS-LASTSEQ.jsonl`` (sorts in log order) by size or age.
- ``CsvExporter(spool, path, ...)``: PowerMTA-style accounting records (``d`` delivered,
  ``b`` bounced, ``t`` transient, ``r`` received), rotated like the JSONL files.
- ``WebhookExporter(spool, url, batch, ...)``: HTTP POST of ``{"batch_id", "events":
  [...]}``; retries with exponential backoff (jittered) on errors and non-2xx replies.
- ``run_exporters(exporters, stop_event, interval_s)``: the loop the pool runs in a
  thread.

The cursor, the shared feed and the ``Exporter`` base class are in ``export_base.py``.
"""

from __future__ import annotations

import logging
import os
import random
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from fastmta.ops import events as E
from fastmta.ops.export_base import EventFeed, Exporter

log = logging.getLogger("fastmta.ops.exports")
_JSON = msgspec.json.Encoder()


# ------------------------------------------------------------------ rotated files
class _RotatingFile:
    def __init__(self, directory: str | os.PathLike, base: str, ext: str,
                 max_bytes: int, max_age_s: float, header: bytes = b"") -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.base, self.ext = base, ext
        self.path = self.dir / f"{base}.{ext}"
        self.max_bytes, self.max_age_s = max_bytes, max_age_s
        self.header = header
        self.opened = time.time()
        self.f = None

    def _open(self) -> None:
        new = not self.path.exists() or self.path.stat().st_size == 0
        self.f = open(self.path, "ab")  # noqa: SIM115
        if new:
            self.opened = time.time()
            if self.header:
                self.f.write(self.header)
        else:
            self.opened = self.path.stat().st_mtime if self.opened == 0 else self.opened

    def fits(self, nbytes: int) -> bool:
        """True if ``nbytes`` more stay within ``max_bytes`` in the current file."""
        size = self.f.tell() if self.f is not None else (
            self.path.stat().st_size if self.path.exists() else len(self.header))
        return size + nbytes <= self.max_bytes

    def write(self, lines: Sequence[tuple[bytes, int]]) -> None:
        """Append ``(line, seq)`` items durably; a file never grows past ``max_bytes``
        (unless one line is bigger) and is rotated by age too."""
        if self.f is None:
            self._open()
        size = self.f.tell()
        floor = len(self.header)
        total = sum(len(line) for line, _seq in lines)
        if size + total <= self.max_bytes or size <= floor and len(lines) == 1:
            lines = [(b"".join(line for line, _seq in lines), lines[-1][1])] if lines else []
        buf: list[bytes] = []
        pending = 0
        prev_seq = 0
        for line, seq in lines:
            if size + pending + len(line) > self.max_bytes and size + pending > floor:
                self.f.write(b"".join(buf))
                buf, pending = [], 0
                self.rotate(prev_seq)
                self._open()
                size = self.f.tell()
            buf.append(line)
            pending += len(line)
            prev_seq = seq
        self.f.write(b"".join(buf))
        self.f.flush()
        os.fsync(self.f.fileno())
        if self.max_age_s and time.time() - self.opened >= self.max_age_s:
            self.rotate(prev_seq)

    def rotate(self, last_seq: int) -> Path | None:
        if self.f is None and not self.path.exists():
            return None
        if self.f is not None:
            self.f.flush()
            os.fsync(self.f.fileno())
            self.f.close()
            self.f = None
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        dest = self.dir / f"{self.base}-{stamp}-{last_seq:012d}.{self.ext}"
        os.replace(self.path, dest)
        self.opened = time.time()
        return dest

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
            self.f = None


class JsonlExporter(Exporter):
    """Events as JSON lines in rotated files (see module docstring)."""

    name = "jsonl"

    def __init__(self, spool, directory: str | os.PathLike, *,
                 max_bytes: int = 64 << 20, max_age_s: float = 3600.0, **kw) -> None:
        super().__init__(spool, **kw)
        self.out = _RotatingFile(directory, "events", "jsonl", max_bytes, max_age_s)

    def export(self, evs, first, last) -> None:
        data = _JSON.encode_lines(evs)
        if self.out.fits(len(data)):  # the usual case: one write
            self.out.write([(data, evs[-1].seq)])
        else:
            enc = _JSON.encode
            self.out.write([(enc(e) + b"\n", e.seq) for e in evs])

    def close(self) -> None:
        self.out.close()


# PowerMTA accounting: type d (delivered), b (bounce), t (transient), r (received)
CSV_FIELDS = ("type", "timeLogged", "timeQueued", "orig", "rcpt", "dsnAction", "dsnStatus",
              "dsnDiag", "dsnMta", "bounceCat", "bounceClass", "bounceType", "reason",
              "dlvSourceIp", "jobId", "rcptId", "attempt", "count")

_BOUNCE_CAT = {10: "bad-mailbox", 20: "other", 21: "bad-domain", 22: "quota-issues",
               23: "message-too-large", 24: "no-answer-from-host", 25: "bad-configuration",
               30: "bad-mailbox", 40: "other", 50: "policy-related", 51: "spam-related",
               52: "spam-related", 53: "content-related", 54: "relaying-issues",
               60: "other", 70: "other", 80: "other", 90: "other", 100: "other"}


_NEEDS_QUOTES = re.compile('[",\r\n]').search
_ISO_CACHE: dict[int, str] = {}


def _iso(ms: int) -> str:
    """``YYYY-mm-dd HH:MM:SS+0000`` (cached per second: rows come in time order)."""
    if not ms:
        return ""
    sec = ms // 1000
    text = _ISO_CACHE.get(sec)
    if text is None:
        if len(_ISO_CACHE) > 4096:
            _ISO_CACHE.clear()
        text = _ISO_CACHE[sec] = datetime.fromtimestamp(sec, UTC).strftime(
            "%Y-%m-%d %H:%M:%S%z")
    return text


class CsvExporter(Exporter):
    """PowerMTA-style accounting CSV (rotated; header in every file)."""

    name = "csv"

    def __init__(self, spool, path: str | os.PathLike, *, max_bytes: int = 64 << 20,
                 max_age_s: float = 3600.0, **kw) -> None:
        kw.setdefault("types", ["reception", "delivery", "bounce", "transient", "expiration",
                                "bounce_async", "complaint"])
        super().__init__(spool, **kw)
        p = Path(path)
        header = (",".join(CSV_FIELDS) + "\r\n").encode()
        self.out = _RotatingFile(p.parent, p.stem, p.suffix.lstrip(".") or "csv",
                                 max_bytes, max_age_s, header)
        self._deliveries: dict[int, tuple[str, int]] = {}

    def _delivery(self, did: int) -> tuple[str, int]:
        d = self._deliveries.get(did)
        if d is None:
            try:
                rec = self.spool.delivery(did)
                d = (rec.mail_from, rec.created_ms)
            except Exception:  # purged
                d = ("", 0)
            if len(self._deliveries) > 1024:
                self._deliveries.clear()
            self._deliveries[did] = d
        return d

    def row(self, ev: E.OpsEvent) -> list | None:
        """The CSV row of one event (None for events that are not accounting records)."""
        if isinstance(ev, E.Reception):
            orig, queued = self._delivery(ev.delivery_id)
            return ["r", _iso(ev.ts_ms), _iso(queued), orig, "", "", "", "", "", "", "",
                    "", "", "", ev.delivery_id, "", "", ev.count]
        if isinstance(ev, E.AsyncBounce | E.Complaint):
            # PowerMTA's accounting types: rb = remote (asynchronous) bounce, f = feedback loop
            orig, queued = self._delivery(ev.delivery_id)
            fbl = isinstance(ev, E.Complaint)
            return ["f" if fbl else "rb", _iso(ev.ts_ms), _iso(queued), orig, ev.email,
                    "" if fbl else "failed", ev.enhanced, f"smtp;{ev.text}" if ev.text else "",
                    "", "" if fbl else _BOUNCE_CAT.get(ev.bounce_class, ""),
                    ev.bounce_class or "", ev.bounce_type,
                    ev.feedback_type if fbl else ev.reason, "", ev.delivery_id, ev.rcpt_id,
                    "", ""]
        if not isinstance(ev, E.Delivery | E.Bounce | E.Transient | E.Expiration):
            return None
        orig, queued = self._delivery(ev.delivery_id)
        status = ev.enhanced or (f"{ev.code // 100}.0.0" if ev.code else "")
        diag = f"smtp;{ev.reply}" if ev.reply else ""
        mta = f"dns;{ev.mx}" if ev.mx else ""
        if isinstance(ev, E.Delivery):
            typ, action, bclass, btype, reason = "d", "relayed", 0, "", ""
        elif isinstance(ev, E.Bounce):
            typ, action, bclass, btype, reason = ("b", "failed", ev.bounce_class,
                                                  ev.bounce_type, ev.reason)
        elif isinstance(ev, E.Expiration):
            typ, action, bclass, btype, reason = "b", "failed", ev.bounce_class, "soft", \
                "expired"
        else:
            typ, action, bclass, btype, reason = ("t", "delayed", ev.bounce_class, "soft",
                                                  ev.reason)
        cat = "message-expired" if reason == "expired" else _BOUNCE_CAT.get(bclass, "")
        if typ == "d":
            cat = ""
        return [typ, _iso(ev.ts_ms), _iso(queued), orig, ev.email, action, status, diag, mta,
                cat, bclass or "", btype, reason, ev.source_ip, ev.delivery_id, ev.rcpt_id,
                ev.attempt, ""]

    def line(self, ev: E.OpsEvent) -> str | None:
        """``row(ev)`` as one CSV record (RFC 4180 quoting where a field needs it)."""
        r = self.row(ev)
        if r is None:
            return None
        for i in (3, 4, 7, 8, 12):  # free text: orig, rcpt, diag, MTA, reason
            v = r[i]
            if v and _NEEDS_QUOTES(v):
                r[i] = '"' + v.replace('"', '""') + '"'
        return ",".join(map(str, r)) + "\r\n"

    def export(self, evs, first, last) -> None:
        lines = []
        for ev in evs:
            text = self.line(ev)
            if text is not None:
                lines.append((text.encode(), ev.seq))
        if not lines:
            return
        if self.out.fits(sum(len(x) for x, _seq in lines)):  # the usual case: one write
            self.out.write([(b"".join(x for x, _seq in lines), lines[-1][1])])
        else:
            self.out.write(lines)

    def close(self) -> None:
        self.out.close()


# ------------------------------------------------------------------ webhooks
class WebhookError(Exception):
    """The receiver did not take the batch (retried)."""


class WebhookExporter(Exporter):
    """Batched HTTP POST of events; at-least-once with a stable ``batch_id``."""

    name = "webhook"
    needs_stable_batches = True

    def __init__(self, spool, url: str, *, batch: int = 500, timeout_s: float = 10.0,
                 backoff_s: float = 1.0, backoff_max_s: float = 60.0, token: str = "",
                 **kw) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"webhook url must be http(s)://, not {url!r}")
        super().__init__(spool, batch=batch, **kw)
        self.url = url
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.token = token
        self.failures = 0  # consecutive
        self.next_try = 0.0
        self.posts = 0

    def batch_id(self, first: int, last: int) -> str:
        return f"{self.name}-{first}-{last}"

    def export(self, evs, first, last) -> None:
        body = b'{"batch_id":"%s","first_seq":%d,"last_seq":%d,"events":[%s]}' % (
            self.batch_id(first, last).encode(), first, last,
            _JSON.encode(evs)[1:-1])
        req = urllib.request.Request(self.url, data=body, method="POST", headers={
            "Content-Type": "application/json", "User-Agent": "fastmta-webhook",
            "X-Fastmta-Batch": self.batch_id(first, last),
            **({"Authorization": f"Bearer {self.token}"} if self.token else {})})
        self.posts += 1
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:  # noqa: S310
                code = resp.status
                resp.read()
        except urllib.error.HTTPError as exc:
            raise WebhookError(f"HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            raise WebhookError(str(exc)) from None
        if not 200 <= code < 300:
            raise WebhookError(f"HTTP {code}")

    def step(self) -> int:
        now = time.monotonic()
        if now < self.next_try:
            return 0
        try:
            n = super().step()
        except WebhookError as exc:
            self.failures += 1
            self.errors += 1
            delay = min(self.backoff_max_s, self.backoff_s * 2 ** min(self.failures - 1, 16))
            self.next_try = now + delay * random.uniform(0.5, 1.0)
            log.warning("webhook %s: %s; retry in %.1fs", self.url, exc, delay)
            return 0
        self.failures = 0
        return n


def from_config(spool, ops) -> list[Exporter]:
    """The exporters enabled in an ``OpsConfig``."""
    out: list[Exporter] = []
    if ops.jsonl_dir:
        out.append(JsonlExporter(spool, ops.jsonl_dir, max_bytes=ops.jsonl_max_bytes,
                                 max_age_s=ops.jsonl_max_age_s))
    if ops.csv_path:
        out.append(CsvExporter(spool, ops.csv_path, max_bytes=ops.jsonl_max_bytes,
                               max_age_s=ops.jsonl_max_age_s))
    if ops.webhook_url:
        out.append(WebhookExporter(spool, ops.webhook_url, batch=ops.webhook_batch,
                                   timeout_s=ops.webhook_timeout_s,
                                   backoff_s=ops.webhook_backoff_s,
                                   backoff_max_s=ops.webhook_backoff_max_s,
                                   token=ops.webhook_token,
                                   types=ops.webhook_types or None))
    return out


def run_exporters(exporters: Sequence[Exporter], stop: threading.Event,
                  interval_s: float = 0.5, final_timeout_s: float = 10.0,
                  nice: int = 0) -> None:
    """Run every exporter until ``stop`` is set, then catch up (bounded) and close.
    ``nice``: lower this thread's CPU priority (Linux: per thread), so that under load
    the exports lag a little instead of slowing delivery."""
    if nice:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        except (AttributeError, OSError):  # not Linux / not permitted: run as is
            pass
    if len(exporters) > 1:
        feed = EventFeed(exporters[0].spool)
        for ex in exporters:
            if ex.spool is feed.spool:
                ex.feed = feed
    try:
        while not stop.is_set():
            busy = False
            for ex in exporters:
                try:
                    busy |= ex.step() > 0
                except Exception:
                    ex.errors += 1
                    log.exception("export %s", ex.name)
            if not busy:
                stop.wait(interval_s)
        deadline = time.monotonic() + final_timeout_s
        for ex in exporters:
            while time.monotonic() < deadline:
                try:
                    if ex.step() == 0 and not getattr(ex, "failures", 0):
                        break
                except Exception:
                    log.exception("export %s", ex.name)
                    break
                if getattr(ex, "failures", 0):
                    time.sleep(min(0.2, max(0.0, ex.next_try - time.monotonic())))
    finally:
        for ex in exporters:
            ex.close()
        log.info("exports: %s; thread CPU %.3fs", ", ".join(
            f"{ex.name} {ex.exported}" for ex in exporters), time.thread_time())
