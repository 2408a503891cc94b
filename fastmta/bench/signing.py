"""DKIM for the bench: a fresh key per run for the sender domain, and a check that the
messages the sink kept carry a signature that dkimpy verifies (no DNS involved: the
public key is handed to dkimpy directly)."""

from __future__ import annotations

import os

import msgspec

from fastmta.config import Config, DkimConfig, DkimKeyConfig

DOMAIN = "sender.bench.test"
SELECTOR = "bench"


def with_dkim(cfg: Config, where: str, algorithm: str = "rsa-sha256") -> Config:
    """Sign every message with a fresh key for the sender domain (RSA-2048 or Ed25519)."""
    key_path = os.path.join(where, "bench-dkim.pem")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    if algorithm == "ed25519-sha256":
        from cryptography.hazmat.primitives.asymmetric import ed25519

        key = ed25519.Ed25519PrivateKey.generate()
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    os.chmod(key_path, 0o600)
    keys = [DkimKeyConfig(domain=DOMAIN, selector=SELECTOR, key_file=key_path,
                          algorithm=algorithm)]
    return msgspec.structs.replace(cfg, dkim=DkimConfig(enabled=True, keys=keys))


def is_signed(message: bytes) -> bool:
    head = message[:message.find(b"\r\n\r\n")]
    return b"\ndkim-signature:" in (b"\n" + head).lower()


def verify_sample(messages: list[bytes], cfg: Config, sample: int = 200) -> dict:
    """dkimpy's verdict on up to ``sample`` kept messages (spread over the list)."""
    try:
        import dkim as dkimpy
    except ImportError:
        return {"verified": 0, "failed": 0, "sampled": 0, "note": "dkimpy not installed"}
    from fastmta.dkim import Signer
    from fastmta.dkim.keys import read_key_file

    k = cfg.dkim.keys[0]
    signer = Signer(k.domain, k.selector, read_key_file(k.key_file), algorithm=k.algorithm)
    record = signer.dns_record().encode()
    name = f"{signer.dns_name}.".encode()

    def dnsfunc(qname, timeout=5):
        return record if qname == name else None

    step = max(1, len(messages) // max(1, sample))
    picked = messages[::step][:sample]
    ok = bad = 0
    first_bad = ""
    for m in picked:
        try:
            good = bool(dkimpy.DKIM(m, minkey=1024).verify(dnsfunc=dnsfunc))
        except dkimpy.DKIMException as exc:
            good = False
            first_bad = first_bad or str(exc)[:120]
        ok += good
        bad += not good
    out = {"verified": ok, "failed": bad, "sampled": len(picked)}
    if first_bad:
        out["first_failure"] = first_bad
    return out
