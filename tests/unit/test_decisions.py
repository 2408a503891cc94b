"""engine/decisions.py: the reply -> engine decision table, on real classifications."""

from __future__ import annotations

import pytest

from fastmta import core
from fastmta.classify.outcome import local
from fastmta.engine.decisions import decide, decide_connect

# (reply, command) -> (decision, close, shaper kind)
TABLE = [
    ("250 2.1.5 OK", "rcpt", ("sent", False, "")),
    # recipient scope: only this recipient waits
    ("450-4.2.1 The user you are trying to contact is receiving mail too quickly. Please "
     "resend your message at a later time.", "rcpt", ("defer_recipient", False, "")),
    ("451 4.7.1 Too many messages for this recipient, try again later", "rcpt",
     ("defer_recipient", False, "")),
    # sender scope: the site's adaptive limits
    ("421 4.7.28 Our system has detected an unusual rate of unsolicited mail originating "
     "from your IP address", "mail", ("throttle", True, "rate")),
    ("421 4.3.2 The maximum number of concurrent server connections has exceeded a limit, "
     "closing transmission channel", "mail", ("throttle", True, "connections")),
    ("451 4.7.500 Server busy. Please try again later from [192.0.2.1].", "rcpt",
     ("throttle", False, "rate")),
    ("450 4.2.1 Peak SMTP relay limit exceeded for customer", "mail", ("throttle", False, "rate")),
    ("421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume "
     "or user complaints", "mail", ("throttle", True, "rate")),
    # not every 421 is a throttle
    ("421 4.3.0 Temporary System Problem. Try again later.", "mail", ("soft", True, "")),
    ("421 mx.example.net Service not available, closing transmission channel", "rcpt",
     ("soft", True, "")),
    ("421 4.7.0 TLS required for RCPT domain, closing connection.", "rcpt", ("soft", True, "")),
    ("421 4.7.0 Too many messages for this session, closing connection", "mail",
     ("requeue_session", True, "")),
    # reputation blocks suspend the site; never hard
    ("550 5.7.1 Unfortunately, messages from [192.0.2.1] weren't sent. Please contact your "
     "Internet service provider since part of their network is on our block list (S3150).",
     "mail", ("suspend", True, "")),
    ("553 5.7.2 [TSS09] All messages from 192.0.2.1 will be permanently deferred", "mail",
     ("suspend", True, "")),
    ("550 5.7.1 Too many invalid recipients from your IP", "rcpt", ("suspend", True, "")),
    # the recipient cannot receive
    ("550 5.1.1 The email account that you tried to reach does not exist.", "rcpt",
     ("hard", False, "")),
    ("550 5.2.1 The email account that you tried to reach is disabled.", "rcpt",
     ("hard", False, "")),
    ("452 4.2.2 The email account that you tried to reach is over quota.", "rcpt",
     ("soft", False, "")),
    # transaction shape
    ("452 4.5.3 Too many recipients", "rcpt", ("requeue_split", False, "")),
]


@pytest.mark.parametrize("reply,command,expected", TABLE, ids=[t[0][:40] for t in TABLE])
def test_decision_table(reply, command, expected):
    cls = core.classify(reply, command)
    d = decide(cls, cls.code, command, cls.enhanced)
    assert (d.kind, d.close, d.shaper_kind) == expected, cls.rule


def test_connect_decisions():
    greet = core.classify("421 4.7.0 Too many connections from your IP", "connect")
    assert decide_connect(greet, "greeting").kind == "throttle"
    assert decide_connect(greet, "greeting").shaper_kind == "connections"
    generic = core.classify("421 mx.example.net Service not available", "connect")
    assert decide_connect(generic, "greeting").kind == "connect_failure"
    block = core.classify("554 5.7.1 Client host [192.0.2.1] blocked using zen.spamhaus.org",
                          "connect")
    assert decide_connect(block, "greeting").kind == "suspend"
    _, timeout = local("connect_timeout", "connect")
    d = decide_connect(timeout, "connect_timeout")
    assert (d.kind, d.shaper_kind) == ("throttle", "connect_failure")
    _, refused = local("connect_failed", "connect")
    assert decide_connect(refused, "connect_failed").kind == "connect_failure"


def test_local_outcomes_have_no_rule_and_still_decide():
    # connection lost / timeout during a transaction (classify.outcome.local: no rule)
    for kind, cmd in (("connection_lost", "dot"), ("timeout", "rcpt"), ("protocol_error", "mail")):
        reply, cls = local(kind, cmd)
        d = decide(cls, reply.code, cmd, reply.enhanced)
        assert d.kind in ("soft", "throttle") and d.close, (kind, d)
