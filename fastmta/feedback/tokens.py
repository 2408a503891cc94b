"""Signed recipient tokens (VERP return paths, Message-IDs, unsubscribe links).

A token names one recipient of one delivery and carries a truncated HMAC-SHA256:
``base32(delivery_id:u32 || rcpt_id:u32 || mac[:5])`` in lower case, 21 characters.
The key is 32 random bytes kept in the spool (``Spool.feedback_key``).  ``verify``
accepts only the canonical spelling: a forged, truncated, case-mangled or edited
token is ``None`` (never an exception).  Pure: no I/O.
"""

from __future__ import annotations

import base64
import functools
import hmac
import re
import struct
from hashlib import sha256

TOKEN_LEN = 21
MAC_LEN = 5
_PACK = struct.Struct(">II")
_CHARS = "abcdefghijklmnopqrstuvwxyz234567"
#: candidate tokens in free text: a role prefix (b = bounce return path, m = Message-ID,
#: u = unsubscribe), a dash and 21 base32 characters (case-sensitive on purpose)
_FIND_TAIL = re.compile(r"-([a-z2-7]{21})(?![A-Za-z0-9])")  # "[bmu]-token": from its "-" on
_ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")


def _mac(key: bytes, body: bytes) -> bytes:
    return hmac.digest(key, b"fastmta-token-v1" + body, sha256)[:MAC_LEN]


def make(key: bytes, delivery_id: int, rcpt_id: int) -> str:
    """The token of (delivery, recipient)."""
    body = _PACK.pack(delivery_id, rcpt_id)
    raw = body + _mac(key, body)
    return base64.b32encode(raw).decode("ascii").rstrip("=").lower()


def verify(key: bytes, token: str) -> tuple[int, int] | None:
    """(delivery_id, rcpt_id) of a valid token, else None."""
    if not isinstance(token, str) or len(token) != TOKEN_LEN:
        return None
    return _verify_cached(key, token)


@functools.lru_cache(maxsize=4096)
def _verify_cached(key: bytes, token: str) -> tuple[int, int] | None:
    # one message verifies the same token up to four times (RCPT, envelope match, the
    # returned headers' return path and Message-ID): the cache makes that one HMAC
    if any(c not in _CHARS for c in token):
        return None
    try:
        raw = base64.b32decode(token.upper() + "===")
    except (ValueError, TypeError):
        return None
    if len(raw) != 8 + MAC_LEN:
        return None
    body, mac = raw[:8], raw[8:]
    if not hmac.compare_digest(mac, _mac(key, body)):
        return None
    # canonical spelling only (the last character has a padding bit)
    if base64.b32encode(raw).decode("ascii").rstrip("=").lower() != token:
        return None
    return _PACK.unpack(body)


def candidates(text: str) -> list[tuple[str, str]]:
    """Every (role, token) that looks like a token in ``text``, in order, deduplicated."""
    seen: set[tuple[str, str]] = set()
    out = []
    for m in _FIND_TAIL.finditer(text):  # the literal "-" first: a fast scan
        i = m.start()
        if i < 1 or text[i - 1] not in "bmu" or (i > 1 and text[i - 2] in _ALNUM):
            continue
        item = (text[i - 1], m.group(1))
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out


class Tokens:
    """The addresses and headers built from one key and the ``[feedback]`` settings."""

    __slots__ = ("key", "domain", "bounce_prefix", "unsubscribe_url")

    def __init__(self, key: bytes, domain: str, *, bounce_prefix: str = "b-",
                 unsubscribe_url: str = "") -> None:
        self.key = key
        self.domain = domain.lower()
        self.bounce_prefix = bounce_prefix
        self.unsubscribe_url = unsubscribe_url.rstrip("/")

    def token(self, delivery_id: int, rcpt_id: int) -> str:
        return make(self.key, delivery_id, rcpt_id)

    def return_path(self, token: str) -> str:
        return f"{self.bounce_prefix}{token}@{self.domain}"

    def message_id(self, token: str) -> str:
        return f"<m-{token}@{self.domain}>"

    def unsubscribe_headers(self, token: str) -> list[str]:
        """RFC 8058 header lines (empty when no unsubscribe URL is configured)."""
        if not self.unsubscribe_url:
            return []
        url = self.unsubscribe_url
        url = url.replace("{token}", token) if "{token}" in url else f"{url}/u/{token}"
        return [f"List-Unsubscribe: <{url}>, <mailto:u-{token}@{self.domain}>",
                "List-Unsubscribe-Post: List-Unsubscribe=One-Click"]

    def verify(self, token: str) -> tuple[int, int] | None:
        return verify(self.key, token)

    def local_token(self, address: str) -> tuple[str, str] | None:
        """(role, token) of an address of our domain (``b-…``/``u-…``), else None.
        The domain compares case-insensitively, the token exactly."""
        local, at, dom = address.strip().strip("<>").rpartition("@")
        if not at or dom.lower() != self.domain:
            return None
        if self.bounce_prefix and local.startswith(self.bounce_prefix):
            return "b", local[len(self.bounce_prefix):]
        if local.startswith("u-"):
            return "u", local[2:]
        return None
