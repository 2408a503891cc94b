"""Automatic replies (RFC 3834 ``Auto-Submitted``, the vacation / out-of-office headers
and subjects of common clients in several languages) and challenge-response requests.
Pure."""

from __future__ import annotations

import re

from fastmta.feedback.mime import Walk, header

_SUBJECT = re.compile(
    r"(?:out of (?:the )?office|automatic reply|auto(?:matic)?[- ]?(?:reply|response|"
    r"antwort|respuesta|risposta)|\bauto:|\bautoreply\b|on vacation|vacation (?:reply|"
    r"message|notice)|away from (?:the |my )?office|abwesenheit|nicht im b[üu]ro|"
    r"automatische antwort|r[ée]ponse automatique|absence du bureau|absent du bureau|"
    r"\bcong[ée]s?\b|fuera de la oficina|respuesta autom[áa]tica|fuori ufficio|"
    r"risposta automatica|afwezig|automatisch antwoord|resposta autom[áa]tica|"
    r"ausente|nieobecno|automatyczna odpowied|不在|自動応答|自动回复|休暇|"
    r"i am away|i'm away|currently away|i will be out)", re.I)
_BODY = re.compile(
    r"(?:out of (?:the )?office|i am (?:currently )?(?:away|out of)|i'm (?:currently )?"
    r"(?:away|out of)|on (?:annual )?(?:leave|vacation|holiday)|limited access to (?:my )?"
    r"e-?mail|will (?:be )?(?:back|return) on|return(?:ing)? on|abwesend|im urlaub|"
    r"je suis absent|en cong[ée]|de vacaciones|in ferie|不在|休暇)", re.I)
_CHALLENGE = re.compile(
    r"(?:challenge[- ]response|please confirm (?:that )?you are (?:a )?human|"
    r"verify (?:that )?you are (?:a )?(?:human|real person)|sender verification|"
    r"your message is (?:being )?held|(?:click|reply).{0,40}to (?:verify|confirm) "
    r"(?:your|that you)|whitelist request|spam ?arrest|boxbe|mailchannels hold|"
    r"approve (?:your|this) (?:message|e-?mail))", re.I)


def detect(w: Walk) -> tuple[bool, bool]:
    """(is an automatic reply, is a challenge-response request)."""
    root = w.root
    subject = header(root, "Subject")
    text = " ".join(p.text[:4000] for p in w.parts if p.ctype.startswith("text/")
                    and not p.in_returned)[:8000]
    challenge = bool(_CHALLENGE.search(subject) or _CHALLENGE.search(text))
    auto = header(root, "Auto-Submitted").lower()
    flagged = (auto.startswith("auto-replied") or bool(header(root, "X-Autoreply"))
               or bool(header(root, "X-Autorespond"))
               or header(root, "Precedence").lower() in ("auto_reply", "auto-reply")
               or header(root, "X-Auto-Response-Suppress") != "" and bool(_SUBJECT.search(subject))
               or bool(header(root, "X-Vacation")))
    if challenge:
        return True, True
    if _SUBJECT.search(subject):
        return True, False
    if flagged and (_BODY.search(text) or not text.strip() or auto.startswith("auto-replied")):
        return True, False
    return False, False
