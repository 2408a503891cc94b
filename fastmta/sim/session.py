"""One SMTP conversation with a simulated MX host, and the replies it sends.

``_Session`` is the ``asyncio.Protocol`` of one connection: it reads commands (and
pipelined groups of them), answers as the host's provider behaves (``world.Behaviour``:
refusals, greylisting, rate and connection limits, delays, BDAT, STARTTLS) and counts
what it saw in the ``MxServer``'s ``Stats``.  The reply texts are in ``sim/replies.py``.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from typing import TYPE_CHECKING

from fastmta.sim import replies as rp
from fastmta.sim.oddities import DEFERRALS, REFUSALS, magic_odd_reply, odd_reply
from fastmta.sim.world import Behaviour, Provider, rcpt_fate

if TYPE_CHECKING:  # the server creates its sessions; a session only refers back to it
    from fastmta.sim.mx import MxServer


_CMD, _DATA, _CLOSED, _TLS, _BDAT = 0, 1, 2, 3, 4
_MAX_LINE = 4096


def _key(reply: bytes) -> str:
    """"550 5.1.1" for a reply (code and enhanced code, for the refusal counters)."""
    return (reply[:3] + b" " + reply[4:9]).decode("ascii", "replace").strip()


def _addr(arg: bytes) -> str | None:
    """The address inside <...> of a MAIL/RCPT argument (None if malformed)."""
    lt = arg.find(b"<")
    gt = arg.find(b">", lt + 1)
    if lt < 0 or gt < 0:
        return None
    return arg[lt + 1 : gt].decode("utf-8", "replace")


class _Session(asyncio.Protocol):
    __slots__ = ("srv", "tr", "beh", "prov", "pstate", "peer_ip", "host_ip", "mode", "buf",
                 "scan", "mail_from", "rcpts", "fates", "nmsg", "ehlo", "pending_out",
                 "delay_until", "tls", "bdat_left", "bdat_last", "bdat_bad", "chunks",
                 "bdat_size", "pname", "pace_at", "late_buf", "late_at")

    def __init__(self, srv: MxServer) -> None:
        self.srv = srv
        self.pname = ""
        self.tr: asyncio.Transport | None = None
        self.mode = _CMD
        self.buf = bytearray()
        self.scan = 0
        self.mail_from: str | None = None
        self.rcpts: list[str] = []
        self.fates: list = []
        self.nmsg = 0
        self.ehlo = False
        self.delay_until = 0.0
        self.pace_at = 0.0  # conn_msgs_per_s: when the next acceptance may be answered
        self.late_buf: list[bytes] | None = None  # replies waiting for late_at
        self.late_at = 0.0
        self.tls = False
        self.bdat_left = 0
        self.bdat_size = 0
        self.bdat_last = False
        self.bdat_bad: bytes | None = None  # reply for a refused BDAT (data still read)
        self.chunks: list[bytes] = []

    # -------------------------------------------------------------- connection
    def connection_made(self, tr) -> None:  # type: ignore[override]
        self.tr = tr
        srv = self.srv
        srv.stats.connections += 1
        srv.open_sessions.add(self)
        sock = tr.get_extra_info("sockname")
        peer = tr.get_extra_info("peername")
        self.host_ip = sock[0] if sock else "127.0.0.1"
        self.peer_ip = peer[0] if peer else "?"
        prov = srv.world.address_provider.get(self.host_ip)
        self.prov: Provider | None = prov
        self.beh: Behaviour = prov.behaviour if prov else srv.default_behaviour
        self.pstate = srv.pstate(prov.name if prov else "")
        pname = self.pname = prov.name if prov else ""
        st = srv.stats
        st.open[pname] += 1
        if st.open[pname] > st.peak[pname]:
            st.peak[pname] = st.open[pname]
        beh = self.beh
        if beh.max_conn_per_ip:
            self.pstate.conns[self.peer_ip] += 1
            if self.pstate.conns[self.peer_ip] > beh.max_conn_per_ip:
                if beh.over_cap_penalty_s:
                    self.pstate.penalty[self.peer_ip] = time.monotonic() + beh.over_cap_penalty_s
                self._refuse(rp.R_TOO_MANY_CONN)
                return
        if beh.silent:
            return
        if beh.transient_421_every:
            self.pstate.mails += 1
            if self.pstate.mails % beh.transient_421_every == 0:
                self._refuse(rp.R_TRANSIENT_421_GREETING)
                return
        greeting = (beh.greeting.encode() + b"\r\n") if beh.greeting else (
            rp.R_GREETING % srv.hostname_of(self.host_ip))
        if beh.greeting_delay_s:
            self.delay_until = time.monotonic() + beh.greeting_delay_s
        self._write(greeting)
        if beh.greeting and not beh.greeting.startswith("2"):
            self.mode = _CLOSED
            self._close_after_write()

    def connection_lost(self, exc) -> None:
        self.mode = _CLOSED
        self.srv.open_sessions.discard(self)
        self.srv.stats.open[self.pname] -= 1
        if self.beh.max_conn_per_ip:
            c = self.pstate.conns
            c[self.peer_ip] -= 1
            if c[self.peer_ip] <= 0:
                del c[self.peer_ip]

    def _refuse(self, reply: bytes) -> None:
        self.srv.stats.replies[_key(reply)] += 1
        self.mode = _CLOSED
        self._write(reply)
        self._close_after_write()

    def _close_after_write(self) -> None:
        if self.delay_until and self.delay_until > time.monotonic():
            asyncio.get_running_loop().call_at(
                self._loop_time(self.delay_until) + 0.001, self._close)
        else:
            self._close()

    def _close(self) -> None:
        if self.tr is not None and not self.tr.is_closing():
            self.tr.close()

    @staticmethod
    def _loop_time(mono: float) -> float:
        loop = asyncio.get_running_loop()
        return loop.time() + (mono - time.monotonic())

    def _write(self, data: bytes) -> None:
        tr = self.tr
        if tr is None or tr.is_closing():
            return
        delay = self.beh.reply_delay_s
        now = time.monotonic() if (delay or self.delay_until) else 0.0
        if delay:
            self.delay_until = max(self.delay_until, now) + delay
        if self.delay_until and self.delay_until > now:
            if self.late_buf is not None and self.late_at == self.delay_until:
                self.late_buf.append(data)  # same time: one write, order kept
                return
            buf = self.late_buf = [data]
            self.late_at = self.delay_until
            asyncio.get_running_loop().call_at(self._loop_time(self.delay_until), self._late,
                                               buf)
        else:
            tr.write(data)

    def _late(self, buf: list[bytes]) -> None:
        if self.late_buf is buf:
            self.late_buf = None
        tr = self.tr
        if tr is not None and not tr.is_closing():
            tr.write(b"".join(buf))

    def _paced(self, out: list[bytes], reply: bytes) -> None:
        """``conn_msgs_per_s``: the replies so far go now, this acceptance at its turn
        (at most that many per second on this connection; half as many during an
        over-cap penalty), and what follows after it."""
        if not self.beh.conn_msgs_per_s or not reply.startswith(rp.QUEUED_PREFIX):
            out.append(reply)
            return
        if out:
            self._write(b"".join(out))
            out.clear()
        now = time.monotonic()
        interval = 1.0 / self.beh.conn_msgs_per_s
        if self.pstate.penalty.get(self.peer_ip, 0.0) > now:
            interval *= 2.0
        at = max(self.pace_at, now)
        self.pace_at = at + interval
        self.delay_until = max(self.delay_until, at)
        self._write(reply)

    # -------------------------------------------------------------- input
    def data_received(self, data: bytes) -> None:
        if self.mode == _CLOSED:
            return
        if self.mode == _TLS:
            self.buf += data  # decrypted data arriving before start_tls() returned
            return
        buf = self.buf
        buf += data
        out: list[bytes] = []
        pos = 0
        while self.mode != _CLOSED:
            if self.mode == _BDAT:
                take = min(self.bdat_left, len(buf) - pos)
                if take and (self.beh.keep_messages or self.srv.keep_messages):
                    self.chunks.append(bytes(buf[pos : pos + take]))
                pos += take
                self.bdat_left -= take
                if self.bdat_left:
                    if self.fates and "disconnect" in self.fates:
                        self.mode = _CLOSED
                        if out:
                            self.tr.write(b"".join(out))
                        self.tr.abort()
                        return
                    break
                self.mode = _CMD
                self._paced(out, self._bdat_done())
                continue
            if self.mode == _DATA:
                if self.fates and "disconnect" in self.fates:
                    if len(buf) - pos > 2:
                        # part of the body is here: drop the connection mid-message
                        self.mode = _CLOSED
                        if out:
                            self.tr.write(b"".join(out))
                        self.tr.abort()
                        return
                    break
                end = buf.find(b"\r\n.\r\n", max(pos, self.scan))
                if end < 0:
                    self.scan = max(pos, len(buf) - 4)
                    break
                keep = self.beh.keep_messages or self.srv.keep_messages
                # kept bodies are un-stuffed ("\r\n.." -> "\r\n.")
                body = bytes(buf[pos : end + 2]).replace(b"\r\n..", b"\r\n.")[2:] \
                    if keep else b""
                pos = end + 5
                self.scan = 0
                self.mode = _CMD
                self._paced(out, self._message(body))
                continue
            eol = buf.find(b"\n", pos)
            if eol < 0:
                if len(buf) - pos > _MAX_LINE:
                    out.append(rp.R_LINE_TOO_LONG)
                    self.mode = _CLOSED
                break
            if eol - pos > _MAX_LINE:
                out.append(rp.R_LINE_TOO_LONG)
                self.mode = _CLOSED
                break
            line = bytes(buf[pos:eol]).rstrip(b"\r")
            pos = eol + 1
            reply = self._command(line)
            if reply:
                out.append(reply)
            if self.mode == _DATA:
                # the body starts right after DATA; "\r\n" so an empty body matches
                del buf[:pos]
                buf[0:0] = b"\r\n"
                pos = 0
                self.scan = 0
            elif self.mode == _TLS:
                # anything pipelined after STARTTLS is discarded (injection)
                pos = len(buf)
                break
        if pos:
            del buf[:pos]
        if out:
            self._write(out[0] if len(out) == 1 else b"".join(out))
        if self.mode == _CLOSED:
            self._close_after_write()
        elif self.mode == _TLS:
            self.tr.pause_reading()  # the next bytes are the TLS ClientHello
            t = asyncio.ensure_future(self._starttls())
            self.srv.tasks.add(t)
            t.add_done_callback(self.srv.tasks.discard)

    # -------------------------------------------------------------- commands
    def _command(self, line: bytes) -> bytes | None:
        verb = line[:4].upper()
        if verb == b"MAIL":
            return self._mail(line)
        if verb == b"RCPT":
            return self._rcpt(line)
        if verb == b"DATA":
            return self._data()
        if verb == b"BDAT":
            return self._bdat(line)
        if verb == b"EHLO":
            self.ehlo = True
            self._reset()
            return self.srv.ehlo_reply(self.host_ip, self.beh, self.tls)
        if verb == b"HELO":
            self.ehlo = True
            self._reset()
            return b"250 %s\r\n" % self.srv.hostname_of(self.host_ip)
        if verb == b"RSET":
            self._reset()
            return rp.R_RSET
        if verb == b"NOOP":
            return rp.R_OK
        if verb == b"QUIT":
            self.mode = _CLOSED
            return rp.R_BYE
        if line.upper() == b"STARTTLS":
            if not self.beh.starttls or self.tls or self.srv.tls_context is None:
                return rp.R_NO_TLS
            self.mode = _TLS
            return rp.R_TLS_READY
        return rp.R_UNRECOGNISED

    def _by_source(self, what: str) -> None:
        name = self.prov.name if self.prov else ""
        self.srv.stats.replies_by_source[f"{name}\t{self.peer_ip}\t{what}"] += 1

    def _reset(self) -> None:
        self.mail_from = None
        self.rcpts = []
        self.fates = []

    def _mail(self, line: bytes) -> bytes:
        beh = self.beh
        if not self.ehlo or self.mail_from is not None:
            return rp.R_BAD_SEQ
        addr = _addr(line[10:] if line[:10].upper() == b"MAIL FROM:" else b"")
        if addr is None:
            return rp.R_SYNTAX
        if beh.garbage:
            self.mode = _CLOSED
            return rp.R_GARBAGE
        if beh.max_msgs_per_conn and self.nmsg >= beh.max_msgs_per_conn:
            self.mode = _CLOSED
            return rp.R_TOO_MANY_MSG
        if beh.block or (beh.block_ips and self.peer_ip in beh.block_ips):
            self.srv.stats.replies["550 5.7.1"] += 1
            self._by_source("550 5.7.1")
            return rp.R_BLOCK % self.peer_ip.encode()
        if beh.transient_421_every:
            self.pstate.mails += 1
            if self.pstate.mails % beh.transient_421_every == 0:
                self.srv.stats.replies["421 4.3.0"] += 1
                self.mode = _CLOSED
                return rp.R_TRANSIENT_421
        if beh.reputation:
            rep = self.pstate.rep
            if rep is None:
                from fastmta.sim.reputation import Reputation

                rep = self.pstate.rep = Reputation(beh, self.srv.clock)
            refusal = rep.check(self.peer_ip, time.monotonic())
            if refusal is not None:
                key = _key(refusal)
                self.srv.stats.replies[key] += 1
                self._by_source(key)
                self.mode = _CLOSED
                return refusal
        if beh.max_msgs_per_min_per_ip:
            q = self.pstate.rate.setdefault(self.peer_ip, deque())
            now = time.monotonic()
            while q and q[0] < now - beh.rate_window_s:
                q.popleft()
            if len(q) >= beh.max_msgs_per_min_per_ip:
                self.srv.stats.replies["421 4.7.28"] += 1
                self.mode = _CLOSED
                return rp.R_RATE % self.peer_ip.encode()
            q.append(now)
        if beh.max_size and b"SIZE=" in line.upper():
            try:
                size = int(line.upper().split(b"SIZE=")[1].split()[0])
            except (ValueError, IndexError):
                return rp.R_SYNTAX
            if size > beh.max_size:
                return rp.R_TOO_BIG
        self.mail_from = addr
        return rp.R_MAIL_OK

    def _rcpt(self, line: bytes) -> bytes:
        if self.mail_from is None:
            return rp.R_BAD_SEQ
        addr = _addr(line[8:] if line[:8].upper() == b"RCPT TO:" else b"")
        if not addr:
            return rp.R_SYNTAX
        beh = self.beh
        if beh.max_rcpts_per_txn and len(self.rcpts) >= beh.max_rcpts_per_txn:
            return self._refusal(rp.R_TOO_MANY_RCPT)
        if beh.rcpt_reply:  # a fixed refusal text (tests: hostile reply texts)
            return self._refusal(beh.rcpt_reply.encode("utf-8", "replace") + b"\r\n")
        fate = rcpt_fate(beh, addr)
        if fate is None or fate == "disconnect":
            pass
        elif fate == "odd_refusal":
            return self._refusal(odd_reply(REFUSALS, self.pname, addr))
        elif fate == "odd_deferral":
            now = time.monotonic()
            if now - self.pstate.greylist.setdefault(("odd", addr.lower()), now) < beh.odd_defer_s:
                return self._refusal(odd_reply(DEFERRALS, self.pname, addr))
        elif fate == "unknown":
            return self._refusal(rp.R_UNKNOWN)
        elif fate == "full":
            return self._refusal(rp.R_FULL)
        elif fate == "disabled":
            return self._refusal(rp.R_DISABLED)
        elif fate == "tempfail":
            return self._refusal(rp.R_TEMPFAIL)
        elif fate == "odd":
            return self._refusal(magic_odd_reply(addr))
        if fate == "greylist" or beh.greylist_s:
            delay = beh.greylist_s or self.srv.world.spec.greylist_default_s
            key = (self.peer_ip, self.mail_from, addr.lower())
            now = time.monotonic()
            first = self.pstate.greylist.setdefault(key, now)
            if now - first < delay:
                return self._refusal(rp.R_GREY % max(1, int(delay - (now - first) + 0.999)))
        if beh.max_msgs_per_rcpt:
            q = self.pstate.rcpt_rate.setdefault(addr.lower(), deque())
            now = time.monotonic()
            while q and q[0] < now - beh.rate_window_s:
                q.popleft()
            if len(q) >= beh.max_msgs_per_rcpt:
                return self._refusal(rp.R_RCPT_RATE)
            q.append(now)
        self.rcpts.append(addr)
        self.fates.append(fate)
        return rp.R_RCPT_OK

    def _refusal(self, reply: bytes) -> bytes:
        self.srv.stats.replies[_key(reply)] += 1
        return reply

    def _data(self) -> bytes:
        if self.mail_from is None:
            return rp.R_BAD_SEQ
        if not self.rcpts:
            return rp.R_NO_VALID_RCPT
        self.mode = _DATA
        return rp.R_DATA

    def _bdat(self, line: bytes) -> bytes | None:
        """BDAT n [LAST] (RFC 3030): the reply comes after the n octets are read."""
        parts = line.split()
        try:
            n = int(parts[1])
            if n < 0:
                raise ValueError
        except (IndexError, ValueError):
            return rp.R_SYNTAX
        last = len(parts) > 2 and parts[2].upper() == b"LAST"
        self.bdat_left = n
        self.bdat_size = n
        self.bdat_last = last
        if not self.beh.chunking:
            self.bdat_bad = rp.R_UNRECOGNISED
        elif self.mail_from is None:
            self.bdat_bad = rp.R_BAD_SEQ
        elif not self.rcpts:
            self.bdat_bad = rp.R_NO_VALID_RCPT
        else:
            self.bdat_bad = None
        self.mode = _BDAT
        if n == 0:  # no octets to wait for
            self.mode = _CMD
            return self._bdat_done()
        return None

    def _bdat_done(self) -> bytes:
        bad = self.bdat_bad
        if bad is not None:
            self.bdat_bad = None
            self.chunks = []
            if self.mail_from is not None:  # a refused chunk ends the transaction
                self._reset()
            return self._refusal(bad)
        if not self.bdat_last:
            return b"250 2.0.0 %d octets received\r\n" % self.bdat_size
        body = b"".join(self.chunks)
        self.chunks = []
        return self._message(body)

    def _message(self, body: bytes) -> bytes:
        srv = self.srv
        st = srv.stats
        st.messages += 1
        acc = st.accepted
        get = acc.get
        for r in self.rcpts:
            acc[r] = get(r, 0) + 1  # (Counter's += calls __missing__ in Python)
        rep = self.pstate.rep
        day = rep.accepted(self.peer_ip, len(self.rcpts)) if rep is not None else 0
        name = self.prov.name if self.prov else ""
        st.by_source[f"{name}\t{self.peer_ip}\t{day}"] += len(self.rcpts)
        if self.beh.keep_messages or srv.keep_messages:
            st.kept.append((self.mail_from or "", list(self.rcpts), body))
        self.nmsg += 1
        self._reset()
        srv.queue_id += 1
        return rp.R_QUEUED % srv.queue_id

    # -------------------------------------------------------------- STARTTLS
    async def _starttls(self) -> None:
        loop = asyncio.get_running_loop()
        tr = self.tr
        try:
            new_tr = await loop.start_tls(tr, self, self.srv.tls_context, server_side=True,
                                          ssl_handshake_timeout=10.0)
        except (OSError, ssl.SSLError, ConnectionError, TimeoutError, RuntimeError):
            if tr is not None:
                tr.abort()
            return
        if new_tr is None:
            return
        self.tr = new_tr
        self.tls = True
        self.ehlo = False
        self._reset()
        self.mode = _CMD
        if self.buf:
            self.data_received(b"")
