"""``fastmta dkim ...``: key generation, DNS records, key checks and signing (issue #7).

Thin wrappers over :mod:`fastmta.dkim`; nothing here prints private key material.
"""

from __future__ import annotations

import os
import sys

import click

from fastmta import dkim
from fastmta.cli import main
from fastmta.config import load_config
from fastmta.errors import ConfigError


@main.group("dkim")
def dkim_group() -> None:
    """DKIM keys and signing."""


def _signer_set(config: str | None) -> dkim.SignerSet:
    try:
        cfg = load_config(config)
        return dkim.SignerSet.from_config(cfg.dkim, base_dir=os.path.dirname(config) or ".")
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@dkim_group.command("keygen")
@click.option("--domain", required=True, help="Signing domain (d=).")
@click.option("--selector", required=True, help="Selector (s=).")
@click.option(
    "--algorithm",
    type=click.Choice(dkim.ALGORITHMS),
    default="rsa-sha256",
    show_default=True,
)
@click.option("--bits", type=click.IntRange(1024, 4096), default=2048, show_default=True)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, writable=True),
    required=True,
    help="Private key file to create (mode 0600; never overwritten).",
)
def keygen(domain: str, selector: str, algorithm: str, bits: int, out: str) -> None:
    """Create a private key file and print the DNS TXT record to publish."""
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    if algorithm == "rsa-sha256":
        key = rsa.generate_private_key(65537, bits)
    else:
        key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise click.ClickException(f"{out} exists; refusing to overwrite a key") from None
    except OSError as exc:
        raise click.ClickException(f"cannot create {out}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    signer = dkim.Signer(domain, selector, pem, algorithm)
    click.echo(f"wrote {out} (mode 0600)", err=True)
    click.echo(signer.dns_zone_line())


@dkim_group.command("records")
@click.option("--config", "config", type=click.Path(exists=True, dir_okay=False), required=True)
def records(config: str) -> None:
    """Check every configured key (file permissions, key type, size) and print the DNS
    TXT record each one needs."""
    ss = _signer_set(config)
    if not len(ss):
        click.echo("no [dkim] keys configured", err=True)
    for signer in ss:
        click.echo(f"{signer.dns_zone_line()}  ; {signer.algorithm}, {signer.key_bits} bits")


@dkim_group.command("sign")
@click.option("--config", "config", type=click.Path(exists=True, dir_okay=False), required=True)
@click.option("--from-domain", default=None, help="Default: the domain of the From address.")
@click.argument("message", type=click.File("rb"), default="-")
def sign(config: str, from_domain: str | None, message) -> None:
    """Sign MESSAGE (a file, or stdin) with the configured keys; print the signed
    message.  Exit status 3 when no key applies to the From domain."""
    ss = _signer_set(config)
    data = message.read()
    try:
        headers = ss.sign_message(data, from_domain)
    except dkim.DkimError as exc:
        raise click.ClickException(str(exc)) from None
    out = sys.stdout.buffer
    out.write(headers + data)
    out.flush()
    if not headers:
        click.echo("no DKIM key for this From domain; message not signed", err=True)
        sys.exit(3)
