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


OPERATOR_RULES = '''
[[rule]]
name = "acme-batch-cap"
source = "test: an operator's own wording of too many recipients"
command = ["rcpt"]
code = ["451"]
text = ["acme batch quota reached"]
bounce_class = 70
type = "soft"
reason = "unreachable"
effect = "too_many_recipients"

[[rule]]
name = "acme-session-cap"
source = "test: an operator's own wording of a per-session message cap"
code = ["421"]
text = ["acme session quota reached"]
bounce_class = 70
type = "soft"
reason = "unreachable"
effect = "session_cap"

[[rule]]
name = "acme-connection-cap"
source = "test: an operator's own wording of a connection limit"
code = ["421", "451"]
text = ["acme connection quota reached"]
bounce_class = 70
type = "soft"
reason = "unreachable"
effect = "connection_limit"

[[rule]]
name = "acme-plain"
source = "test: the same kind of text without an effect"
code = ["421", "451"]
text = ["acme quota"]
bounce_class = 70
type = "soft"
reason = "unreachable"
'''


@pytest.mark.parametrize("impl", ["compiled", "pure"])
def test_operator_rules_carry_the_effects(tmp_path, impl):
    """The transaction and connection effects are rule fields: an operator's rule with
    its own name and wording gets the same decisions as the packaged rules."""
    from fastmta import _core_py
    from fastmta.classify import rules as _rules

    f = tmp_path / "ops.toml"
    f.write_text(OPERATOR_RULES)
    mod = core if impl == "compiled" else _core_py
    clf = mod.Classifier(_rules.compile_rules([str(f)]))

    def d(text, cmd):
        cls = clf.classify(text, cmd)
        return cls, decide(cls, cls.code, cmd, cls.enhanced)

    cls, dec = d("451 4.0.0 acme batch quota reached, send the rest later", "rcpt")
    assert (cls.rule, cls.effect, dec.kind, dec.close) == (
        "acme-batch-cap", "too_many_recipients", "requeue_split", False)
    cls, dec = d("421 4.0.0 acme session quota reached, closing", "mail")
    assert (cls.rule, cls.effect, dec.kind, dec.close) == (
        "acme-session-cap", "session_cap", "requeue_session", True)
    cls, dec = d("451 4.0.0 acme connection quota reached", "mail")
    assert (cls.throttle, cls.throttle_scope, cls.action) == (True, "sender", "reduce_rate")
    assert (cls.rule, dec.kind, dec.shaper_kind) == ("acme-connection-cap", "throttle",
                                                     "connections")
    # the same kind of wording without an effect: an ordinary soft failure
    cls, dec = d("451 4.0.0 acme quota", "rcpt")
    assert (cls.effect, dec.kind) == ("none", "soft")
    # the packaged rules keep their behaviour through the same fields
    for text, cmd, eff in (("452 4.5.3 Too many recipients", "rcpt", "too_many_recipients"),
                           ("421 4.7.0 Too many messages for this session", "mail",
                            "session_cap"),
                           ("421 4.3.2 The maximum number of concurrent server connections "
                            "has exceeded a limit", "mail", "connection_limit")):
        assert clf.classify(text, cmd).effect == eff


@pytest.mark.parametrize("extra,msg", [
    ('effect = "connection_limit"\nthrottle_scope = "recipient"', "sender-scope throttle"),
    ('effect = "session_cap"\nthrottle = true', "about the transaction"),
    ('effect = "faster"', "effect must be one of"),
])
def test_effect_is_validated(tmp_path, extra, msg):
    from fastmta.classify import rules as _rules
    from fastmta.errors import ConfigError

    f = tmp_path / "bad.toml"
    f.write_text('[[rule]]\nname = "x"\ntext = ["x y"]\nbounce_class = 70\ntype = "soft"\n'
                 f'reason = "unreachable"\n{extra}\n')
    with pytest.raises(ConfigError, match=msg):
        _rules.compile_rules([str(f)], packaged=False)
