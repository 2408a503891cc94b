"""The pre-flight checks: pure functions over gathered ``Facts`` (no DNS, no sockets).

``evaluate(facts)`` returns the findings, errors first; an empty list means the message
meets what Gmail and Yahoo require of bulk senders (2024 rules): SPF and DKIM, a DMARC
record with From aligned to SPF or DKIM, forward-confirmed reverse DNS, RFC 5322
format, and RFC 8058 one-click unsubscribe covered by the DKIM signature.
"""

from __future__ import annotations

import email.utils
import re
from functools import lru_cache

from fastmta.compliance.facts import CheckResult, Facts, Lookup

__all__ = ["evaluate", "org_domain", "aligned", "parse_dmarc", "check_unsubscribe",
           "check_dkim_dmarc", "check_spf", "check_ptr", "check_message_format"]

_PLACEHOLDER = re.compile(r"\{\{\s*[A-Za-z0-9_.-]+\s*\}\}")
_SINGLETONS = ("from", "sender", "reply-to", "to", "cc", "subject", "date", "message-id",
               "list-unsubscribe", "list-unsubscribe-post")
_MSGID = re.compile(r"^<[^<>@\s]+@[^<>@\s]+>$")
ONE_CLICK = "List-Unsubscribe=One-Click"


@lru_cache(maxsize=1)
def _psl():
    from publicsuffixlist import PublicSuffixList

    return PublicSuffixList()  # the bundled list: offline


def org_domain(domain: str) -> str:
    """The organisational domain (RFC 7489 3.2, Public Suffix List)."""
    d = domain.lower().rstrip(".")
    return _psl().privatesuffix(d) or d


def aligned(a: str, b: str, strict: bool = False) -> bool:
    """DMARC identifier alignment of two domains (relaxed: same organisational domain)."""
    a, b = a.lower().rstrip("."), b.lower().rstrip(".")
    if strict:
        return a == b
    return a == b or org_domain(a) == org_domain(b)


def parse_dmarc(text: str) -> dict[str, str] | None:
    """The tags of a DMARC record (None when it is not one: ``v=DMARC1`` must be first)."""
    tags: dict[str, str] = {}
    for i, part in enumerate(p.strip() for p in text.split(";")):
        if not part:
            continue
        k, eq, v = part.partition("=")
        if not eq:
            return None if i == 0 else tags
        k, v = k.strip().lower(), v.strip()
        if i == 0 and (k != "v" or v != "DMARC1"):
            return None
        tags.setdefault(k, v)
    return tags or None


def _header(facts: Facts, name: str) -> list[str]:
    low = name.lower()
    return [v for n, v in facts.headers if n.lower() == low]


def _from_domain(facts: Facts) -> str:
    froms = _header(facts, "from")
    if not froms:
        return ""
    _, addr = email.utils.parseaddr(_PLACEHOLDER.sub("x", froms[0]))
    return addr.rpartition("@")[2].lower() if "@" in addr else ""


def _envelope_domain(facts: Facts) -> str:
    env = facts.envelope_from
    return env.rpartition("@")[2].lower() if "@" in env else _from_domain(facts)


def _dns_failure(look: Lookup, what: str) -> CheckResult:
    why = look.detail or "no answer"
    return CheckResult("dns_unavailable", "error",
                       f"the {look.rdtype} lookup of {look.name} failed ({why}): {what} was "
                       "not checked; retry when DNS answers, or send with --force to skip "
                       "the check")


# --------------------------------------------------------------------------- unsubscribe
def check_unsubscribe(facts: Facts) -> list[CheckResult]:
    """RFC 8058 one-click unsubscribe, and its headers covered by the DKIM signature."""
    out: list[CheckResult] = []
    lu = _header(facts, "list-unsubscribe")
    lup = _header(facts, "list-unsubscribe-post")
    https = any(re.search(r"<\s*https://[^>\s]+\s*>", v, re.I) for v in lu)
    post_ok = any(v.strip() == ONE_CLICK for v in lup)
    in_message = https and post_ok
    by_feedback = facts.feedback_unsubscribe_url.lower().startswith("https://")
    if not in_message and not by_feedback:
        if lu and not https:
            why = "its List-Unsubscribe header has no https URI (a mailto: alone is not one-click)"
        elif https and not post_ok:
            why = ("it has a List-Unsubscribe https URI but no "
                   f"'List-Unsubscribe-Post: {ONE_CLICK}' header")
        else:
            why = "it has no List-Unsubscribe header"
        out.append(CheckResult(
            "one_click_unsubscribe_missing", "error",
            f"the message is not one-click unsubscribable (RFC 8058): {why}; Gmail and Yahoo "
            "require it of bulk senders. Fix: add 'List-Unsubscribe: <https://...>' (a URL "
            "naming the recipient, e.g. with {{email}}) and "
            f"'List-Unsubscribe-Post: {ONE_CLICK}' to the message, or set "
            "[feedback] unsubscribe_url so that fastmta adds them per recipient"))
        return out
    signers = _aligned_signers(facts) or facts.signers
    needed = {"list-unsubscribe", "list-unsubscribe-post"}
    covered = [s for s in signers if needed <= set(s.headers)]
    if in_message or by_feedback:
        if not signers:
            out.append(CheckResult(
                "unsubscribe_not_signed", "error",
                "the List-Unsubscribe and List-Unsubscribe-Post headers would not be covered "
                "by a DKIM signature (no DKIM key signs this From domain), so receivers ignore "
                "them (RFC 8058 section 4). Fix: configure a DKIM key (see dkim_missing)"))
        elif not covered or (not in_message and not facts.feedback_signed):
            names = ", ".join(f"{s.selector}._domainkey.{s.domain}" for s in signers)
            out.append(CheckResult(
                "unsubscribe_not_signed", "error",
                f"the DKIM key(s) {names} do not sign both List-Unsubscribe and "
                "List-Unsubscribe-Post, so receivers ignore one-click unsubscribe (RFC 8058 "
                "section 4). Fix: add them to [dkim] headers (or extra_headers), or use the "
                "default header list, which signs them"))
    return out


# --------------------------------------------------------------------------- DKIM / DMARC
def _aligned_signers(facts: Facts):
    fd = _from_domain(facts)
    return [s for s in facts.signers if fd and aligned(s.domain, fd)]


def _dmarc_record(facts: Facts) -> tuple[dict[str, str] | None, list[CheckResult], str]:
    """(tags, dns failures, where found)."""
    for look in (facts.dmarc, facts.dmarc_org):
        if look is None:
            continue
        if look.failed:
            return None, [_dns_failure(look, "the DMARC record")], ""
        for rec in look.records:
            tags = parse_dmarc(rec)
            if tags is not None:
                return tags, [], look.name
    return None, [], ""


def check_dkim_dmarc(facts: Facts) -> list[CheckResult]:
    """``dkim_missing``, ``dmarc_missing``, ``dmarc_alignment`` (needs the SPF results)."""
    out: list[CheckResult] = []
    fd = _from_domain(facts)
    if not fd:
        return out  # message_format reports the unusable From
    dkim_ok = False
    if not facts.signers:
        out.append(CheckResult(
            "dkim_missing", "error",
            f"no DKIM key signs mail from {fd}: Gmail and Yahoo require DKIM of bulk senders. "
            f"Fix: `fastmta dkim keygen --domain {fd} --selector SELECTOR --out KEY.pem`, add "
            "a [[dkim.keys]] entry for it and publish the TXT record that `fastmta dkim "
            "records` prints"))
    for s in facts.signers:
        pub = s.published
        name = f"{s.selector}._domainkey.{s.domain}"
        if pub is None:
            continue
        if pub.failed:
            out.append(_dns_failure(pub, f"the DKIM key {name}"))
            continue
        want = _p_tag(s.record)
        have = [_p_tag(r) for r in pub.records]
        if want not in have:
            why = ("is not published (no TXT record)" if not pub.records
                   else "publishes a different public key")
            out.append(CheckResult(
                "dkim_missing", "error",
                f"the DKIM key {name} {why}: receivers cannot verify the signature. Fix: "
                f"publish the record `fastmta dkim records` prints for it ({name} TXT "
                f"\"{s.record[:40]}...\")"))
        elif aligned(s.domain, fd):
            dkim_ok = True
    tags, failures, where = _dmarc_record(facts)
    out.extend(failures)
    if failures:
        return out
    if tags is None:
        org = org_domain(fd)
        where_txt = f"_dmarc.{fd}" + (f" or _dmarc.{org}" if org != fd else "")
        out.append(CheckResult(
            "dmarc_missing", "error",
            f"no DMARC record for {fd} (TXT {where_txt}): Gmail "
            "and Yahoo require one (p=none at least) of bulk senders. Fix: publish "
            f"_dmarc.{org_domain(fd)} TXT \"v=DMARC1; p=none; rua=mailto:dmarc@{org_domain(fd)}\""))
    elif "p" not in tags or tags["p"].lower() not in ("none", "quarantine", "reject"):
        out.append(CheckResult(
            "dmarc_missing", "error",
            f"the DMARC record at {where} has no valid p= tag ({tags.get('p', 'missing')!r}). "
            "Fix: p=none, p=quarantine or p=reject"))
    adkim = (tags or {}).get("adkim", "r").lower() == "s"
    aspf = (tags or {}).get("aspf", "r").lower() == "s"
    dkim_aligned = any(aligned(s.domain, fd, adkim) for s in facts.signers) and (
        dkim_ok or all(s.published is None for s in facts.signers))
    env = _envelope_domain(facts)
    spf_pass = bool(facts.spf) and all(r == "pass" for r, _ in facts.spf.values())
    spf_aligned = spf_pass and aligned(env, fd, aspf)
    if facts.signers and not dkim_aligned and not spf_aligned:
        doms = ", ".join(sorted({s.domain for s in facts.signers}))
        out.append(CheckResult(
            "dmarc_alignment", "error",
            f"DMARC fails: the DKIM signing domain ({doms}) is not aligned with the From "
            f"domain {fd}{' (adkim=s: exact match)' if adkim else ' (organisational domain)'}"
            f", and SPF does not pass for an aligned envelope domain ({env}). Fix: sign with a "
            f"key for {fd} or its organisational domain {org_domain(fd)}"))
    elif not facts.signers and not spf_aligned:
        out.append(CheckResult(
            "dmarc_alignment", "error",
            f"DMARC fails: no DKIM signature and SPF does not pass for an envelope domain "
            f"({env}) aligned with the From domain {fd}. Fix: sign with a DKIM key for {fd}"))
    elif facts.signers and not dkim_aligned:
        if any(aligned(s.domain, fd, adkim) for s in facts.signers):
            why = "its DKIM signature will not verify (see dkim_missing)"
        else:
            why = f"the DKIM signing domain is not aligned with {fd}"
        out.append(CheckResult(
            "dmarc_alignment", "warning",
            f"DMARC relies on SPF alone: {why}; forwarded mail will fail DMARC. Fix: sign "
            "with a published key for the From domain"))
    return out


def _p_tag(record: str) -> str:
    for part in record.replace(" ", "").split(";"):
        if part.startswith("p="):
            return part[2:]
    return ""


# --------------------------------------------------------------------------- SPF / PTR
def check_spf(facts: Facts) -> list[CheckResult]:
    """The envelope domain's SPF must authorise every source IP of the pool."""
    env = _envelope_domain(facts)
    if not env:
        return []
    if not facts.source_ips:
        return [CheckResult(
            "spf_fail", "warning",
            f"SPF of {env} was not evaluated: no source IP is known. Fix: set [smtp] "
            "source_ips, or [compliance] source_ips to the public address(es) mail leaves "
            "from (behind NAT)")]
    out = []
    for ip in facts.source_ips:
        result, why = facts.spf.get(ip, ("temperror", "not evaluated"))
        if result == "pass":
            continue
        if result == "temperror":
            out.append(CheckResult(
                "dns_unavailable", "error",
                f"the SPF evaluation of {env} for {ip} failed on DNS ({why}): SPF was not "
                "checked; retry when DNS answers, or send with --force to skip the check"))
            continue
        out.append(CheckResult(
            "spf_fail", "error",
            f"SPF of {env} gives '{result}' for the source IP {ip} ({why}): Gmail and Yahoo "
            f"require SPF to pass for bulk mail. Fix: add ip{'6' if ':' in ip else '4'}:{ip} "
            f"to the TXT record \"v=spf1 ...\" of {env}"))
    return out


def check_ptr(facts: Facts) -> list[CheckResult]:
    """Forward-confirmed reverse DNS for each source IP (and the EHLO name among them)."""
    out = []
    for p in facts.ptr:
        if p.ptr.failed:
            out.append(_dns_failure(p.ptr, f"the reverse DNS of {p.ip}"))
            continue
        names = p.ptr.records
        if not names:
            out.append(CheckResult(
                "ptr_mismatch", "error",
                f"the source IP {p.ip} has no PTR record ({p.ptr.name}): Gmail rejects mail "
                "from IPs without reverse DNS. Fix: ask the owner of the address block for a "
                f"PTR record naming this host (e.g. {facts.ehlo_name or 'mail.example.com'}) "
                "and an A record of that name back to the IP"))
            continue
        confirmed = []
        for n in names:
            fwd = p.forward.get(n)
            if fwd is not None and fwd.failed:
                out.append(_dns_failure(fwd, f"the forward DNS of {n}"))
                confirmed = None
                break
            if fwd is not None and p.ip in fwd.records:
                confirmed.append(n)
        if confirmed is None:
            continue
        if not confirmed:
            out.append(CheckResult(
                "ptr_mismatch", "error",
                f"the reverse DNS of {p.ip} is not forward-confirmed: its PTR "
                f"{', '.join(names)} does not resolve back to {p.ip}. Fix: add an A (or "
                f"AAAA) record {names[0]} -> {p.ip}"))
        elif facts.ehlo_name and facts.ehlo_name.lower() not in confirmed:
            out.append(CheckResult(
                "ptr_mismatch", "warning",
                f"the EHLO name {facts.ehlo_name} is not the reverse DNS name of {p.ip} "
                f"({', '.join(confirmed)}). Fix: set [smtp] ehlo_name = \"{confirmed[0]}\""))
    return out


# --------------------------------------------------------------------------- format
def check_message_format(facts: Facts) -> list[CheckResult]:
    """RFC 5322 basics the providers enforce, a text part beside HTML, and the size."""
    out: list[CheckResult] = []

    def bad(detail: str, level: str = "error") -> None:
        out.append(CheckResult("message_format", level, detail))

    froms = _header(facts, "from")
    if len(froms) == 1:
        addrs = email.utils.getaddresses([_PLACEHOLDER.sub("x", froms[0])])
        good = [a for _, a in addrs if a.count("@") == 1 and all(a.split("@"))]
        if len(addrs) != 1 or len(good) != 1:
            bad(f"the From header must hold exactly one mailbox (RFC 5322 3.6.2), not "
                f"{froms[0]!r}. Fix: one address in From; put others in Reply-To")
    for name in _SINGLETONS:
        n = len(_header(facts, name))
        if n > 1:
            bad(f"the {name} header appears {n} times; RFC 5322 allows one (Gmail rejects "
                "such messages). Fix: keep a single one")
    for d in _header(facts, "date")[:1]:
        if not _PLACEHOLDER.search(d) and email.utils.parsedate_tz(d) is None:
            bad(f"the Date header {d!r} is not an RFC 5322 date. Fix: remove it (fastmta "
                "adds a correct one at send time) or correct it")
    for m in _header(facts, "message-id")[:1]:
        if not _PLACEHOLDER.search(m) and not _MSGID.match(m.strip()):
            bad(f"the Message-ID header {m!r} is not <id@domain>. Fix: remove it (fastmta "
                "adds a unique one per recipient) or correct it")
    ctype = (_header(facts, "content-type") or ["text/plain"])[0].lower()
    body = facts.body.lower()
    has_html = ctype.startswith("text/html") or "content-type: text/html" in body
    has_text = ctype.startswith("text/plain") or "content-type: text/plain" in body
    if has_html and not has_text:
        bad("the message has an HTML part but no text/plain alternative; spam filters "
            "score HTML-only bulk mail. Fix: send multipart/alternative with a text part",
            "warning")
    if facts.size > facts.max_message_bytes:
        bad(f"the message is {facts.size} bytes, over the {facts.max_message_bytes}-byte "
            "limit of the large providers. Fix: link to large content instead of attaching it")
    return out


def evaluate(facts: Facts) -> list[CheckResult]:
    """Every check; errors first, then warnings, each in the order of ``CODES``."""
    found = (check_unsubscribe(facts) + check_dkim_dmarc(facts) + check_spf(facts)
             + check_ptr(facts) + check_message_format(facts))
    seen: set[tuple[str, str]] = set()
    out = []
    for r in found:
        if (r.code, r.detail) not in seen:
            seen.add((r.code, r.detail))
            out.append(r)
    return sorted(out, key=lambda r: r.level != "error")
