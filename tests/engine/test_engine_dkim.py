"""DKIM in the engine: every message a worker sends is signed with the From domain's
keys (RSA and Ed25519 together) and dkimpy verifies what the sink received."""

from __future__ import annotations

import asyncio
import base64

import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from engine_helpers import inject, make_config, write_inputs

import dkim as dkimpy
from fastmta.config import DkimConfig, DkimKeyConfig
from fastmta.engine import entry as engine
from fastmta.sim import SimInternet
from fastmta.sim.world import Provider, World, WorldSpec
from fastmta.spool import Spool


def _keys(tmp_path):
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ed_key = ed25519.Ed25519PrivateKey.generate()
    pems = {}
    for name, key in (("rsa", rsa_key), ("ed", ed_key)):
        path = tmp_path / f"{name}.pem"
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        path.chmod(0o600)
        pems[name] = path
    rsa_pub = base64.b64encode(rsa_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
    ed_pub = base64.b64encode(ed_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()
    records = {
        b"r1._domainkey.sender.example.": f"v=DKIM1; k=rsa; p={rsa_pub}".encode(),
        b"e1._domainkey.sender.example.": f"v=DKIM1; k=ed25519; p={ed_pub}".encode(),
    }
    return pems, records


@pytest.mark.timeout(120)
def test_worker_signs_every_message_and_dkimpy_verifies(tmp_path):
    pems, records = _keys(tmp_path)
    world = World(WorldSpec(name="dkim", providers=[Provider(name="fast", generate=5)]))
    rcpt, msg, emails = write_inputs(tmp_path, world, 40)

    async def go():
        async with SimInternet(world, keep_messages=True) as sim:
            cfg = make_config(sim, validity_s=20.0, workers=1)
            cfg = msgspec.structs.replace(cfg, dkim=DkimConfig(keys=[
                DkimKeyConfig(domain="sender.example", selector="r1", key_file=str(pems["rsa"])),
                DkimKeyConfig(domain="sender.example", selector="e1", key_file=str(pems["ed"]),
                              algorithm="ed25519-sha256"),
            ]))
            spool_path = tmp_path / "spool"
            spool = Spool.open(spool_path, cfg.spool)
            did = await inject(spool, cfg, rcpt, msg, 20.0)
            await asyncio.wait_for(engine.run(cfg, spool_path, [did]), 90)
            return await sim.messages(), spool.kpis(did)

    messages, kpis = asyncio.run(go())
    assert kpis["sent"] == len(emails) == len(messages)

    def dnsfunc(name, timeout=5):
        return records.get(name if name.endswith(b".") else name + b".")

    for _mail_from, rcpts, data in messages:
        assert data.count(b"DKIM-Signature:") == 2, data[:400]
        # both signatures must verify (dkimpy checks the one at index i)
        for i in range(2):
            d = dkimpy.DKIM(data)
            assert d.verify(idx=i, dnsfunc=dnsfunc), (rcpts, i)
    # a tampered body no longer verifies: the check above could fail
    _f, _r, data = messages[0]
    assert not dkimpy.verify(data.replace(b"a test message", b"a changed message"),
                             dnsfunc=dnsfunc)
