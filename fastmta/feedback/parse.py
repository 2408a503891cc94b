"""One inbound message -> one ``Report`` (the ``fastmta inbound parse --json`` contract).

Order of decisions: an ARF/feedback report; a DSN (``message/delivery-status`` part, or a
non-standard bounce recognised by its sender, subject, ``X-Failed-Recipients`` or
wording); an automatic reply; else ``other`` with a reason.  Each recipient's diagnostic
goes through the compiled classifier (``fastmta.core.classify``): one rule set for SMTP
replies and bounce mail.  Pure and bounded (``mime.Limits``); never raises on input.
"""

from __future__ import annotations

import json
import re
from typing import Any

import msgspec

from fastmta import core
from fastmta.feedback import arf, autoreply, dsn
from fastmta.feedback import tokens as tk
from fastmta.feedback.mime import DEFAULT_LIMITS, Limits, Walk, header, load

_BOUNCE_FROM = re.compile(r"(?:mailer[- ]?daemon|postmaster|mail delivery|mail administrator|"
                          r"mail ?delivery ?(?:system|subsystem|service)|double-bounce|"
                          r"bounce|returned ?mail|microsoftexchange|mdaemon|"
                          r"mail ?router|smtp ?gateway|@[^>]*\.?postmaster)", re.I)
_BOUNCE_SUBJECT = re.compile(
    r"(?:undeliver|undelivered|delivery (?:status notification|failure|failed|problem|"
    r"report|notification)|failure notice|returned mail|return(?:ed)? to sender|"
    r"mail delivery failed|delivery has failed|could not be delivered|non[- ]?remis|"
    r"unzustellbar|nicht zustellbar|no entregado|non recapitato|non consegnato|"
    r"niet bezorgd|onbestelbaar|message not delivered|delivery incomplete|"
    r"mail system error|warning: (?:could not send|message)|delayed mail|"
    r"rejected|system administrator|nondeliverable|not delivered|"
    r"notificaci[oó]n de estado|retour|error sending|send failure|failed delivery|"
    r"problem delivering|mail failed|errors? from|status notification|couldn'?t be delivered|配信|エラー|不達|退信|未送达)", re.I)
_BOUNCE_TEXT = re.compile(
    r"(?:could not be delivered|wasn'?t able to deliver|was not delivered|"
    r"delivery (?:to the following|has failed|failed)|permanent(?:ly)? (?:error|fatal|failed)|"
    r"the following address(?:es)? (?:had|failed)|undeliverable|unable to deliver|"
    r"message (?:was )?(?:rejected|bounced)|returned to (?:the )?sender|"
    r"failed permanently|delivery to .{0,80} failed|user unknown|no such user|"
    r"mailbox (?:unavailable|full|not found)|host unknown|"
    r"did not reach the following recipient)", re.I)


_ACTIONS = frozenset({"failed", "delayed", "delivered", "relayed", "expanded"})


class Recipient(msgspec.Struct):
    email: str
    status: str | None
    action: str | None
    type: str
    bounce_class: int
    reason: str
    diagnostic: str


class Report(msgspec.Struct, omit_defaults=False):
    kind: str  # dsn | arf | autoreply | other
    recipients: list[Recipient]
    feedback_type: str | None
    delivery: str | None
    matched: bool
    # beyond the contract (after the contract's fields)
    why: str = ""  # for "other": why nothing fitted; for matching: why unmatched
    rcpt_id: int | None = None
    tokens: list[str] = msgspec.field(default_factory=list)  # role-token candidates seen
    message_id: str = ""
    subject: str = ""
    truncated: bool = False

    def contract(self) -> dict[str, Any]:
        d = msgspec.to_builtins(self)
        return d


def _classify(status: str | None, diag: str, action: str | None,
              context: str = "") -> tuple[str, int, str]:
    """Type, class and reason of one recipient: its diagnostic through the classifier;
    when only a default rule matched, the bounce's whole explanation (``context``)."""
    if action in ("delivered", "relayed", "expanded"):
        return "ignored", 0, "none"
    text = diag or ""
    if status and status not in text:
        text = f"{status} {text}"
    # The command the reply answered, where the bounce says: a "user unknown" answered
    # to the end of DATA refuses the message, not the address (rule user-unknown-after-data).
    phase = dsn.phase_of(diag or "") or (dsn.phase_of(context) if context else None)
    cmd = "dot" if phase == "dot" else None
    c = core.classify(text, cmd)
    if c.rule.startswith("default") and context:
        c2 = core.classify(f"{status} {context[:4000]}" if status else context[:4000], cmd)
        if not c2.rule.startswith("default") and c2.bounce_class != 60:
            c = c2
    typ = c.type if c.type in ("hard", "soft") else "ignored"
    if action == "delayed" and typ == "hard":
        typ = "soft"
    return typ, c.bounce_class, c.reason


def _sender_side(w: Walk) -> set[str]:
    """Lower-case addresses that belong to the sending side (never failed recipients)."""
    out: set[str] = set()
    root = w.root
    for name in ("To", "From", "Reply-To", "Sender", "Return-Path", "Delivered-To", "Cc"):
        out.update(a.lower() for a, _ in dsn.addresses(header(root, name)))
    for p in w.parts:
        if p.ctype in ("message/rfc822", "message/global"):
            sub = p.msg.get_payload()
            m = sub[0] if isinstance(sub, list) and sub else None
            if m is not None:
                for name in ("From", "Return-Path", "Sender", "Reply-To"):
                    out.update(a.lower() for a, _ in dsn.addresses(header(m, name)))
    return out


def _is_bounce(w: Walk, text: str) -> bool:
    root = w.root
    if header(root, "X-Failed-Recipients"):
        return True
    frm = header(root, "From")
    subj = header(root, "Subject")
    if _BOUNCE_FROM.search(frm) and (_BOUNCE_SUBJECT.search(subj) or _BOUNCE_TEXT.search(text)):
        return True
    if _BOUNCE_SUBJECT.search(subj) and _BOUNCE_TEXT.search(text):
        return True
    if _BOUNCE_TEXT.search(text) and any(
            p.ctype in ("message/rfc822", "text/rfc822-headers", "message/rfc822-headers")
            for p in w.parts):
        return True  # failure wording with the returned message attached
    rp = header(root, "Return-Path")
    return rp in ("<>", "") and bool(_BOUNCE_FROM.search(frm)) and bool(dsn._ENH.search(text))


def _human_text(w: Walk) -> str:
    texts = []
    for p in w.parts:
        if p.in_returned or not p.ctype.startswith("text/"):
            continue
        if p.ctype == "text/html":
            t = re.sub(r"<(?:br|p|div|tr|li)[^>]*>", "\n", p.text, flags=re.I)
            t = re.sub(r"<[^>]+>", " ", t)
            t = re.sub(r"&nbsp;", " ", t)
            if any(p2.ctype == "text/plain" and not p2.in_returned for p2 in w.parts):
                continue
            texts.append(t)
        else:
            texts.append(p.text)
    return dsn.cut_returned("\n".join(texts))


def _dsn_recipients(w: Walk, text: str | None = None) -> tuple[list[Recipient], str]:
    blocks: list[dsn.RcptBlock] = []
    for p in w.parts:
        if p.ctype in ("message/delivery-status", "message/global-delivery-status"):
            blocks.extend(dsn.from_delivery_status(p.text))
    text = _human_text(w) if text is None else text
    if not blocks:
        # a delivery-status block pasted into the text (some gateways do)
        if "Final-Recipient:" in text or "Original-Recipient:" in text:
            blocks = dsn.from_delivery_status(text)
    if not blocks:
        failed = [a for a, _ in dsn.addresses(header(w.root, "X-Failed-Recipients"))]
        subj = header(w.root, "Subject")
        delayed = bool(dsn._DELAY.search(subj)) or (bool(dsn._DELAY.search(text[:2000]))
                                                    and not dsn._PERM.search(text[:4000]))
        exclude = _sender_side(w)
        blocks = dsn.from_text(text, exclude=exclude, failed_hdr=failed, delayed=delayed)
        if not blocks:  # the explanation names nobody: the returned message's To
            to = [a for a in _returned_to(w) if a.lower() not in exclude][:1]
            if to:
                blocks = dsn.from_text(text, exclude=exclude, failed_hdr=to, delayed=delayed)
    elif any(not b.diagnostic for b in blocks):
        # fill missing Diagnostic-Code from the human-readable part (per address)
        # (segmented by every address the report names, so that one recipient's
        # text never runs into the next one's)
        named = [b.email for b in blocks if b.email]
        seg = {x.email.lower(): x.diagnostic
               for x in dsn.from_text(text, exclude=set(), failed_hdr=named)}
        blocks = [b if b.diagnostic else b._replace(diagnostic=seg.get(b.email.lower(), ""))
                  for b in blocks]
    out = []
    seen: set[tuple[str, str | None]] = set()
    for b in blocks:
        key = (b.email.lower(), b.action)
        if key in seen or not b.email:
            continue
        seen.add(key)
        status = b.status or dsn.status_of(b.diagnostic, b.action != "delayed")
        if status.endswith(".0.0") and b.diagnostic:  # generic: the reply's own is better
            own = dsn.norm_status(b.diagnostic)
            if own and own[0] == status[0]:
                status = own
        typ, bclass, reason = _classify(status, b.diagnostic, b.action,
                                        text if len(blocks) == 1 else "")
        action = b.action if b.action in _ACTIONS else ("failed" if b.action is None else None)
        out.append(Recipient(b.email, status, action, typ, bclass, reason,
                             b.diagnostic[:1000]))
    return out, text


_TO_LINE = re.compile(r"^To:[ \t]*(.+)$", re.M | re.I)


def _returned_to(w: Walk) -> list[str]:
    """The To addresses of the returned message: its headers part, or the header lines
    quoted after the explanation of a plain-text bounce."""
    for p in w.parts:
        if p.ctype in ("message/rfc822", "message/global"):
            sub = p.msg.get_payload()
            if isinstance(sub, list) and sub and hasattr(sub[0], "items"):
                got = [a for a, _ in dsn.addresses(header(sub[0], "To"))]
                if got:
                    return got
        elif p.ctype in ("text/rfc822-headers", "message/rfc822-headers") or (
                p.ctype == "text/plain" and not p.in_returned):
            text = p.text[:200_000]
            cut = len(dsn.cut_returned(text)) if p.ctype == "text/plain" else 0
            m = _TO_LINE.search(text, cut) if cut < len(text) else None
            if m:
                return [a for a, _ in dsn.addresses(m.group(1))]
    return []


def _tokens_in(w: Walk, raw_head: str) -> list[str]:
    found: list[str] = []
    texts = [raw_head]
    for p in w.parts:
        if p.in_returned or p.ctype.startswith(("message/", "text/rfc822")):
            texts.append(p.text[:200_000])
            try:
                sub = p.msg.get_payload()
                if isinstance(sub, list) and sub and hasattr(sub[0], "items"):
                    texts.append("\n".join(f"{k}: {v}" for k, v in sub[0].items()))
            except Exception:
                pass
        elif p.ctype.startswith("text/"):
            texts.append(p.text[:200_000])
    for role, tok in tk.candidates("\n".join(texts)):
        item = f"{role}-{tok}"
        if item not in found:
            found.append(item)
    return found


def parse(raw: bytes, limits: Limits = DEFAULT_LIMITS) -> Report:
    """Parse one raw RFC 5322 message (never raises on bad input)."""
    try:
        return _parse(raw, limits)
    except RecursionError:
        return Report("other", [], None, None, False, why="MIME structure too deep")
    except Exception as exc:  # last resort: a result, not a traceback
        return Report("other", [], None, None, False,
                      why=f"unparseable message ({type(exc).__name__})")


def _parse(raw: bytes, limits: Limits) -> Report:  # noqa: C901
    if not raw.strip():
        return Report("other", [], None, None, False, why="empty message")
    w = load(raw, limits)
    root = w.root
    head_end = raw.find(b"\n\n")
    raw_head = raw[: head_end if 0 < head_end < 65536 else 65536].decode("latin-1")
    common = dict(tokens=_tokens_in(w, raw_head), message_id=header(root, "Message-ID")[:300],
                  subject=header(root, "Subject")[:300], truncated=w.truncated)
    if not root.keys():
        return Report("other", [], None, None, False, why="no RFC 5322 header", **common)
    if arf.detect(w):
        ftype, rcpts, _fields = arf.parse(w)
        recips = [Recipient(a, None, None, "ignored", 0, "feedback", "") for a in rcpts]
        return Report("arf", recips, ftype, None, False, **common)
    ses = _ses_json(w)
    if ses is not None:
        return msgspec.structs.replace(ses, **common)
    has_ds = any(p.ctype in ("message/delivery-status", "message/global-delivery-status")
                 for p in w.parts)
    text = _human_text(w)
    if has_ds or _is_bounce(w, text):
        recips, _ = _dsn_recipients(w, text)
        if recips:
            if all(r.bounce_class == 60 for r in recips):
                return _autoreply(w, common, challenge=False)
            return Report("dsn", recips, None, None, False, **common)
        return Report("dsn", [], None, None, False, why="no failed recipient found",
                      **common)
    auto, challenge = autoreply.detect(w)
    if auto:
        return _autoreply(w, common, challenge)
    why = w.cut or "not a bounce, feedback report or automatic reply"
    return Report("other", [], None, None, False, why=why, **common)


def _ses_json(w: Walk) -> Report | None:
    """An Amazon SES notification (SNS e-mail: a JSON body with ``notificationType``)."""
    for p in w.parts:
        if p.in_returned or not p.ctype.startswith("text/") or "notificationType" not in p.text:
            continue
        start = p.text.find("{")
        try:
            obj, _ = json.JSONDecoder(strict=False).raw_decode(p.text[start:])
            if isinstance(obj.get("Message"), str):  # raw SNS envelope
                obj = json.loads(obj["Message"], strict=False)
        except (ValueError, AttributeError):
            continue
        kind = str(obj.get("notificationType") or obj.get("eventType") or "").lower()
        if kind == "bounce":
            b = obj.get("bounce") or {}
            perm = str(b.get("bounceType", "")).lower() == "permanent"
            out = []
            for r in b.get("bouncedRecipients") or []:
                diag = str(r.get("diagnosticCode") or "")
                st = dsn.norm_status(str(r.get("status") or "")) or \
                    dsn.status_of(diag, perm)
                action = str(r.get("action") or ("failed" if perm else "delayed"))
                typ, bclass, reason = _classify(st, diag, action)
                out.append(Recipient(str(r.get("emailAddress", "")), st, action, typ,
                                     bclass, reason, diag[:1000]))
            return Report("dsn", out, None, None, False)
        if kind == "complaint":
            c = obj.get("complaint") or {}
            ftype = str(c.get("complaintFeedbackType") or "abuse").lower()
            rc = [Recipient(str(r.get("emailAddress", "")), None, None, "ignored", 0,
                            "feedback", "") for r in c.get("complainedRecipients") or []]
            return Report("arf", rc, ftype, None, False)
        if kind == "delivery":
            d = obj.get("delivery") or {}
            rc = [Recipient(str(a), "2.0.0", "delivered", "ignored", 0, "none",
                            str(d.get("smtpResponse", ""))[:1000])
                  for a in d.get("recipients") or []]
            return Report("dsn", rc, None, None, False)
    return None


def _autoreply(w: Walk, common: dict, challenge: bool) -> Report:
    frm = [a for a, _ in dsn.addresses(header(w.root, "From"))][:1]
    if challenge:
        recips = [Recipient(a, None, None, "ignored", 100, "challenge_response", "")
                  for a in frm]
    else:
        recips = [Recipient(a, None, None, "ignored", 60, "auto_reply", "") for a in frm]
    return Report("autoreply", recips, None, None, False, **common)
