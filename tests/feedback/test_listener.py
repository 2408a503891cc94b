"""The inbound listener on real sockets: accepts only feedback for its domains, refuses
relaying, oversize mail, too many connections and forged tokens; 250 = durable."""

from __future__ import annotations

import asyncio
import smtplib
import socket
import time
import urllib.error
import urllib.request

import pytest
from fbhelpers import feedback_config, original, rid_of, sent_delivery, tokens_for

from fastmta.feedback.listener import InboundServer
from fastmta.feedback.unsubscribe import UnsubscribeServer
from fastmta.records import Status
from fastmta.sim.feedback import build_dsn


def _send(port: int, mail_from: str, rcpts: list[str], raw: bytes):
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        s.ehlo("client.test")
        return s.sendmail(mail_from, rcpts, raw)


def _rcpt_reply(port: int, rcpt: str) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        s.ehlo("client.test")
        s.mail("")
        return s.rcpt(rcpt)


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def _talk_to_listener(cfg, sp, talk):
    """Start a listener on a free loopback port, run the blocking client `talk(port)` in a
    thread against it, close the listener; return what `talk` returned."""
    async def go():
        srv = InboundServer(cfg, sp)
        _, port = await srv.start("127.0.0.1", 0)
        try:
            return await asyncio.to_thread(talk, port)
        finally:
            await srv.close()
    return _run(go())


@pytest.mark.timeout(60)
def test_listener_refusals_and_durable_acceptance(tmp_path):
    sp, did, items = sent_delivery(str(tmp_path / "s"), 3)
    tok = tokens_for(sp)
    cfg = feedback_config(max_message_bytes=64 * 1024, max_connections_per_ip=3)

    async def go():
        srv = InboundServer(cfg, sp)
        _, port = await srv.start("127.0.0.1", 0)
        try:
            it = items[0]
            rid = rid_of(it)
            rp = tok.return_path(tok.token(did, rid))
            # relaying: any other domain is refused at RCPT
            code, msg = await asyncio.to_thread(_rcpt_reply, port, "victim@gmail.com")
            assert code == 550 and msg.startswith(b"5.7.1")
            # forged / case-mangled tokens are refused at RCPT
            for bad in ("b-" + "a" * 21, "b-" + tok.token(did, rid).upper()):
                code, msg = await asyncio.to_thread(_rcpt_reply, port,
                                                    f"{bad}@bounces.example.com")
                assert code == 550 and b"token" in msg
            code, _ = await asyncio.to_thread(_rcpt_reply, port, "nobody@bounces.example.com")
            assert code == 550
            # oversize: 552, nothing stored
            with pytest.raises(smtplib.SMTPSenderRefused) as ei:  # declared SIZE: at MAIL
                await asyncio.to_thread(_send, port, "", [rp], b"Subject: x\r\n\r\n" +
                                        b"y" * 100_000)
            assert ei.value.smtp_code == 552

            def undeclared():  # no SIZE parameter: refused after the data
                with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
                    c.ehlo("x")
                    c.mail("")
                    c.rcpt(rp)
                    return c.data(b"Subject: x\r\n\r\n" + b"y" * 100_000)

            assert (await asyncio.to_thread(undeclared))[0] == 552
            assert list(sp.inbound_list()) == []
            # a real DSN: 250 only after it is in the spool and applied
            raw = build_dsn(it.email, rp, original(tok, did, rid, it.email))
            await asyncio.to_thread(_send, port, "", [rp], raw)
            assert sp.recipient(did, rid).status == Status.FAILED  # no wait: durable at 250
            stored = list(sp.inbound_list())
            assert [(r.effect, r.source) for r in stored] == [("failed", "smtp")]
            # too many connections from one client: 421 at connect
            socks = []
            for _ in range(3):
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                await asyncio.to_thread(s.recv, 512)
                socks.append(s)
            s4 = socket.create_connection(("127.0.0.1", port), timeout=5)
            data = await asyncio.to_thread(s4.recv, 512)
            assert data.startswith(b"421 4.7.0")
            for s in [*socks, s4]:
                s.close()
            assert srv.stats["too_many_connections"] == 1
            # the closed connections are released (bounded wait for the server side)
            for _ in range(500):
                if srv.total == 0:
                    break
                await asyncio.sleep(0.01)
            assert srv.total == 0 and not srv.per_ip

            def session():  # AUTH does not exist here; long lines get 500
                with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
                    c.ehlo("x")
                    return (c.docmd("AUTH PLAIN AGFhAGI=")[0], c.docmd("NOOP " + "z" * 5000)[0],
                            c.docmd("NOOP")[0])

            assert await asyncio.to_thread(session) == (502, 500, 250)
        finally:
            await srv.close()

    _run(go())


@pytest.mark.timeout(60)
def test_one_click_unsubscribe_http(tmp_path):
    sp, did, items = sent_delivery(str(tmp_path / "s"), 2)
    tok = tokens_for(sp)
    cfg = feedback_config()

    async def go():
        srv = InboundServer(cfg, sp)
        await srv.start("127.0.0.1", 0)
        web = UnsubscribeServer(srv.proc, srv.committer)
        _, port = await web.start("127.0.0.1", 0)
        it = items[0]
        t = tok.token(did, rid_of(it))
        url = f"http://127.0.0.1:{port}/u/{t}"
        try:
            def get(u):
                with urllib.request.urlopen(u, timeout=10) as r:
                    return r.status, r.read()

            def post(u, body):
                req = urllib.request.Request(u, data=body, method="POST", headers={
                    "Content-Type": "application/x-www-form-urlencoded"})
                try:
                    with urllib.request.urlopen(req, timeout=10) as r:
                        return r.status, r.read()
                except urllib.error.HTTPError as e:
                    return e.code, e.read()

            status, body = await asyncio.to_thread(get, url)
            assert status == 200 and b"<form method='post'" in body
            assert it.email.encode() in body
            assert sp.quarantine_get(it.email) is None  # GET changes nothing
            assert (await asyncio.to_thread(post, url, b"foo=bar"))[0] == 400
            edited = url[:-1] + ("b" if url[-1] == "a" else "a")
            assert (await asyncio.to_thread(post, edited,
                                            b"List-Unsubscribe=One-Click"))[0] == 404
            status, _ = await asyncio.to_thread(post, url, b"List-Unsubscribe=One-Click")
            assert status == 200
            q = sp.quarantine_get(it.email)
            assert q.state == "denylisted" and q.reason == "unsubscribed"
            assert (await asyncio.to_thread(post, url, b"List-Unsubscribe=One-Click"))[0] == 200
            assert sp.kpis(did)["unsubscribes"] == 1
        finally:
            await web.close()
            await srv.close()

    _run(go())


@pytest.mark.timeout(60)
def test_starttls_when_a_certificate_is_configured(tmp_path):
    import ssl

    from fastmta.sim.certs import make_self_signed

    cert, key = make_self_signed(str(tmp_path), ["feedback.test"], ["127.0.0.1"])
    sp, did, items = sent_delivery(str(tmp_path / "s"), 1)
    tok = tokens_for(sp)
    cfg = feedback_config(tls_cert=str(cert), tls_key=str(key), parse_processes=1)
    it = items[0]
    rid = rid_of(it)
    rp = tok.return_path(tok.token(did, rid))
    raw = build_dsn(it.email, rp, original(tok, did, rid, it.email))

    async def go():
        srv = InboundServer(cfg, sp)
        _, port = await srv.start("127.0.0.1", 0)

        def client():
            ctx = ssl.create_default_context(cafile=str(cert))
            ctx.check_hostname = False
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
                c.ehlo("x")
                assert c.has_extn("starttls")
                c.starttls(context=ctx)
                c.ehlo("x")
                assert not c.has_extn("starttls")
                c.sendmail("", [rp], raw)
                return c.sock.version()

        try:
            return await asyncio.to_thread(client)
        finally:
            await srv.close()

    assert _run(go()).startswith("TLSv1.")
    assert sp.recipient(did, rid).status == Status.FAILED


@pytest.mark.timeout(60)
@pytest.mark.parametrize("eol", [b"\r\n", b"\n"])
def test_data_dot_unstuffing_and_terminator(tmp_path, eol):
    """Lines that start with a dot lose one (RFC 5321 4.5.2), a line ending in a dot is
    not the end, a line that is only a dot is; CRLF and bare-LF clients alike; a big
    message (over the 64 KB stream limit, read in pieces) arrives whole."""
    sp, did, items = sent_delivery(str(tmp_path / "s"), 1)
    tok = tokens_for(sp)
    cfg = feedback_config()
    it = items[0]
    rp = tok.return_path(tok.token(did, rid_of(it)))
    body_lines = [b"..first line stuffed", b"Subject: x", b"", b"a sentence.", b"..", b"...two",
                  b"x" * 1000 + b".", b"end."] + [b"filler line %d." % i for i in range(3000)]
    want = eol.join([b".first line stuffed", b"Subject: x", b"", b"a sentence.", b".", b"..two",
                     b"x" * 1000 + b".", b"end."] + [b"filler line %d." % i
                                                    for i in range(3000)]) + eol

    def talk(port):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            f = c.makefile("rb")
            f.readline()
            for cmd in (b"EHLO x", b"MAIL FROM:<>", b"RCPT TO:<" + rp.encode() + b">", b"DATA"):
                c.sendall(cmd + b"\r\n")
                while True:
                    line = f.readline()
                    if line[3:4] != b"-":
                        break
            c.sendall(eol.join(body_lines) + eol + b"." + eol)
            reply = f.readline()
            c.sendall(b"QUIT\r\n")
            return reply

    reply = _talk_to_listener(cfg, sp, talk)
    assert reply.startswith(b"250"), reply
    (rec,) = list(sp.inbound_list())
    _, raw = sp.inbound_get(rec.id)
    assert rec.size == len(want)
    assert raw == want[: len(raw)] and len(raw) == min(len(want), cfg.feedback.keep_raw_bytes)


@pytest.mark.timeout(60)
def test_idle_timeout_between_commands_and_inside_data(tmp_path):
    """A client silent for ``command_timeout_s`` gets ``421 4.4.2`` (after the greeting,
    and in the middle of DATA); one that keeps sending lines is not cut off."""
    sp, did, items = sent_delivery(str(tmp_path / "s"), 1)
    tok = tokens_for(sp)
    rp = tok.return_path(tok.token(did, rid_of(items[0])))
    cfg = feedback_config(command_timeout_s=0.5)

    def talk(port, stall_in_data: bool):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            f = c.makefile("rb")
            f.readline()
            if stall_in_data:
                for cmd in (b"HELO x", b"MAIL FROM:<>", b"RCPT TO:<" + rp.encode() + b">",
                            b"DATA"):
                    c.sendall(cmd + b"\r\n")
                    f.readline()
                for _ in range(8):  # 0.8 s of lines, each within the bound: not idle
                    c.sendall(b"Subject: still here\r\n")
                    time.sleep(0.1)  # the client's pace is the scenario here
            return f.readline(), f.readline()

    async def go():
        srv = InboundServer(cfg, sp)
        _, port = await srv.start("127.0.0.1", 0)
        try:
            idle = await asyncio.to_thread(talk, port, False)
            in_data = await asyncio.to_thread(talk, port, True)
        finally:
            await srv.close()
        return idle, in_data

    idle, in_data = _run(go())
    assert idle[0].startswith(b"421 4.4.2") and idle[1] == b""  # then closed
    assert in_data[0].startswith(b"421 4.4.2") and in_data[1] == b""


@pytest.mark.timeout(120)
def test_two_listener_processes_share_the_port_and_the_spool(tmp_path):
    """``listen_processes = 2``: a second process accepts on the same port (SO_REUSEPORT)
    and commits into the same spool; every DSN is applied once, 250 = durable, relaying
    and forged tokens are refused whichever process answers, the counters add up."""
    n = 24
    sp, did, items = sent_delivery(str(tmp_path / "s"), n)
    tok = tokens_for(sp)
    cfg = feedback_config(listen_processes=2)

    async def go():
        srv = InboundServer(cfg, sp)
        _, port = await srv.start("127.0.0.1", 0)
        assert srv.workers is not None and len(srv.workers.procs) == 1
        try:
            for it in items:  # one connection each: the kernel spreads them
                rid = rid_of(it)
                rp = tok.return_path(tok.token(did, rid))
                raw = build_dsn(it.email, rp, original(tok, did, rid, it.email))
                await asyncio.to_thread(_send, port, "", [rp], raw)
                assert sp.recipient(did, rid).status == Status.FAILED  # durable at 250
            for _ in range(6):
                code, msg = await asyncio.to_thread(_rcpt_reply, port, "victim@gmail.com")
                assert code == 550 and msg.startswith(b"5.7.1")
                code, _ = await asyncio.to_thread(_rcpt_reply, port,
                                                  "b-" + "a" * 21 + "@bounces.example.com")
                assert code == 550
        finally:
            await srv.close()
        return srv

    srv = _run(go())
    assert srv.workers is None and srv.stats["accepted"] == n
    assert srv.stats["relay_denied"] == 6 and srv.stats["forged"] == 6
    assert srv.worker_cpu_s > 0 and srv.worker_stats[0]["accepted"] > 0  # it took part
    counters = sp.inbound_counters()
    assert counters["effect/failed"] == n and counters["received"] == n


@pytest.mark.timeout(60)
def test_pipelined_transactions_are_answered_in_order(tmp_path):
    """PIPELINING: two whole transactions and QUIT in one write; the second waits for the
    first one's durable 250; every reply comes back, in order; a long command line is
    refused and the session goes on."""
    sp, did, items = sent_delivery(str(tmp_path / "s"), 2)
    tok = tokens_for(sp)
    cfg = feedback_config()
    script = b"EHLO x\r\n" + b"NOOP " + b"y" * 5000 + b"\r\n"
    for it in items:
        rid = rid_of(it)
        rp = tok.return_path(tok.token(did, rid))
        raw = build_dsn(it.email, rp, original(tok, did, rid, it.email)).replace(
            b"\r\n", b"\n").replace(b"\n", b"\r\n")
        script += (b"MAIL FROM:<>\r\nRCPT TO:<" + rp.encode() + b">\r\nDATA\r\n" + raw +
                   b".\r\n")
    script += b"QUIT\r\n"

    def talk(port):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            c.sendall(script)
            out = b""
            while True:
                got = c.recv(65536)
                if not got:
                    return out
                out += got

    codes = [ln[:3] for ln in _talk_to_listener(cfg, sp, talk).split(b"\r\n") if ln[3:4] == b" "]
    assert codes == [b"220", b"250", b"500"] + [b"250", b"250", b"354", b"250"] * 2 + [b"221"]
    assert all(sp.recipient(did, rid_of(it)).status == Status.FAILED for it in items)


@pytest.mark.timeout(60)
def test_commands_pipelined_behind_starttls_are_discarded(tmp_path):
    """RFC 3207 4.2: what a client (or a man in the middle) sent in plaintext after
    STARTTLS is not executed inside the TLS session."""
    import ssl

    from fastmta.sim.certs import make_self_signed

    cert, key = make_self_signed(str(tmp_path), ["feedback.test"], ["127.0.0.1"])
    sp, _, _ = sent_delivery(str(tmp_path / "s"), 1)
    cfg = feedback_config(tls_cert=str(cert), tls_key=str(key))

    def client(port):
        ctx = ssl.create_default_context(cafile=str(cert))
        ctx.check_hostname = False
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            f = raw.makefile("rb")
            f.readline()  # 220 greeting
            raw.sendall(b"STARTTLS\r\nMAIL FROM:<injected@x.example>\r\n")
            ready = f.readline()
            with ctx.wrap_socket(raw, server_hostname="feedback.test") as tls:
                tls.sendall(b"RCPT TO:<postmaster@bounces.example.com>\r\nQUIT\r\n")
                out = b""
                while True:
                    got = tls.recv(4096)
                    if not got:
                        break
                    out += got
            return ready, out

    async def go():
        srv = InboundServer(cfg, sp)
        _, port = await srv.start("127.0.0.1", 0)
        try:
            return await asyncio.to_thread(client, port)
        finally:
            await srv.close()

    ready, out = _run(go())
    assert ready.startswith(b"220 2.0.0")
    # no MAIL was accepted before the handshake: RCPT is out of sequence, then QUIT
    assert out.startswith(b"503 5.5.1") and b"221 2.0.0" in out


@pytest.mark.timeout(120)
def test_hostile_byte_streams_never_break_the_listener(tmp_path):
    """Random SMTP-ish input in random pieces (bare CR/LF, NULs, long lines, dots, DATA
    without MAIL, binary): the server answers or closes each connection, stores nothing
    it did not answer 250 for, and keeps serving the next client."""
    import random

    sp, did, items = sent_delivery(str(tmp_path / "s"), 1)
    tok = tokens_for(sp)
    rp = tok.return_path(tok.token(did, rid_of(items[0])))
    cfg = feedback_config(max_message_bytes=20_000, command_timeout_s=2.0)
    words = [b"EHLO x\r\n", b"HELO y\n", b"MAIL FROM:<>\r\n", b"RCPT TO:<" + rp.encode() + b">\r\n",
             b"RCPT TO:<a@gmail.com>\r\n", b"DATA\r\n", b".\r\n", b"..\r\n", b"\r\n", b"\n",
             b"\r", b"\x00\xff", b"NOOP " + b"z" * 3000 + b"\r\n", b"x" * 30_000, b"RSET\r\n",
             b"STARTTLS\r\n", b"AUTH PLAIN x\r\n", b"Subject: y\r\n", b"MAIL FROM:<a@b>\r\n"]
    rnd = random.Random(15)

    def one(port):
        data = b"".join(rnd.choice(words) for _ in range(rnd.randint(1, 40))) + b"QUIT\r\n"
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            pos = 0
            while pos < len(data):
                n = rnd.randint(1, 4000)
                try:
                    c.sendall(data[pos:pos + n])
                except OSError:
                    break
                pos += n
            c.shutdown(socket.SHUT_WR)
            out = b""
            while True:
                try:
                    got = c.recv(65536)
                except OSError:
                    break
                if not got:
                    break
                out += got
        return out

    async def go():
        srv = InboundServer(cfg, sp)
        _, port = await srv.start("127.0.0.1", 0)
        try:
            outs = [await asyncio.to_thread(one, port) for _ in range(60)]
            await asyncio.to_thread(_rcpt_reply, port, rp)  # still serving
            return outs, srv
        finally:
            await srv.close()

    outs, srv = _run(go())
    assert all(o.startswith(b"220 ") for o in outs)
    stored = sum(o.count(b"250 2.0.0 OK: stored") for o in outs)
    assert stored > 0 and len(list(sp.inbound_list())) == stored == srv.stats["accepted"]
    assert not srv.sessions and srv.total == 0
