"""A simulated internet holding sender zones, good and broken, for the pre-flight tests."""

from __future__ import annotations

import os

import msgspec
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import ed25519

from fastmta.config import Config, DkimConfig, DkimKeyConfig
from fastmta.sim.config import sender_records, sim_config
from fastmta.sim.world import Provider, Record, World, WorldSpec
from sim_fixtures import SimThread  # noqa: F401  (re-exported for the conftest)

GOOD_HOST = "mta.good.example"


def write_key(path: str) -> str:
    """An Ed25519 DKIM key file (0600); returns its TXT record value."""
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    import base64

    raw = key.public_key().public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
    return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"


def zones(dkim_record: str) -> list[Record]:
    """good.example is compliant; each other domain breaks one thing."""
    dk = lambda d: [(f"s1._domainkey.{d}", dkim_record)]  # noqa: E731
    recs = sender_records("good.example", ["127.0.0.1"], host=GOOD_HOST, dkim=dk("good.example"))
    recs += sender_records("nospf.example", [], dkim=dk("nospf.example"),
                           spf="v=spf1 ip4:192.0.2.1 -all")
    recs += [r for r in sender_records("nodmarc.example", ["127.0.0.1"], host=GOOD_HOST,
                                       dkim=dk("nodmarc.example"))
             if not r.name.startswith(("_dmarc.", "1.0.0.127"))]
    recs += [r for r in sender_records("dnsfail.example", ["127.0.0.1"], host=GOOD_HOST,
                                       dkim=dk("dnsfail.example"))
             if not r.name.startswith("1.0.0.127")]
    recs += [r for r in sender_records("unpublished.example", ["127.0.0.1"], host=GOOD_HOST)
             if not r.name.startswith("1.0.0.127")]
    recs += [r for r in sender_records("nosig.example", ["127.0.0.1"], host=GOOD_HOST)
             if not r.name.startswith("1.0.0.127")]
    recs += [r for r in sender_records("align.example", [], dkim=[])
             if r.name.startswith("_dmarc.")]
    recs += [r for r in sender_records("esp.example", ["127.0.0.1"], host=GOOD_HOST,
                                       dkim=dk("esp.example"))
             if not r.name.startswith("1.0.0.127")]
    # 127.0.0.2: PTR to a name whose A record is another address; 127.0.0.4: no PTR
    recs += [Record(name="2.0.0.127.in-addr.arpa", type="PTR", data=["mta.badptr.example."]),
             Record(name="mta.badptr.example", type="A", data=["127.0.0.3"])]
    return recs


KEY_DOMAINS = ["good.example", "nospf.example", "nodmarc.example", "dnsfail.example",
               "unpublished.example", "esp.example"]


def compliance_world(dkim_record: str) -> World:
    spec = WorldSpec(name="compliance", providers=[Provider(name="rcpt", domains=["rcpt.test"])],
                     records=zones(dkim_record), servfail_names=["_dmarc.dnsfail.example"])
    return World(spec)


def config(sim: SimThread, key_file: str, *, source_ips=("127.0.0.1",),
           dkim_headers: list[str] | None = None) -> Config:
    cfg = sim_config(sim.sim)
    r = msgspec.structs.replace
    keys = [DkimKeyConfig(domain=d, selector="s1", key_file=key_file,
                          algorithm="ed25519-sha256") for d in KEY_DOMAINS]
    return r(cfg, dkim=DkimConfig(keys=keys, headers=dkim_headers or []),
             smtp=r(cfg.smtp, ehlo_name=GOOD_HOST),
             compliance=r(cfg.compliance, source_ips=list(source_ips)))


def message(from_domain: str = "good.example", *, unsubscribe: bool = True,
            extra: str = "") -> bytes:
    head = f"From: News <news@{from_domain}>\nTo: {{{{email}}}}\nSubject: Hello\n"
    if unsubscribe:
        head += (f"List-Unsubscribe: <https://{from_domain}/unsub?u={{{{email}}}}>\n"
                 "List-Unsubscribe-Post: List-Unsubscribe=One-Click\n")
    head += extra
    head += "MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n\nHello.\n"
    return head.encode()
