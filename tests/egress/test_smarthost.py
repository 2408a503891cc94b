"""Smarthost relay with SMTP AUTH (PLAIN, LOGIN): against aiosmtpd with an
authenticator (STARTTLS, credentials over TLS only), and the engine routing every
domain of a simulated world through it."""

from __future__ import annotations

import asyncio
import os
import sys

import msgspec
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from fastmta.config import RoutingConfig
from fastmta.engine import entry as engine
from fastmta.sim import SimInternet
from fastmta.sim.certs import make_self_signed, server_context
from fastmta.sim.world import Provider, World, WorldSpec
from fastmta.smtp.relay import authenticate
from fastmta.smtp.transport import ConnectFailed, Connection
from fastmta.spool import Spool

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "engine"))
from engine_helpers import inject, make_config, write_inputs  # noqa: E402

from smtputil import fast_timeouts, free_port  # noqa: E402

USER, PASSWORD = "relayuser", "s3cret pass"


class Relay:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str]]] = []
        self.logins: list[tuple[str, bytes]] = []

    def authenticator(self, server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and auth_data.login == USER.encode() \
            and auth_data.password == PASSWORD.encode()
        self.logins.append((mechanism, auth_data.login))
        return AuthResult(success=ok, handled=False)  # False: aiosmtpd sends the 535

    async def handle_DATA(self, server, session, envelope):
        if not session.authenticated:
            return "530 5.7.0 Authentication required"
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 2.0.0 queued"


@pytest.fixture
def relay(tmp_path, request):
    require_tls = getattr(request, "param", True)
    cert, key = make_self_signed(tmp_path / "certs", ["localhost"], ["127.0.0.1"])
    handler = Relay()
    ctl = Controller(handler, hostname="127.0.0.1", port=free_port(), ready_timeout=10,
                     tls_context=server_context(cert, key), authenticator=handler.authenticator,
                     auth_require_tls=require_tls, auth_required=True)
    ctl.start()
    ctl.relay = handler
    yield ctl
    ctl.stop()


async def _open(port, tls="required"):
    return await Connection.open("127.0.0.1", port, tls=tls, ehlo_name="client.test",
                                 timeouts=fast_timeouts())


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN"])
def test_auth_over_starttls(relay, mech):
    async def go():
        conn = await _open(relay.port)
        assert conn.tls_active
        used = await authenticate(conn, USER, PASSWORD, mech)
        await conn.quit()
        return used

    assert asyncio.run(go()) == mech
    assert relay.relay.logins[-1] == (mech, USER.encode())


def test_wrong_password_is_a_clear_failure(relay):
    async def go():
        conn = await _open(relay.port)
        with pytest.raises(ConnectFailed) as ei:
            await authenticate(conn, USER, "wrong")
        return ei.value

    exc = asyncio.run(go())
    assert exc.kind == "auth" and exc.reply.code == 535


@pytest.mark.parametrize("relay", [False], indirect=True)
def test_plaintext_auth_only_when_allowed_on_loopback(relay):
    async def go():
        conn = await _open(relay.port, tls="none")
        with pytest.raises(ConnectFailed) as ei:
            await authenticate(conn, USER, PASSWORD)
        assert "without TLS" in ei.value.reply.raw
        conn2 = await _open(relay.port, tls="none")
        used = await authenticate(conn2, USER, PASSWORD, allow_plaintext_loopback=True)
        await conn2.quit()
        return used

    assert asyncio.run(go()) == "PLAIN"


@pytest.mark.timeout(120)
def test_engine_sends_everything_through_the_smarthost(relay, tmp_path):
    world = World(WorldSpec(name="relayed", providers=[Provider(name="far", generate=5)]))
    rcpt, msg, emails = write_inputs(tmp_path, world, 300)

    async def go():
        async with SimInternet(world) as sim:
            cfg = make_config(sim, validity_s=30, workers=1)
            cfg = msgspec.structs.replace(cfg, routing=RoutingConfig(
                smarthost=f"127.0.0.1:{relay.port}", auth_user=USER, auth_password=PASSWORD,
                tls="required"))
            spool = Spool.open(tmp_path / "spool", cfg.spool)
            did = await inject(spool, cfg, rcpt, msg, 30)
            await engine.Supervisor(cfg, tmp_path / "spool").run([did])
            return spool.kpis(did), await sim.stats()

    kpis, sim_stats = asyncio.run(go())
    assert kpis.get("sent") == 300
    assert sim_stats["messages"] == 0  # nothing went to the MX hosts
    got = sorted(r for _f, rcpts in relay.relay.messages for r in rcpts)
    assert got == sorted(emails)
