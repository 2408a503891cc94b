from __future__ import annotations

import pytest

from fastmta.delivery import check_address, domain_shard


@pytest.mark.parametrize("raw,norm,utf8", [
    ("user@example.com", "user@example.com", False),
    ("  User.Name+tag@Example.COM ", "User.Name+tag@example.com", False),
    ('"odd person"@example.com', '"odd person"@example.com', False),
    ("j\u00f6rg@example.com", "j\u00f6rg@example.com", True),
    ("user@b\u00fccher.de", "user@xn--bcher-kva.de", False),
    ("o'brien@sub.example.co.uk", "o'brien@sub.example.co.uk", False),
])
def test_valid(raw, norm, utf8):
    assert check_address(raw) == (norm, utf8, "")


@pytest.mark.parametrize("raw,err", [
    ("", "empty"), ("   ", "empty"),
    ("user", "missing @"), ("@example.com", "empty local part"), ("user@", "missing domain"),
    ("us er@example.com", "bad local part"), ("a..b@example.com", "bad local part"),
    ("user@localhost", "bad domain"), ("user@example.123", "bad domain"),
    ("user@-bad.example", "bad domain"), ("user@[127.0.0.1]", "address literal"),
    ("user@exa_mple.com", "bad domain"), ("a\r\nb@example.com", "control character"),
    ("x" * 65 + "@example.com", "local part longer than 64 octets"),
])
def test_unqualified(raw, err):
    assert check_address(raw)[2] == err


def test_domain_shard_is_stable():
    assert domain_shard("example.com", 64) == domain_shard("example.com", 64)
    assert 0 <= domain_shard("gmail.com", 7) < 7
