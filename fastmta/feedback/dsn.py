"""Delivery status notifications: RFC 3464 ``message/delivery-status`` fields, and the
non-standard bounces real MTAs still send (qmail, Exim, Postfix without DSN, Sendmail
transcripts, Exchange/Office 365, Gmail, Yahoo, Domino, GroupWise, Courier ...).

Pure.  The non-standard reader follows what those formats share rather than one rule
per MTA: the failed addresses stand in the human-readable text before the copy of the
returned message (or in ``X-Failed-Recipients``), each followed by the remote server's
reply or the MTA's explanation; the sender's own addresses are never recipients.
"""

from __future__ import annotations

import re
from typing import NamedTuple

_ADDR = re.compile(r"(?<![\w.+-])([A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@"
                   r"(?:[A-Za-z0-9-]{1,63}\.)+[A-Za-z0-9-]{2,63})(?![\w-])")
_ENH = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d])")
_CODE = re.compile(r"(?<![\d.\-])([245])\d\d(?=[ -]|$)", re.M)
_FIELD = re.compile(r"^([A-Za-z][A-Za-z0-9-]*)\s*:\s?(.*)$")
_ROLE = re.compile(r"^(postmaster|mailer-daemon|mail-daemon|mailerdaemon|root|"
                   r"nobody|double-bounce|bounce|bounces|noreply|no-reply)$", re.I)

#: lines that start the copy of the original message in a plain-text bounce
_RETURNED = re.compile(
    r"^\s*(?:-{2,}|={2,}|\*{2,}|_{2,}|>{0,1})?\s*(?:"
    r"below this line is a copy of the message|this is a copy of the message|"
    # (not Sendmail's and Courier's opening line "The original message was received at")
    r"(?:the\s+)?(?:original|returned|undelivered|unsent)\s+(?:message|mail|e-?mail)\b"
    r"(?!\s+was\s+received\b)|"
    r"message headers? follows?|headers? of (?:the |your )?(?:original )?message|"
    r"original message (?:header|follows)|copy of (?:the |your )?(?:original )?message|"
    r"message d'origine|nachricht im anhang|originalnachricht|mensaje original|"
    r"messaggio originale|原文|元のメッセージ|"
    r"content-type:\s*message/rfc822|content-type:\s*text/rfc822-headers)", re.I)
_DELAY = re.compile(r"\b(?:delay(?:ed)?|will (?:keep|continue) (?:trying|to try)|"
                    r"still (?:being )?(?:undelivered|retried|trying)|not yet been delivered|"
                    r"warning: (?:message|could not send)|temporar(?:y|ily) (?:failure|error)|"
                    r"retry(?:ing)? (?:for|until|again))\b", re.I)
_PERM = re.compile(r"\b(?:permanent(?:ly)?|fatal|given up|giving up|could not be delivered|"
                   r"couldn't be delivered|undeliverable|unzustellbar|non remis|"
                   r"failed permanently|rejected)\b", re.I)
_DIAG_CUES = re.compile(
    r"(?:said:|returned was:|\bsaid\b|<<<|\bhost\b.*?:|remote server|reason:|"
    r"diagnostic|error|refused|rejected|unknown|does not exist|no such|invalid|"
    r"full|quota|disabled|inactive|blocked|denied|not found)", re.I)


_NOT_RCPT = re.compile(r"\b(?:message-id|in-reply-to|references)\b", re.I)
_CONTACT = re.compile(r"\b(?:please|contact|assistance|send (?:e-?)?mail to|write to|"
                      r"questions?)\b", re.I)


#: the SMTP command a relayed reply answered, as MTAs write it in their bounces:
#: Postfix "(in reply to end of DATA command)", Exim "SMTP error from remote mail
#: server after RCPT TO:<..>", Sendmail transcripts ">>> DATA", "SMTP command: DATA".
_PHASE = re.compile(
    r"(?:in reply to (?:the )?|\bafter |smtp command:?\s*|>>>\s?)"
    r"(end of data|data\b|rcpt\b|mail from)", re.I)


def phase_of(text: str) -> str | None:
    """``rcpt`` when the text shows a reply to RCPT TO, else ``dot`` for a reply to DATA
    or its end, ``mail`` for MAIL FROM, else ``None`` (not said)."""
    seen = {m.group(1).lower() for m in _PHASE.finditer(text[:20000])}
    if "rcpt" in seen:
        return "rcpt"
    if "data" in seen or "end of data" in seen:
        return "dot"
    return "mail" if "mail from" in seen else None


def _line_at(text: str, offset: int) -> str:
    start = text.rfind("\n", 0, offset) + 1
    end = text.find("\n", offset)
    return text[start:end if end >= 0 else len(text)]


class RcptBlock(NamedTuple):
    email: str
    original: str  # Original-Recipient
    action: str | None
    status: str | None
    diagnostic: str
    remote_mta: str
    explicit: bool  # from an RFC 3464 block (not a heuristic)


def field_blocks(text: str) -> list[dict[str, str]]:
    """RFC 3464 / 5965 field blocks: lower-case name -> value (first occurrence; values of
    continuation lines joined).  ``_all_<name>`` keeps every value, ``;``-joined."""
    blocks: list[dict[str, str]] = []
    cur: dict[str, str] = {}
    last = ""
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if not line.strip():
            if cur:
                blocks.append(cur)
                cur, last = {}, ""
            continue
        if line[:1] in (" ", "\t") and last:
            cur[last] = (cur[last] + " " + line.strip()).strip()
            continue
        m = _FIELD.match(line)
        if not m:
            continue
        name, value = m.group(1).lower(), m.group(2).strip()
        if name in cur:
            cur["_all_" + name] = cur.get("_all_" + name, cur[name]) + "; " + value
            last = ""
            continue
        cur[name] = value
        last = name
    if cur:
        blocks.append(cur)
    return blocks


def strip_type(value: str) -> str:
    """``rfc822; a@b`` -> ``a@b`` (address type removed, brackets dropped)."""
    v = value.split(";", 1)[1] if ";" in value else value
    return v.strip().strip("<>").strip()


def norm_status(value: str | None) -> str | None:
    if not value:
        return None
    m = _ENH.search(value)
    return f"{m.group(1)}.{m.group(2)}.{m.group(3)}" if m else None


def _separate(text: str) -> str:
    """Per-recipient field groups written without the blank line between them (seen in
    real reports): a second Final-Recipient (or Original-Recipient) in one block starts
    the next block."""
    out: list[str] = []
    final = orig = False
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        low = line[:20].lower()
        if not line.strip():
            final = orig = False
        elif low.startswith("final-recipient:"):
            if final:
                out.append("")
                orig = False
            final = True
        elif low.startswith("original-recipient:"):
            if orig:
                out.append("")
                final = False
            orig = True
        out.append(line)
    return "\n".join(out)


def from_delivery_status(text: str) -> list[RcptBlock]:
    """The per-recipient blocks of a ``message/delivery-status`` body."""
    out = []
    for b in field_blocks(_separate(text)):
        final = b.get("final-recipient", "")
        orig = b.get("original-recipient", "")
        if not (final or orig):
            continue
        addr = strip_type(final) or strip_type(orig)
        action = (b.get("action", "").split()[0].lower() if b.get("action") else None)
        if action not in ("failed", "delayed", "delivered", "relayed", "expanded"):
            action = "unknown" if action else None
        diag = strip_type(b["diagnostic-code"]) if "diagnostic-code" in b else ""
        if not diag and "x-ms-exchange-message-diagnostic" in b:
            diag = b["x-ms-exchange-message-diagnostic"]
        out.append(RcptBlock(addr, strip_type(orig), action, norm_status(b.get("status")),
                             diag, strip_type(b.get("remote-mta", "")), True))
    return out


def cut_returned(text: str) -> str:
    """The text before the copy of the returned message."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    for i, line in enumerate(lines):
        if i and len(line) < 200 and _RETURNED.match(line):
            return "\n".join(lines[:i])
        if i > 4 and line.startswith(("Received: from ", "Return-Path: <")) and \
                i + 1 < len(lines) and (_FIELD.match(lines[i + 1]) or lines[i + 1][:1] in " \t"):
            return "\n".join(lines[:i])
    return "\n".join(lines)


def addresses(text: str) -> list[tuple[str, int]]:
    """(address, offset) of every address in ``text``, in order."""
    return [(m.group(1).strip("."), m.start(1)) for m in _ADDR.finditer(text)]


def is_role(addr: str) -> bool:
    return bool(_ROLE.match(addr.partition("@")[0]))


def status_of(diag: str, default_perm: bool) -> str:
    """An enhanced status for a diagnostic text: its own, else from its reply code, else
    permanent/temporary from the wording."""
    m = _ENH.search(diag)
    if m and m.group(1) != "2":
        return f"{m.group(1)}.{m.group(2)}.{m.group(3)}"
    m = _CODE.search(diag)
    if m and m.group(1) in "45":
        return f"{m.group(1)}.0.0"
    if _DELAY.search(diag) and not _PERM.search(diag):
        return "4.0.0"
    return "5.0.0" if default_perm else "4.0.0"


def from_text(text: str, *, exclude: set[str], failed_hdr: list[str],
              delayed: bool = False) -> list[RcptBlock]:
    """Heuristic recipient blocks of a plain-text bounce (``text`` already cut before the
    returned message).  ``exclude``: lower-case sender-side addresses."""
    every = [(a, o) for a, o in addresses(text) if not _NOT_RCPT.search(_line_at(text, o))]
    found = [(a, o) for a, o in every if a.lower() not in exclude and not is_role(a)]
    if len(found) > 1:  # a contact address in the boilerplate is not a failed recipient
        kept = [(a, o) for a, o in found if not _CONTACT.search(_line_at(text, o))]
        found = kept or found
    if not found:  # the text names only a role address or the sender itself
        found = [(a, o) for a, o in every if not is_role(a)] or \
            [(a, o) for a, o in every if a.lower() not in exclude]
    wanted = [a.lower() for a in failed_hdr]
    if wanted:
        order = {a: i for i, a in enumerate(wanted)}
        occ = {}
        for a, o in found:
            if a.lower() in order and a.lower() not in occ:
                occ[a.lower()] = o
        found = [(a, occ.get(a.lower(), -1)) for a in failed_hdr]
    seen: set[str] = set()
    uniq = []
    for a, o in found:
        if a.lower() in seen:
            continue
        seen.add(a.lower())
        uniq.append((a, o))
    out = []
    starts = sorted(o for _, o in uniq if o >= 0)
    for a, o in uniq:
        if o < 0:
            seg = text
        else:
            nxt = [s for s in starts if s > o]
            end = nxt[0] if nxt else len(text)
            seg = text[o:end]
            if not _DIAG_CUES.search(seg[len(a):]) and len(uniq) == 1:
                seg = text
        diag = _diagnostic(seg if len(uniq) > 1 else (seg if o >= 0 else text), a)
        st = status_of(diag or text, not delayed)
        action = "delayed" if st.startswith("4") and delayed else "failed"
        out.append(RcptBlock(a, "", action, st, diag, "", False))
    return out


_REPLY_LINE = re.compile(r"(?:said:|returned was:|<<<|\breason:|\bdiagnostic[- ]code:|"
                         r"^\s*[45]\d\d[ -]|[45]\.\d{1,3}\.\d{1,3}\b)", re.I | re.M)


def _diagnostic(seg: str, addr: str) -> str:
    """The most useful line(s) of a recipient's segment: the quoted remote reply when
    there is one, else the explanation following the address."""
    lines = [ln.strip() for ln in seg.split("\n") if ln.strip()]
    for i, ln in enumerate(lines):
        if _REPLY_LINE.search(ln):
            tail = " ".join(lines[i:i + 3])
            return re.sub(r"\s+", " ", tail)[:1000]
    body = " ".join(lines[:6])
    return re.sub(r"\s+", " ", body)[:1000]
