"""Authenticating to a smarthost relay on an open ``transport.Connection`` (RFC 4954).

The exchange itself is sans-IO (``smtp.auth`` + ``ClientProtocol.auth``); this drives it
on the connection after EHLO/STARTTLS.  Raises ``ConnectFailed("auth", ...)``.
"""

from __future__ import annotations

from fastmta.classify.outcome import classify_reply, local
from fastmta.errors import LocalProtocolError
from fastmta.smtp.auth import AuthExchange, check_auth_allowed, choose
from fastmta.smtp.messages import AuthReply
from fastmta.smtp.transport import ConnectFailed


async def authenticate(conn, user: str, password: str, mechanism: str = "", *,
                       allow_plaintext_loopback: bool = False) -> str:
    """AUTH on ``conn``; returns the mechanism used."""
    try:
        check_auth_allowed(conn.tls_active, conn.peer[0], allow_plaintext_loopback)
        mech = choose(conn.capabilities, mechanism)
        ex = AuthExchange(mech, user, password)
    except LocalProtocolError as exc:
        conn.abort()
        reply, c = local("auth_failed", "auth", str(exc))
        raise ConnectFailed("auth", reply, c) from None
    line = ex.first()
    while True:
        conn.proto.auth(line)
        conn._flush()
        ev = await conn._next_control()
        if not isinstance(ev, AuthReply):
            conn._fail_from(ev, "auth")
        if ev.reply.code == 334:
            try:
                line = ex.next(ev.reply)
            except LocalProtocolError as exc:
                conn.abort()
                reply, c = local("auth_failed", "auth", str(exc))
                raise ConnectFailed("auth", reply, c) from None
            continue
        if ev.ok:
            return mech
        conn._quit_nowait()
        raise ConnectFailed("auth", ev.reply, classify_reply(ev.reply))
