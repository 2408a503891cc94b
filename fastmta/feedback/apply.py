"""What inbound feedback does to a recipient (the Email Feedback Service model), and the
processor that parses, matches and commits it.

- ``match``: signed tokens only.  The envelope recipient's token (``b-``/``u-``) is trusted
  as is; a token found only in the text (Message-ID, quoted headers) must agree with the
  recipient the report names.  Invalid, truncated, case-mangled tokens are ignored;
  two valid tokens for different recipients = unmatched ("conflicting tokens").
- ``decide``: hard DSN on a ``sent`` recipient -> ``failed`` (KPIs moved from sent to
  failed, quarantine, event ``bounce_async``); soft/delayed DSN -> reason only; ARF
  complaint -> flag ``complained`` + denylist ``complaint`` + KPIs + event ``complaint``;
  auto-reply -> event ``autoreply``; unsubscribe -> denylist ``unsubscribed``.
- Idempotent: a digest per (recipient, effect) is kept in the spool; the recipient flags
  guard as well.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable

import msgspec

from fastmta.config import Config
from fastmta.dns.resolver import provider_of
from fastmta.feedback import tokens as tk
from fastmta.feedback.mime import Limits
from fastmta.feedback.parse import Recipient, Report, parse
from fastmta.records import FeedbackEvent, InboundRecord, Rcpt, Status
from fastmta.spool.inbound import Decision, InboundItem

COMPLAINT_TYPES = frozenset({"abuse", "fraud", "virus", "other"})
UNSUBSCRIBE_TYPES = frozenset({"opt-out", "opt-out-list"})


class Match(msgspec.Struct):
    target: tuple[int, int] | None
    why: str = ""
    role: str = ""  # b | m | u (where the token came from)
    cross_check: bool = False  # the report's recipient must be the token's


def match(report: Report, key: bytes, envelope: Iterable[str] = (),
          tokens: tk.Tokens | None = None) -> Match:
    """The recipient a report is about, from signed tokens only."""
    env: list[tuple[str, tuple[int, int] | None]] = []
    for addr in envelope:
        got = tokens.local_token(addr) if tokens is not None else None
        if got is not None:
            env.append((got[0], tk.verify(key, got[1])))
    text: list[tuple[str, tuple[int, int] | None]] = []
    for item in report.tokens:
        role, _, tok = item.partition("-")
        text.append((role, tk.verify(key, tok)))
    valid_env = {t for _, t in env if t is not None}
    valid_text = {t for _, t in text if t is not None}
    if len(valid_env) > 1 or (valid_env and valid_text - valid_env) or \
            (not valid_env and len(valid_text) > 1):
        return Match(None, "conflicting tokens (replayed or forged)")
    if valid_env:
        role = next(r for r, t in env if t is not None)
        return Match(next(iter(valid_env)), role=role)
    if valid_text:
        role = next(r for r, t in text if t is not None)
        return Match(next(iter(valid_text)), role=role, cross_check=True)
    if env or text:
        return Match(None, "invalid token (forged, truncated or altered)")
    return Match(None, "no token")


def _pick(report: Report, email: str) -> Recipient | None:
    low = email.lower()
    for r in report.recipients:
        if r.email.lower() == low:
            return r
    for r in report.recipients:
        if r.action in (None, "failed"):
            return r
    return report.recipients[0] if report.recipients else None


def _provider(rcpt: Rcpt, providers: dict[str, list[str]]) -> str:
    host = rcpt.mx.split(" ", 1)[0] if rcpt.mx else ""
    return (provider_of([host], providers) if host else None) or "other"


def _flags(rcpt: Rcpt, flag: str) -> str:
    have = [f for f in rcpt.feedback.split(",") if f]
    return ",".join([*have, flag]) if flag not in have else rcpt.feedback


def decide(report: Report, unsubscribe: bool, providers: dict[str, list[str]],
           now_ms: int) -> Callable[[Rcpt], Decision]:
    """The effect of ``report`` on a recipient (pure; applied by the spool)."""

    def fn(rcpt: Rcpt) -> Decision:
        dom = rcpt.domain
        prov = _provider(rcpt, providers)
        base = dict(email=rcpt.email, status=rcpt.status)
        if unsubscribe or (report.kind == "arf" and report.feedback_type in UNSUBSCRIBE_TYPES):
            if "unsubscribed" in rcpt.feedback.split(","):
                return Decision(effect="none")
            new = msgspec.structs.replace(rcpt, feedback=_flags(rcpt, "unsubscribed"))
            return Decision(effect="unsubscribed", rcpt=new, denylist="unsubscribed",
                            kpi={"unsubscribes": 1, f"domain/{dom}/unsubscribes": 1},
                            event=FeedbackEvent(ts_ms=now_ms, kind="unsubscribe",
                                                feedback_type=report.feedback_type or "",
                                                provider=prov, **base))
        if report.kind == "arf":
            ftype = report.feedback_type or "abuse"
            if ftype not in COMPLAINT_TYPES:
                return Decision(effect="recorded", kpi={f"feedback/{ftype}": 1})
            if "complained" in rcpt.feedback.split(","):
                return Decision(effect="none")
            new = msgspec.structs.replace(rcpt, feedback=_flags(rcpt, "complained"))
            return Decision(
                effect="complained", rcpt=new, denylist="complaint",
                kpi={"complaints": 1, f"complaints/{ftype}": 1,
                     f"provider/{prov}/complaints": 1, f"domain/{dom}/complaints": 1},
                event=FeedbackEvent(ts_ms=now_ms, kind="complaint", feedback_type=ftype,
                                    provider=prov, reason="complaint", **base))
        r = _pick(report, rcpt.email)
        if report.kind == "autoreply" or r is None or r.bounce_class in (60, 100):
            name = "challenge_responses" if r is not None and r.bounce_class == 100 \
                else "autoreplies"
            return Decision(effect="recorded", kpi={name: 1},
                            event=FeedbackEvent(ts_ms=now_ms, kind="autoreply",
                                                bounce_class=r.bounce_class if r else 60,
                                                reason=r.reason if r else "auto_reply",
                                                provider=prov, **base))
        ev = dict(enhanced=r.status or "", bounce_class=r.bounce_class, type=r.type,
                  reason=r.reason, provider=prov, text=r.diagnostic[:500])
        if r.action in ("delivered", "relayed", "expanded"):
            return Decision(effect="recorded", kpi={"async_delivered": 1})
        if r.type == "hard" and r.action != "delayed":
            if rcpt.status != Status.SENT:
                return Decision(effect="none")
            new = msgspec.structs.replace(
                rcpt, status=Status.FAILED, done_ms=now_ms, reason=r.reason,
                type="hard", bounce_class=r.bounce_class, enhanced=r.status or "",
                reply=r.diagnostic[:500], feedback=_flags(rcpt, "bounced_async"))
            kpi = {"sent": -1, "failed": 1, "failed_async": 1, "async_bounces": 1,
                   f"reason/{r.reason}": 1, f"domain/{dom}/sent": -1,
                   f"domain/{dom}/failed": 1, f"provider/{prov}/async_bounces": 1}
            if r.bounce_class:
                kpi[f"class/{r.bounce_class}"] = 1
            return Decision(effect="failed", rcpt=new, kpi=kpi, quarantine=r.reason,
                            bounce_class=r.bounce_class,
                            event=FeedbackEvent(ts_ms=now_ms, kind="bounce_async",
                                                email=rcpt.email, status=Status.FAILED, **ev))
        new = msgspec.structs.replace(rcpt, reason=r.reason, last_soft_reason=r.reason)
        return Decision(effect="reason_updated", rcpt=new,
                        kpi={"async_soft": 1, f"soft_reason/{r.reason}": 1},
                        event=FeedbackEvent(ts_ms=now_ms, kind="bounce_async", **base, **ev))

    return fn


def _dedupe(report: Report, target: tuple[int, int], unsubscribe: bool, raw: bytes) -> bytes:
    did, rid = target
    if unsubscribe or (report.kind == "arf" and report.feedback_type in UNSUBSCRIBE_TYPES):
        what = "unsubscribe"
    elif report.kind == "arf":
        what = f"arf/{report.feedback_type}"
    elif report.kind == "dsn" and any(r.type == "hard" and r.action != "delayed"
                                      for r in report.recipients):
        what = "hard"
    else:  # soft DSNs and auto-replies: the same message twice is one
        what = f"{report.kind}/{report.message_id or hashlib.sha256(raw).hexdigest()}"
    return hashlib.blake2b(f"{did}:{rid}:{what}".encode(), digest_size=16).digest()


class Processor:
    """Parse, match and commit inbound mail against one spool (no network)."""

    def __init__(self, spool, cfg: Config) -> None:
        self.spool = spool
        self.cfg = cfg
        f = cfg.feedback
        self.key = spool.feedback_key()
        self.tokens = tk.Tokens(self.key, f.bounce_domain or "invalid",
                                bounce_prefix=f.bounce_prefix)
        self.limits = Limits(max_parts=f.parse_max_parts, max_depth=f.parse_max_depth)
        self.parse_limits = self.limits._replace(
            window_bytes=min(f.parse_max_bytes, self.limits.window_bytes))
        self.providers = cfg.dns.providers

    def prepare(self, raw: bytes, *, source: str, peer: str = "", mail_from: str = "",
                rcpt_to: Iterable[str] = (), now_ms: int = 0,
                unsubscribe_token: str = "", report: Report | None = None) -> InboundItem:
        """Parse (unless ``report`` is given) and match one message (no spool write)."""
        rcpts = list(rcpt_to)
        if unsubscribe_token:  # HTTP one-click: no mail, only the token
            report = Report("other", [], None, None, False, tokens=[f"u-{unsubscribe_token}"])
            unsub = True
        else:
            if report is None:
                report = parse(raw, self.parse_limits)
            unsub = any((self.tokens.local_token(a) or ("",))[0] == "u" for a in rcpts)
        m = match(report, self.key, rcpts, self.tokens)
        kind = "unsubscribe" if unsub else report.kind
        r0 = report.recipients[0] if report.recipients else None
        rec = InboundRecord(
            id=0, ts_ms=now_ms, source=source, peer=peer, mail_from=mail_from[:300],
            rcpt_to=[a[:300] for a in rcpts[:10]], size=len(raw), kind=kind,
            why=m.why or report.why, status=(r0.status or "") if r0 else "",
            bounce_class=r0.bounce_class if r0 else 0, type=r0.type if r0 else "",
            reason=r0.reason if r0 else "", feedback_type=report.feedback_type or "",
            subject=report.subject[:200],
            email=",".join(r.email for r in report.recipients)[:1000] if m.cross_check else "")
        keep = self.cfg.feedback.keep_raw_bytes
        item = InboundItem(record=rec, raw=raw[:keep] if keep else b"")
        if m.target is not None and (unsub or report.kind != "other"):
            item.target = m.target
            item.dedupe = _dedupe(report, m.target, unsub, raw)
            item.decide = decide(report, unsub, self.providers, now_ms or _now())
        elif m.target is not None:
            item.record = msgspec.structs.replace(rec, effect="none",
                                                  why=report.why or "nothing to apply")
        return item

    def process(self, raw: bytes, **kw) -> InboundRecord:
        return self.spool.inbound_commit([self.prepare(raw, **kw)])[0]

    def commit(self, items: list[InboundItem]) -> list[InboundRecord]:
        return self.spool.inbound_commit(items)


def _now() -> int:
    import time

    return time.time_ns() // 1_000_000
