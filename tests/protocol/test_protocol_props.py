"""Property tests of the sans-IO client: garbage never raises; pipelined and lock-step
dialogues give the same per-recipient results against the same server decisions."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fastmta.smtp.messages import ConnectionFailed, Envelope, State, TransactionDone
from fastmta.smtp.protocol import ClientProtocol

CAPS_PIPE = b"250-mx.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
CAPS_PLAIN = b"250-mx.test\r\n250 8BITMIME\r\n"
CAPS_CHUNK = b"250-mx.test\r\n250-PIPELINING\r\n250 CHUNKING\r\n"


def ready(caps: bytes) -> ClientProtocol:
    p = ClientProtocol(chunking=True)
    p.receive_data(b"220 mx.test\r\n")
    p.ehlo("me.test")
    p.data_to_send()
    p.receive_data(caps)
    return p


@settings(max_examples=300, deadline=None)
@given(chunks=st.lists(st.binary(max_size=40), max_size=12), pipelined=st.booleans(),
       nrcpt=st.integers(1, 4))
def test_garbage_never_raises_and_everything_completes(chunks, pipelined, nrcpt):
    p = ready(CAPS_PIPE if pipelined else CAPS_PLAIN)
    results = [p.send(Envelope("s@a.test", [f"r{i}@b.test" for i in range(nrcpt)], b"x"))
               for _ in range(2)]
    done = set()
    for c in chunks:
        for ev in p.receive_data(c):
            if isinstance(ev, TransactionDone):
                done.add(id(ev.result))
        p.data_to_send()
    for ev in p.connection_lost():
        if isinstance(ev, TransactionDone):
            done.add(id(ev.result))
    assert p.state == State.BROKEN
    # every queued transaction completed exactly once, each rcpt has a classified outcome
    assert done == {id(r) for r in results}
    for r in results:
        assert len(r.outcomes) == nrcpt
        assert all(reply is not None and cls.type in ("none", "soft", "hard", "ignored")
                   for _, reply, cls in r.outcomes)


class ScriptedServer:
    """In-memory server: answers MAIL/RCPT/DATA/dot/RSET from per-transaction decisions."""

    def __init__(self, decisions):
        self.decisions = list(decisions)  # per txn: (mail, [rcpt...], dot)
        self.buf = b""
        self.in_data = False
        self.cur = None
        self.rcpt_i = 0
        self.accepted_any = False

    def feed(self, data: bytes) -> bytes:
        self.buf += data
        out = b""
        while True:
            if self.in_data:
                end = self.buf.find(b"\r\n.\r\n")
                if self.buf.startswith(b".\r\n"):
                    end, skip = -2, 3
                elif end < 0:
                    return out
                else:
                    skip = end + 5
                self.buf = self.buf[skip:]
                self.in_data = False
                out += b"%d dot\r\n" % (self.cur[2] if self.accepted_any else 554)
                self.cur = None
                continue
            eol = self.buf.find(b"\r\n")
            if eol < 0:
                return out
            line, self.buf = self.buf[:eol], self.buf[eol + 2 :]
            verb = line[:4]
            if verb == b"BDAT":
                n = int(line.split()[1])
                if len(self.buf) < n:  # the test feeds whole writes: never split
                    raise AssertionError("BDAT chunk split")
                self.buf = self.buf[n:]
                if self.cur is None or self.cur[0] >= 300:
                    out += b"503 need MAIL\r\n"
                elif not self.accepted_any:
                    out += b"554 no valid recipients\r\n"
                else:
                    out += b"%d dot\r\n" % self.cur[2]
                self.cur = None
                continue
            if verb == b"MAIL":
                self.cur = self.decisions.pop(0)
                self.rcpt_i = 0
                self.accepted_any = False
                out += b"%d mail\r\n" % self.cur[0]
            elif verb == b"RCPT":
                code = self.cur[1][self.rcpt_i] if self.cur[0] < 300 else 503
                self.rcpt_i += 1
                self.accepted_any |= code < 300
                out += b"%d rcpt\r\n" % code
            elif verb == b"DATA":
                if self.cur is None or self.cur[0] >= 300 or not self.accepted_any:
                    out += b"554 no valid recipients\r\n"
                    self.cur = None
                else:
                    out += b"354 go\r\n"
                    self.in_data = True
            elif verb == b"RSET":
                out += b"250 reset\r\n"
                self.cur = None
            else:
                out += b"500 what\r\n"


codes_ok = st.sampled_from([250, 250, 250, 251])
codes_any = st.sampled_from([250, 250, 450, 451, 452, 550, 551, 553])
txn_strategy = st.tuples(
    st.sampled_from([250, 250, 250, 451, 550]),
    st.lists(codes_any, min_size=1, max_size=4),
    st.sampled_from([250, 250, 451, 554]),
)


def run_dialogue(mode: str, decisions) -> list:
    p = ready({"pipelined": CAPS_PIPE, "lockstep": CAPS_PLAIN, "bdat": CAPS_CHUNK}[mode])
    assert p.chunking is (mode == "bdat")
    server = ScriptedServer(decisions)
    results = [p.send(Envelope("s@a.test", [f"r{i}@b.test" for i in range(len(d[1]))], b"m"))
               for d in decisions]
    for _ in range(200):
        out = p.data_to_send()
        if not out:
            break
        for ev in p.receive_data(server.feed(out)):
            assert not isinstance(ev, ConnectionFailed)
    assert p.idle
    return [[(reply.code, reply.command) for _, reply, _ in r.outcomes] for r in results]


@settings(max_examples=200, deadline=None)
@given(decisions=st.lists(txn_strategy, min_size=1, max_size=5))
def test_pipelined_lockstep_and_bdat_agree(decisions):
    a = run_dialogue("pipelined", decisions)
    b = run_dialogue("lockstep", decisions)
    c = run_dialogue("bdat", decisions)
    assert a == b == c
    for (mail, rcpts, dot), outcome in zip(decisions, a, strict=True):
        for code_rcpt, (code, cmd) in zip(rcpts, outcome, strict=True):
            if mail >= 300:
                assert (code, cmd) == (mail, "mail")
            elif code_rcpt >= 300:
                assert (code, cmd) == (code_rcpt, "rcpt")
            else:
                assert (code, cmd) == (dot, "dot")
