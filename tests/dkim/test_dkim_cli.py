"""``fastmta dkim keygen | records | sign``."""

from __future__ import annotations

import os
import stat

from click.testing import CliRunner
from dkim_helpers import dnsfunc_for

import dkim as dkimpy
from fastmta import dkim
from fastmta.cli import main


def test_keygen_records_sign(tmp_path):
    runner = CliRunner()
    key = tmp_path / "shop.pem"
    args = ["dkim", "keygen", "--domain", "shop.example.com", "--selector", "ed1"]
    args += ["--algorithm", "ed25519-sha256", "--out", str(key)]
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert 'ed1._domainkey.shop.example.com. IN TXT ( "v=DKIM1; k=ed25519; p=' in res.output
    assert b"PRIVATE" not in res.output.encode()
    again = runner.invoke(main, args)
    assert again.exit_code != 0 and "refusing to overwrite" in again.output

    cfg = tmp_path / "fastmta.toml"
    cfg.write_text(
        '[[dkim.keys]]\ndomain = "shop.example.com"\nselector = "ed1"\n'
        'key_file = "shop.pem"\nalgorithm = "ed25519-sha256"\n'  # relative to the config
    )
    res = runner.invoke(main, ["dkim", "records", "--config", str(cfg)])
    assert res.exit_code == 0 and "k=ed25519" in res.output

    msg = b"From: a@shop.example.com\r\nSubject: x\r\n\r\nhello\r\n"
    res = runner.invoke(main, ["dkim", "sign", "--config", str(cfg)], input=msg)
    assert res.exit_code == 0
    signed = res.stdout_bytes
    assert signed.endswith(msg) and signed.startswith(b"DKIM-Signature:")
    signer = dkim.Signer("shop.example.com", "ed1", key.read_bytes(), "ed25519-sha256")
    assert dkimpy.verify(signed, dnsfunc=dnsfunc_for(signer))

    res = runner.invoke(
        main, ["dkim", "sign", "--config", str(cfg)], input=b"From: a@else.example\r\n\r\nx\r\n"
    )
    assert res.exit_code == 3 and "not signed" in res.output

    os.chmod(key, 0o644)
    res = runner.invoke(main, ["dkim", "records", "--config", str(cfg)])
    assert res.exit_code == 1 and "readable by other users" in res.output
