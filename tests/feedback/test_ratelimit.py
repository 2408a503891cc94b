"""Per-client rate limits of the inbound listener: the pure token buckets, then the
listener on real sockets (421 4.7.0 beyond the rate, other clients unaffected)."""

from __future__ import annotations

import asyncio
import smtplib

import pytest
from fbhelpers import feedback_config, original, rid_of, sent_delivery, tokens_for

from fastmta.config import load_config
from fastmta.errors import ConfigError
from fastmta.feedback.listener import InboundServer
from fastmta.feedback.ratelimit import Buckets
from fastmta.records import Status
from fastmta.sim.feedback import build_dsn


def test_buckets_burst_then_rate():
    b = Buckets(2.0, 3.0)
    assert [b.allow("a", 0.0) for _ in range(4)] == [True, True, True, False]
    assert b.retry_after("a") == pytest.approx(0.5)
    assert b.allow("b", 0.0)  # another client has its own bucket
    assert not b.allow("a", 0.4)  # 0.8 token
    assert b.allow("a", 0.55)  # refilled to >= 1
    assert not b.allow("a", 0.56)
    assert b.allow("a", 100.0) and b.allow("a", 100.0)  # refill capped at the burst (3)
    assert b.allow("a", 100.0) and not b.allow("a", 100.0)


def test_buckets_off_and_bounded():
    off = Buckets(0.0)
    assert not off.enabled and all(off.allow("x", 0.0) for _ in range(10_000))
    b = Buckets(1.0, 1.0, max_clients=100)
    for i in range(1000):
        b.allow(f"10.0.{i // 256}.{i % 256}", float(i))
    assert len(b) <= 100
    with pytest.raises(ValueError):
        Buckets(-1.0)


def test_config_rejects_negative_rates(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[feedback]\nmax_messages_per_s_per_ip = -1\n")
    with pytest.raises(ConfigError, match="max_messages_per_s_per_ip"):
        load_config(p)


def _session(port: int, host: str, mail_from: str, rcpt: str, raw: bytes, n: int):
    """``n`` messages over one connection from ``host``; the replies or the 421."""
    out = []
    with smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=(host, 0)) as s:
        s.ehlo("client.test")
        for _ in range(n):
            try:
                s.sendmail(mail_from, [rcpt], raw)
                out.append(250)
            except smtplib.SMTPSenderRefused as exc:
                out.append(exc.smtp_code)
                break
            except smtplib.SMTPServerDisconnected:
                out.append("closed")
                break
    return out


def _connect(port: int, host: str) -> tuple[int, bytes]:
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=(host, 0)) as s:
            return s.noop()
    except smtplib.SMTPConnectError as exc:
        return exc.smtp_code, exc.smtp_error


@pytest.mark.timeout(60)
def test_listener_message_and_connection_rates_per_client(tmp_path):
    sp, did, items = sent_delivery(str(tmp_path / "s"), 2)
    tok = tokens_for(sp)
    # a slow refill (0.01/s) so that the test does not depend on its own speed
    cfg = feedback_config(max_messages_per_s_per_ip=0.01, messages_burst_per_ip=3,
                          max_connections_per_s_per_ip=0.01, connections_burst_per_ip=4)

    async def go():
        srv = InboundServer(cfg, sp)
        _, port = await srv.start("127.0.0.1", 0)
        try:
            it = items[0]
            rid = rid_of(it)
            rp = tok.return_path(tok.token(did, rid))
            raw = build_dsn(it.email, rp, original(tok, did, rid, it.email))
            # client 127.0.0.1: 3 messages (the burst), the 4th gets 421 4.7.0
            got = await asyncio.to_thread(_session, port, "127.0.0.1", "", rp, raw, 5)
            assert got == [250, 250, 250, 421]
            assert srv.stats["rate_limited_messages"] == 1
            assert sp.recipient(did, rid).status == Status.FAILED  # the accepted one applied
            # another client address is not affected by the first one's budget
            it2 = items[1]
            rid2 = rid_of(it2)
            rp2 = tok.return_path(tok.token(did, rid2))
            raw2 = build_dsn(it2.email, rp2, original(tok, did, rid2, it2.email))
            got = await asyncio.to_thread(_session, port, "127.0.0.2", "", rp2, raw2, 1)
            assert got == [250]
            assert sp.recipient(did, rid2).status == Status.FAILED
            # connections: 127.0.0.1 has used 1 of its 4; 3 more, then 421 at connect
            replies = [await asyncio.to_thread(_connect, port, "127.0.0.1") for _ in range(4)]
            assert [c for c, _ in replies[:3]] == [250, 250, 250]
            assert replies[3][0] == 421 and replies[3][1].startswith(b"4.7.0")
            assert srv.stats["rate_limited_connections"] == 1
            assert (await asyncio.to_thread(_connect, port, "127.0.0.3"))[0] == 250
        finally:
            await srv.close()

    asyncio.run(asyncio.wait_for(go(), 50))
