"""Sans-IO dialogues: server bytes in, events and client bytes out (no sockets)."""

from __future__ import annotations

import pytest

from fastmta.errors import LocalProtocolError
from fastmta.smtp.messages import (
    ConnectionFailed,
    Envelope,
    Greeting,
    Hello,
    QuitDone,
    ServiceClosing,
    StartTls,
    State,
    TransactionDone,
    prepare_body,
)
from fastmta.smtp.protocol import ClientProtocol

EHLO_PIPE = b"250-mx.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n"
EHLO_PLAIN = b"250-mx.test\r\n250 8BITMIME\r\n"


def ready(ehlo: bytes = EHLO_PIPE) -> ClientProtocol:
    p = ClientProtocol()
    [ev] = p.receive_data(b"220 mx.test ESMTP\r\n")
    assert isinstance(ev, Greeting) and ev.ok
    p.ehlo("client.test")
    assert p.data_to_send() == b"EHLO client.test\r\n"
    [ev] = p.receive_data(ehlo)
    assert isinstance(ev, Hello) and ev.ok
    assert p.state == State.READY
    return p


def feed(p: ClientProtocol, data: bytes, split: str) -> list:
    """Feed whole, byte by byte, or in two halves (h11-style split points)."""
    if split == "whole":
        return p.receive_data(data)
    if split == "bytes":
        out = []
        for i in range(len(data)):
            out += p.receive_data(data[i : i + 1])
        return out
    mid = len(data) // 2
    return p.receive_data(data[:mid]) + p.receive_data(data[mid:])


SPLITS = ["whole", "bytes", "halves"]


def test_capabilities_parsed():
    p = ready()
    c = p.capabilities
    assert c.esmtp and c.pipelining and c.size == 1000 and c.eightbitmime and c.smtputf8
    assert not c.starttls and not c.chunking


def test_ehlo_refused_falls_back_to_helo():
    p = ClientProtocol()
    p.receive_data(b"220 old.test\r\n")
    p.ehlo("me.test")
    p.data_to_send()
    assert p.receive_data(b"502 5.5.2 command not recognized\r\n") == []
    assert p.data_to_send() == b"HELO me.test\r\n"
    [ev] = p.receive_data(b"250 old.test\r\n")
    assert isinstance(ev, Hello) and ev.ok and not ev.capabilities.esmtp
    assert not p.pipelining


@pytest.mark.parametrize("split", SPLITS)
def test_pipelined_transaction_mixed_rcpt_results(split):
    p = ready()
    res = p.send(Envelope("s@a.test", ["ok@b.test", "bad@b.test", "ok2@b.test"], b"hi\n"))
    assert p.data_to_send() == (
        b"MAIL FROM:<s@a.test> SIZE=4\r\nRCPT TO:<ok@b.test>\r\nRCPT TO:<bad@b.test>\r\n"
        b"RCPT TO:<ok2@b.test>\r\nDATA\r\n")
    ev = feed(p, b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n550-5.1.1 no such\r\n550 5.1.1 user\r\n"
                 b"250 2.1.5 ok\r\n354 go\r\n", split)
    assert ev == []
    assert p.data_to_send() == b"hi\r\n.\r\n"
    [ev] = feed(p, b"250 2.0.0 queued as X\r\n", split)
    assert isinstance(ev, TransactionDone) and ev.result is res
    assert res.accepted == ["ok@b.test", "ok2@b.test"]
    assert [r.code for r in res.rcpt_replies] == [250, 550, 250]
    assert res.rcpt_replies[1].command == "rcpt" and res.data_reply.command == "dot"
    outcomes = {r: (rep.code, c.type) for r, rep, c in res.outcomes}
    assert outcomes == {"ok@b.test": (250, "none"), "bad@b.test": (550, "hard"),
                        "ok2@b.test": (250, "none")}
    assert p.idle and p.messages_sent == 1


def test_lockstep_without_pipelining():
    p = ready(EHLO_PLAIN)
    res = p.send(Envelope("s@a.test", ["a@b.test", "c@b.test"], b"x"))
    assert p.data_to_send() == b"MAIL FROM:<s@a.test>\r\n"
    p.receive_data(b"250 ok\r\n")
    assert p.data_to_send() == b"RCPT TO:<a@b.test>\r\n"
    p.receive_data(b"451 4.3.0 try later\r\n")
    assert p.data_to_send() == b"RCPT TO:<c@b.test>\r\n"
    p.receive_data(b"250 ok\r\n")
    assert p.data_to_send() == b"DATA\r\n"
    p.receive_data(b"354 go\r\n")
    assert p.data_to_send() == b"x\r\n.\r\n"
    [ev] = p.receive_data(b"250 ok\r\n")
    assert res.accepted == ["c@b.test"]
    assert res.outcomes[0][2].type == "soft"


def test_all_rcpts_refused_sends_rset_and_next_transaction_follows():
    p = ready()
    r1 = p.send(Envelope("s@a.test", ["x@b.test"], b"one"))
    r2 = p.send(Envelope("s@a.test", ["y@b.test"], b"two"))
    p.data_to_send()
    events = p.receive_data(b"250 ok\r\n550 5.1.1 unknown\r\n554 5.5.1 no valid recipients\r\n")
    assert [type(e) for e in events] == [TransactionDone]
    # RSET and the queued transaction are pipelined together
    assert p.data_to_send() == (b"RSET\r\nMAIL FROM:<s@a.test> SIZE=5\r\nRCPT TO:<y@b.test>\r\n"
                                b"DATA\r\n")
    ev = p.receive_data(b"250 reset\r\n250 ok\r\n250 ok\r\n354 go\r\n")
    assert ev == []  # our own RSET produces no event
    assert p.data_to_send() == b"two\r\n.\r\n"
    p.receive_data(b"250 ok\r\n")
    assert not r1.ok and r1.data_reply.code == 554
    assert r2.accepted == ["y@b.test"]


def test_354_without_accepted_rcpt_sends_empty_message_then_rset():
    p = ready()
    res = p.send(Envelope("s@a.test", ["x@b.test"], b"body"))
    p.data_to_send()
    assert p.receive_data(b"250 ok\r\n550 5.1.1 no\r\n354 go\r\n") == []
    assert p.data_to_send() == b".\r\n"
    [ev] = p.receive_data(b"554 no valid recipients\r\n")
    assert isinstance(ev, TransactionDone) and res.accepted == []
    assert p.data_to_send() == b"RSET\r\n"
    assert res.outcomes[0][1].code == 550


def test_next_mail_pipelined_behind_the_dot():
    p = ready()
    envs = [Envelope("s@a.test", [f"r{i}@b.test"], b"m%d" % i) for i in range(3)]
    results = [p.send(e) for e in envs]
    out = p.data_to_send()
    assert out.count(b"MAIL FROM") == 1  # DATA ends a group
    p.receive_data(b"250 ok\r\n250 ok\r\n354 go\r\n")
    out = p.data_to_send()
    assert out.startswith(b"m0\r\n.\r\nMAIL FROM:<s@a.test>")
    p.receive_data(b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n")
    assert p.data_to_send().startswith(b"m1\r\n.\r\nMAIL")
    p.receive_data(b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n")
    assert p.data_to_send() == b"m2\r\n.\r\n"
    p.receive_data(b"250 ok\r\n")
    assert all(r.ok for r in results) and p.messages_sent == 3 and p.idle


def test_mail_refused_lockstep_no_rcpt_no_rset():
    p = ready(EHLO_PLAIN)
    res = p.send(Envelope("s@a.test", ["a@b.test", "c@b.test"], b"x"))
    p.data_to_send()
    [ev] = p.receive_data(b"550 5.7.1 sender blocked\r\n")
    assert p.data_to_send() == b""
    assert [o[1].code for o in res.outcomes] == [550, 550]
    assert all(o[1].command == "mail" for o in res.outcomes)
    assert p.idle


def test_421_mid_pipeline_answers_everything_and_closes():
    p = ready()
    res = p.send(Envelope("s@a.test", ["a@b.test", "c@b.test"], b"x"))
    p.data_to_send()
    events = p.receive_data(b"250 ok\r\n421 4.7.0 too many connections\r\n")
    assert [type(e) for e in events] == [TransactionDone, ServiceClosing]
    assert [o[1].code for o in res.outcomes] == [421, 421]
    assert res.outcomes[1][1].command == "rcpt"
    assert p.state == State.CLOSED and p.data_to_send() == b""
    assert p.connection_lost() == []


@pytest.mark.parametrize("garbage", [b"HTTP/1.1 400 Bad Request\r\n", b"25\r\n",
                                     b"250-ok\r\n550 changed\r\n"])
def test_garbage_reply_fails_softly(garbage):
    p = ready()
    res = p.send(Envelope("s@a.test", ["a@b.test"], b"x"))
    p.data_to_send()
    events = p.receive_data(garbage)
    assert isinstance(events[-1], ConnectionFailed) and events[-1].kind == "protocol_error"
    assert isinstance(events[0], TransactionDone)
    [(rcpt, reply, cls)] = res.outcomes
    assert cls.type == "soft" and cls.reason == "not_connected"
    assert p.state == State.BROKEN


def test_oversize_reply_is_a_protocol_error():
    p = ClientProtocol(max_line=100, max_reply=300)
    p.receive_data(b"220 x\r\n")
    p.ehlo("me.test")
    events = p.receive_data(b"250-" + b"x" * 90 + b"\r\n" * 1 + (b"250-" + b"y" * 90 + b"\r\n") * 5)
    assert isinstance(events[-1], ConnectionFailed)
    assert "longer" in events[-1].detail


def test_connection_lost_after_body_is_unknown_fate():
    p = ready()
    res = p.send(Envelope("s@a.test", ["a@b.test", "z@b.test"], b"x"))
    p.data_to_send()
    p.receive_data(b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n")
    p.data_to_send()
    events = p.connection_lost("connection_lost", "reset by peer")
    assert [type(e) for e in events] == [TransactionDone, ConnectionFailed]
    assert res.unknown_fate and not res.ok
    assert all(c.reason == "not_connected" and c.type == "soft" for _, _, c in res.outcomes)


def test_connection_lost_before_data_is_not_unknown_fate_and_queue_completes():
    p = ready()
    r1 = p.send(Envelope("s@a.test", ["a@b.test"], b"x"))
    r2 = p.send(Envelope("s@a.test", ["b@b.test"], b"y"))
    p.data_to_send()
    events = p.connection_lost("timeout", "no reply")
    assert sum(isinstance(e, TransactionDone) for e in events) == 2
    assert not r1.unknown_fate and not r2.unknown_fate
    assert r2.outcomes[0][2].reason == "not_connected"


def test_unsolicited_421_while_idle():
    p = ready()
    [ev] = p.receive_data(b"421 4.4.2 idle timeout, closing\r\n")
    assert isinstance(ev, ServiceClosing) and p.state == State.CLOSED
    with pytest.raises(LocalProtocolError):
        p.send(Envelope("s@a.test", ["a@b.test"], b"x"))


def test_greeting_421_closes():
    p = ClientProtocol()
    [ev, closing] = p.receive_data(b"421 4.7.0 too busy\r\n")
    assert isinstance(ev, Greeting) and not ev.ok and isinstance(closing, ServiceClosing)
    assert p.state == State.CLOSED


def test_starttls_and_injection_refused():
    p = ready(b"250-mx.test\r\n250 STARTTLS\r\n")
    assert p.capabilities.starttls
    p.starttls()
    assert p.data_to_send() == b"STARTTLS\r\n"
    [ev] = p.receive_data(b"220 go ahead\r\n")
    assert isinstance(ev, StartTls) and ev.ok and p.state == State.TLS
    p.tls_established()
    assert p.state == State.GREETED and not p.capabilities.esmtp
    p.ehlo("me.test")
    assert p.data_to_send() == b"EHLO me.test\r\n"

    q = ready(b"250-mx.test\r\n250 STARTTLS\r\n")
    q.starttls()
    events = q.receive_data(b"220 go ahead\r\n250 injected\r\n")
    assert isinstance(events[-1], ConnectionFailed)


def test_starttls_refused_keeps_plain_connection():
    p = ready(b"250-mx.test\r\n250 STARTTLS\r\n")
    p.starttls()
    assert p.data_to_send() == b"STARTTLS\r\n"  # a reply answers only a command sent
    [ev] = p.receive_data(b"454 4.7.0 TLS not available\r\n")
    assert not ev.ok and p.state == State.READY


@pytest.mark.parametrize("bad", ["a\r\n@b", "a\n@b", "a\x00@b", "a\r@b", "a>@b"])
def test_control_characters_refused_locally(bad):
    with pytest.raises(LocalProtocolError):
        Envelope(bad, ["x@y.test"], b"m")
    with pytest.raises(LocalProtocolError):
        Envelope("s@a.test", ["x@y.test", bad], b"m")


def test_over_long_address_refused():
    with pytest.raises(LocalProtocolError):
        Envelope("s@a.test", ["x" * 990 + "@b.test"], b"m")


def test_wrong_types_refused():
    with pytest.raises(LocalProtocolError, match="bytes"):
        Envelope("s@a.test", ["x@y.test"], "a str body")
    with pytest.raises(LocalProtocolError, match="list"):
        Envelope("s@a.test", "x@y.test", b"m")


def test_empty_recipient_list_refused():
    with pytest.raises(LocalProtocolError):
        Envelope("s@a.test", [], b"m")


def test_size_and_smtputf8_refused_locally_without_bytes():
    p = ready(b"250-mx.test\r\n250-PIPELINING\r\n250 SIZE 10\r\n")
    res = p.send(Envelope("s@a.test", ["a@b.test"], b"x" * 100))
    [ev] = p.pending_events()
    assert isinstance(ev, TransactionDone) and ev.result is res
    assert res.outcomes[0][2].bounce_class == 23 and res.outcomes[0][1].code == 552
    res2 = p.send(Envelope("s@a.test", ["jos\u00e9@b.test"], b"x"))
    assert res2.outcomes[0][1].enhanced == "5.6.7"
    assert p.data_to_send() == b""


def test_mail_parameters():
    p = ready()
    p.send(Envelope("s@a.test", ["\u00e9@b.test"], "caf\u00e9".encode()))
    out = p.data_to_send()
    assert out.startswith("MAIL FROM:<s@a.test> SIZE=7 BODY=8BITMIME SMTPUTF8\r\nRCPT TO:<\u00e9@b.test>"
                          .encode())


def test_quit():
    p = ready()
    p.quit()
    assert p.data_to_send() == b"QUIT\r\n"
    [ev] = p.receive_data(b"221 bye\r\n")
    assert isinstance(ev, QuitDone) and p.state == State.CLOSED


@pytest.mark.parametrize("body,wire", [
    (b"a\nb\n", b"a\r\nb\r\n.\r\n"),
    (b"a\r\nb", b"a\r\nb\r\n.\r\n"),
    (b".start\n.\n..x\n", b"..start\r\n..\r\n...x\r\n.\r\n"),
    (b"bare\rcr\r\n", b"bare\r\ncr\r\n.\r\n"),
    (b"", b".\r\n"),
    (b"x\r\n.\r\ny", b"x\r\n..\r\ny\r\n.\r\n"),
])
def test_prepare_body(body, wire):
    assert prepare_body(body) == wire


EHLO_CHUNKING = b"250-mx.test\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 SIZE 0\r\n"


def test_bdat_pipelines_whole_transactions():
    p = ClientProtocol(chunking=True)
    p.receive_data(b"220 mx.test\r\n")
    p.ehlo("me.test")
    p.data_to_send()
    p.receive_data(EHLO_CHUNKING)
    assert p.chunking
    results = [p.send(Envelope("s@a.test", [f"r{i}@b.test", "x@b.test"], b".dot\nline %d" % i))
               for i in range(3)]
    out = p.data_to_send()
    # every transaction in one write; no dot-stuffing; RSET before the 2nd and 3rd
    assert out == (
        b"MAIL FROM:<s@a.test> SIZE=14\r\nRCPT TO:<r0@b.test>\r\nRCPT TO:<x@b.test>\r\n"
        b"BDAT 14 LAST\r\n.dot\r\nline 0\r\n"
        b"RSET\r\nMAIL FROM:<s@a.test> SIZE=14\r\nRCPT TO:<r1@b.test>\r\nRCPT TO:<x@b.test>\r\n"
        b"BDAT 14 LAST\r\n.dot\r\nline 1\r\n"
        b"RSET\r\nMAIL FROM:<s@a.test> SIZE=14\r\nRCPT TO:<r2@b.test>\r\nRCPT TO:<x@b.test>\r\n"
        b"BDAT 14 LAST\r\n.dot\r\nline 2\r\n")
    events = p.receive_data(
        b"250 ok\r\n250 ok\r\n550 5.1.1 unknown\r\n250 2.0.0 queued A\r\n"
        b"250 reset\r\n250 ok\r\n550 5.1.1 no\r\n550 5.1.1 no\r\n554 5.5.1 no valid rcpt\r\n"
        b"250 reset\r\n550 5.7.1 blocked\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n"
        b"503 5.5.1 need MAIL\r\n")
    assert [type(e) for e in events] == [TransactionDone] * 3
    assert p.data_to_send() == b""  # RSETs already in place, nothing else to say
    assert results[0].accepted == ["r0@b.test"] and results[0].data_reply.command == "dot"
    assert [o[1].code for o in results[1].outcomes] == [550, 550]
    assert [(o[1].code, o[1].command) for o in results[2].outcomes] == [(550, "mail")] * 2
    assert p.idle and p.messages_sent == 1


def test_bdat_not_used_without_pipelining_or_when_disabled():
    for ehlo, chunking in [(b"250-mx.test\r\n250 CHUNKING\r\n", True), (EHLO_CHUNKING, False)]:
        p = ClientProtocol(chunking=chunking)
        p.receive_data(b"220 mx.test\r\n")
        p.ehlo("me.test")
        p.data_to_send()
        p.receive_data(ehlo)
        p.send(Envelope("s@a.test", ["r@b.test"], b"x"))
        assert b"BDAT" not in p.data_to_send()


def test_bdat_connection_lost_is_unknown_fate():
    p = ClientProtocol(chunking=True)
    p.receive_data(b"220 mx.test\r\n")
    p.ehlo("me.test")
    p.data_to_send()
    p.receive_data(EHLO_CHUNKING)
    r = p.send(Envelope("s@a.test", ["r@b.test"], b"x"))
    p.data_to_send()
    p.receive_data(b"250 ok\r\n250 ok\r\n")
    p.connection_lost()
    assert r.unknown_fate and r.outcomes[0][2].reason == "not_connected"
