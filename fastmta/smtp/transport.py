"""asyncio transport for the sans-IO SMTP client (``fastmta.smtp.protocol``).

``Connection.open(ip, port, ...)`` connects to an IP address (never a name), reads the
greeting, says EHLO (HELO fallback), applies the STARTTLS policy and returns a ready
connection; ``send(envelope)`` / ``send_many(envelopes)`` run transactions (pipelined when
the server offers PIPELINING, with the next transaction's commands written right behind
the previous body).  Every outcome comes back as a ``TransactionResult`` whose recipients
carry a classification; connection loss, timeouts and garbage become soft outcomes, never
exceptions.  Only ``open`` raises, ``ConnectFailed``, and it carries a classification.

Timeouts follow RFC 5321 section 4.5.3.2, one per command (``SmtpConfig``): the deadline
is re-armed whenever a reply arrives, so a pipelined group gets one command timeout per
reply.  Write flow control: ``pause_writing`` makes the next ``send`` wait for the buffer
to drain, bounded by the DATA block timeout.  ``probe()`` checks an idle connection for an
unsolicited 421 / EOF before reuse.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import ssl
from collections import deque
from collections.abc import Sequence

from fastmta.classify.outcome import Classification, classify_reply, local
from fastmta.config import SmtpConfig
from fastmta.core import Reply
from fastmta.errors import FastMTAError, LocalProtocolError
from fastmta.smtp.messages import (
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
)
from fastmta.smtp.protocol import ClientProtocol
from fastmta.smtp.tls import TLS_POLICIES, client_ssl_context

__all__ = ["Connection", "ConnectFailed"]


class ConnectFailed(FastMTAError):
    """The connection could not be set up; ``classification`` says how to treat it.

    ``kind``: ``connect_failed``, ``connect_timeout``, ``greeting`` (4xx/5xx greeting),
    ``ehlo`` (EHLO and HELO refused), ``tls_failed``, ``closing`` (421 to STARTTLS),
    ``timeout``, ``connection_lost``, ``protocol_error``.  ``reply``: the server's reply or a synthetic one.
    """

    def __init__(self, kind: str, reply: Reply, classification: Classification) -> None:
        super().__init__(f"{kind}: {reply.raw}")
        self.kind = kind
        self.reply = reply
        self.classification = classification


# ---------------------------------------------------------------------------- stream


class _Stream(asyncio.Protocol):
    """asyncio protocol feeding a ClientProtocol; resolves futures from its events."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.closed = self.loop.create_future()
        self.paused = False
        self.drain_waiter: asyncio.Future | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        t = self.transport
        if conn.proto.awaiting == "dot" and t is not None and t.get_write_buffer_size():
            # a reply while part of the body is still unsent: the server cannot have
            # seen the dot, so this is no answer to it (the fate stays unknown)
            conn._lost_kind = "protocol_error"
            conn._lost_detail = "reply before the end of the message was sent"
            conn.abort()
            return
        events = conn.proto.receive_data(data)
        conn._after_input(events)

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: BaseException | None) -> None:
        conn = self.conn
        if exc is None:
            detail = "closed by peer"
        else:
            detail = f"{type(exc).__name__}: {exc}".strip(": ")
        kind = conn._lost_kind or "connection_lost"
        events = conn.proto.connection_lost(kind, conn._lost_detail or detail)
        conn._after_input(events, lost=True)
        if not self.closed.done():
            self.closed.set_result(None)
        w = self.drain_waiter
        if w is not None and not w.done():
            w.set_result(None)

    def pause_writing(self) -> None:
        self.paused = True
        self.conn._on_pause()

    def resume_writing(self) -> None:
        self.paused = False
        w = self.drain_waiter
        self.drain_waiter = None
        if w is not None and not w.done():
            w.set_result(None)
        self.conn._arm()


# ---------------------------------------------------------------------------- connection


class Connection:
    """One SMTP client connection (see module docstring).  Build with ``await open()``."""

    def __init__(self, cfg: SmtpConfig, ip: str, port: int) -> None:
        self.cfg = cfg
        self.peer = (ip, port)
        self.proto = ClientProtocol(pipelining=cfg.pipelining, chunking=cfg.chunking,
                                    max_reply=cfg.max_reply_bytes)
        self.loop = asyncio.get_running_loop()
        self.stream: _Stream | None = None
        self.local_address: tuple | None = None
        self.tls_active = False
        self.last_used = self.loop.time()
        self._control: deque[Event] = deque()
        self._control_waiter: asyncio.Future | None = None
        self._txn_waiters: dict[TransactionResult, asyncio.Future] = {}
        self._deadline: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._progress = 0  # proto.replies_received when the deadline was last armed
        self._lost_kind: str | None = None
        self._lost_detail: str | None = None
        self._timeouts = {
            "connect": cfg.greeting_timeout_s,
            "ehlo": cfg.command_timeout_s,
            "helo": cfg.command_timeout_s,
            "starttls": cfg.command_timeout_s,
            "mail": cfg.command_timeout_s,
            "rcpt": cfg.command_timeout_s,
            "data": cfg.data_init_timeout_s,
            "dot": cfg.data_done_timeout_s,
            "rset": cfg.command_timeout_s,
            "noop": cfg.command_timeout_s,
            "quit": cfg.command_timeout_s,
        }

    # ----------------------------------------------------------------- opening
    @classmethod
    async def open(
        cls,
        ip: str,
        port: int = 25,
        *,
        ehlo_name: str | None = None,
        tls: str | None = None,
        server_hostname: str | None = None,
        source_ip: str | None = None,
        timeouts: SmtpConfig | None = None,
        pipelining: bool = True,
        cafile: str | None = None,
    ) -> Connection:
        """Connect, read the greeting, EHLO, STARTTLS per policy.  Raises ConnectFailed.

        ``tls``: ``none | opportunistic | required | verify`` (default: the config's).
        With ``opportunistic``, a failed TLS handshake is retried once in plain text
        (as Postfix does); ``required`` and ``verify`` fail instead.
        """
        cfg = timeouts or SmtpConfig()
        policy = tls or cfg.tls
        if policy not in TLS_POLICIES:
            raise LocalProtocolError(f"unknown TLS policy {policy!r} (one of {TLS_POLICIES})")
        try:
            ipaddress.ip_address(ip)
            if source_ip:
                ipaddress.ip_address(source_ip)
        except ValueError as exc:
            raise LocalProtocolError(f"connect to IP addresses only: {exc}") from None
        name = ehlo_name or cfg.ehlo_name
        cafile = cafile or cfg.tls_cafile or None
        try:
            return await cls._open_once(cfg, ip, port, name, policy, server_hostname,
                                        source_ip, pipelining, cafile)
        except ConnectFailed as exc:
            if policy == "opportunistic" and exc.kind == "tls_failed":
                return await cls._open_once(cfg, ip, port, name, "none", server_hostname,
                                            source_ip, pipelining, cafile)
            raise

    @classmethod
    async def _open_once(cls, cfg, ip, port, name, policy, server_hostname, source_ip,
                         pipelining, cafile) -> Connection:
        self = cls(cfg, ip, port)
        self.proto.use_pipelining = pipelining and cfg.pipelining
        local_addr = (source_ip, 0) if source_ip else None
        try:
            _, stream = await asyncio.wait_for(
                self.loop.create_connection(
                    lambda: _Stream(self), host=ip, port=port, local_addr=local_addr
                ),
                cfg.connect_timeout_s,
            )
        except TimeoutError:
            reply, c = local("connect_timeout", "connect", f"{ip}:{port}")
            raise ConnectFailed("connect_timeout", reply, c) from None
        except OSError as exc:
            why = os.strerror(exc.errno) if exc.errno else (exc.strerror or str(exc))
            reply, c = local("connect_failed", "connect", f"{ip}:{port}: {why}")
            raise ConnectFailed("connect_failed", reply, c) from None
        self.stream = stream
        try:
            self.local_address = stream.transport.get_extra_info("sockname")
        except Exception:  # pragma: no cover - transport specific
            self.local_address = None
        try:
            await self._setup(name, policy, server_hostname, cafile)
        except ConnectFailed:
            self.abort()
            await self._wait_closed(1.0)
            raise
        except BaseException:
            self.abort()
            raise
        return self

    async def _setup(self, name, policy, server_hostname, cafile) -> None:
        self._arm()
        ev = await self._next_control()
        if isinstance(ev, ConnectionFailed) and ev.kind == "timeout":
            # the host takes connections but does not serve: unreachable, not a lost session
            reply, c = local("greeting_timeout", "connect", ev.detail)
            raise ConnectFailed("timeout", reply, c)
        if not isinstance(ev, Greeting):
            self._fail_from(ev, "greeting")
        if not ev.ok:
            if ev.reply.code >= 500:
                self._quit_nowait()
            raise ConnectFailed("greeting", ev.reply, classify_reply(ev.reply))
        await self._hello(name)
        if policy == "none":
            return
        if not self.proto.capabilities.starttls:
            if policy == "opportunistic":
                return
            reply, c = local("tls_failed", "starttls", "STARTTLS not offered")
            self._quit_nowait()
            raise ConnectFailed("tls_failed", reply, c)
        self.proto.starttls()
        self._flush()
        ev = await self._next_control()
        if not isinstance(ev, StartTls):
            self._fail_from(ev, "starttls")
        if not ev.ok:
            if self.proto.state in (State.CLOSED, State.BROKEN):  # e.g. 421 to STARTTLS
                raise ConnectFailed("closing", ev.reply, classify_reply(ev.reply))
            if policy == "opportunistic":
                return  # RFC 3207: carry on in plain text
            self._quit_nowait()
            reply, c = local("tls_failed", "starttls", f"STARTTLS refused: {ev.reply.raw}")
            raise ConnectFailed("tls_failed", reply, c)
        ctx = client_ssl_context(policy == "verify", cafile)
        self._deadline = None
        try:
            new_transport = await self.loop.start_tls(
                self.stream.transport, self.stream, ctx,
                server_hostname=server_hostname or (self.peer[0] if policy == "verify" else None),
                ssl_handshake_timeout=self.cfg.command_timeout_s,
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError, ValueError) as exc:
            reply, c = local("tls_failed", "starttls", f"handshake failed: {exc}")
            raise ConnectFailed("tls_failed", reply, c) from None
        if new_transport is None:  # closed during the handshake
            reply, c = local("tls_failed", "starttls", "connection closed during handshake")
            raise ConnectFailed("tls_failed", reply, c)
        self.stream.transport = new_transport
        self.tls_active = True
        self.proto.tls_established()
        await self._hello(name)

    async def _hello(self, name: str) -> None:
        self.proto.ehlo(name)
        self._flush()
        ev = await self._next_control()
        if not isinstance(ev, Hello):
            self._fail_from(ev, "ehlo")
        if not ev.ok:
            self._quit_nowait()
            raise ConnectFailed("ehlo", ev.reply, classify_reply(ev.reply))

    def _fail_from(self, ev: Event, kind: str):
        if isinstance(ev, ConnectionFailed):
            raise ConnectFailed(ev.kind, ev.reply, ev.classification)
        if isinstance(ev, ServiceClosing):
            raise ConnectFailed(kind, ev.reply, classify_reply(ev.reply))
        reply, c = local("protocol_error", kind, f"unexpected {type(ev).__name__}")
        raise ConnectFailed("protocol_error", reply, c)

    # ----------------------------------------------------------------- properties
    @property
    def capabilities(self) -> Capabilities:
        return self.proto.capabilities

    @property
    def greeting(self) -> Reply | None:
        return self.proto.greeting

    @property
    def tls_info(self) -> tuple[str, str] | None:
        """(protocol version, cipher name) of the TLS session, None in plain text."""
        if not self.tls_active or self.stream is None or self.stream.transport is None:
            return None
        obj = self.stream.transport.get_extra_info("ssl_object")
        if obj is None:
            return None
        cipher = obj.cipher()
        return (obj.version() or "", cipher[0] if cipher else "")

    @property
    def messages_sent(self) -> int:
        return self.proto.messages_sent

    @property
    def usable(self) -> bool:
        """Open and able to take another transaction."""
        st = self.stream
        return (
            st is not None
            and st.transport is not None
            and not st.transport.is_closing()
            and self.proto.state in (State.READY, State.TXN, State.RSET)
        )

    # ----------------------------------------------------------------- I/O plumbing
    def _flush(self) -> None:
        out = self.proto.data_to_send()
        if out and self.stream is not None and self.stream.transport is not None:
            self.stream.transport.write(out)
        self._arm()

    def _arm(self) -> None:
        self._progress = self.proto.replies_received
        cmd = self.proto.awaiting
        if cmd is None:
            self._deadline = None
            return
        loop = self.loop
        now = loop.time()
        deadline = now + self._timeouts.get(cmd, self.cfg.command_timeout_s)
        if self.stream is not None and self.stream.paused:
            deadline = min(deadline, now + self.cfg.data_block_timeout_s)
        self._set_deadline(deadline)

    def _set_deadline(self, deadline: float) -> None:
        """Lazy timer: moving the deadline later costs nothing; earlier re-schedules."""
        self._deadline = deadline
        t = self._timer
        if t is None:
            self._timer = self.loop.call_at(deadline, self._on_timer)
        elif t.when() > deadline:
            t.cancel()
            self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_pause(self) -> None:
        # the peer does not read: bound the wait by the DATA block timeout
        dl = self.loop.time() + self.cfg.data_block_timeout_s
        if self._deadline is None or dl < self._deadline:
            self._set_deadline(dl)

    def _on_timer(self) -> None:
        self._timer = None
        dl = self._deadline
        if dl is None:
            return
        now = self.loop.time()
        if now < dl:
            self._timer = self.loop.call_at(dl, self._on_timer)
            return
        cmd = self.proto.awaiting or "write"
        self._lost_kind = "timeout"
        self._lost_detail = f"no reply to {cmd} within {self._timeouts.get(cmd, 0):g}s"
        self._deadline = None
        self.abort()

    def _after_input(self, events: list[Event], lost: bool = False) -> None:
        out = self.proto.data_to_send()
        if out and not lost:
            self.stream.transport.write(out)
        if events:
            for ev in events:
                if type(ev) is TransactionDone:
                    fut = self._txn_waiters.pop(ev.result, None)
                    if fut is not None and not fut.done():
                        fut.set_result(ev.result)
                else:
                    self._control.append(ev)
                    w = self._control_waiter
                    if w is not None and not w.done():
                        w.set_result(None)
            last = events[-1]
            if not lost:
                if type(last) is ServiceClosing:
                    self.close()  # the server said goodbye: flush and close
                elif type(last) is ConnectionFailed:
                    self.abort()  # garbage from the peer: drop at once
        if lost:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._deadline = None
            w = self._control_waiter
            if w is not None and not w.done():
                w.set_result(None)
        elif out or self.proto.replies_received != self._progress:
            # only a complete reply counts as progress: a slow drip of bytes does not
            # extend the deadline
            self._arm()

    async def _next_control(self) -> Event:
        while not self._control:
            if self.stream is None or self.stream.closed.done():
                reply, c = local(self._lost_kind or "connection_lost", self.proto.awaiting)
                return ConnectionFailed(self._lost_kind or "connection_lost", reply, c)
            self._control_waiter = self.loop.create_future()
            try:
                await self._control_waiter
            finally:
                self._control_waiter = None
        return self._control.popleft()

    async def _drain(self) -> None:
        st = self.stream
        if st is None or not st.paused:
            return
        w = st.drain_waiter
        if w is None:
            w = st.drain_waiter = self.loop.create_future()
        await w  # resolved on resume_writing or connection_lost (deadline aborts)

    # ----------------------------------------------------------------- transactions
    def _dead_result(self, env: Envelope) -> TransactionResult:
        res = TransactionResult(env)
        reply, c = local(self._lost_kind or "connection_lost", "mail", "connection not usable")
        res.mail_reply = reply
        res.local_reply = reply
        res.local_cls = c
        return res

    async def send(self, envelope: Envelope) -> TransactionResult:
        """Run one transaction; never raises for anything the peer does."""
        return (await self.send_many((envelope,)))[0]

    async def send_many(self, envelopes: Sequence[Envelope]) -> list[TransactionResult]:
        """Run several transactions on this connection, pipelined when offered.

        Results come back in order.  Recipients of transactions that could not be run
        (connection lost before) get soft ``not_connected`` outcomes.
        """
        if self.stream is not None and self.stream.paused:
            await self._drain()
        results: list[TransactionResult] = []
        proto = self.proto
        last: TransactionResult | None = None
        for env in envelopes:
            if not self.usable:
                results.append(self._dead_result(env))
                continue
            res = proto.send(env)
            results.append(res)
            if res.local_reply is None:
                last = res
        # local refusals (SIZE, SMTPUTF8) complete at once; they are ignored below
        proto.pending_events()
        fut = None
        if last is not None:
            # transactions complete in order: waiting for the last one is enough
            fut = self.loop.create_future()
            self._txn_waiters[last] = fut
        self._flush()
        if fut is not None:
            try:
                await fut
            except asyncio.CancelledError:
                self.abort()
                raise
        self.last_used = self.loop.time()
        return results

    # ----------------------------------------------------------------- reuse and teardown
    async def probe(self, noop: bool = False, timeout_s: float = 5.0) -> bool:
        """True when an idle connection can be reused.

        Processes whatever arrived while idle (an unsolicited 421 or EOF makes it
        unusable).  With ``noop=True`` also sends NOOP and waits up to ``timeout_s``.
        """
        await asyncio.sleep(0)
        if not self.usable or not self.proto.idle:
            return False
        if not noop:
            return True
        self.proto.noop()
        self._flush()
        try:
            ev = await asyncio.wait_for(self._next_control(), timeout_s)
        except TimeoutError:
            self.abort()
            return False
        return isinstance(ev, ResetDone) and ev.reply.code == 250 and self.usable

    async def rset(self) -> Reply | None:
        if not self.usable or not self.proto.idle:
            return None
        self.proto.rset()
        self._flush()
        ev = await self._next_control()
        return ev.reply if isinstance(ev, ResetDone) else None

    def _quit_nowait(self) -> None:
        if self.stream is not None and self.stream.transport is not None:
            self.proto.quit()
            out = self.proto.data_to_send()
            if out and not self.stream.transport.is_closing():
                self.stream.transport.write(out)

    async def quit(self, timeout_s: float = 5.0) -> None:
        """QUIT politely (bounded wait), then close.  Never raises."""
        try:
            if self.usable and not self.proto.idle:
                # transactions still in flight: do not mix QUIT into them
                self.abort()
            elif self.usable and self.proto.state != State.QUIT:
                self.proto.quit()
                self._flush()
                try:
                    await asyncio.wait_for(self._wait_quit(), timeout_s)
                except TimeoutError:
                    pass
        finally:
            self.close()
            await self._wait_closed(timeout_s)

    async def _wait_quit(self) -> None:
        while True:
            ev = await self._next_control()
            if isinstance(ev, (QuitDone, ConnectionFailed, ServiceClosing)):
                return

    async def _wait_closed(self, timeout_s: float) -> None:
        st = self.stream
        if st is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(st.closed), timeout_s)
        except TimeoutError:
            self.abort()

    async def wait_closed(self, timeout_s: float = 5.0) -> None:
        await self._wait_closed(timeout_s)

    def close(self) -> None:
        """Close after flushing what is buffered (no QUIT)."""
        st = self.stream
        if st is not None and st.transport is not None and not st.transport.is_closing():
            st.transport.close()

    def abort(self) -> None:
        """Close at once; unfinished transactions complete as connection lost."""
        st = self.stream
        if st is not None and st.transport is not None:
            st.transport.abort()

    def __repr__(self) -> str:
        return (f"<Connection {self.peer[0]}:{self.peer[1]} state={self.proto.state.name} "
                f"tls={self.tls_active} sent={self.messages_sent}>")
