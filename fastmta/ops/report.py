"""Delivery reports: KPIs (read from the incremental counters), status, per-recipient log.

The log's CSV follows the accounting-file conventions operators know from PowerMTA:
``type`` (``d`` delivered, ``b`` bounced/failed incl. expired, ``t`` transient = still
pending after a soft bounce or deferral, ``q`` queued (no attempt yet), ``x`` excluded
at analysis), ``timeQueued``, ``timeFirstAttempt``, ``timeLogged``, ``orig``, ``rcpt``,
``dsnAction`` (relayed / failed / delayed), ``dsnStatus``, ``dsnDiag``, ``dsnMta``,
``bounceCat`` (PowerMTA category names), ``dlvSourceIp``, ``jobId`` (= delivery id), plus
fastmta's ``reason``, ``bounceClass``, ``attempts``, ``rcptId``, ``line``.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import IO, Any

import msgspec

from fastmta.records import AttemptEvent, Rcpt, Status
from fastmta.spool import Spool

BOUNCE_CLASSES = {
    1: "Undetermined", 10: "Invalid Recipient", 20: "Soft Bounce", 21: "DNS Failure",
    22: "Mailbox Full", 23: "Too Large", 24: "Timeout", 25: "Admin Failure",
    30: "Generic Bounce: No RCPT", 40: "Generic Bounce", 50: "Mail Block", 51: "Spam Block",
    52: "Spam Content", 53: "Prohibited Attachment", 54: "Relaying Denied",
    60: "Auto-Reply", 70: "Transient Failure", 80: "Subscribe", 90: "Unsubscribe",
    100: "Challenge-Response",
}

# bounce class -> PowerMTA bounce category
_PMTA_CAT = {
    1: "other", 10: "bad-mailbox", 20: "other", 21: "bad-domain", 22: "quota-issues",
    23: "message-too-large", 24: "no-answer-from-host", 25: "inactive-mailbox",
    30: "bad-mailbox", 40: "other", 50: "policy-related", 51: "spam-related",
    52: "spam-related", 53: "content-related", 54: "relaying-issues", 60: "other",
    70: "other", 80: "other", 90: "other", 100: "other",
}
_REASON_CAT = {
    "user_unknown": "bad-mailbox", "invalid_domain": "bad-domain",
    "mailbox_full": "quota-issues", "account_disabled": "inactive-mailbox",
    "refused": "policy-related", "unreachable": "no-answer-from-host",
    "expired": "message-expired",
}

LOG_COLUMNS = [
    "type", "timeQueued", "timeFirstAttempt", "timeLogged", "orig", "rcpt", "dsnAction",
    "dsnStatus", "dsnDiag", "dsnMta", "bounceCat", "dlvSourceIp", "jobId", "reason",
    "bounceClass", "attempts", "rcptId", "line",
]


def bounce_category(bounce_class: int, reason: str) -> str:
    """PowerMTA-style bounce category for a failure."""
    if reason in ("expired",):
        return "message-expired"
    if bounce_class in _PMTA_CAT and bounce_class not in (1, 20, 40, 70):
        return _PMTA_CAT[bounce_class]
    return _REASON_CAT.get(reason, _PMTA_CAT.get(bounce_class, "other"))


def fmt_time(ms: int) -> str:
    if not ms:
        return ""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S+0000")


def _pct(a: int, b: int) -> float:
    return round(100.0 * a / b, 2) if b else 0.0


def build_report(spool: Spool, did: int) -> dict[str, Any]:
    """The delivery report as a JSON-able dict (KPIs come from the counters)."""
    d = spool.delivery(did)
    k = spool.kpis(did)
    by_domain: dict[str, dict[str, int]] = {}
    by_reason: dict[str, int] = {}
    by_class: dict[str, int] = {}
    excluded: dict[str, int] = {}
    soft: dict[str, int] = {}
    for name, v in k.items():
        if name.startswith("domain/"):
            dom, _, what = name[7:].rpartition("/")
            by_domain.setdefault(dom, {"to_deliver": 0, "sent": 0, "failed": 0})[what] = v
        elif name.startswith("reason/"):
            by_reason[name[7:]] = v
        elif name.startswith("class/"):
            by_class[name[6:]] = v
        elif name.startswith("excluded/"):
            excluded[name[9:]] = v
        elif name.startswith("soft_reason/"):
            soft[name[12:]] = v
    for row in by_domain.values():
        row["pending"] = row["to_deliver"] - row["sent"] - row["failed"]
        row["success_pct"] = _pct(row["sent"], row["to_deliver"])
    to_deliver = k.get("to_deliver", 0)
    sent = k.get("sent", 0)
    pending = k.get("pending", 0)
    return {
        "delivery_id": did,
        "name": d.name,
        "state": "done" if d.state != "injecting" and to_deliver and pending == 0 else d.state,
        "mail_from": d.mail_from,
        "created": fmt_time(d.created_ms),
        "expires": fmt_time(d.expires_ms),
        "recipients": k.get("recipients", 0),
        "to_deliver": to_deliver,
        "sent": sent,
        "failed": k.get("failed", 0),
        "failed_hard": k.get("failed_hard", 0),
        "failed_expired": k.get("failed_expired", 0),
        "pending": pending,
        "excluded": k.get("excluded", 0),
        "excluded_by_reason": dict(sorted(excluded.items())),
        "success_pct": _pct(sent, to_deliver),
        "attempts": k.get("attempts", 0),
        "soft_bounces": k.get("soft_bounces", 0),
        "deferrals": k.get("deferrals", 0),
        "by_domain": dict(sorted(by_domain.items(), key=lambda kv: -kv[1]["to_deliver"])),
        "by_reason": dict(sorted(by_reason.items(), key=lambda kv: -kv[1])),
        "by_bounce_class": {
            f"{c} {BOUNCE_CLASSES.get(int(c), '?')}": n
            for c, n in sorted(by_class.items(), key=lambda kv: int(kv[0]))
        },
        "soft_bounces_by_reason": dict(sorted(soft.items(), key=lambda kv: -kv[1])),
        "feedback": feedback_kpis(k),
    }


def feedback_kpis(k: dict[str, int]) -> dict[str, Any]:
    """Asynchronous feedback of a delivery (docs/feedback.md, docs/interfaces.md): async
    bounces, complaints (total, rate over sent, per provider), auto-replies, unsubscribes."""
    sent = k.get("sent", 0)
    prov = {name[9:].rpartition("/")[0]: v for name, v in k.items()
            if name.startswith("provider/") and name.endswith("/complaints")}
    return {
        "async_bounces": k.get("async_bounces", 0),
        "async_soft": k.get("async_soft", 0),
        "complaints": k.get("complaints", 0),
        "complaint_rate_pct": round(100.0 * k.get("complaints", 0) / sent, 3) if sent else 0.0,
        "complaints_by_provider": dict(sorted(prov.items(), key=lambda kv: -kv[1])),
        "autoreplies": k.get("autoreplies", 0),
        "unsubscribes": k.get("unsubscribes", 0),
    }


def format_report(r: dict[str, Any], *, top: int = 20) -> str:
    lines = [
        f"Delivery {r['delivery_id']} {r['name']!s}  state: {r['state']}  from: {r['mail_from']}",
        f"  created {r['created']}  valid until {r['expires']}",
        f"  recipients {r['recipients']:>10}   excluded {r['excluded']:>10}",
        f"  to deliver {r['to_deliver']:>10}   Success {r['success_pct']:.2f}%",
        f"  sent       {r['sent']:>10}   pending  {r['pending']:>10}",
        f"  failed     {r['failed']:>10}   (hard {r['failed_hard']}, expired {r['failed_expired']})",
        f"  attempts   {r['attempts']:>10}   soft bounces {r['soft_bounces']}, deferrals {r['deferrals']}",
    ]
    fb = r.get("feedback") or {}
    if any(fb.get(x) for x in ("async_bounces", "async_soft", "complaints", "autoreplies",
                               "unsubscribes")):
        lines.append(f"  async bounces {fb['async_bounces']} (soft {fb['async_soft']}), "
                     f"complaints {fb['complaints']} ({fb['complaint_rate_pct']:.3f}%), "
                     f"auto-replies {fb['autoreplies']}, unsubscribes {fb['unsubscribes']}")
    if r["excluded_by_reason"]:
        lines.append("Excluded by reason:")
        lines += [f"  {k:<24} {v:>10}" for k, v in r["excluded_by_reason"].items()]
    if r["by_reason"]:
        lines.append("Failed by reason:")
        lines += [f"  {k:<24} {v:>10}" for k, v in r["by_reason"].items()]
    if r["by_bounce_class"]:
        lines.append("Failed by bounce class:")
        lines += [f"  {k:<30} {v:>10}" for k, v in r["by_bounce_class"].items()]
    if r["by_domain"]:
        lines.append(f"By domain (top {top}):")
        lines.append(f"  {'domain':<30} {'to deliver':>10} {'sent':>10} {'failed':>8} {'pending':>8} {'success':>8}")
        for dom, row in list(r["by_domain"].items())[:top]:
            lines.append(f"  {dom:<30} {row['to_deliver']:>10} {row['sent']:>10} {row['failed']:>8} "
                         f"{row['pending']:>8} {row['success_pct']:>7.2f}%")
    return "\n".join(lines)


def build_status(spool: Spool, did: int) -> dict[str, Any]:
    """Short progress view: counters, leases in flight, validity."""
    r = build_report(spool, did)
    leased = len(spool.leases(did))
    done = r["sent"] + r["failed"]
    d = spool.delivery(did)
    return {
        "delivery_id": did,
        "state": r["state"],
        "paused_reason": d.paused_reason,
        "recipients": r["recipients"],
        "to_deliver": r["to_deliver"],
        "sent": r["sent"],
        "failed": r["failed"],
        "pending": r["pending"],
        "in_flight": leased,
        "excluded": r["excluded"],
        "progress_pct": _pct(done, r["to_deliver"]),
        "success_pct": r["success_pct"],
        "expires": r["expires"],
        "spool_full": spool.full or "",
    }


def format_status(s: dict[str, Any]) -> str:
    extra = f" ({s['paused_reason']})" if s["paused_reason"] else ""
    return (
        f"Delivery {s['delivery_id']}: {s['state']}{extra}, {s['progress_pct']:.1f}% done; "
        f"to deliver {s['to_deliver']}, sent {s['sent']}, failed {s['failed']}, "
        f"pending {s['pending']} ({s['in_flight']} in flight), excluded {s['excluded']}; "
        f"Success {s['success_pct']:.2f}%; valid until {s['expires']}"
    )


def _row_type(rec: Rcpt) -> tuple[str, str]:
    if rec.status == Status.SENT:
        return "d", "relayed"
    if rec.status == Status.FAILED:
        return "b", "failed"
    if rec.status == Status.IGNORED:
        return "x", "failed"
    return ("t", "delayed") if rec.attempts or rec.deferrals else ("q", "")


def _dsn_status(rec_status: str, enhanced: str, code: int, reason: str) -> str:
    if enhanced:
        return enhanced
    if reason == "expired":
        return "4.4.7"
    if code:
        return f"{code // 100}.0.0"
    return {"d": "2.0.0", "b": "5.0.0", "x": "5.0.0"}.get(rec_status, "")


def log_rows(spool: Spool, did: int) -> Iterator[dict[str, Any]]:
    """One row per recipient (its current/final state), accounting-file columns."""
    d = spool.delivery(did)
    queued = fmt_time(d.created_ms)
    for rid, rec in spool.recipients(did):
        typ, action = _row_type(rec)
        yield {
            "type": typ,
            "timeQueued": queued,
            "timeFirstAttempt": fmt_time(rec.first_attempt_ms),
            "timeLogged": fmt_time(rec.done_ms or rec.last_attempt_ms),
            "orig": d.mail_from,
            "rcpt": rec.email,
            "dsnAction": action,
            "dsnStatus": _dsn_status(typ, rec.enhanced, rec.code, rec.reason),
            "dsnDiag": f"smtp;{rec.reply}" if rec.reply else "",
            "dsnMta": rec.mx,
            "bounceCat": bounce_category(rec.bounce_class, rec.reason) if typ in ("b", "t") else "",
            "dlvSourceIp": rec.source_ip,
            "jobId": did,
            "reason": rec.reason,
            "bounceClass": rec.bounce_class or "",
            "attempts": rec.attempts,
            "rcptId": rid,
            "line": rec.line,
            "status": rec.status_name,
            "lastSoftReason": rec.last_soft_reason,
        }


def attempt_rows(spool: Spool, did: int) -> Iterator[dict[str, Any]]:
    """One row per attempt from the event log (accounting style)."""
    d = spool.delivery(did)
    queued = fmt_time(d.created_ms)
    for _, ev in spool.events(delivery_id=did):
        if not isinstance(ev, AttemptEvent):
            continue
        typ = {"sent": "d", "hard": "b", "expired": "b"}.get(ev.outcome, "t")
        action = {"d": "relayed", "b": "failed", "t": "delayed"}[typ]
        yield {
            "type": typ, "timeQueued": queued, "timeFirstAttempt": "",
            "timeLogged": fmt_time(ev.ts_ms), "orig": d.mail_from, "rcpt": ev.email,
            "dsnAction": action, "dsnStatus": _dsn_status(typ, ev.enhanced, ev.code, ev.reason),
            "dsnDiag": f"smtp;{ev.reply}" if ev.reply else "", "dsnMta": ev.mx,
            "bounceCat": bounce_category(ev.bounce_class, ev.reason) if typ != "d" else "",
            "dlvSourceIp": ev.source_ip, "jobId": did, "reason": ev.reason,
            "bounceClass": ev.bounce_class or "", "attempts": ev.attempt, "rcptId": ev.rcpt_id,
            "line": "", "outcome": ev.outcome, "dlvTls": ev.tls,
        }


def write_log(rows: Iterator[dict[str, Any]], out: IO[str], fmt: str) -> int:
    """Write rows as ``csv`` (header + accounting columns) or ``jsonl``; returns count."""
    n = 0
    if fmt == "csv":
        w: Any = None
        for row in rows:
            if w is None:
                cols = LOG_COLUMNS + [c for c in row if c not in LOG_COLUMNS]
                w = csv.DictWriter(out, fieldnames=cols, lineterminator="\n")
                w.writeheader()
            w.writerow(row)
            n += 1
        if w is None:
            out.write(",".join(LOG_COLUMNS) + "\n")
    elif fmt == "jsonl":
        enc = msgspec.json.Encoder()
        for row in rows:
            out.write(enc.encode(row).decode() + "\n")
            n += 1
    else:
        raise ValueError(f"unknown log format {fmt!r}")
    return n
