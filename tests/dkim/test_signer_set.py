"""SignerSet from the [dkim] configuration: key files, domain lookup, several
signatures per message, body hash reuse."""

from __future__ import annotations

import os

import pytest
from dkim_helpers import tags, verify

from fastmta import dkim
from fastmta.config import load_config
from fastmta.errors import ConfigError

MSG = (
    b"From: Shop <news@shop.example.com>\r\nTo: jane@example.net\r\nSubject: Hi\r\n"
    b"List-Unsubscribe: <mailto:u@shop.example.com>\r\n\r\nHello\r\n"
)


@pytest.fixture
def config_file(tmp_path, keys):
    rsa_path = tmp_path / "shop.rsa.pem"
    rsa_path.write_bytes(keys.rsa())
    os.chmod(rsa_path, 0o600)
    ed_path = tmp_path / "shop.ed.pem"
    ed_path.write_bytes(keys.ed25519())
    os.chmod(ed_path, 0o600)
    brand_path = tmp_path / "brand.pem"
    brand_path.write_bytes(keys.rsa(1024))
    os.chmod(brand_path, 0o600)
    path = tmp_path / "fastmta.toml"
    path.write_text(
        f"""
[dkim]
oversign_headers = ["Subject"]
extra_headers = ["X-Campaign"]

[[dkim.keys]]
domain = "shop.example.com"
selector = "rsa2026"
key_file = "{rsa_path}"

[[dkim.keys]]
domain = "shop.example.com"
selector = "ed2026"
key_file = "{ed_path}"
algorithm = "ed25519-sha256"

[[dkim.keys]]
domain = "brand.example"
selector = "b1"
key_file = "{brand_path}"
subdomains = true
canonicalization = "relaxed/simple"
"""
    )
    return path


def test_config_section_defaults():
    cfg = load_config()
    assert cfg.dkim.keys == [] and cfg.dkim.canonicalization == "relaxed/relaxed"
    assert cfg.dkim.oversign_from is True and cfg.dkim.allow_insecure_key_permissions is False
    assert cfg.dkim.where == "send"
    assert len(dkim.SignerSet.from_config(cfg.dkim)) == 0


def test_signers_for_and_sign_message(config_file):
    cfg = load_config(config_file)
    ss = dkim.SignerSet.from_config(cfg.dkim)
    assert len(ss) == 3
    shop = ss.signers_for("Shop.Example.COM.")
    assert [s.selector for s in shop] == ["rsa2026", "ed2026"]
    assert ss.has_key_for("shop.example.com")
    assert not ss.has_key_for("news.shop.example.com")  # subdomains = false
    assert not ss.has_key_for("other.example")
    assert ss.has_key_for("mail.brand.example") and ss.has_key_for("a.b.brand.example")
    assert ss.get("shop.example.com", "ed2026") is shop[1]
    headers = ss.sign_message(MSG)  # From domain taken from the message
    signed = headers + MSG
    assert headers.count(b"DKIM-Signature:") == 2
    assert verify(signed, *shop, idx=0) and verify(signed, *shop, idx=1)
    t = tags(headers.split(b"DKIM-Signature:")[1].join([b"DKIM-Signature:", b""]))
    h = t[b"h"].split(b":")
    assert h.count(b"subject") == 2 and h.count(b"from") == 2 and b"list-unsubscribe" in h
    assert ss.sign_message(MSG, "other.example") == b""
    assert ss.missing_key_warning("shop.example.com") is None
    warning = ss.missing_key_warning("other.example")
    assert warning is not None and "other.example" in warning and "unsigned" in warning


def test_subdomain_key_signs_with_parent_domain(config_file):
    ss = dkim.SignerSet.from_config(load_config(config_file).dkim)
    msg = b"From: x@news.brand.example\r\nX-Campaign: 7\r\n\r\nbody\r\n"
    headers = ss.sign_message(msg)
    t = tags(headers)
    assert t[b"d"] == b"brand.example" and t[b"c"] == b"relaxed/simple"
    assert b"x-campaign" in t[b"h"].split(b":")
    assert verify(headers + msg, *ss.signers_for("brand.example"))


def test_world_readable_key_file_refused_unless_allowed(config_file, tmp_path):
    os.chmod(tmp_path / "shop.ed.pem", 0o644)
    cfg = load_config(config_file)
    with pytest.raises(ConfigError, match=r"shop\.ed\.pem is readable by other users"):
        dkim.SignerSet.from_config(cfg.dkim)
    cfg = load_config(config_file, dkim={"allow_insecure_key_permissions": True})
    assert len(dkim.SignerSet.from_config(cfg.dkim)) == 3


def test_bad_key_file_named_in_error(config_file, tmp_path):
    (tmp_path / "shop.rsa.pem").write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n")
    with pytest.raises(ConfigError, match=r"shop\.rsa\.pem: .*not a valid private key"):
        dkim.SignerSet.from_config(load_config(config_file).dkim)


@pytest.mark.parametrize(
    "snippet, match",
    [
        ('algorithm = "rsa-sha1"', "rsa-sha256 or ed25519-sha256"),
        ('colour = "blue"', "colour"),
    ],
)
def test_config_validation(tmp_path, snippet, match):
    path = tmp_path / "c.toml"
    path.write_text(
        f'[[dkim.keys]]\ndomain = "a.example"\nselector = "s"\nkey_file = "/x"\n{snippet}\n'
    )
    with pytest.raises(ConfigError, match=match):
        load_config(path)


def test_section_validation(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[dkim]\ncanonicalization = "loose"\n')
    with pytest.raises(ConfigError, match="canonicalization"):
        load_config(path)
    path.write_text('[dkim]\nwhere = "later"\n')
    with pytest.raises(ConfigError, match="where"):
        load_config(path)


def test_duplicate_selector_refused(keys):
    ss = dkim.SignerSet()
    ss.add(dkim.Signer("a.example", "s", keys.rsa()))
    with pytest.raises(dkim.DkimError, match="two keys"):
        ss.add(dkim.Signer("a.example", "s", keys.rsa()))


def test_body_hash_reuse_across_recipients(keys):
    rsa_s = dkim.Signer("shop.example.com", "s1", keys.rsa())
    ed_s = dkim.Signer("shop.example.com", "e1", keys.ed25519(), "ed25519-sha256")
    simple = dkim.Signer("shop.example.com", "s2", keys.rsa(), canonicalization="simple/simple")
    body = b"Dear customer,\r\n  the  same body for everyone.\r\n\r\n"
    bh = dkim.body_hash(body)
    for i in range(3):
        msg = f"From: news@shop.example.com\r\nTo: u{i}@example.net\r\n\r\n".encode() + body
        for s in (rsa_s, ed_s, simple):
            sig = s.sign(msg, body_hash=bh, timestamp=1)
            assert sig == s.sign(msg, timestamp=1)
            assert verify(sig + msg, s)
    assert set(bh._bh) == {"relaxed", "simple"}  # computed once per canonicalisation


def test_body_of_and_malformed_from_lookup():
    assert dkim.body_of(MSG) == b"Hello\r\n"
    assert dkim.body_of(b"From: a@b.c\r\n") == b""
    with pytest.raises(dkim.DkimMessageError, match="not a header field"):
        dkim.from_domain_of(b"From: a@b.c\r\nbroken\r\n\r\nx")


def test_body_hash_for_another_body_is_not_trusted(keys):
    s = dkim.Signer("shop.example.com", "s1", keys.rsa())
    bh = s.body_hash(b"the template body\r\n")
    msg = b"From: news@shop.example.com\r\n\r\na personalised body\r\n"
    sig = s.sign(msg, body_hash=bh)
    assert verify(sig + msg, s)  # hashed afresh, not signed with the wrong bh


@pytest.mark.parametrize(
    "from_value, domain",
    [
        (b"news@Shop.Example.com", "shop.example.com"),
        (b'"Shop, Inc. (a@b.c)" <news@shop.example.com>', "shop.example.com"),
        (b"Shop <news@shop.example.com> (comment)", "shop.example.com"),
        (b"=?UTF-8?Q?B=C3=BCcher?=\r\n <a@xn--bcher-kva.example>", "xn--bcher-kva.example"),
        (b"undisclosed", None),
    ],
)
def test_from_domain_of(from_value, domain):
    assert dkim.from_domain_of(b"To: x@y.z\r\nFrom: " + from_value + b"\r\n\r\n") == domain


def test_sign_message_without_from(keys):
    ss = dkim.SignerSet([(dkim.Signer("a.example", "s", keys.rsa()), False)])
    with pytest.raises(dkim.DkimMessageError, match="no From"):
        ss.sign_message(b"To: a@b.c\r\n\r\nx\r\n")


def test_header_lists_from_config(tmp_path, keys):
    key = tmp_path / "k.pem"
    key.write_bytes(keys.rsa())
    os.chmod(key, 0o600)
    path = tmp_path / "c.toml"
    path.write_text(
        '[dkim]\nheaders = ["From", "Subject"]\nextra_headers = ["X-A"]\noversign_from = false\n'
        f'[[dkim.keys]]\ndomain = "a.example"\nselector = "s"\nkey_file = "{key}"\n'
        f'[[dkim.keys]]\ndomain = "b.example"\nselector = "s"\nkey_file = "{key}"\n'
        'headers = ["To"]\n'
    )
    ss = dkim.SignerSet.from_config(load_config(path).dkim)
    msg = b"From: x@%s\r\nTo: y@z.example\r\nSubject: s\r\nX-A: 1\r\n\r\nbody\r\n"
    ha = tags(ss.sign_message(msg % b"a.example"))[b"h"]
    hb = tags(ss.sign_message(msg % b"b.example"))[b"h"]
    assert ha == b"from:subject:x-a" and hb == b"from:to:x-a"


def test_body_hash_cache_is_bounded_and_checks_the_body(keys):
    cache = dkim.BodyHashCache(maxsize=2)
    a = cache.get("d1", b"body one\r\n")
    assert cache.get("d1", b"body one\r\n") is a
    b = cache.get("d1", b"body two\r\n")  # same key, different body: new entry
    assert b is not a and b.body == b"body two\r\n"
    cache.get("d2", b"x\r\n")
    cache.get("d1", b"body two\r\n")  # d1 is now the most recent
    cache.get("d3", b"y\r\n")  # evicts d2
    assert len(cache) == 2 and set(cache._entries) == {"d1", "d3"}
    s = dkim.Signer("shop.example.com", "s1", keys.rsa())
    msg = b"From: a@shop.example.com\r\n\r\nbody two\r\n"
    assert verify(s.sign(msg, body_hash=cache.get("d1", dkim.body_of(msg))) + msg, s)
    with pytest.raises(ValueError):
        dkim.BodyHashCache(0)
