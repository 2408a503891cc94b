"""Hostile and broken SMTP servers (issue #9), each a scripted loopback peer.

Complements tests/faults (reset at greeting, silent greeting, 421 at greeting / on an idle
connection, STARTTLS garbage, 454 under ``required``, 2000-line reply, HTTP garbage,
disconnect mid-DATA, slow drip, endless drip of continuation lines, peer that stops
reading).  Every test here runs under ``arun``: it fails on a leaked task, a leaked socket
or an exception that reached the event loop, so "no crash, resources released" is checked
for each behaviour, besides the classification.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time

import pytest

from fastmta.sim.certs import make_self_signed, server_context
from fastmta.smtp.messages import Envelope
from fastmta.smtp.transport import ConnectFailed, Connection
from smtputil import ScriptServer, arun, fast_timeouts, read_line, standard_hello

pytestmark = pytest.mark.timeout(30)

ENV = Envelope("s@a.test", ["r1@b.test", "r2@b.test"], b"Subject: x\r\n\r\n" + b"y" * 3000)


def rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def answer_until(reader, writer, verb: bytes) -> None:
    """Answer 250 (354 to DATA, 250 after the dot) until the client sends ``verb``."""
    while True:
        line = await read_line(reader)
        v = line[:4].upper()
        if v == verb:
            return
        if v == b"DATA":
            writer.write(b"354 go\r\n")
            await writer.drain()
            await reader.readuntil(b"\r\n.\r\n")
            writer.write(b"250 2.0.0 queued\r\n")
        elif v == b"QUIT":
            writer.write(b"221 bye\r\n")
            await writer.drain()
            return
        else:
            writer.write(b"250 ok\r\n")
        await writer.drain()


async def one_send(port: int, env: Envelope = ENV, **kw):
    """Open, send one envelope, quit; returns (result, usable-after-send)."""
    conn = await Connection.open("127.0.0.1", port, timeouts=fast_timeouts(**kw))
    res = await conn.send(env)
    usable = conn.usable
    await conn.quit(timeout_s=1.0)
    return res, usable


async def open_fail(port: int, **kw) -> ConnectFailed:
    with pytest.raises(ConnectFailed) as ei:
        await Connection.open("127.0.0.1", port, timeouts=fast_timeouts(**kw))
    return ei.value


def none_sent(res) -> bool:
    return not res.accepted and all(c.type != "none" for _, _, c in res.outcomes)


# ------------------------------------------------------------------ 1-2 tarpits


def test_tarpit_greeting_one_byte_per_tick_times_out():
    """A tarpit drips the greeting one byte at a time: partial bytes do not re-arm the
    greeting timeout (only a complete reply does), so it fires on time."""

    async def handler(reader, writer):
        for b in b"220 tarpit.test ESMTP welcome to the slowest server on earth\r\n":
            writer.write(bytes([b]))
            await writer.drain()
            await asyncio.sleep(0.1)

    async def go():
        async with ScriptServer(handler) as srv:
            t = time.monotonic()
            err = await open_fail(srv.port, greeting_timeout_s=0.5)
            return err, time.monotonic() - t

    err, took = arun(go())
    assert err.kind == "timeout" and 0.45 < took < 1.5
    assert err.classification.type == "soft" and err.classification.bounce_class == 24


def test_tarpit_reply_to_rcpt_times_out_softly():
    async def handler(reader, writer):
        await standard_hello(reader, writer, caps=(b"8BITMIME",))  # no pipelining
        await answer_until(reader, writer, b"RCPT")
        for b in b"250 2.1.5 recipient ok, eventually\r\n":
            writer.write(bytes([b]))
            await writer.drain()
            await asyncio.sleep(0.1)

    async def go():
        async with ScriptServer(handler) as srv:
            t = time.monotonic()
            res, usable = await one_send(srv.port, command_timeout_s=0.4)
            return res, usable, time.monotonic() - t

    res, usable, took = arun(go())
    assert not usable and took < 2.5 and none_sent(res)
    assert all(c.type == "soft" and c.bounce_class == 24 for _, _, c in res.outcomes)


# ------------------------------------------------------------------ 3-5 silence, closes, 421


def test_never_answers_mail():
    async def handler(reader, writer):
        await standard_hello(reader, writer)
        await reader.read()  # reads everything, answers nothing

    async def go():
        async with ScriptServer(handler) as srv:
            t = time.monotonic()
            res, usable = await one_send(srv.port, command_timeout_s=0.3)
            return res, usable, time.monotonic() - t

    res, usable, took = arun(go())
    assert not usable and took < 2.0 and none_sent(res) and not res.unknown_fate
    assert all(c.type == "soft" and c.reason == "not_connected" for _, _, c in res.outcomes)


def test_closes_right_after_greeting():
    async def handler(reader, writer):
        writer.write(b"220 bye already\r\n")
        await writer.drain()
        writer.close()

    async def go():
        async with ScriptServer(handler) as srv:
            return await open_fail(srv.port)

    err = arun(go())
    assert err.kind == "connection_lost" and err.classification.type == "soft"


def test_421_mid_transaction_to_rcpt():
    async def handler(reader, writer):
        await standard_hello(reader, writer, caps=(b"8BITMIME",))
        await answer_until(reader, writer, b"RCPT")
        writer.write(b"421 4.7.0 mx.test too much load, closing transmission channel\r\n")
        await writer.drain()
        writer.close()

    async def go():
        async with ScriptServer(handler) as srv:
            return await one_send(srv.port)

    res, usable = arun(go())
    assert not usable and none_sent(res)
    assert all(c.type == "soft" for _, _, c in res.outcomes)
    assert any(rep.code == 421 for _, rep, _ in res.outcomes)


# ------------------------------------------------------------------ 6-8 reply sequencing


def test_replies_to_commands_not_sent():
    """Unsolicited replies (two answers to MAIL): the extra one must not be taken as the
    answer to DATA or the dot, so nothing counts as delivered that was not."""

    async def handler(reader, writer):
        await standard_hello(reader, writer, caps=(b"8BITMIME",))
        line = await read_line(reader)
        assert line.startswith(b"MAIL")
        writer.write(b"250 ok\r\n250 2.0.0 queued as SURPRISE\r\n250 ok\r\n250 ok\r\n")
        await writer.drain()
        await reader.read()

    async def go():
        async with ScriptServer(handler) as srv:
            return await one_send(srv.port, command_timeout_s=0.5)

    res, usable = arun(go())
    assert not usable and none_sent(res)


def test_pipelined_replies_missing():
    """PIPELINING server answers MAIL and one RCPT, then nothing: timeout, soft."""

    async def handler(reader, writer):
        await standard_hello(reader, writer)
        for _ in range(4):
            await read_line(reader)
        writer.write(b"250 ok\r\n250 ok\r\n")
        await writer.drain()
        await reader.read()

    async def go():
        async with ScriptServer(handler) as srv:
            return await one_send(srv.port, command_timeout_s=0.3, data_init_timeout_s=0.3)

    res, usable = arun(go())
    assert not usable and none_sent(res) and not res.unknown_fate
    assert all(c.type == "soft" for _, _, c in res.outcomes)


def test_pipelined_replies_out_of_order():
    """354 arrives first (before the replies to MAIL and RCPT): a protocol violation.
    The client must not send the body on a reply it cannot attribute, nor count a send."""

    async def handler(reader, writer):
        await standard_hello(reader, writer)
        for _ in range(4):
            await read_line(reader)
        writer.write(b"354 go\r\n250 ok\r\n250 ok\r\n250 ok\r\n")
        await writer.drain()
        try:
            data = await asyncio.wait_for(reader.read(), 2)
        except TimeoutError:
            data = b""
        writer.write(b"250 2.0.0 queued\r\n")
        srv_state["after"] = data

    srv_state: dict = {}

    async def go():
        async with ScriptServer(handler) as srv:
            return await one_send(srv.port, command_timeout_s=0.3)

    res, usable = arun(go())
    # a 354 answering MAIL is a failure of MAIL; the recipients are not delivered
    assert none_sent(res)
    assert all(c.type == "soft" for _, _, c in res.outcomes), res.outcomes


# ------------------------------------------------------------------ 9-11 reply content


def test_one_megabyte_reply_line():
    async def handler(reader, writer):
        writer.write(b"220 " + b"A" * (1024 * 1024) + b"\r\n")
        await writer.drain()
        await reader.read()

    async def go():
        async with ScriptServer(handler) as srv:
            return await open_fail(srv.port)

    err = arun(go())
    assert err.kind == "protocol_error" and "longer than" in err.reply.raw
    assert err.classification.type == "soft"
    assert len(err.reply.raw) < 1000  # the report does not carry the megabyte


def test_infinite_multiline_reply_fast():
    """Continuation lines without end, as fast as the socket takes them: the reply-size
    cap stops it (the slow variant is tests/faults::test_endless_drip_times_out)."""

    async def handler(reader, writer):
        writer.write(b"220 ok\r\n")
        await read_line(reader)
        chunk = b"250-" + b"x" * 60 + b"\r\n"
        for _ in range(200_000):  # bounded: 12 MB at most
            writer.write(chunk * 100)
            await writer.drain()

    async def go():
        async with ScriptServer(handler) as srv:
            t = time.monotonic()
            err = await open_fail(srv.port)
            return err, time.monotonic() - t

    err, took = arun(go())
    assert err.kind == "protocol_error" and took < 3.0


def test_invalid_utf8_in_reply_is_classified():
    async def handler(reader, writer):
        await standard_hello(reader, writer, caps=(b"8BITMIME",))
        await answer_until(reader, writer, b"RCPT")
        writer.write(b"550 5.1.1 <r1@b.test>: \xff\xfe\xc3 user unknown \x80\r\n")
        await writer.drain()
        await answer_until(reader, writer, b"QUIT")

    async def go():
        async with ScriptServer(handler) as srv:
            return await one_send(srv.port)

    res, usable = arun(go())
    (r1, rep1, c1), (r2, rep2, c2) = res.outcomes
    assert rep1.code == 550 and c1.type == "hard" and c1.reason == "user_unknown"
    assert "user unknown" in rep1.raw and isinstance(rep1.raw, str)
    assert c2.type == "none" and usable  # the other recipient went through


def test_250_to_data_instead_of_354():
    """A 250 to DATA is not a permission to send the body, and not a delivery."""

    async def handler(reader, writer):
        await standard_hello(reader, writer, caps=(b"8BITMIME",))
        await answer_until(reader, writer, b"DATA")
        writer.write(b"250 2.0.0 ok whatever\r\n")
        await writer.drain()
        try:
            state["after"] = await asyncio.wait_for(reader.read(100), 1.0)
        except TimeoutError:
            state["after"] = b""

    state: dict = {}

    async def go():
        async with ScriptServer(handler) as srv:
            return await one_send(srv.port, command_timeout_s=0.5, data_init_timeout_s=0.5)

    res, usable = arun(go())
    assert none_sent(res)
    assert b"Subject: x" not in state.get("after", b"")  # the body was not sent


def test_250_before_the_dot_is_not_a_delivery():
    """The server says 250 while the body is still being written (before the dot)."""

    async def handler(reader, writer):
        await standard_hello(reader, writer, caps=(b"8BITMIME",))
        await answer_until(reader, writer, b"DATA")
        writer.write(b"354 go\r\n")
        await writer.drain()
        await reader.readexactly(50)
        writer.write(b"250 2.0.0 queued early\r\n")
        await writer.drain()
        await asyncio.sleep(5)  # stops reading: the client's buffer stays full

    # larger than the socket buffers, so the reply comes while the body is still unsent
    big = Envelope("s@a.test", ["r1@b.test"], b"Subject: x\r\n\r\n" + b"y" * 16_000_000)

    async def go():
        async with ScriptServer(handler) as srv:
            return await one_send(srv.port, big, data_done_timeout_s=0.5)

    res, usable = arun(go())
    # either the early 250 is a protocol error (soft) or it is held as the answer to the
    # dot; both are acceptable only if the fate is reported honestly
    if res.accepted:
        pytest.fail(f"an early 250 counted as delivery: {res.outcomes}")
    assert all(c.type == "soft" for _, _, c in res.outcomes)


# ------------------------------------------------------------------ 12-16 TLS


async def _tls_server(cert_key, state, starttls_reply=b"220 go ahead\r\n", stall=False):
    ctx = server_context(*cert_key) if cert_key else None

    async def handler(reader, writer):
        state["conns"] = state.get("conns", 0) + 1
        await standard_hello(reader, writer, caps=(b"STARTTLS", b"8BITMIME"))
        line = await read_line(reader)
        if line.upper() != b"STARTTLS":
            writer.write(b"250 ok\r\n")  # plain-text path
            await writer.drain()
            await answer_until(reader, writer, b"QUIT")
            return
        writer.write(starttls_reply)
        await writer.drain()
        if not starttls_reply.startswith(b"220"):
            await answer_until(reader, writer, b"QUIT")
            return
        if stall:
            await reader.read()  # swallow the ClientHello, never answer it
            return
        await writer.start_tls(ctx)
        state["tls"] = True
        line = await read_line(reader)
        assert line.upper().startswith(b"EHLO")
        writer.write(b"250-tls.test\r\n250 8BITMIME\r\n")
        await writer.drain()
        await answer_until(reader, writer, b"QUIT")

    return handler


def test_tls_handshake_stall(tmp_path):
    state: dict = {}

    async def go():
        handler = await _tls_server(None, state, stall=True)
        async with ScriptServer(handler) as srv:
            t = time.monotonic()
            err = await open_fail(srv.port, tls="required", command_timeout_s=0.4)
            return err, time.monotonic() - t

    err, took = arun(go())
    assert err.kind in ("tls_failed", "timeout") and took < 3.0
    assert err.classification.type == "soft"


def test_certificate_mismatch_under_verify(tmp_path):
    cert_key = make_self_signed(tmp_path, names=["other.example"], ips=["127.0.0.2"])
    state: dict = {}

    async def go():
        handler = await _tls_server(cert_key, state)
        async with ScriptServer(handler) as srv:
            with pytest.raises(ConnectFailed) as ei:
                await Connection.open("127.0.0.1", srv.port, server_hostname="mx.b.test",
                                      cafile=cert_key[0],
                                      timeouts=fast_timeouts(tls="verify"))
            return ei.value

    err = arun(go())
    assert err.kind == "tls_failed" and err.classification.type == "soft"
    assert "certificate" in err.reply.raw.lower() or "hostname" in err.reply.raw.lower()


def test_certificate_match_under_verify_and_tls_reported(tmp_path):
    cert_key = make_self_signed(tmp_path, names=["mx.b.test"])
    state: dict = {}

    async def go():
        handler = await _tls_server(cert_key, state)
        async with ScriptServer(handler) as srv:
            conn = await Connection.open("127.0.0.1", srv.port, server_hostname="mx.b.test",
                                         cafile=cert_key[0], timeouts=fast_timeouts(tls="verify"))
            info = conn.tls_info
            res = await conn.send(ENV)
            await conn.quit()
            return info, res

    info, res = arun(go())
    assert res.ok and info is not None and info[0].startswith("TLS")


def test_starttls_refused_under_opportunistic_continues_in_plain(tmp_path):
    state: dict = {}

    async def go():
        handler = await _tls_server(None, state,
                                    starttls_reply=b"454 4.7.0 TLS not available\r\n")
        async with ScriptServer(handler) as srv:
            conn = await Connection.open("127.0.0.1", srv.port,
                                         timeouts=fast_timeouts(tls="opportunistic"))
            res = await conn.send(ENV)
            tls = conn.tls_active
            await conn.quit()
            return res, tls

    res, tls = arun(go())
    assert res.ok and not tls


@pytest.mark.parametrize("policy", ["required", "verify"])
def test_starttls_stripped_downgrade_is_refused(policy):
    """A man in the middle removes STARTTLS from the EHLO answer: under ``required`` and
    ``verify`` nothing is sent in clear text."""
    seen: list[bytes] = []

    async def handler(reader, writer):
        await standard_hello(reader, writer, caps=(b"PIPELINING", b"8BITMIME"))
        while line := await reader.readline():
            seen.append(line)

    async def go():
        async with ScriptServer(handler) as srv:
            return await open_fail(srv.port, tls=policy)

    err = arun(go())
    assert err.kind == "tls_failed" and "not offered" in err.reply.raw
    assert not any(x.upper().startswith((b"MAIL", b"RCPT", b"DATA")) for x in seen)


# ------------------------------------------------------------------ 17 RST after the dot


def test_rst_after_the_dot_is_unknown_fate_and_soft():
    async def handler(reader, writer):
        await standard_hello(reader, writer, caps=(b"8BITMIME",))
        await answer_until(reader, writer, b"DATA")
        writer.write(b"354 go\r\n")
        await writer.drain()
        await reader.readuntil(b"\r\n.\r\n")
        rst(writer)

    async def go():
        async with ScriptServer(handler) as srv:
            return await one_send(srv.port)

    res, usable = arun(go())
    assert res.unknown_fate and not usable and not res.accepted
    # soft: the recipients are retried (at-least-once); the engine counts them as
    # possible duplicates (tests/reliability/test_engine_faults.py)
    assert all(c.type == "soft" and c.reason == "not_connected" for _, _, c in res.outcomes)


# ------------------------------------------------------------------ 18-19 line endings


def test_bare_lf_replies_are_tolerated():
    async def handler(reader, writer):
        writer.write(b"220 lf.test\n")
        await read_line(reader)
        writer.write(b"250-lf.test\n250 8BITMIME\n")
        await writer.drain()
        while True:
            line = await read_line(reader)
            v = line[:4].upper()
            if v == b"DATA":
                writer.write(b"354 go\n")
                await writer.drain()
                await reader.readuntil(b"\r\n.\r\n")
                writer.write(b"250 queued\n")
            elif v == b"QUIT":
                writer.write(b"221 bye\n")
                await writer.drain()
                return
            else:
                writer.write(b"250 ok\n")
            await writer.drain()

    async def go():
        async with ScriptServer(handler) as srv:
            return await one_send(srv.port)

    res, usable = arun(go())
    # either accepted, or refused softly as a protocol error -- never a crash or a hang
    assert res.ok or all(c.type == "soft" for _, _, c in res.outcomes)


def test_reply_code_changes_mid_multiline():
    async def handler(reader, writer):
        await standard_hello(reader, writer, caps=(b"8BITMIME",))
        await read_line(reader)
        writer.write(b"250-ok so far\r\n550-but now\r\n421 and finally\r\n")
        await writer.drain()
        await reader.read()

    async def go():
        async with ScriptServer(handler) as srv:
            return await one_send(srv.port)

    res, usable = arun(go())
    assert none_sent(res) and not usable
    assert all(c.type == "soft" for _, _, c in res.outcomes)


def test_nul_and_control_bytes_in_reply():
    async def handler(reader, writer):
        await standard_hello(reader, writer, caps=(b"8BITMIME",))
        await answer_until(reader, writer, b"RCPT")
        writer.write(b"452 4.2.2 mailbox\x00 full\x1b[31m\r\n")
        await writer.drain()
        await answer_until(reader, writer, b"QUIT")

    async def go():
        async with ScriptServer(handler) as srv:
            return await one_send(srv.port)

    res, usable = arun(go())
    rep, c = res.outcomes[0][1], res.outcomes[0][2]
    assert rep.code == 452 and c.type == "soft" and c.reason == "mailbox_full"
