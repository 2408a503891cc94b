"""Smarthost relay through a REAL Postfix that requires SMTP AUTH (issue #17 section 5).

The test starts its own Postfix instance on a loopback port in a temp dir, with Cyrus SASL
(sasldb, Debian ``sasl2-bin`` + ``libsasl2-modules``), STARTTLS with a throwaway cert,
``smtpd_tls_auth_only = yes`` and relaying only for authenticated clients.  fastmta
authenticates with PLAIN and LOGIN, a wrong password gets Postfix's 535, and a recording
proxy between the two shows that no credential crosses the wire in clear text.

Skipped (with the reason) only when Postfix or saslpasswd2 is missing or we are not root.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec
import pytest

from fastmta.config import RoutingConfig
from fastmta.engine import entry as engine
from fastmta.sim import SimInternet
from fastmta.sim.certs import make_self_signed
from fastmta.sim.world import Provider, World, WorldSpec
from fastmta.smtp.messages import Envelope
from fastmta.smtp.relay import authenticate
from fastmta.smtp.transport import ConnectFailed, Connection
from fastmta.spool import Spool

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "engine"))
from engine_helpers import inject, make_config, write_inputs  # noqa: E402

from smtputil import POSTFIX, PostfixServer, fast_timeouts  # noqa: E402

SASLPASSWD2 = shutil.which("saslpasswd2") or (
    "/usr/sbin/saslpasswd2" if os.path.exists("/usr/sbin/saslpasswd2") else None)
_PLUGINS = [p for p in ("/usr/lib/x86_64-linux-gnu/sasl2", "/usr/lib/aarch64-linux-gnu/sasl2",
                        "/usr/lib/sasl2") if os.path.isdir(p)]
_reason = ("postfix is not installed (Debian package postfix)" if POSTFIX is None else
           "saslpasswd2 is not installed (Debian package sasl2-bin)" if SASLPASSWD2 is None else
           "a Postfix instance needs root" if os.geteuid() != 0 else
           "Cyrus SASL plugins are missing (Debian package libsasl2-modules)"
           if not any(os.path.exists(f"{d}/libplain.so") for d in _PLUGINS) else "")
pytestmark = [pytest.mark.interop, pytest.mark.skipif(bool(_reason), reason=_reason)]

USER, PASSWORD, REALM = "relayuser", "s3cret-Pass_42", "pf.sim.test"


class AuthPostfix:
    """Postfix relaying only for SASL-authenticated clients, AUTH only after STARTTLS."""

    def __init__(self, certs: tuple[str, str]) -> None:
        self.sasl = Path(tempfile.mkdtemp(prefix="fastmta-sasl-"))
        self.sasl.chmod(0o755)
        db = self.sasl / "sasldb2"
        subprocess.run([SASLPASSWD2, "-p", "-c", "-f", str(db), "-u", REALM, USER],
                       input=PASSWORD + "\n", text=True, check=True, timeout=30)
        shutil.chown(db, "postfix")
        db.chmod(0o600)
        smtpd_conf = ("pwcheck_method: auxprop\nauxprop_plugin: sasldb\n"
                      f"mech_list: PLAIN LOGIN\nsasldb_path: {db}\n")
        (self.sasl / "smtpd.conf").write_text(smtpd_conf)
        # Debian's Postfix reads $config_directory/sasl/smtpd.conf (cyrus_sasl_config_path
        # is set too, for builds that honour it)
        self.pf = PostfixServer(tls=certs, conf_files={"sasl/smtpd.conf": smtpd_conf},
                                extra_main=[
            "smtpd_sasl_auth_enable = yes",
            "smtpd_sasl_type = cyrus",
            "smtpd_sasl_path = smtpd",
            f"cyrus_sasl_config_path = {self.sasl}",
            f"smtpd_sasl_local_domain = {REALM}",
            "smtpd_sasl_security_options = noanonymous",
            "smtpd_tls_auth_only = yes",
            "mynetworks = 127.0.0.254/32",  # the tests' clients are NOT trusted by address
            "smtpd_relay_restrictions = permit_sasl_authenticated, reject_unauth_destination",
            "smtpd_recipient_restrictions = permit_sasl_authenticated, reject",
        ])
        self.port = self.pf.port

    def log(self) -> str:
        return self.pf.log()

    def wait_log(self, text: str, count: int, timeout: float = 20.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.log().count(text) < count:
            time.sleep(0.2)
        return self.log().count(text)

    def stop(self) -> None:
        self.pf.stop()
        shutil.rmtree(self.sasl, ignore_errors=True)


@pytest.fixture(scope="module")
def postfix(tmp_path_factory):
    certs = make_self_signed(tmp_path_factory.mktemp("pfauth"), [REALM], ["127.0.0.1"])
    pf = AuthPostfix(certs)
    yield pf
    pf.stop()


class Recorder:
    """A loopback TCP proxy that keeps every byte the client sends."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.client_bytes = bytearray()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _handle(self, cr, cw):
        sr, sw = await asyncio.open_connection("127.0.0.1", self.target)

        async def pump(r, w, keep):
            try:
                while data := await r.read(65536):
                    if keep:
                        self.client_bytes += data
                    w.write(data)
                    await w.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                w.close()

        await asyncio.gather(pump(cr, sw, True), pump(sr, cw, False))

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()


def _secrets() -> list[bytes]:
    b64 = base64.b64encode
    return [PASSWORD.encode(), b64(PASSWORD.encode()),
            b64(f"\x00{USER}\x00{PASSWORD}".encode()), b64(USER.encode())]


def _timeouts(tls: str = "required"):
    return fast_timeouts(tls=tls, command_timeout_s=10, data_done_timeout_s=10,
                         greeting_timeout_s=10)


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN"])
def test_auth_and_relay_through_postfix(postfix, mech):
    before = postfix.log().count(f"sasl_method={mech}, sasl_username={USER}")

    async def go():
        rec = Recorder(postfix.port)
        port = await rec.start()
        conn = await Connection.open("127.0.0.1", port, ehlo_name="client.test",
                                     timeouts=_timeouts())
        assert conn.tls_active
        used = await authenticate(conn, USER, PASSWORD, mech)
        res = await conn.send(Envelope("s@sender.test", [f"{mech.lower()}@far.example"],
                                       b"Subject: relayed\r\n\r\nhello\r\n"))
        await conn.quit()
        await rec.stop()
        return used, res, bytes(rec.client_bytes)

    used, res, wire = asyncio.run(go())
    assert used == mech
    assert res.ok and res.accepted == [f"{mech.lower()}@far.example"]
    # Postfix saw the authenticated login and relayed the message (to its discard transport)
    assert postfix.wait_log(f"sasl_method={mech}, sasl_username={USER}", before + 1) == before + 1
    assert postfix.wait_log(f"to=<{mech.lower()}@far.example>", 1) >= 1
    # the clear-text part of the session ends at STARTTLS and holds no credential
    assert wire.startswith(b"EHLO client.test\r\nSTARTTLS\r\n")
    assert b"AUTH" not in wire and not any(s in wire for s in _secrets())


def test_wrong_password_gets_postfix_535(postfix):
    async def go():
        conn = await Connection.open("127.0.0.1", postfix.port, timeouts=_timeouts())
        with pytest.raises(ConnectFailed) as ei:
            await authenticate(conn, USER, "not-the-password", "PLAIN")
        return ei.value

    exc = asyncio.run(go())
    assert exc.kind == "auth" and exc.reply.code == 535
    assert exc.reply.enhanced == "5.7.8"
    # the operator's credentials are wrong, not the recipients': the mail waits (soft),
    # it does not bounce
    assert exc.classification.type == "soft" and exc.classification.action == "retry"
    assert exc.classification.rule == "sender-authentication"
    assert postfix.wait_log("SASL PLAIN authentication failed", 1) >= 1


def test_no_credentials_without_tls(postfix):
    """Without STARTTLS Postfix does not offer AUTH and fastmta sends none; and even when
    told to, fastmta refuses AUTH in clear text unless explicitly allowed for loopback."""
    async def go():
        rec = Recorder(postfix.port)
        port = await rec.start()
        conn = await Connection.open("127.0.0.1", port, timeouts=_timeouts("none"))
        assert not conn.tls_active
        with pytest.raises(ConnectFailed) as ei:
            await authenticate(conn, USER, PASSWORD)
        await asyncio.sleep(0)
        await rec.stop()
        return ei.value, bytes(rec.client_bytes)

    exc, wire = asyncio.run(go())
    assert exc.kind == "auth" and "without TLS" in exc.reply.raw
    assert b"AUTH" not in wire and not any(s in wire for s in _secrets())


def test_unauthenticated_client_cannot_relay(postfix):
    async def go():
        conn = await Connection.open("127.0.0.1", postfix.port, timeouts=_timeouts())
        res = await conn.send(Envelope("s@sender.test", ["x@far.example"], b"\r\nbody\r\n"))
        await conn.quit()
        return res

    res = asyncio.run(go())
    assert not res.ok and res.outcomes[0][1].code == 554


@pytest.mark.timeout(180)
@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN"])
def test_engine_delivers_a_campaign_through_postfix(postfix, tmp_path, mech):
    world = World(WorldSpec(name="pfrelayed", providers=[Provider(name="far", generate=4)]))
    rcpt, msg, emails = write_inputs(tmp_path, world, 60)
    before = postfix.log().count(f"sasl_method={mech}, sasl_username={USER}")

    async def go():
        async with SimInternet(world) as sim:
            cfg = make_config(sim, validity_s=60, workers=1)
            cfg = msgspec.structs.replace(cfg, routing=RoutingConfig(
                smarthost=f"127.0.0.1:{postfix.port}", auth_user=USER, auth_password=PASSWORD,
                auth_mechanism=mech, tls="required"))
            spool = Spool.open(tmp_path / "spool", cfg.spool)
            did = await inject(spool, cfg, rcpt, msg, 60)
            await engine.Supervisor(cfg, tmp_path / "spool").run([did])
            return spool.kpis(did), await sim.stats()

    kpis, sim_stats = asyncio.run(go())
    assert kpis.get("sent") == 60, kpis
    assert sim_stats["messages"] == 0  # nothing went to the MX hosts directly
    assert postfix.wait_log(f"sasl_method={mech}, sasl_username={USER}", before + 1) > before
    log = postfix.log()
    assert all(f"to=<{e}>" in log for e in emails)


@pytest.mark.timeout(120)
def test_engine_with_a_wrong_password_defers_and_bounces_nothing(postfix, tmp_path):
    world = World(WorldSpec(name="pfwrong", providers=[Provider(name="far", generate=2)]))
    rcpt, msg, emails = write_inputs(tmp_path, world, 10)
    start = len(postfix.log())

    async def go():
        async with SimInternet(world) as sim:
            cfg = make_config(sim, validity_s=4, workers=1)
            cfg = msgspec.structs.replace(cfg, routing=RoutingConfig(
                smarthost=f"127.0.0.1:{postfix.port}", auth_user=USER,
                auth_password="wrong-password", tls="required"))
            spool = Spool.open(tmp_path / "spool", cfg.spool)
            did = await inject(spool, cfg, rcpt, msg, 4)
            await engine.Supervisor(cfg, tmp_path / "spool").run([did])
            return spool.kpis(did)

    kpis = asyncio.run(go())
    assert kpis.get("sent", 0) == 0 and kpis.get("bounced", 0) == 0, kpis
    assert sum(kpis.values()) >= 10, kpis
    log = postfix.log()[start:]
    assert "SASL PLAIN authentication failed" in log
    assert not any(f"to=<{e}>" in log for e in emails)  # Postfix took nothing
