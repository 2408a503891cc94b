"""One SMTP session of the inbound listener, as an ``asyncio.Protocol``: a state machine
fed by ``data_received`` (no stream reader, no task and no timer per command; the idle
bound is one sweep per server, ``InboundServer._sweep``).  The policy (which recipients,
which limits) stays in ``InboundServer``; this module speaks the protocol:

- commands: EHLO/HELO, STARTTLS (when configured; bytes pipelined after it are
  discarded, RFC 3207 section 4.2), MAIL (SIZE checked, per-client message rate), RCPT,
  DATA, RSET, NOOP, QUIT, AUTH refused, VRFY/EXPN 252; command lines over ``max_line``
  get ``500 5.5.2``;
- DATA: dot-unstuffed (RFC 5321 4.5.2), CRLF or bare LF, over ``max_message_bytes`` read
  to the end and refused with ``552``; the ``250`` is written only when the group
  commit that stored (and applied) the message is durable; commands pipelined behind
  the end of DATA wait until then.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from fastmta.feedback.listener import InboundServer

log = logging.getLogger("fastmta.feedback")

CMD, DATA, BUSY, TLS, CLOSED = range(5)
_DATA_PIECE = 64 * 1024  # a DATA line without its end yet: taken in pieces of this size
_PAUSE_AT = 1024 * 1024  # input buffered while a commit runs: stop reading above this


class SmtpSession(asyncio.Protocol):
    """The protocol of one inbound connection (made by ``InboundServer``)."""

    def __init__(self, srv: InboundServer) -> None:
        self.srv = srv
        self.f = srv.f
        self.transport: asyncio.Transport | None = None
        self.ip = "?"
        self.buf = bytearray()
        self.state = CMD
        self.last = 0.0  # loop time of the last bytes received (the idle sweep reads it)
        self.counted = False
        self.skipping = False  # inside an over-long command line: drop to its end
        self.mail_from: str | None = None
        self.rcpts: list[str] = []
        self.tls_on = False
        self.chunks: list[bytes] = []
        self.size = 0
        self.over = False
        self.line_start = True  # DATA: the next byte starts a line
        self.paused = False
        self.eof = False  # the client has half-closed: answer what is pending, then close

    # ------------------------------------------------------------------ transport events
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # uvloop's too
        srv = self.srv
        peer = transport.get_extra_info("peername") or ("?", 0)
        self.ip = ip = str(peer[0])
        if srv.total >= self.f.max_connections or srv.per_ip[ip] >= self.f.max_connections_per_ip:
            srv.stats["too_many_connections"] += 1
            self._close(b"421 4.7.0 Too many connections, try again later\r\n")
            return
        if not srv.conn_rate.allow(ip, time.monotonic()):
            srv.stats["rate_limited_connections"] += 1
            self._close(b"421 4.7.0 Too many connections from your address per second, "
                        b"try again later\r\n")
            return
        srv.total += 1
        srv.per_ip[ip] += 1
        self.counted = True
        srv.sessions.add(self)
        self.last = srv.loop.time()
        transport.write(f"220 {srv.hostname} fastmta feedback ESMTP\r\n".encode())

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = CLOSED
        srv = self.srv
        srv.sessions.discard(self)
        if self.counted:
            self.counted = False
            srv.total -= 1
            srv.per_ip[self.ip] -= 1
            if not srv.per_ip[self.ip]:
                del srv.per_ip[self.ip]

    def data_received(self, data: bytes) -> None:
        self.last = self.srv.loop.time()
        if self.state == TLS:
            return  # plaintext after STARTTLS, before the handshake: discarded
        self.buf += data
        try:
            self._process()
        except Exception:  # a bug must not leave the connection hanging
            log.exception("inbound session failed")
            self._close(b"451 4.3.0 Internal error, try again later\r\n")

    def eof_received(self) -> bool:
        """The client's end of input: what it sent is answered (a commit in progress
        gets its 250 first), then the connection is closed."""
        self.eof = True
        if self.state != BUSY:
            self._close()
        return True  # keep our side open until then

    def idle(self, now: float) -> None:
        """Called by the server's sweep: close when silent for ``command_timeout_s``."""
        if self.state in (CMD, DATA) and now - self.last > self.f.command_timeout_s:
            self._close(b"421 4.4.2 Idle timeout, closing\r\n")
        elif self.state == TLS and now - self.last > self.f.command_timeout_s:
            if self.transport is not None:
                self.transport.abort()

    # ------------------------------------------------------------------ input
    def _process(self) -> None:
        while self.buf and self.state in (CMD, DATA):
            if self.state == DATA:
                if not self._data():
                    break
                continue
            buf = self.buf
            i = buf.find(b"\n")
            if self.skipping:
                if i < 0:
                    buf.clear()
                    break
                del buf[: i + 1]
                self.skipping = False
                continue
            if i < 0:
                if len(buf) > self.f.max_line:
                    self._write(b"500 5.5.2 Line too long\r\n")
                    buf.clear()
                    self.skipping = True
                break
            line = bytes(buf[: i + 1])
            del buf[: i + 1]
            if len(line) > self.f.max_line:
                self._write(b"500 5.5.2 Line too long\r\n")
                continue
            self._command(line.decode("utf-8", "replace").rstrip("\r\n"))
        if self.state == BUSY and len(self.buf) > _PAUSE_AT and not self.paused \
                and self.transport is not None:
            self.transport.pause_reading()
            self.paused = True

    def _data(self) -> bool:
        """Consume DATA lines from the buffer; False when more input is needed."""
        buf = self.buf
        limit = self.f.max_message_bytes
        pos = 0
        n = len(buf)
        while pos < n:
            i = buf.find(b"\n", pos)
            if i < 0:
                if n - pos < _DATA_PIECE:
                    break
                end = pos + _DATA_PIECE  # a very long line: take a piece of it
                at_start, self.line_start = self.line_start, False
            else:
                end = i + 1
                at_start, self.line_start = self.line_start, True
            line = buf[pos:end]
            pos = end
            if at_start and line[:1] == b".":
                if line in (b".\r\n", b".\n"):
                    del buf[:pos]
                    self._end_of_data()
                    return True
                line = line[1:]
            self.size += len(line)
            if self.size > limit:
                self.over = True
                self.chunks.clear()
            if not self.over:
                self.chunks.append(bytes(line))
        del buf[:pos]
        return False

    def _end_of_data(self) -> None:
        rcpts, mail_from = self.rcpts, self.mail_from or ""
        self.mail_from, self.rcpts = None, []
        chunks, over = self.chunks, self.over
        self.chunks, self.size, self.over, self.line_start = [], 0, False, True
        if over:
            self.srv.stats["too_big"] += 1
            self.state = CMD
            self._write(b"552 5.3.4 Message size exceeds fixed maximum message size\r\n")
            return
        self.state = BUSY  # the next commands wait for the durable 250
        self.srv.loop.create_task(self._store(b"".join(chunks), mail_from, rcpts))

    async def _store(self, data: bytes, mail_from: str, rcpts: list[str]) -> None:
        srv = self.srv
        t0 = time.perf_counter()
        try:
            await srv.committer.submit(data, source="smtp", peer=self.ip, mail_from=mail_from,
                                       rcpt_to=rcpts)
            srv.stats["accepted"] += 1
            if len(srv.latencies) < 1_000_000:
                srv.latencies.append(time.perf_counter() - t0)
            reply = b"250 2.0.0 OK: stored\r\n"
        except Exception:
            reply = b"451 4.3.0 Temporary failure storing the message, try again\r\n"
        if self.state != BUSY:
            return  # the client went away meanwhile (what was committed stays committed)
        self._write(reply)
        self.state = CMD
        self.last = srv.loop.time()
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        self.data_received(b"")
        if self.eof and self.state != BUSY:
            self._close()

    # ------------------------------------------------------------------ commands
    def _command(self, text: str) -> None:  # noqa: C901
        srv, f, w = self.srv, self.f, self._write
        verb = text[:4].upper()
        arg = text[4:].strip() if len(text) > 4 else ""
        if verb == "EHLO":
            ext = [f"250-{srv.hostname}", "250-PIPELINING", f"250-SIZE {f.max_message_bytes}",
                   "250-8BITMIME", "250-ENHANCEDSTATUSCODES"]
            if srv.tls is not None and not self.tls_on:
                ext.append("250-STARTTLS")
            ext.append("250 SMTPUTF8")
            w(("\r\n".join(ext) + "\r\n").encode())
            self.mail_from, self.rcpts = None, []
        elif verb == "HELO":
            w(f"250 {srv.hostname}\r\n".encode())
            self.mail_from, self.rcpts = None, []
        elif verb == "STAR" and text.upper() == "STARTTLS" and srv.tls is not None \
                and not self.tls_on:
            w(b"220 2.0.0 Ready to start TLS\r\n")
            self.state = TLS
            self.buf.clear()  # RFC 3207 4.2: nothing sent before the handshake counts
            srv.loop.create_task(self._start_tls())
        elif verb == "MAIL" and arg.upper().startswith("FROM:"):
            if self.mail_from is not None:
                w(b"503 5.5.1 Nested MAIL command\r\n")
                return
            if not srv.msg_rate.allow(self.ip, time.monotonic()):
                srv.stats["rate_limited_messages"] += 1
                self._close(b"421 4.7.0 Too many messages from your address, slow down and "
                            b"try again later\r\n")
                return
            addr, params = path_arg(arg[5:])
            size = params.get("SIZE", "0")
            if size.isdigit() and int(size) > f.max_message_bytes:
                w(b"552 5.3.4 Message size exceeds fixed maximum message size\r\n")
                return
            self.mail_from, self.rcpts = addr, []
            w(b"250 2.1.0 OK\r\n")
        elif verb == "RCPT" and arg.upper().startswith("TO:"):
            if self.mail_from is None:
                w(b"503 5.5.1 MAIL first\r\n")
                return
            if len(self.rcpts) >= f.max_recipients:
                w(b"452 4.5.3 Too many recipients\r\n")
                return
            addr, _ = path_arg(arg[3:])
            code, msg = srv.check_rcpt(addr)
            if code == 250:
                self.rcpts.append(addr)
            w(f"{code} {msg}\r\n".encode())
        elif verb == "DATA":
            if self.mail_from is None or not self.rcpts:
                w(b"503 5.5.1 Need MAIL and RCPT first\r\n")
                return
            w(b"354 End data with <CR><LF>.<CR><LF>\r\n")
            self.state = DATA
        elif verb == "RSET":
            self.mail_from, self.rcpts = None, []
            w(b"250 2.0.0 OK\r\n")
        elif verb == "NOOP":
            w(b"250 2.0.0 OK\r\n")
        elif verb == "QUIT":
            self._close(b"221 2.0.0 Bye\r\n")
        elif verb == "AUTH":
            w(b"502 5.5.1 No AUTH here: this server only receives feedback mail\r\n")
        elif verb in ("VRFY", "EXPN"):
            w(b"252 2.5.2 Not verifying\r\n")
        else:
            w(b"500 5.5.1 Command not recognised\r\n")

    async def _start_tls(self) -> None:
        srv = self.srv
        try:
            assert self.transport is not None and srv.tls is not None
            new = await srv.loop.start_tls(self.transport, self, srv.tls, server_side=True)
        except (ConnectionError, OSError, ssl.SSLError, AssertionError, RuntimeError):
            if self.transport is not None:
                self.transport.abort()
            return
        if self.state != TLS or new is None:
            return
        self.transport = new
        self.tls_on, self.state = True, CMD
        self.mail_from, self.rcpts = None, []
        self.buf.clear()
        self.last = srv.loop.time()

    # ------------------------------------------------------------------ output
    def _write(self, data: bytes) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            t.write(data)

    def _close(self, last: bytes = b"") -> None:
        if last:
            self._write(last)
        self.state = CLOSED
        if self.transport is not None:
            self.transport.close()  # after what is buffered has been sent


def path_arg(arg: str) -> tuple[str, dict[str, str]]:
    """``<addr> PARAM=V ...`` of MAIL FROM / RCPT TO."""
    arg = arg.strip()
    if arg.startswith("<"):
        end = arg.find(">")
        addr, rest = (arg[1:end], arg[end + 1:]) if end > 0 else (arg[1:], "")
    else:
        addr, _, rest = arg.partition(" ")
    params = {}
    for p in rest.split():
        k, _, v = p.partition("=")
        params[k.upper()] = v
    return addr.strip(), params
