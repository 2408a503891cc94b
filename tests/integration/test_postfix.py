"""Interop with real Postfix: smtp-sink, and a receiving Postfix started on a loopback port.

Skipped (with the reason) only when the postfix binaries are missing or we are not root
(a Postfix instance needs its postfix/postdrop owners).
"""

from __future__ import annotations

import os
import re
import time

import pytest

from fastmta.sim.certs import make_self_signed
from fastmta.smtp.messages import Envelope
from fastmta.smtp.transport import Connection
from smtputil import POSTFIX, SMTP_SINK, PostfixServer, SmtpSink, arun, fast_timeouts

pytestmark = pytest.mark.interop

need_sink = pytest.mark.skipif(SMTP_SINK is None, reason="smtp-sink (Debian package postfix) "
                               "is not installed")
need_postfix = pytest.mark.skipif(
    POSTFIX is None or os.geteuid() != 0,
    reason="postfix is not installed" if POSTFIX is None else "a Postfix instance needs root")

BODY = b"Subject: interop\r\nFrom: s@a.test\r\n\r\n" + b"x" * 3000 + b"\r\n.dot line\r\n"


@need_sink
@pytest.mark.parametrize("pipelining", [True, False])
def test_smtp_sink(pipelining):
    sink = SmtpSink(pipelining=pipelining)
    try:
        async def go():
            conn = await Connection.open("127.0.0.1", sink.port, timeouts=fast_timeouts())
            assert conn.capabilities.pipelining is pipelining
            res = await conn.send_many([Envelope("s@a.test", [f"r{i}@b.test", "z@b.test"], BODY)
                                        for i in range(100)])
            await conn.quit()
            return res

        results = arun(go())
    finally:
        sink.stop()
    assert all(r.ok and len(r.accepted) == 2 for r in results)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_self_signed(tmp_path_factory.mktemp("pfcerts"), ["pf.sim.test"], ["127.0.0.1"])


@need_postfix
@pytest.mark.parametrize("pipelining", [True, False])
@pytest.mark.parametrize("tls", [False, True])
def test_receiving_postfix(certs, pipelining, tls):
    pf = PostfixServer(tls=certs if tls else None, pipelining=pipelining)
    try:
        async def go():
            conn = await Connection.open(
                "127.0.0.1", pf.port,
                timeouts=fast_timeouts(tls="required" if tls else "none",
                                       command_timeout_s=10, data_done_timeout_s=10,
                                       greeting_timeout_s=10))
            assert conn.tls_active is tls
            assert conn.capabilities.pipelining is pipelining
            first = await conn.send(Envelope(
                "s@a.test", ["ok1@pf.test", "unknown1@pf.test", "full1@pf.test", "ok2@pf.test"],
                BODY))
            rest = await conn.send_many([Envelope("s@a.test", [f"m{i}@pf.test"], BODY)
                                         for i in range(10)])
            await conn.quit()
            return first, rest

        first, rest = arun(go(), timeout=60)
        assert first.accepted == ["ok1@pf.test", "ok2@pf.test"]
        codes = [(rep.code, rep.enhanced, cls.type) for _, rep, cls in first.outcomes]
        assert codes[1] == (550, "5.1.1", "hard") and codes[2][0] == 452
        assert codes[2][2] == "soft"
        assert re.search(r"queued as \w+", first.data_reply.text)
        assert all(r.ok for r in rest)
        # Postfix really took them: 12 deliveries to the discard transport
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            n = pf.log().count("status=sent (")
            if n >= 12:
                break
            time.sleep(0.2)
        assert pf.log().count("status=sent (") == 12, pf.log()[-2000:]
    finally:
        pf.stop()


@need_postfix
def test_receiving_postfix_bdat(certs):
    pf = PostfixServer()
    try:
        async def go():
            conn = await Connection.open(
                "127.0.0.1", pf.port,
                timeouts=fast_timeouts(chunking=True, command_timeout_s=10,
                                       data_done_timeout_s=10, greeting_timeout_s=10))
            assert conn.capabilities.chunking and conn.proto.chunking
            res = await conn.send_many(
                [Envelope("s@a.test", [f"c{i}@pf.test", "unknown@pf.test"], BODY)
                 for i in range(10)]
                + [Envelope("s@a.test", ["unknown2@pf.test"], BODY),
                   Envelope("s@a.test", ["after@pf.test"], BODY)])
            await conn.quit()
            return res

        res = arun(go(), timeout=60)
        assert all(r.accepted == [f"c{i}@pf.test"] for i, r in enumerate(res[:10]))
        assert res[10].outcomes[0][1].code == 550 and not res[10].ok
        assert res[11].ok
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and pf.log().count("status=sent (") < 11:
            time.sleep(0.2)
        assert pf.log().count("status=sent (") == 11, pf.log()[-2000:]
    finally:
        pf.stop()
