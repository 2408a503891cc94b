"""The simulated internet sends feedback too: after accepting a message with 250, a
provider may later send a DSN in its own style to the message's return path, an ARF
complaint to the feedback address of the return-path domain, or an automatic reply --
while the delivery runs (``LiveFeedback``) or after it (``run_feedback``).

``plan(messages, spec)`` decides, deterministically per recipient, who gets what;
``build_*`` make the mail (RFC 3464 multipart/report, Exim-style and qmail-style text
bounces, RFC 5965 ARF, RFC 3834 auto-replies); ``send(items, dns_cfg, port)`` finds the
return-path domain's MX through the (sim) DNS like any MX and delivers by SMTP.
"""

from __future__ import annotations

import asyncio
import email.utils
import smtplib
import time
import zlib
from collections.abc import Iterable

import msgspec

from fastmta.config import DnsConfig, SmtpConfig


class FeedbackSpec(msgspec.Struct, frozen=True, kw_only=True):
    bounce_rate: float = 0.05  # accepted, then a hard DSN
    complaint_rate: float = 0.005  # ARF abuse report
    autoreply_rate: float = 0.01  # out of office
    soft_rate: float = 0.0  # delayed DSN (no status change)
    salt: str = "fastmta-sim-feedback"


class FeedbackMail(msgspec.Struct, frozen=True):
    kind: str  # dsn | dsn_soft | arf | autoreply
    rcpt: str  # the recipient the feedback is about
    mail_from: str  # envelope sender of the feedback ("" for DSNs)
    to: str  # envelope recipient (return path, or the FBL address)
    raw: bytes


_STYLES = ("rfc3464", "exim", "qmail")


def _bucket(salt: str, address: str) -> float:
    return zlib.crc32(f"{salt}:{address.lower()}".encode()) / 4294967296.0


def _header(raw: bytes, name: str) -> str:
    head = raw.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    for line in head.split("\r\n"):
        k, _, v = line.partition(":")
        if k.lower() == name.lower():
            return v.strip()
    return ""


def _headers_of(raw: bytes) -> str:
    return raw.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")


def plan(messages: Iterable[tuple[str, list[str], bytes]], spec: FeedbackSpec) -> list[FeedbackMail]:
    """Feedback for accepted messages ``(mail_from, rcpts, body)``: each recipient falls in
    at most one bucket (bounce, complaint, auto-reply, soft) by a hash of its address."""
    out = []
    for mail_from, rcpts, body in messages:
        if not mail_from:
            continue
        dom = mail_from.rpartition("@")[2]
        for rcpt in rcpts:
            b = _bucket(spec.salt, rcpt)
            lim = spec.bounce_rate
            if b < lim:
                style = _STYLES[int(b * 1e6) % len(_STYLES)]
                out.append(FeedbackMail("dsn", rcpt, "", mail_from,
                                        build_dsn(rcpt, mail_from, body, style=style)))
                continue
            if b < lim + spec.complaint_rate:
                out.append(FeedbackMail("arf", rcpt, f"fbl@{rcpt.rpartition('@')[2]}",
                                        f"fbl@{dom}", build_arf(rcpt, body)))
                continue
            lim += spec.complaint_rate
            if b < lim + spec.autoreply_rate:
                out.append(FeedbackMail("autoreply", rcpt, "", mail_from,
                                        build_autoreply(rcpt, mail_from, body)))
                continue
            lim += spec.autoreply_rate
            if b < lim + spec.soft_rate:
                out.append(FeedbackMail("dsn_soft", rcpt, "", mail_from,
                                        build_dsn(rcpt, mail_from, body, soft=True)))
    return out


def build_dsn(rcpt: str, return_path: str, original: bytes, *, style: str = "rfc3464",
              soft: bool = False) -> bytes:
    """A bounce for ``rcpt`` in one MTA's style."""
    dom = rcpt.rpartition("@")[2]
    date = email.utils.formatdate()
    mid = f"<{zlib.crc32(rcpt.encode()):08x}.dsn@mx.{dom}>"
    head = _headers_of(original)
    if style == "exim" and not soft:
        return (f"From: Mail Delivery System <Mailer-Daemon@mx.{dom}>\r\nTo: {return_path}\r\n"
                f"Subject: Mail delivery failed: returning message to sender\r\nDate: {date}\r\n"
                f"Message-ID: {mid}\r\nX-Failed-Recipients: {rcpt}\r\nAuto-Submitted: auto-replied\r\n\r\n"
                "This message was created automatically by mail delivery software.\r\n\r\n"
                "A message that you sent could not be delivered to one or more of its\r\n"
                "recipients. This is a permanent error. The following address(es) failed:\r\n\r\n"
                f"  {rcpt}\r\n    mailbox is unknown: 550 5.1.1 No such user\r\n\r\n"
                "------ This is a copy of the message's headers. ------\r\n\r\n"
                f"{head}\r\n").encode()
    if style == "qmail" and not soft:
        return (f"From: MAILER-DAEMON@mx.{dom}\r\nTo: {return_path}\r\nSubject: failure notice\r\n"
                f"Date: {date}\r\nMessage-ID: {mid}\r\n\r\n"
                f"Hi. This is the qmail-send program at mx.{dom}.\r\n"
                "I'm afraid I wasn't able to deliver your message to the following addresses.\r\n"
                "This is a permanent error; I've given up. Sorry it didn't work out.\r\n\r\n"
                f"<{rcpt}>:\r\nSorry, no mailbox here by that name. (#5.1.1)\r\n\r\n"
                "--- Below this line is a copy of the message.\r\n\r\n"
                f"{head}\r\n").encode()
    b = f"dsn{zlib.crc32(rcpt.encode()):08x}"
    action, status, diag = ("delayed", "4.2.2", "452 4.2.2 Mailbox full, will retry") if soft \
        else ("failed", "5.1.1", "550 5.1.1 The email account that you tried to reach does not exist")
    return (f"From: Mail Delivery Subsystem <mailer-daemon@mx.{dom}>\r\nTo: {return_path}\r\n"
            f"Subject: Delivery Status Notification ({'Delay' if soft else 'Failure'})\r\n"
            f"Date: {date}\r\nMessage-ID: {mid}\r\nMIME-Version: 1.0\r\n"
            f'Content-Type: multipart/report; report-type=delivery-status; boundary="{b}"\r\n\r\n'
            f"--{b}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
            f"{'Delivery is delayed' if soft else 'Delivery failed'} to {rcpt}.\r\n\r\n"
            f"--{b}\r\nContent-Type: message/delivery-status\r\n\r\n"
            f"Reporting-MTA: dns; mx.{dom}\r\n\r\nFinal-Recipient: rfc822; {rcpt}\r\n"
            f"Action: {action}\r\nStatus: {status}\r\nRemote-MTA: dns; store.{dom}\r\n"
            f"Diagnostic-Code: smtp; {diag}\r\n\r\n"
            f"--{b}\r\nContent-Type: text/rfc822-headers\r\n\r\n{head}\r\n\r\n--{b}--\r\n").encode()


def build_arf(rcpt: str, original: bytes, *, feedback_type: str = "abuse",
              redact: bool = True) -> bytes:
    """An RFC 5965 report; like most providers, the recipient is redacted in the copy
    (the token in the original's Message-ID / Return-Path identifies it)."""
    dom = rcpt.rpartition("@")[2]
    head = _headers_of(original)
    if redact:
        head = head.replace(rcpt, "redacted@" + dom)
    b = f"arf{zlib.crc32(rcpt.encode()):08x}"
    return (f"From: Feedback Loop <fbl@{dom}>\r\nTo: fbl\r\nSubject: Complaint report\r\n"
            f"Date: {email.utils.formatdate()}\r\nMIME-Version: 1.0\r\n"
            f"Message-ID: <{b}@fbl.{dom}>\r\n"
            f'Content-Type: multipart/report; report-type=feedback-report; boundary="{b}"\r\n\r\n'
            f"--{b}\r\nContent-Type: text/plain\r\n\r\nThis is an abuse report.\r\n\r\n"
            f"--{b}\r\nContent-Type: message/feedback-report\r\n\r\n"
            f"Feedback-Type: {feedback_type}\r\nUser-Agent: SimFBL/1.0\r\nVersion: 1\r\n"
            f"Reported-Domain: {dom}\r\n\r\n"
            f"--{b}\r\nContent-Type: text/rfc822-headers\r\n\r\n{head}\r\n\r\n--{b}--\r\n").encode()


def build_autoreply(rcpt: str, return_path: str, original: bytes) -> bytes:
    subj = _header(original, "Subject")
    mid = _header(original, "Message-ID")
    return (f"From: {rcpt}\r\nTo: {return_path}\r\nSubject: Out of Office: {subj}\r\n"
            f"Date: {email.utils.formatdate()}\r\nAuto-Submitted: auto-replied\r\n"
            f"In-Reply-To: {mid}\r\nReferences: {mid}\r\n"
            f"Message-ID: <ooo{zlib.crc32(rcpt.encode()):08x}@{rcpt.rpartition('@')[2]}>\r\n\r\n"
            "I am out of the office until Monday with limited access to e-mail.\r\n").encode()


async def send(items: list[FeedbackMail], dns: DnsConfig, port: int, *,
               concurrency: int = 8, retries: int = 12) -> dict[str, int]:
    """Deliver each item to the MX of its envelope recipient's domain (through ``dns``)."""
    from fastmta.dns.resolver import Resolver

    resolver = Resolver(msgspec.structs.replace(dns, allow_loopback_mx=True), SmtpConfig())
    sem = asyncio.Semaphore(concurrency)
    counts: dict[str, int] = {}

    def deliver(ip: str, item: FeedbackMail) -> str:
        # like a provider's MTA: a 4xx (421 rate limit, 451) or a dropped connection is
        # retried with a growing pause, a 5xx is final
        pause = 0.05
        for _ in range(retries):
            try:
                with smtplib.SMTP(ip, port, timeout=30) as s:
                    s.ehlo("sim-feedback.test")
                    s.sendmail(item.mail_from, [item.to], item.raw)
                return "sent"
            except smtplib.SMTPRecipientsRefused as exc:
                code = next(iter(exc.recipients.values()))[0]
                if code >= 500:
                    return f"refused {code}"
            except smtplib.SMTPResponseException as exc:
                if exc.smtp_code >= 500:
                    return f"refused {exc.smtp_code}"
            except (smtplib.SMTPServerDisconnected, ConnectionError, TimeoutError):
                pass
            time.sleep(pause)
            pause = min(2.0, pause * 2)
        return "gave_up"

    async def one(item: FeedbackMail) -> None:
        async with sem:
            ans = await resolver.resolve_mx(item.to.rpartition("@")[2])
            ip = _first_ip(ans)
            what = await asyncio.to_thread(deliver, ip, item) if ip else "no_mx"
            counts[what] = counts.get(what, 0) + 1

    await asyncio.gather(*(one(i) for i in items))
    return counts


def _first_ip(ans) -> str:
    for h in getattr(ans, "hosts", None) or []:
        if h.addresses:
            return str(h.addresses[0])
    return ""


BOUNCE_DOMAIN = "bounces.sim.test"
LISTENER_IP = "127.0.9.1"


async def start_listener(sim, cfg, spool, *, domain: str = BOUNCE_DOMAIN,
                         address: str = LISTENER_IP):
    """Turn VERP on in ``cfg``, start the inbound listener on ``address`` at the sim's
    SMTP port and publish it as the MX of ``domain``; returns (cfg, server)."""
    from fastmta.feedback.listener import InboundServer

    fb = msgspec.structs.replace(cfg.feedback, enabled=True, domains=[domain],
                                 unsubscribe_url=f"https://unsubscribe.{domain}")
    cfg = msgspec.structs.replace(cfg, feedback=fb)
    srv = InboundServer(cfg, spool)
    await srv.start(address, sim.smtp_port)
    sim.add_mx(domain, "mx." + domain, address)
    return cfg, srv


class LiveFeedback:
    """The providers' feedback sent while the delivery runs, to the listener ``srv``.

    Every ``interval_s`` the messages the sim accepted since the last look are planned
    (``plan``: the same choice per recipient as all at once); each feedback mail leaves
    ``delay_s`` after its message was seen (a provider bounces after its 250, and the
    engine records the 250 a moment after the sim sent it).  ``finish()`` sends what is
    left, closes ``srv`` and returns the audit (``run_feedback``'s dict plus
    ``sent_during_run``)."""

    def __init__(self, sim, srv, spec: FeedbackSpec | None = None, *,
                 interval_s: float = 0.5, delay_s: float = 1.0) -> None:
        self.sim, self.srv, self.spec = sim, srv, spec or FeedbackSpec()
        self.interval_s, self.delay_s = interval_s, delay_s
        self.cursor: list[int] | None = None
        self.waiting: list[tuple[float, FeedbackMail]] = []  # (seen at, mail)
        self.items: list[FeedbackMail] = []
        self.smtp: dict[str, int] = {}
        self.during = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> LiveFeedback:
        self._task = asyncio.get_running_loop().create_task(self._loop())
        return self

    async def _loop(self) -> None:
        while not self._stop.is_set():
            await self._round(final=False)
            try:
                await asyncio.wait_for(self._stop.wait(), self.interval_s)
            except TimeoutError:
                pass

    async def _round(self, final: bool) -> None:
        new, self.cursor = await self.sim.messages_since(self.cursor)
        now = time.monotonic()
        self.waiting.extend((now, m) for m in plan(new, self.spec))
        if final:
            due, self.waiting = [m for _, m in self.waiting], []
        else:
            due = [m for t, m in self.waiting if t <= now - self.delay_s]
            self.waiting = [(t, m) for t, m in self.waiting if t > now - self.delay_s]
        if not due:
            return
        got = await send(due, self.sim.dns_config(), self.sim.smtp_port)
        for k, v in got.items():
            self.smtp[k] = self.smtp.get(k, 0) + v
        self.items.extend(due)
        if not final:
            self.during += len(due)

    async def finish(self) -> dict:
        try:
            if self._task is not None:
                self._stop.set()
                await self._task
            await self._round(final=True)
        finally:
            await self.srv.close()
        return {**_audit(self.items, self.smtp, self.srv), "sent_during_run": self.during}


def _audit(items: list[FeedbackMail], smtp: dict[str, int], srv) -> dict:
    planned: dict[str, int] = {}
    for i in items:
        planned[i.kind] = planned.get(i.kind, 0) + 1
    counters = srv.proc.spool.inbound_counters()
    effects = {k[7:]: v for k, v in counters.items() if k.startswith("effect/")}
    return {"planned": planned, "smtp": smtp, "effects": effects,
            "all_applied_once": effects.get("failed", 0) == planned.get("dsn", 0)
            and effects.get("complained", 0) == planned.get("arf", 0)
            and effects.get("recorded", 0) == planned.get("autoreply", 0)
            and not effects.get("unmatched") and not effects.get("duplicate")}


async def run_feedback(sim, srv, spec: FeedbackSpec | None = None) -> dict:
    """The providers' feedback for every message the sim accepted, sent after the run
    (``LiveFeedback`` sends it during the run); returns what was planned, the SMTP
    outcomes and what the spool did (``srv`` closed)."""
    return await LiveFeedback(sim, srv, spec).finish()
