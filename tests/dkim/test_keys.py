"""Key loading: file permission checks, clear errors, and never any key material in
an error message or repr."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess

import pytest
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from dkim_helpers import verify

from fastmta import dkim
from fastmta.dkim.keys import MAX_KEY_FILE_BYTES
from fastmta.errors import ConfigError


def _write(path, data: bytes, mode: int):
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


def _secret_fragments(pem: bytes) -> list[bytes]:
    """Base64 chunks of the key body: none may appear in any error text."""
    body = b"".join(line for line in pem.splitlines() if not line.startswith(b"-----"))
    return [body[i : i + 16] for i in range(0, len(body) - 16, 16)]


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o640, 0o440])
def test_private_modes_are_accepted(tmp_path, keys, mode):
    path = _write(tmp_path / "k.pem", keys.rsa(), mode)
    assert dkim.read_key_file(path) == keys.rsa()


@pytest.mark.parametrize(
    "mode, words",
    [
        (0o644, "readable by other users"),
        (0o604, "readable by other users"),
        (0o602, "writable by other users"),
        (0o620, "writable by its group"),
        (0o666, "readable by other users and writable by other users and writable by its group"),
    ],
)
def test_loose_modes_are_refused(tmp_path, keys, mode, words):
    path = _write(tmp_path / "k.pem", keys.rsa(), mode)
    with pytest.raises(dkim.DkimKeyError) as err:
        dkim.read_key_file(path)
    text = str(err.value)
    assert words in text and str(path) in text and f"{mode:04o}" in text
    assert "chmod 600" in text and "allow_insecure_key_permissions" in text
    assert isinstance(err.value, ConfigError)
    # Explicitly allowed: read.
    assert dkim.read_key_file(path, allow_insecure=True) == keys.rsa()


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(dkim.DkimKeyError, match="cannot open DKIM key file .*No such file"):
        dkim.read_key_file(tmp_path / "nope.pem")
    with pytest.raises(dkim.DkimKeyError, match="not a regular file"):
        dkim.read_key_file(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path, keys):
    path = _write(tmp_path / "k.pem", keys.rsa(), 0o000)
    with pytest.raises(dkim.DkimKeyError, match="Permission denied"):
        dkim.read_key_file(path)


def test_oversized_file_is_refused(tmp_path):
    path = _write(tmp_path / "big.pem", b"A" * (MAX_KEY_FILE_BYTES + 1), 0o600)
    with pytest.raises(dkim.DkimKeyError, match="too large"):
        dkim.read_key_file(path)


def test_garbage_key_error_has_no_key_material(keys):
    pem = keys.rsa()
    broken = pem.replace(b"MII", b"XXX", 1)[:-60] + b"\n-----END RSA PRIVATE KEY-----\n"
    with pytest.raises(dkim.DkimKeyError, match="not a valid private key") as err:
        dkim.Signer("shop.example.com", "s1", broken)
    text = str(err.value).encode()
    assert not any(f in text for f in _secret_fragments(pem))
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_empty_and_public_keys(keys):
    with pytest.raises(dkim.DkimKeyError, match="empty"):
        dkim.Signer("shop.example.com", "s1", b"  \n")
    pub = (
        rsa.generate_private_key(65537, 1024)
        .public_key()
        .public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(dkim.DkimKeyError, match="public key, not a private key"):
        dkim.Signer("shop.example.com", "s1", pub)


def test_encrypted_key_is_refused(keys):
    key = ser.load_pem_private_key(keys.rsa(), None)
    enc = key.private_bytes(
        ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.BestAvailableEncryption(b"secret")
    )
    with pytest.raises(dkim.DkimKeyError, match="encrypted"):
        dkim.Signer("shop.example.com", "s1", enc)


def test_key_type_must_match_algorithm(keys):
    with pytest.raises(dkim.DkimKeyError, match="needs an RSA key, got an Ed25519 key"):
        dkim.Signer("shop.example.com", "s1", keys.ed25519(), "rsa-sha256")
    with pytest.raises(dkim.DkimKeyError, match="needs an Ed25519 key, got an RSA-2048 key"):
        dkim.Signer("shop.example.com", "s1", keys.rsa(), "ed25519-sha256")
    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption()
    )
    with pytest.raises(dkim.DkimKeyError, match="needs an RSA key, got a"):
        dkim.Signer("shop.example.com", "s1", ec_pem)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl command not installed")
def test_small_rsa_key_is_refused():
    # cryptography refuses to generate keys under 1024 bits; the openssl tool still can.
    small = subprocess.run(
        ["openssl", "genrsa", "768"], capture_output=True, check=True, timeout=30
    ).stdout
    with pytest.raises(dkim.DkimKeyError, match="768 bits.*1024-4096"):
        dkim.Signer("shop.example.com", "s1", small)


def test_pkcs8_der_and_str_keys(keys):
    key = ser.load_pem_private_key(keys.rsa(), None)
    pkcs8 = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    der = key.private_bytes(ser.Encoding.DER, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    msg = b"From: a@shop.example.com\r\n\r\nx\r\n"
    ref = dkim.Signer("shop.example.com", "s1", keys.rsa()).sign(msg, timestamp=1)
    for form in (pkcs8, der, keys.rsa().decode()):
        s = dkim.Signer("shop.example.com", "s1", form)
        assert s.sign(msg, timestamp=1) == ref
        assert verify(ref + msg, s)


def test_bad_ed25519_seed():
    with pytest.raises(dkim.DkimKeyError, match="base64 Ed25519 seed"):
        dkim.Signer("shop.example.com", "s1", base64.b64encode(b"short"), "ed25519-sha256")


def test_repr_and_dns_record_hold_no_private_material(keys):
    signer = dkim.Signer("shop.example.com", "s1", keys.rsa())
    assert not any(f in repr(signer).encode() for f in _secret_fragments(keys.rsa()))
    spki = (
        ser.load_pem_private_key(keys.rsa(), None)
        .public_key()
        .public_bytes(ser.Encoding.DER, ser.PublicFormat.SubjectPublicKeyInfo)
    )
    assert signer.dns_record() == f"v=DKIM1; k=rsa; p={base64.b64encode(spki).decode()}"
    assert repr(signer).startswith("Signer(domain='shop.example.com', selector='s1'")
    assert signer.dns_name == "s1._domainkey.shop.example.com"
    assert signer.dns_record().startswith("v=DKIM1; k=rsa; p=MII")
    ed = dkim.Signer("shop.example.com", "e1", keys.ed25519(), "ed25519-sha256")
    assert ed.dns_record().startswith("v=DKIM1; k=ed25519; p=")
    assert len(base64.b64decode(ed.dns_record().split("p=")[1])) == 32


def test_zone_line_splits_long_records(keys):
    signer = dkim.Signer("shop.example.com", "s1", keys.rsa(4096))
    line = signer.dns_zone_line()
    assert line.startswith('s1._domainkey.shop.example.com. IN TXT ( "v=DKIM1; k=rsa; p=')
    strings = re.findall(r'"([^"]*)"', line)
    assert len(strings) == 3 and all(len(x) <= 255 for x in strings)
    assert "".join(strings) == signer.dns_record()
