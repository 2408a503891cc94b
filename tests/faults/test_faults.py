"""Fault injection with scripted servers: every fault gives the right event and
classification, no exception escapes, and no task or socket leaks (``arun`` checks)."""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import time

import pytest

from fastmta.smtp.messages import Envelope
from fastmta.smtp.transport import ConnectFailed, Connection
from smtputil import ScriptServer, arun, fast_timeouts, free_port, read_line, standard_hello

ENV = Envelope("s@a.test", ["r1@b.test", "r2@b.test"], b"Subject: x\r\n\r\n" + b"y" * 3000)


def rst(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0)."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def open_expect_fail(port, **kw) -> ConnectFailed:
    with pytest.raises(ConnectFailed) as ei:
        await Connection.open("127.0.0.1", port, timeouts=fast_timeouts(**kw))
    return ei.value


async def serve_transaction_until(reader, writer, stop_at: str, greet: bool = True):
    """Greeting, EHLO, then answer commands until ``stop_at`` (mail/rcpt/data/body)."""
    await standard_hello(reader, writer, greet=greet)
    while True:
        line = await read_line(reader)
        verb = line[:4].upper()
        if verb == b"MAIL":
            if stop_at == "mail":
                return
            writer.write(b"250 ok\r\n")
        elif verb == b"RCPT":
            writer.write(b"250 ok\r\n")
        elif verb == b"DATA":
            if stop_at == "data":
                return
            writer.write(b"354 go\r\n")
            if stop_at == "body":
                await reader.readexactly(100)  # part of the body
                return
            await reader.readuntil(b"\r\n.\r\n")
            writer.write(b"250 queued\r\n")
        elif verb == b"QUIT":
            writer.write(b"221 bye\r\n")
            return
        else:
            writer.write(b"250 ok\r\n")
        await writer.drain()


def test_connection_refused():
    port = free_port()  # nothing listens there

    async def go():
        return await open_expect_fail(port)

    err = arun(go())
    assert err.kind == "connect_failed" and err.classification.type == "soft"
    assert err.classification.reason == "unreachable" and "refused" in err.reply.raw.lower()


def test_reset_at_greeting():
    async def handler(reader, writer):
        rst(writer)

    async def go():
        async with ScriptServer(handler) as srv:
            return await open_expect_fail(srv.port)

    err = arun(go())
    assert err.kind == "connection_lost" and err.classification.type == "soft"


def test_reset_mid_transaction():
    async def handler(reader, writer):
        await serve_transaction_until(reader, writer, "data")
        rst(writer)

    async def go():
        async with ScriptServer(handler) as srv:
            conn = await Connection.open("127.0.0.1", srv.port, timeouts=fast_timeouts())
            res = await conn.send(ENV)
            assert not conn.usable
            again = await conn.send(ENV)  # on a dead connection: soft, no exception
            await conn.quit()
            return res, again

    res, again = arun(go())
    assert not res.unknown_fate
    assert all(c.type == "soft" and c.reason == "not_connected" for _, _, c in res.outcomes)
    assert all(c.type == "soft" for _, _, c in again.outcomes)


def test_silent_server_greeting_timeout():
    async def handler(reader, writer):
        await reader.read()  # say nothing

    async def go():
        async with ScriptServer(handler) as srv:
            t = time.monotonic()
            err = await open_expect_fail(srv.port, greeting_timeout_s=0.3)
            return err, time.monotonic() - t

    err, took = arun(go())
    assert err.kind == "timeout" and 0.25 < took < 2.0
    assert err.classification.type == "soft" and err.classification.bounce_class == 24
    assert err.classification.reason == "unreachable" and err.classification.throttle


def test_silent_after_body_is_unknown_fate():
    async def handler(reader, writer):
        await serve_transaction_until(reader, writer, "body")
        await reader.read()

    async def go():
        async with ScriptServer(handler) as srv:
            conn = await Connection.open("127.0.0.1", srv.port,
                                         timeouts=fast_timeouts(data_done_timeout_s=0.3))
            res = await conn.send(ENV)
            await conn.quit()
            return res

    res = arun(go())
    assert res.unknown_fate and not res.ok
    assert all(c.reason == "not_connected" and "dot" in rep.raw for _, rep, c in res.outcomes)


def test_421_at_greeting():
    async def handler(reader, writer):
        writer.write(b"421 4.7.0 [127.0.0.1] Too many connections, try again later\r\n")
        await writer.drain()

    async def go():
        async with ScriptServer(handler) as srv:
            return await open_expect_fail(srv.port)

    err = arun(go())
    assert err.kind == "greeting" and err.reply.code == 421 and err.reply.enhanced == "4.7.0"
    assert err.classification.type == "soft" and err.classification.throttle


def test_421_on_idle_connection_detected_by_probe():
    async def idle_421(reader, writer):
        await standard_hello(reader, writer)
        writer.write(b"421 4.4.2 mx.test closing idle connection\r\n")
        await writer.drain()
        await reader.read()

    async def go():
        async with ScriptServer(idle_421) as srv:
            conn = await Connection.open("127.0.0.1", srv.port, timeouts=fast_timeouts())
            await conn.wait_closed(2.0)  # the 421 makes the client close its side
            ok = await conn.probe()
            res = await conn.send(ENV)
            await conn.quit()
            return ok, res

    ok, res = arun(go())
    assert ok is False
    assert all(c.type == "soft" for _, _, c in res.outcomes)


def test_probe_keeps_a_healthy_connection():
    async def handler(reader, writer):
        await serve_transaction_until(reader, writer, "never")

    async def go():
        async with ScriptServer(handler) as srv:
            conn = await Connection.open("127.0.0.1", srv.port, timeouts=fast_timeouts())
            r1 = await conn.send(ENV)
            ok1 = await conn.probe()
            ok2 = await conn.probe(noop=True)
            r2 = await conn.send(ENV)
            await conn.quit()
            return r1, ok1, ok2, r2

    r1, ok1, ok2, r2 = arun(go())
    assert r1.ok and ok1 and ok2 and r2.ok


async def _starttls_then_garbage(reader, writer, state):
    state["n"] += 1
    if state["n"] == 1:
        await standard_hello(reader, writer, caps=(b"STARTTLS", b"PIPELINING"))
        line = await read_line(reader)
        assert line == b"STARTTLS"
        writer.write(b"220 go ahead\r\n")
        await writer.drain()
        await reader.read(10)  # the ClientHello
        writer.write(b"this is not TLS at all\r\n" * 4)
        await writer.drain()
        return
    await serve_transaction_until(reader, writer, "never")


@pytest.mark.parametrize("policy", ["required", "opportunistic"])
def test_starttls_handshake_failure(policy):
    state = {"n": 0}

    async def handler(reader, writer):
        await _starttls_then_garbage(reader, writer, state)

    async def go():
        async with ScriptServer(handler) as srv:
            if policy == "required":
                return await open_expect_fail(srv.port, tls=policy)
            conn = await Connection.open("127.0.0.1", srv.port, timeouts=fast_timeouts(tls=policy))
            res = await conn.send(ENV)
            await conn.quit()
            return conn, res

    out = arun(go())
    if policy == "required":
        assert out.kind == "tls_failed" and out.classification.type == "soft"
    else:
        conn, res = out
        assert not conn.tls_active and res.ok and state["n"] == 2  # retried in plain text


def test_starttls_refused_policy_required():
    async def handler(reader, writer):
        await standard_hello(reader, writer, caps=(b"STARTTLS",))
        await read_line(reader)
        writer.write(b"454 4.7.0 TLS not available due to local problem\r\n")
        await writer.drain()
        await reader.read()

    async def go():
        async with ScriptServer(handler) as srv:
            return await open_expect_fail(srv.port, tls="required")

    err = arun(go())
    assert err.kind == "tls_failed" and "454" in err.reply.raw


def test_over_size_reply():
    async def handler(reader, writer):
        writer.write(b"220 ok\r\n")
        await read_line(reader)
        writer.write(b"250-" + b"x" * 200 + b"\r\n")
        for _ in range(2000):
            writer.write(b"250-" + b"y" * 100 + b"\r\n")
        writer.write(b"250 end\r\n")
        await writer.drain()
        await reader.read()

    async def go():
        async with ScriptServer(handler) as srv:
            return await open_expect_fail(srv.port)

    err = arun(go())
    assert err.kind == "protocol_error" and "longer than" in err.reply.raw


def test_garbage_reply():
    async def handler(reader, writer):
        await standard_hello(reader, writer)
        await read_line(reader)
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await writer.drain()
        await reader.read()

    async def go():
        async with ScriptServer(handler) as srv:
            conn = await Connection.open("127.0.0.1", srv.port, timeouts=fast_timeouts())
            res = await conn.send(ENV)
            usable = conn.usable
            await conn.quit()
            return res, usable

    res, usable = arun(go())
    assert not usable
    assert all(c.type == "soft" and c.reason == "not_connected" for _, _, c in res.outcomes)
    assert "protocol error" in res.outcomes[0][1].raw


def test_disconnect_mid_data():
    async def handler(reader, writer):
        await serve_transaction_until(reader, writer, "body")
        writer.transport.close()

    async def go():
        async with ScriptServer(handler) as srv:
            conn = await Connection.open("127.0.0.1", srv.port, timeouts=fast_timeouts())
            res = await conn.send(ENV)
            await conn.quit()
            return res

    res = arun(go())
    assert not res.ok and res.unknown_fate
    assert all(c.type == "soft" and c.reason == "not_connected" for _, _, c in res.outcomes)


def test_slow_drip_that_completes_in_time():
    async def handler(reader, writer):
        for b in b"220 slow but fine\r\n":
            writer.write(bytes([b]))
            await writer.drain()
            await asyncio.sleep(0.005)
        await serve_transaction_until(reader, writer, "never", greet=False)

    async def go():
        async with ScriptServer(handler) as srv:
            # 20 bytes x 5 ms = 0.1 s, well within the 2 s greeting timeout
            conn = await Connection.open("127.0.0.1", srv.port,
                                         timeouts=fast_timeouts(greeting_timeout_s=2.0))
            res = await conn.send(ENV)
            await conn.quit()
            return conn.greeting, res

    greeting, res = arun(go())
    assert greeting.text == "slow but fine" and res.ok


def test_endless_drip_times_out():
    async def handler(reader, writer):
        writer.write(b"220-")
        while True:  # a continuation line every 50 ms, never the last line
            writer.write(b"drip\r\n220-")
            await writer.drain()
            await asyncio.sleep(0.05)

    async def go():
        async with ScriptServer(handler) as srv:
            t = time.monotonic()
            err = await open_expect_fail(srv.port, greeting_timeout_s=0.4)
            return err, time.monotonic() - t

    err, took = arun(go())
    assert err.kind == "timeout" and took < 2.0


def test_mixed_rcpt_results_pipelined():
    async def handler(reader, writer):
        await standard_hello(reader, writer)
        # read the whole pipelined group, then answer it in one write
        lines = [await read_line(reader) for _ in range(5)]
        assert lines[0].startswith(b"MAIL") and lines[-1] == b"DATA"
        writer.write(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 unknown user\r\n"
                     b"452 4.5.3 Too many recipients\r\n354 go\r\n")
        await writer.drain()
        await reader.readuntil(b"\r\n.\r\n")
        writer.write(b"250 2.0.0 queued\r\n")
        await writer.drain()
        await read_line(reader)
        writer.write(b"221 bye\r\n")
        await writer.drain()

    async def go():
        async with ScriptServer(handler) as srv:
            conn = await Connection.open("127.0.0.1", srv.port, timeouts=fast_timeouts())
            res = await conn.send(Envelope("s@a.test", ["ok@b.test", "bad@b.test", "more@b.test"],
                                           b"x"))
            await conn.quit()
            return res

    res = arun(go())
    assert res.accepted == ["ok@b.test"]
    got = [(r, rep.code, rep.command, c.type) for r, rep, c in res.outcomes]
    assert got == [("ok@b.test", 250, "dot", "none"), ("bad@b.test", 550, "rcpt", "hard"),
                   ("more@b.test", 452, "rcpt", "soft")]


def test_peer_stops_reading_hits_data_block_timeout():
    big = Envelope("s@a.test", ["r@b.test"], b"z" * (8 * 1024 * 1024))

    async def handler(reader, writer):
        await standard_hello(reader, writer)
        await read_line(reader)
        writer.write(b"250 ok\r\n250 ok\r\n354 go\r\n")
        await writer.drain()
        await asyncio.sleep(30)  # never reads the body

    async def go():
        async with ScriptServer(handler) as srv:
            conn = await Connection.open(
                "127.0.0.1", srv.port,
                timeouts=fast_timeouts(data_block_timeout_s=0.3, data_done_timeout_s=60))
            t = time.monotonic()
            res = await conn.send(big)
            took = time.monotonic() - t
            await conn.quit()
            return res, took

    res, took = arun(go())
    assert not res.ok and took < 5
    assert all(c.type == "soft" for _, _, c in res.outcomes)


def test_cancelled_send_aborts_cleanly():
    async def handler(reader, writer):
        await standard_hello(reader, writer)
        await reader.read()

    async def go():
        async with ScriptServer(handler) as srv:
            conn = await Connection.open("127.0.0.1", srv.port, timeouts=fast_timeouts())
            task = asyncio.ensure_future(conn.send(ENV))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await conn.wait_closed()
            return conn.usable

    assert arun(go()) is False


def test_tls_context_is_cached():
    from fastmta.smtp.tls import client_ssl_context

    assert client_ssl_context(False) is client_ssl_context(False)
    assert client_ssl_context(True).verify_mode == ssl.CERT_REQUIRED


def test_421_to_starttls_fails_the_connection():
    async def handler(reader, writer):
        await standard_hello(reader, writer, caps=(b"STARTTLS",))
        await read_line(reader)
        writer.write(b"421 4.3.2 shutting down\r\n")
        await writer.drain()
        await reader.read()

    async def go():
        async with ScriptServer(handler) as srv:
            return await open_expect_fail(srv.port, tls="opportunistic")

    err = arun(go())
    # a generic 421 ("shutting down") is a transient failure, not a rate signal (issue #16)
    assert err.kind == "closing" and err.reply.code == 421
    assert not err.classification.throttle and err.classification.type == "soft"
