"""A second, independent verifier: Perl's Mail::DKIM (used by SpamAssassin and
Amavis) checks fastmta's RSA signatures for every canonicalisation and every awkward
message of the dkimpy matrix.  (The Debian bookworm Mail::DKIM has no Ed25519; dkimpy
covers Ed25519.)  DNS is answered by the script from the signer's own record."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from dkim_helpers import verify
from test_verify_dkimpy import CANONS, MESSAGES

from fastmta import dkim

SCRIPT = Path(__file__).with_name("mail_dkim_verify.pl")


def _have_mail_dkim() -> bool:
    if shutil.which("perl") is None:
        return False
    probe = subprocess.run(
        ["perl", "-MMail::DKIM::Verifier", "-MNet::DNS", "-e", "1"],
        capture_output=True,
        timeout=30,
    )
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(
    not _have_mail_dkim(), reason="Perl Mail::DKIM not installed (Debian libmail-dkim-perl)"
)


def mail_dkim(messages: list[bytes], *signers: dkim.Signer) -> list[list[tuple[str, ...]]]:
    """Mail::DKIM's verdicts: per message, (result, domain, selector, algorithm, detail)."""
    records = [f"{s.dns_name}={s.dns_record()}" for s in signers]
    stdin = b"".join(b"%d\n" % len(m) + m for m in messages)
    out = subprocess.run(
        ["perl", str(SCRIPT), *records], input=stdin, capture_output=True, timeout=60
    )
    assert out.returncode == 0, out.stderr.decode()
    verdicts: list[list[tuple[str, ...]]] = [[] for _ in messages]
    for line in out.stdout.decode().splitlines():
        idx, *fields = line.split("\t")
        verdicts[int(idx)].append(tuple(fields))
    return verdicts


@pytest.mark.parametrize("bits", [2048, 4096])
def test_mail_dkim_verifies_every_message_and_canonicalisation(keys, bits):
    cases, messages, signers = [], [], []
    for canon in CANONS:
        signer = dkim.Signer("shop.example.com", canon.replace("/", "-"), keys.rsa(bits),
                             canonicalization=canon)  # fmt: skip
        signers.append(signer)
        for name, msg in sorted(MESSAGES.items()):
            if not msg.endswith(b"\r\n"):
                msg += b"\r\n"  # as transmitted (and Mail::DKIM needs a body separator)
            sig = signer.sign(msg)
            cases.append((canon, name, "good"))
            messages.append(sig + msg)
            cases.append((canon, name, "header tampered"))
            messages.append(sig + re.sub(rb"(?im)^(from:)", rb"\1 X", msg, count=1))
            cases.append((canon, name, "body tampered"))
            has_body = b"\r\n\r\n" in msg
            messages.append(sig + msg + (b"" if has_body else b"\r\n") + b"tampered\r\n")
    verdicts = mail_dkim(messages, *signers)
    for (canon, name, kind), verdict in zip(cases, verdicts, strict=True):
        assert len(verdict) == 1, (canon, name, verdict)
        result = verdict[0][0]
        expected = "pass" if kind == "good" else "fail"
        assert result == expected, (canon, name, kind, verdict)


def test_mail_dkim_chained_signatures(keys):
    msg = MESSAGES["folded_headers"]
    a = dkim.Signer("shop.example.com", "a", keys.rsa())
    b = dkim.Signer("shop.example.com", "b", keys.rsa(1024), canonicalization="simple/simple")
    (verdict,) = mail_dkim([a.sign(msg) + b.sign(msg) + msg], a, b)
    assert sorted((v[0], v[2]) for v in verdict) == [("pass", "a"), ("pass", "b")]


def test_mail_dkim_folded_h_list(keys):
    """A long h= list is folded after colons; both verifiers accept it."""
    msg = MESSAGES["folded_headers"].replace(
        b"\r\n\r\n",
        b"\r\nDate: Fri, 27 Nov 2026 09:00:00 +0000\r\nMessage-ID: <1@x>\r\n"
        b"Reply-To: r@shop.example.com\r\nFeedback-ID: 1:2:3\r\nMIME-Version: 1.0\r\n\r\n",
        1,
    )
    signer = dkim.Signer(
        "shop.example.com", "s1", keys.rsa(), oversign=["Subject", "To", "Reply-To"]
    )
    sig = signer.sign(msg)
    assert len(sig.split(b"h=")[1].split(b";")[0].split(b"\r\n")) > 1, sig  # folded
    assert verify(sig + msg, signer)
    ((result, *_),) = mail_dkim([sig + msg], signer)[0]
    assert result == "pass"
