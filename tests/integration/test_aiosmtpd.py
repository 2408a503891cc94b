"""The client against aiosmtpd (an independent SMTP server implementation, lock-step)."""

from __future__ import annotations

import ssl

import pytest
from aiosmtpd.controller import Controller

from fastmta.sim.certs import make_self_signed
from fastmta.smtp.messages import Envelope
from fastmta.smtp.transport import ConnectFailed, Connection
from smtputil import arun, fast_timeouts, free_port


class Recorder:
    def __init__(self) -> None:
        self.envelopes: list[tuple[str, list[str], bytes]] = []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("unknown"):
            return "550 5.1.1 No such user here"
        if address.startswith("full"):
            return "452 4.2.2 Mailbox full"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos),
                               envelope.original_content))
        return "250 2.0.0 Message accepted for delivery"


@pytest.fixture
def certs(tmp_path):
    return make_self_signed(tmp_path, ["localhost"], ["127.0.0.1"])


@pytest.fixture
def server(request, certs):
    tls = getattr(request, "param", False)
    handler = Recorder()
    kw = {}
    if tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*certs)
        kw["tls_context"] = ctx
    ctl = Controller(handler, hostname="127.0.0.1", port=free_port(), ready_timeout=10, **kw)
    ctl.start()
    ctl.handler_obj = handler
    yield ctl
    ctl.stop()


BODY = b"Subject: test\r\nFrom: s@a.test\r\n\r\n.leading dot\r\nline\n\r\n.\r\nend"


def test_messages_and_mixed_recipients(server):
    async def go():
        conn = await Connection.open("127.0.0.1", server.port, timeouts=fast_timeouts())
        assert not conn.capabilities.pipelining  # aiosmtpd is lock-step
        r1 = await conn.send(Envelope("s@a.test", ["a@b.test", "unknown@b.test", "full@b.test",
                                                   "c@b.test"], BODY))
        results = await conn.send_many([Envelope("s@a.test", [f"m{i}@b.test"], b"n%d" % i)
                                        for i in range(5)])
        await conn.quit()
        return r1, results

    r1, results = arun(go())
    assert r1.accepted == ["a@b.test", "c@b.test"]
    kinds = [(rep.code, cls.type) for _, rep, cls in r1.outcomes]
    assert kinds == [(250, "none"), (550, "hard"), (452, "soft"), (250, "none")]
    assert all(r.ok for r in results)
    envs = server.handler_obj.envelopes
    assert len(envs) == 6
    assert envs[0][1] == ["a@b.test", "c@b.test"]
    # dot-stuffing undone by the server, line endings normalised
    assert envs[0][2] == (b"Subject: test\r\nFrom: s@a.test\r\n\r\n.leading dot\r\nline\r\n"
                          b"\r\n.\r\nend\r\n")
    assert [e[1][0] for e in envs[1:]] == [f"m{i}@b.test" for i in range(5)]


@pytest.mark.parametrize("server", [True], indirect=True)
@pytest.mark.parametrize("policy", ["opportunistic", "required", "verify"])
def test_starttls(server, certs, policy):
    async def go():
        conn = await Connection.open("127.0.0.1", server.port,
                                     timeouts=fast_timeouts(tls=policy), cafile=certs[0])
        assert conn.tls_active and conn.tls_info[0].startswith("TLSv1.")
        r = await conn.send(Envelope("s@a.test", ["a@b.test"], b"secret"))
        await conn.quit()
        return r

    assert arun(go()).ok
    assert server.handler_obj.envelopes[0][2] == b"secret\r\n"


def test_tls_required_but_not_offered(server):
    async def go():
        with pytest.raises(ConnectFailed) as ei:
            await Connection.open("127.0.0.1", server.port, timeouts=fast_timeouts(tls="required"))
        return ei.value

    err = arun(go())
    assert err.kind == "tls_failed" and err.classification.type == "soft"


@pytest.mark.parametrize("server", [True], indirect=True)
def test_tls_verify_fails_with_unknown_ca(server):
    async def go():
        with pytest.raises(ConnectFailed) as ei:
            await Connection.open("127.0.0.1", server.port, timeouts=fast_timeouts(tls="verify"))
        return ei.value

    err = arun(go())
    assert err.kind == "tls_failed" and "handshake" in err.reply.raw
