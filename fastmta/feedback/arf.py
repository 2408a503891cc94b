"""Feedback loop reports: ARF (RFC 5965, ``message/feedback-report``), Microsoft's JMR
(the reported message only, ``X-HmXmrOriginalRecipient``) and Apple's one-line
unsubscribe mails (``X-Apple-Unsubscribe``).  Pure."""

from __future__ import annotations

from email.message import Message

from fastmta.feedback import dsn
from fastmta.feedback.mime import Walk, header

FEEDBACK_TYPES = ("abuse", "fraud", "virus", "other", "not-spam", "auth-failure", "opt-out",
                  "opt-out-list", "dkim", "spf")


def detect(w: Walk) -> bool:
    root = w.root
    if root.get_content_type() == "multipart/report" and \
            (root.get_param("report-type") or "").lower() == "feedback-report":
        return True
    if any(p.ctype == "message/feedback-report" for p in w.parts):
        return True
    if header(root, "X-Apple-Unsubscribe").lower() == "true":
        return True
    for p in w.parts:
        if p.in_returned and p.ctype == "message/rfc822" or p.depth <= 2:
            m = p.msg
            if header(m, "X-HmXmrOriginalRecipient"):
                return True
    return any(_text_report(p.text) for p in w.parts if p.ctype == "text/plain"
               and not p.in_returned)


def _text_report(text: str) -> dict[str, str] | None:
    """An ARF field block pasted as text (some reporters do), or None."""
    if "Feedback-Type:" not in text:
        return None
    for b in dsn.field_blocks(text):
        if "feedback-type" in b and ("user-agent" in b or "version" in b):
            return b
    return None


def parse(w: Walk) -> tuple[str, list[str], dict[str, str]]:
    """(feedback type, original recipients, report fields)."""
    fields: dict[str, str] = {}
    for p in w.parts:
        if p.ctype == "message/feedback-report":
            for b in dsn.field_blocks(p.text):
                fields.update({k: v for k, v in b.items() if k not in fields})
    if not fields:
        for p in w.parts:
            if p.ctype == "text/plain" and not p.in_returned:
                b = _text_report(p.text)
                if b:
                    fields = b
                    break
    root = w.root
    if fields.get("feedback-type"):
        ftype = fields["feedback-type"].split()[0].strip(";").lower()
    elif header(root, "X-Apple-Unsubscribe").lower() == "true":
        ftype = "opt-out"
    else:
        ftype = "abuse"  # JMR and the like: a complaint without a report part
    rcpts: list[str] = []
    for name in ("original-rcpt-to", "_all_original-rcpt-to"):
        v = fields.get(name, "")
        for a, _ in dsn.addresses(v):
            if a.lower() not in (r.lower() for r in rcpts):
                rcpts.append(a)
    if not rcpts:
        orig = _original(w)
        if orig is not None:
            for name in ("X-HmXmrOriginalRecipient", "To"):
                got = [a for a, _ in dsn.addresses(header(orig, name))]
                if got:
                    rcpts = got[:1]
                    break
        if not rcpts and header(root, "X-Apple-Unsubscribe").lower() == "true":
            rcpts = [a for a, _ in dsn.addresses(header(root, "From"))][:1]
    rcpts = [a for a in rcpts if "redacted" not in a.lower()]
    return ftype, rcpts, fields


def _original(w: Walk) -> Message | None:
    """The reported message (or its headers)."""
    for p in w.parts:
        if p.ctype in ("message/rfc822", "message/global"):
            sub = p.msg.get_payload()
            if isinstance(sub, list) and sub and isinstance(sub[0], Message):
                return sub[0]
        if p.ctype in ("text/rfc822-headers", "text/rfc822-header", "message/rfc822-headers"):
            import email

            return email.message_from_string(p.text)
    return None
