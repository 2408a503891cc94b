"""Configurations and data for runs against the simulated internet: the demo world, its
recipients and the fastmta configuration pointing at a running ``SimInternet``."""

from __future__ import annotations

import random
from pathlib import Path

import msgspec

from fastmta.config import Config
from fastmta.sim.world import Behaviour, Provider, World, WorldSpec

DEMO_MESSAGE = (
    "From: Demo Sender <news@sender.example>\n"
    "To: {{email}}\n"
    "Subject: Hello {{first_name}}, your fastmta demo\n"
    "List-Unsubscribe: <https://sender.example/unsubscribe?u={{email}}>\n"
    "List-Unsubscribe-Post: List-Unsubscribe=One-Click\n"
    "MIME-Version: 1.0\n"
    "Content-Type: text/plain; charset=utf-8\n"
    "\n"
    "Hi {{first_name}},\n\nthis message was delivered by fastmta to the simulated internet.\n"
)


def demo_world(domains: int = 300):
    """A simulated internet with a mix of provider profiles (~``domains`` domains)."""
    fast = max(1, int(domains * 0.6))
    rest = max(1, domains - fast)
    providers = [
        Provider(name="fastmail", generate=fast, hosts=2),
        Provider(name="bigmail", domains=["bigmail.test"], hosts=3,
                 mx_names=["gmail-smtp-in.l.google.com", "alt1.gmail-smtp-in.l.google.com",
                           "alt2.gmail-smtp-in.l.google.com"], preferences=[5, 10, 10],
                 behaviour=Behaviour(max_conn_per_ip=8, max_msgs_per_min_per_ip=60000)),
        Provider(name="unknownusers", generate=max(1, rest // 4),
                 behaviour=Behaviour(unknown_user_rate=0.2)),
        Provider(name="fullboxes", generate=max(1, rest // 6),
                 behaviour=Behaviour(mailbox_full_rate=0.2)),
        Provider(name="greylister", generate=max(1, rest // 6),
                 behaviour=Behaviour(greylist_s=2.0)),
        Provider(name="limited", generate=max(1, rest // 8),
                 behaviour=Behaviour(max_conn_per_ip=2, max_rcpts_per_txn=10,
                                     max_msgs_per_conn=20)),
        Provider(name="blocker", generate=2, behaviour=Behaviour(block=True)),
        Provider(name="nxdomain", generate=3, dns="nxdomain"),
        Provider(name="nullmx", generate=2, dns="nullmx"),
    ]
    return World(WorldSpec(name="demo", providers=providers))


def write_demo_recipients(path: Path, world, n: int, seed: int = 7) -> int:
    """Recipients spread over the world's domains (bigmail gets a large share)."""
    rng = random.Random(seed)
    domains = world.domains
    weights = [40.0 if d == "bigmail.test" else 1.0 for d in domains]
    names = ["ada", "alan", "grace", "linus", "margaret", "dennis", "barbara", "ken"]
    with open(path, "w") as f:
        f.write("email,first_name\n")
        picks = rng.choices(domains, weights=weights, k=n)
        for i, dom in enumerate(picks):
            f.write(f"user{i}@{dom},{names[i % len(names)]}\n")
    return n


def sim_config(sim, base: Config | None = None, *, validity_s: float = 40.0,
               retry_s: float = 5.0, workers: int | None = None) -> Config:
    """A configuration pointing fastmta at a running ``SimInternet`` (loopback only)."""
    base = base or Config()
    r = msgspec.structs.replace
    return r(
        base,
        dns=sim.dns_config(timeout_s=2.0),
        smtp=r(base.smtp, port=sim.smtp_port, connect_timeout_s=5.0, greeting_timeout_s=5.0,
               command_timeout_s=10.0, data_init_timeout_s=10.0, data_block_timeout_s=10.0,
               data_done_timeout_s=20.0, idle_timeout_s=2.0, ehlo_name="fastmta.demo"),
        delivery=r(base.delivery, validity_s=validity_s, retry_initial_s=retry_s,
                   retry_max_s=retry_s * 4),
        engine=r(base.engine, workers=workers or base.engine.workers),
        shaping=r(base.shaping, suspend_initial_s=10.0, suspend_max_s=30.0),
        # sim worlds are built with many bad addresses to exercise bounce handling: the
        # bounce guard (docs/compliance.md) would pause them; its tests turn it back on
        # and their sender zones are not compliant: the pre-flight reports, never blocks
        # (`fastmta demo` sets enforce: its zones are those of a compliant sender)
        compliance=r(base.compliance, bounce_guard=False, preflight="warn", mta_sts_cafile=sim.ca_file
                     or base.compliance.mta_sts_cafile,
                     mta_sts_port=sim.mta_sts_port or base.compliance.mta_sts_port),
    )


def sender_records(domain: str, ips: list[str] | tuple[str, ...] = ("127.0.0.1",), *,
                   host: str = "", dkim: list[tuple[str, str]] = (),
                   spf: str | None = None, dmarc: str | None = None) -> list:
    """The DNS of a compliant bulk sender as ``Record``s for ``WorldSpec.records``: SPF
    authorising ``ips``, DMARC p=none, the DKIM keys ``(name, TXT value)``, and PTR of
    each IP to ``host`` (default ``mta.<domain>``) with its A record back (FCrDNS)."""
    import dns.reversename

    from fastmta.sim.world import Record

    host = host or f"mta.{domain}"
    mech = " ".join(f"ip{'6' if ':' in ip else '4'}:{ip}" for ip in ips)
    out = [
        Record(name=domain, type="TXT", data=[spf if spf is not None else f"v=spf1 {mech} -all"]),
        Record(name=f"_dmarc.{domain}", type="TXT",
               data=[dmarc if dmarc is not None else f"v=DMARC1; p=none; rua=mailto:dmarc@{domain}"]),
        Record(name=host, type="A", data=[ip for ip in ips if ":" not in ip]),
    ]
    for name, value in dkim:
        out.append(Record(name=name, type="TXT", data=[value]))
    for ip in ips:
        rev = dns.reversename.from_address(ip).to_text(omit_final_dot=True)
        out.append(Record(name=rev, type="PTR", data=[host + "."]))
    return out


def with_records(world: World, records: list, **spec_fields) -> World:
    """``world`` with extra DNS records (and other WorldSpec fields) added."""
    spec = msgspec.structs.replace(world.spec, records=[*world.spec.records, *records],
                                   **spec_fields)
    return World(spec)


def mta_sts_records(domain: str, policy_id: str = "sim1", address: str = "127.0.0.1") -> list:
    """``_mta-sts.<domain>`` TXT and the A record of ``mta-sts.<domain>`` (the sim's
    HTTPS policy server listens on ``address``)."""
    from fastmta.sim.world import Record

    return [Record(name=f"_mta-sts.{domain}", type="TXT", data=[f"v=STSv1; id={policy_id}"]),
            Record(name=f"mta-sts.{domain}", type="A", data=[address])]


def tlsrpt_records(domain: str, rua: str) -> list:
    """``_smtp._tls.<domain>`` TXT (RFC 8460 3): where TLS reports for ``domain`` go."""
    from fastmta.sim.world import Record

    return [Record(name=f"_smtp._tls.{domain}", type="TXT", data=[f"v=TLSRPTv1; rua={rua}"])]


DEMO_SENDER = "sender.example"
DEMO_SELECTOR = "demo"
DEMO_MTA_STS = ("version: STSv1\nmode: enforce\nmx: gmail-smtp-in.l.google.com\n"
                "mx: *.gmail-smtp-in.l.google.com\nmax_age: 86400\n")


def demo_sender(world: World, directory: Path, ehlo_name: str = "fastmta.demo"):
    """Make the demo a compliant bulk sender: an Ed25519 DKIM key for sender.example
    (written to ``directory``, mode 0600), its SPF/DMARC/DKIM/PTR records in the sim's
    zones, and an MTA-STS enforce policy (with STARTTLS) for bigmail.test.  Returns the
    new world and the ``[dkim]`` section."""
    import os

    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from fastmta.config import DkimConfig, DkimKeyConfig
    from fastmta.dkim.signer import Signer

    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    key_path = Path(directory) / "demo-dkim.pem"
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    signer = Signer(DEMO_SENDER, DEMO_SELECTOR, pem, algorithm="ed25519-sha256")
    records = sender_records(DEMO_SENDER, ["127.0.0.1"], host=ehlo_name,
                             dkim=[(signer.dns_name, signer.dns_record())])
    records += mta_sts_records("bigmail.test")
    records += tlsrpt_records("bigmail.test", "mailto:tls-reports@bigmail.test")
    providers = [msgspec.structs.replace(p, behaviour=msgspec.structs.replace(
        p.behaviour, starttls=True)) if p.name == "bigmail" else p
        for p in world.spec.providers]
    spec = msgspec.structs.replace(world.spec, providers=providers,
                                   records=[*world.spec.records, *records],
                                   mta_sts={**world.spec.mta_sts, "bigmail.test": DEMO_MTA_STS})
    dkim = DkimConfig(keys=[DkimKeyConfig(domain=DEMO_SENDER, selector=DEMO_SELECTOR,
                                          key_file=str(key_path),
                                          algorithm="ed25519-sha256")])
    return World(spec), dkim
