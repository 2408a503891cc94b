"""Sans-IO SMTP client state machine (no sockets, no clock, no asyncio).

Use it like h11: feed received bytes with ``receive_data(data) -> list[Event]``, call
commands (``ehlo``, ``starttls``, ``auth``, ``send``, ``rset``, ``quit``) and write out
``data_to_send()``.  Values and events: ``fastmta.smtp.messages``; SASL: ``smtp.auth``.

States and moves::

    GREETING --220--> GREETED --ehlo()--> EHLO --250--> READY
                                           \\--5xx--> HELO --250--> READY
    READY --starttls()--> STARTTLS --220--> TLS --tls_established()--> GREETED
    READY --auth(line)--> AUTH --334: auth(next)-- / 235 or failure --> READY
    READY --send(env)--> TXN (MAIL/RCPT*/DATA, body after 354, reply to the dot)
    TXN --all done--> READY (or RSET while a RSET after a failed transaction is pending)
    any --421 / unsolicited reply--> CLOSED;  QUIT answered --> CLOSED
    any --connection_lost() / garbage--> BROKEN

Transactions are queued: ``send()`` may be called while another transaction is in
flight.  With PIPELINING (RFC 2920) MAIL, every RCPT and DATA go out in one write, and
the next queued transaction's commands follow its predecessor's body in the same write;
without it everything is lock-step.  A transaction that fails before the body is sent is
followed by RSET (our own RSETs produce no event).  With ``chunking=True`` and a server
offering CHUNKING + PIPELINING, transactions use ``BDAT n LAST`` (RFC 3030) back to back
(``_pump_bdat``).  Each reply carries the command it answers (the reply to the content
is tagged ``dot``, after DATA's "." or BDAT LAST alike).

Nothing here raises on peer misbehaviour: garbage or an over-size reply becomes a
``ConnectionFailed`` event (state BROKEN) and every unfinished transaction completes with
a synthetic outcome.  Misuse by the caller (CR/LF/NUL in an address, a command in the
wrong state) raises ``LocalProtocolError``.
"""

from __future__ import annotations

from collections import deque

from fastmta.classify.outcome import Classification, local
from fastmta.core import Reply, ReplyParser
from fastmta.errors import LocalProtocolError, RemoteProtocolError
from fastmta.smtp.messages import (
    AuthReply,
    Capabilities,
    ConnectionFailed,
    Envelope,
    Event,
    Greeting,
    Hello,
    QuitDone,
    ResetDone,
    ServiceClosing,
    StartTls,
    State,
    TransactionDone,
    TransactionResult,
    check_address,
    normalize_body,
    parse_ehlo,
    prepare_body,
)

__all__ = ["ClientProtocol"]

_READY, _TXN, _RSET, _TLS, _CLOSED, _BROKEN, _QUIT = (
    State.READY, State.TXN, State.RSET, State.TLS, State.CLOSED, State.BROKEN, State.QUIT)
_SEND_STATES = frozenset({State.READY, State.TXN, State.RSET})

# ---------------------------------------------------------------------------- machine


class _Txn:
    __slots__ = ("result", "body", "mail_cmd", "rcpt_cmds", "body_sent", "done", "next_rcpt",
                 "discard", "bdat")

    def __init__(self, result: TransactionResult, body: bytes, mail_cmd: bytes,
                 rcpt_cmds: list[bytes]) -> None:
        self.result = result
        self.body = body
        self.mail_cmd = mail_cmd
        self.rcpt_cmds = rcpt_cmds
        self.body_sent = False
        self.done = False
        self.next_rcpt = 0
        self.discard = False  # 354 arrived although no recipient was accepted
        self.bdat = False  # sent with BDAT LAST instead of DATA


_EHLO_FALLBACK_CODES = frozenset({500, 501, 502, 504, 550})


class ClientProtocol:
    """The SMTP client state machine (see module docstring)."""

    def __init__(self, *, max_line: int = 8192, max_reply: int = 65536,
                 pipelining: bool = True, chunking: bool = False) -> None:
        self.state = State.GREETING
        self.capabilities = Capabilities()
        self.greeting: Reply | None = None
        self.use_pipelining = pipelining  # may be turned off by the caller
        self.use_chunking = chunking  # BDAT (RFC 3030) when CHUNKING + PIPELINING offered
        self._bdat_sent = False  # a BDAT transaction went out: later groups start with RSET
        self.messages_sent = 0  # transactions that got a 2xx after the dot
        self.replies_received = 0  # complete replies (progress, for timeouts)
        self.tls = False
        self._parser = ReplyParser(max_line, max_reply)
        self._parser.expect("connect")
        self._pending: deque = deque([("connect", None, 0)])
        # replies matched, commands handed out (a reply beyond: to a command not sent)
        self._replied = 0
        self._flushed = 1  # the greeting needs no command
        self._violation = ""  # set by a handler: the reply broke the protocol
        self._out: list[bytes] = []
        self._queue: deque[_Txn] = deque()
        self._active: _Txn | None = None  # commands sent, body not yet sent
        self._inflight: list[_Txn] = []  # started, not finished
        self._ehlo_name = ""
        self._events: list[Event] = []

    # ----------------------------------------------------------------- output
    def data_to_send(self) -> bytes:
        """Bytes to write to the peer now (possibly empty)."""
        self._flushed = self._replied + len(self._pending)
        if not self._out:
            return b""
        out = self._out
        self._out = []
        return out[0] if len(out) == 1 else b"".join(out)

    @property
    def awaiting(self) -> str | None:
        """The command whose reply is expected next (for per-command timeouts)."""
        return self._pending[0][0] if self._pending else None

    @property
    def idle(self) -> bool:
        """READY with nothing in flight or queued (a connection that may be reused)."""
        return self.state == State.READY and not self._pending and not self._queue

    @property
    def pipelining(self) -> bool:
        return self.use_pipelining and self.capabilities.pipelining

    @property
    def chunking(self) -> bool:
        """BDAT in use: CHUNKING and PIPELINING offered, both enabled by the caller."""
        c = self.capabilities
        return self.use_chunking and self.use_pipelining and c.chunking and c.pipelining

    def _cmd(self, kind: str, line: bytes, txn: _Txn | None = None, index: int = 0) -> None:
        if self.state in (State.CLOSED, State.BROKEN):
            return
        self._out.append(line)
        self._parser.expect(kind)
        self._pending.append((kind, txn, index))

    def _auto_rset(self) -> None:
        self._out.append(b"RSET\r\n")
        self._parser.expect("rset")
        self._pending.append(("rset_auto", None, 0))

    def _require(self, *states: State) -> None:
        if self.state not in states:
            raise LocalProtocolError(
                f"command not allowed in state {self.state.name} (needs "
                f"{'/'.join(s.name for s in states)})"
            )

    # ----------------------------------------------------------------- commands
    def ehlo(self, name: str) -> None:
        """Send EHLO (HELO follows automatically when EHLO is refused)."""
        self._require(State.GREETED)
        check_address(name, "EHLO name")
        self._ehlo_name = name
        self.state = State.EHLO
        self._cmd("ehlo", b"EHLO " + name.encode("ascii", "strict") + b"\r\n")

    def helo(self, name: str) -> None:
        """Send HELO directly (for servers known not to speak ESMTP)."""
        self._require(State.GREETED)
        check_address(name, "HELO name")
        self._ehlo_name = name
        self.state = State.HELO
        self._cmd("helo", b"HELO " + name.encode("ascii", "strict") + b"\r\n")

    def starttls(self) -> None:
        self._require(State.READY)
        if self._pending or self._queue:
            raise LocalProtocolError("STARTTLS with commands in flight")
        self.state = State.STARTTLS
        self._cmd("starttls", b"STARTTLS\r\n")

    def tls_established(self) -> None:
        """The transport finished the TLS handshake: forget everything, EHLO again."""
        self._require(State.TLS)
        self.tls = True
        self.capabilities = Capabilities()
        self.state = State.GREETED

    def auth(self, line: bytes) -> None:
        """Send an AUTH command or the next SASL response (``fastmta.smtp.auth``)."""
        self._require(State.READY, State.AUTH)
        self.state = State.AUTH
        self._cmd("auth", line)

    def rset(self) -> None:
        self._require(State.READY)
        self.state = State.RSET
        self._cmd("rset", b"RSET\r\n")

    def noop(self) -> None:
        self._require(State.READY)
        self._cmd("noop", b"NOOP\r\n")

    def quit(self) -> None:
        """Send QUIT (allowed whenever the connection is still open)."""
        if self.state in (State.CLOSED, State.BROKEN, State.QUIT):
            return
        self.state = State.QUIT
        self._cmd("quit", b"QUIT\r\n")

    def send(self, envelope: Envelope) -> TransactionResult:
        """Queue a transaction; its TransactionDone event carries the returned result.

        Refusals decided locally (message over the announced SIZE, SMTPUTF8 needed but
        not offered) complete at once: the event is returned by ``pending_events()``.
        """
        if self.state not in _SEND_STATES:
            self._require(State.READY, State.TXN, State.RSET)
        result = TransactionResult(envelope)
        caps = self.capabilities
        bdat = self.chunking
        body = normalize_body(envelope.body) if bdat else prepare_body(envelope.body)
        rcpts = envelope.rcpts
        mail_from = envelope.mail_from
        utf8 = envelope.smtputf8 or not (
            mail_from.isascii()
            and (rcpts[0].isascii() if len(rcpts) == 1 else "".join(rcpts).isascii()))
        if utf8 and not caps.smtputf8:
            return self._local_done(result, "smtputf8_unsupported")
        # RFC 1870: the message with CRLFs, without the final "."
        size = len(body) if bdat else len(body) - 3
        limit = caps.size
        if limit and size > limit:
            return self._local_done(result, "too_large", f"{size} > {limit} bytes")
        if utf8:
            enc = "utf-8"
            params = b" SMTPUTF8"
        else:
            enc = "ascii"
            params = b""
        if caps.eightbitmime and not envelope.body.isascii():
            params = b" BODY=8BITMIME" + params
        if limit is not None:
            params = b" SIZE=%d" % size + params
        mail_cmd = b"MAIL FROM:<" + mail_from.encode(enc) + b">" + params + b"\r\n"
        rcpt_cmds = [b"RCPT TO:<" + r.encode(enc) + b">\r\n" for r in rcpts]
        txn = _Txn(result, body, mail_cmd, rcpt_cmds)
        txn.bdat = bdat
        self._queue.append(txn)
        if self._active is None:
            self._pump()
        return result

    def pending_events(self) -> list[Event]:
        """Events produced outside ``receive_data`` (local refusals in ``send``)."""
        ev = self._events
        self._events = []
        return ev

    def _local_done(self, result: TransactionResult, kind: str, detail: str = ""):
        reply, cls = local(kind, "mail", detail)
        result.mail_reply = reply
        result.local_reply = reply
        result.local_cls = cls
        self._events.append(TransactionDone(result))
        return result

    # ----------------------------------------------------------------- transaction pump
    def _pump(self) -> None:
        """Start queued transactions as far as the state and PIPELINING allow."""
        if not self._queue or self._active is not None:
            return
        st = self.state
        pipelining = self.use_pipelining and self.capabilities.pipelining
        if st == _RSET:
            if not pipelining:
                return
        elif st == _TXN:
            if not pipelining and self._inflight:
                return
        elif st != _READY:
            return
        txn = self._queue.popleft()
        self.state = _TXN
        self._inflight.append(txn)
        self._active = txn
        if txn.bdat:
            self._pump_bdat(txn)
        elif pipelining:
            # MAIL, every RCPT and DATA in one write (RFC 2920); DATA ends the group
            cmds = txn.rcpt_cmds
            n = len(cmds)
            self._out.append(txn.mail_cmd + b"".join(cmds) + b"DATA\r\n")
            expect = self._parser.expect
            pending = self._pending
            expect("mail")
            pending.append(("mail", txn, 0))
            for i in range(n):
                expect("rcpt")
                pending.append(("rcpt", txn, i))
            expect("data")
            pending.append(("data", txn, 0))
            txn.next_rcpt = n
        else:
            self._cmd("mail", txn.mail_cmd, txn)

    def _pump_bdat(self, txn: _Txn) -> None:
        """BDAT (RFC 3030): whole transactions back to back, no 354 to wait for.

        Each group after the first starts with RSET, so that a transaction the server
        still holds open after a failed BDAT cannot swallow the next MAIL.  The reply to
        ``BDAT n LAST`` is tagged ``dot``: it is the reply to the message content.
        """
        out = self._out
        expect = self._parser.expect
        pending = self._pending
        while True:
            cmds = txn.rcpt_cmds
            body = txn.body
            head = b"RSET\r\n" if self._bdat_sent else b""
            out.append(head + txn.mail_cmd + b"".join(cmds)
                       + b"BDAT %d LAST\r\n" % len(body))
            out.append(body)
            if head:
                expect("rset")
                pending.append(("rset_auto", None, 0))
            expect("mail")
            pending.append(("mail", txn, 0))
            for i in range(len(cmds)):
                expect("rcpt")
                pending.append(("rcpt", txn, i))
            expect("dot")
            pending.append(("dot", txn, 0))
            txn.next_rcpt = len(cmds)
            txn.body_sent = True
            self._bdat_sent = True
            self._active = None
            q = self._queue
            if not q or not q[0].bdat:
                return
            txn = q.popleft()
            self._inflight.append(txn)

    def _finish(self, txn: _Txn, need_rset: bool) -> None:
        txn.done = True
        try:
            self._inflight.remove(txn)
        except ValueError:
            pass
        if self._active is txn:
            self._active = None
        res = txn.result
        d = res.data_reply
        if d is not None and d.code < 300 and d.command == "dot":
            self.messages_sent += 1
        self._events.append(TransactionDone(res))
        st = self.state
        if st == _CLOSED or st == _BROKEN or st == _QUIT:
            return
        if need_rset:
            self.state = _RSET
            self._auto_rset()
        elif st == _TXN and not self._inflight:
            self.state = _READY
        self._pump()

    def _send_body(self, txn: _Txn) -> None:
        txn.body_sent = True
        self._out.append(txn.body)
        self._parser.expect("dot")
        self._pending.append(("dot", txn, 0))
        if self._active is txn:
            self._active = None
        # pipeline the next transaction's commands behind this body
        self._pump()

    def _on_txn_reply(self, kind: str, txn: _Txn, index: int, reply: Reply) -> None:
        res = txn.result
        if kind == "mail":
            res.mail_reply = reply
            if not self.pipelining:
                if reply.code >= 300:
                    self._finish(txn, need_rset=False)
                else:
                    self._cmd("rcpt", txn.rcpt_cmds[0], txn, 0)
                    txn.next_rcpt = 1
        elif kind == "rcpt":
            res.rcpt_replies[index] = reply
            if not self.pipelining and not txn.done:
                if txn.next_rcpt < len(txn.rcpt_cmds):
                    i = txn.next_rcpt
                    txn.next_rcpt += 1
                    self._cmd("rcpt", txn.rcpt_cmds[i], txn, i)
                elif any(r is not None and r.code < 300 for r in res.rcpt_replies):
                    self._cmd("data", b"DATA\r\n", txn)
                else:
                    self._finish(txn, need_rset=True)
        elif kind == "data":
            res.data_cmd_reply = reply
            if reply.code == 354:
                ok = (res.mail_reply is not None and res.mail_reply.code < 300
                      and any(r is not None and r.code < 300 for r in res.rcpt_replies))
                if ok:
                    self._send_body(txn)
                else:
                    # RFC 2920: 354 though nothing was accepted: end the empty message
                    txn.body = b".\r\n"
                    txn.discard = True
                    self._send_body(txn)
            elif reply.code < 300:
                # a 2xx to DATA is no permission to send the body, and no delivery
                self._violation = f"{reply.code} reply to DATA (expected 354)"
            else:
                res.data_reply = reply
                mail_ok = res.mail_reply is not None and res.mail_reply.code < 300
                self._finish(txn, need_rset=mail_ok)
        elif kind == "dot":
            if txn.discard:
                # the empty message of a transaction with no accepted recipient
                self._finish(txn, need_rset=True)
            else:
                res.data_reply = reply
                self._finish(txn, need_rset=False)

    # ----------------------------------------------------------------- input
    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes from the peer; return the events they complete."""
        if self.state == _BROKEN:
            return self.pending_events()
        try:
            replies = self._parser.feed(data)
        except RemoteProtocolError as exc:
            return self._broken("protocol_error", str(exc))
        if replies:
            self.replies_received += len(replies)
            on_reply = self._on_reply
            for reply in replies:
                st = self.state
                if st == _TLS:
                    # a reply after "220 go ahead" before the handshake: injection
                    return self._broken("protocol_error", "data after STARTTLS reply")
                if st == _BROKEN:
                    break
                on_reply(reply)
                if self._violation:
                    return self._broken("protocol_error", self._violation)
        if self.state == _TLS and self._parser.buffered:
            # bytes after "220 go ahead" before the handshake: response injection
            return self._broken("protocol_error", "data after STARTTLS reply")
        ev = self._events
        if not ev:
            return []
        self._events = []
        return ev

    def _on_reply(self, reply: Reply) -> None:
        if not self._pending:
            self.state = State.CLOSED
            self._events.append(ServiceClosing(reply))
            return
        if self._replied >= self._flushed and reply.code != 421:
            # an answer to a command we have not sent yet: the peer replies ahead (to
            # commands it guesses) -- nothing it says can be attributed any more
            self._violation = (f"reply {reply.code} to a command not yet sent "
                               f"(expected none before {self._pending[0][0].upper()})")
            return
        self._replied += 1
        kind, txn, index = self._pending.popleft()
        if 300 <= reply.code < 400 and kind not in ("data", "auth"):
            self._violation = f"{reply.code} reply to {kind.upper()}"
            return
        if reply.code == 421 and kind not in ("quit",):
            self._service_closing(kind, txn, index, reply)
            return
        if txn is not None:
            self._on_txn_reply(kind, txn, index, reply)
            return
        st = self.state
        if kind == "connect":
            self.greeting = reply
            self._events.append(Greeting(reply))
            self.state = State.GREETED if reply.code == 220 else State.CLOSED
        elif kind == "ehlo":
            if reply.code == 250:
                self.capabilities = parse_ehlo(reply)
                self.state = State.READY
                self._events.append(Hello(reply, self.capabilities))
            elif reply.code in _EHLO_FALLBACK_CODES:
                self.state = State.HELO
                self._cmd("helo", b"HELO " + self._ehlo_name.encode("ascii") + b"\r\n")
            else:
                self.state = State.CLOSED if reply.code >= 400 else st
                self._events.append(Hello(reply, Capabilities()))
        elif kind == "helo":
            self.capabilities = Capabilities()
            self.state = State.READY if reply.code == 250 else State.CLOSED
            self._events.append(Hello(reply, self.capabilities))
        elif kind == "starttls":
            if reply.code == 220:
                self.state = State.TLS
            else:
                self.state = State.READY
            self._events.append(StartTls(reply))
        elif kind == "auth":
            self.state = State.AUTH if reply.code == 334 else State.READY
            self._events.append(AuthReply(reply))
        elif kind == "rset_auto":
            # our own RSET after a failed transaction: no event, just carry on
            if self.state == _RSET:
                self.state = _TXN if self._inflight else _READY
            self._pump()
        elif kind == "rset":
            if self.state == _RSET:
                self.state = _TXN if self._inflight else _READY
            self._events.append(ResetDone(reply))
            self._pump()
        elif kind == "noop":
            self._events.append(ResetDone(reply))
        elif kind == "quit":
            self.state = State.CLOSED
            self._events.append(QuitDone(reply))

    def _service_closing(self, kind: str, txn: _Txn | None, index: int, reply: Reply) -> None:
        """421: the server closes.  It answers the command and everything behind it."""
        self.state = State.CLOSED
        if txn is not None:
            self._on_txn_reply(kind, txn, index, reply)
        if kind == "connect":
            self.greeting = reply
            self._events.append(Greeting(reply))
        elif kind == "ehlo" or kind == "helo":
            self._events.append(Hello(reply, Capabilities()))
        elif kind == "starttls":
            self._events.append(StartTls(reply))
        while self._pending:
            k, t, i = self._pending.popleft()
            if t is not None and not t.done:
                self._on_txn_reply(k, t, i, reply.with_command(k))
        self._fail_unfinished(reply, None)
        self._events.append(ServiceClosing(reply))

    def _fail_unfinished(self, reply: Reply, cls: Classification | None) -> None:
        """Complete every unfinished transaction with ``reply`` for its missing replies."""
        for txn in list(self._inflight) + list(self._queue):
            if txn.done:
                continue
            res = txn.result
            if txn.body_sent and res.data_reply is None:
                res.unknown_fate = True
            r_mail = reply.with_command("mail")
            if res.mail_reply is None:
                res.mail_reply = r_mail
            elif res.mail_reply.code < 300:
                for i, r in enumerate(res.rcpt_replies):
                    if r is None:
                        res.rcpt_replies[i] = reply.with_command("rcpt")
                if res.data_reply is None:
                    res.data_reply = reply.with_command("dot" if txn.body_sent else "data")
            if cls is not None:
                res.local_reply = reply
                res.local_cls = cls
            txn.done = True
            self._events.append(TransactionDone(res))
        self._inflight.clear()
        self._queue.clear()
        self._active = None

    def _broken(self, kind: str, detail: str = "") -> list[Event]:
        cmd = self._pending[0][0] if self._pending else None
        reply, cls = local(kind, cmd, detail)
        self.state = State.BROKEN
        self._pending.clear()
        self._fail_unfinished(reply, cls)
        self._events.append(ConnectionFailed(kind, reply, cls, detail))
        return self.pending_events()

    def connection_lost(self, kind: str = "connection_lost", detail: str = "") -> list[Event]:
        """The transport lost the connection (EOF, reset, timeout, TLS error): the events
        completing every unfinished transaction (synthetic reply classified as ``kind``)
        and a final ``ConnectionFailed``; none after a clean end (QUIT/421 answered)."""
        if self.state == State.BROKEN:
            return self.pending_events()
        if self.state == State.CLOSED and not self._pending:
            self.state = State.BROKEN
            return self.pending_events()
        if self.state == State.QUIT and not self._inflight and not self._queue:
            self.state = State.BROKEN
            self._pending.clear()
            return self.pending_events()
        return self._broken(kind, detail)
