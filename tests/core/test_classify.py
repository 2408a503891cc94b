"""Bounce classifier: provider and MTA texts, phase rules, lenient input, rule files.

The texts are written for these tests after the providers' public error-code pages and
the MTAs' default messages (not taken from the scoring corpus).  Each test runs on both
implementations through the ``impl`` fixture.
"""

from __future__ import annotations

import pytest

from fastmta.classify import rules as _rules
from fastmta.errors import ConfigError

# (reply, command) -> (bounce_class, type, reason, throttle)
CASES = [
    # Gmail / Google Workspace
    ("550-5.1.1 The email account that you tried to reach does not exist. Please try\r\n"
     "550 5.1.1 double-checking the recipient's email address for typos - gsmtp", "rcpt",
     (10, "hard", "user_unknown", False)),
    ("550 5.2.1 The email account that you tried to reach is disabled. - gsmtp", "rcpt",
     (10, "hard", "account_disabled", False)),
    ("452 4.2.2 The email account that you tried to reach is over quota. - gsmtp", "rcpt",
     (22, "soft", "mailbox_full", False)),
    ("450 4.2.1 The user you are trying to contact is receiving mail at a rate that prevents "
     "additional messages from being delivered. - gsmtp", "rcpt", (70, "soft", "unreachable", True)),
    ("550 5.2.1 The user you are trying to contact is receiving mail at a rate that prevents "
     "additional messages from being delivered. - gsmtp", "rcpt", (70, "soft", "unreachable", True)),
    ("421 4.7.28 Gmail has detected an unusual rate of unsolicited mail from your IP. - gsmtp",
     "dot", (51, "soft", "refused", True)),
    ("550 5.7.1 Our system has detected that this message is likely unsolicited mail. - gsmtp",
     "dot", (52, "soft", "refused", False)),
    ("550 5.7.26 Unauthenticated email from example.net is not accepted due to domain's DMARC "
     "policy. - gsmtp", "dot", (50, "soft", "refused", False)),
    ("550 5.7.25 The IP address sending this message does not have a PTR record setup - gsmtp",
     "mail", (50, "soft", "refused", False)),
    # Microsoft 365 / Outlook.com
    ("550 5.5.0 Requested action not taken: mailbox unavailable (S2017062302)", "rcpt",
     (10, "hard", "user_unknown", False)),
    ("550 5.4.1 Recipient address rejected: Access denied. AS(201806281)", "rcpt",
     (10, "hard", "user_unknown", False)),
    ("550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
     "rcpt", (10, "hard", "user_unknown", False)),
    ("451 4.7.650 The mail server [198.51.100.9] has been temporarily rate limited due to IP "
     "reputation.", "mail", (51, "soft", "refused", True)),
    ("550 5.7.606 Access denied, banned sending IP [198.51.100.9].", "rcpt",
     (51, "soft", "refused", True)),
    ("550 5.7.515 Access denied, sending domain example.net doesn't meet the required "
     "authentication level.", "dot", (50, "soft", "refused", False)),
    ("550 5.2.2 STOREDRV.Deliver: mailbox full.", "dot", (22, "soft", "mailbox_full", False)),
    # Yahoo / AOL
    ("554 delivery error: dd This user doesn't have a aol.com account (x@aol.com) [0]", "dot",
     (10, "hard", "user_unknown", False)),
    ("421 4.7.0 [TSS04] Messages from 198.51.100.9 temporarily deferred due to unexpected "
     "volume or user complaints", "mail", (51, "soft", "refused", True)),
    ("553 5.7.1 [BL21] Connections will not be accepted from 198.51.100.9, because the ip is "
     "in Spamhaus's list", "connect", (51, "soft", "refused", True)),
    ("554 5.7.9 Message not accepted for policy reasons.", "dot", (50, "soft", "refused", False)),
    # Apple iCloud
    ("550 5.1.1 <x@icloud.com>: user does not exist", "rcpt", (10, "hard", "user_unknown", False)),
    ("554 5.7.1 [HM08] Message rejected due to local policy", "dot",
     (51, "soft", "refused", True)),
    # Comcast, AT&T
    ("550 5.1.1 <x@comcast.net> Not our Customer", "rcpt", (10, "hard", "user_unknown", False)),
    ("421 4.1.0 198.51.100.9 throttled - try again later. Please see RL000001", "mail",
     (70, "soft", "unreachable", True)),
    ("550 5.7.1 Connections not accepted from servers without a valid sender domain.flph",
     "mail", (50, "soft", "refused", False)),
    # GMX / Web.de, Orange, Free, T-Online
    ("550 Requested action not taken: mailbox unavailable", "rcpt",
     (10, "hard", "user_unknown", False)),
    ("421 mwinf0000 ME Trop de connexions, veuillez verifier votre configuration. "
     "Too many connections, slow down. OFR005_104", "connect", (70, "soft", "unreachable", True)),
    ("550 5.1.1 Adresse d au moins un destinataire invalide. Invalid recipient. OFR_416",
     "rcpt", (10, "hard", "user_unknown", False)),
    ("550 5.7.1 Service refuse. Veuillez essayer plus tard. OFR004_104", "connect",
     (50, "soft", "refused", True)),
    ("554 IP=198.51.100.9 - A problem occurred. (Ask your postmaster for help.) (BL)",
     "connect", (51, "soft", "refused", True)),
    # Mail.ru, Yandex, QQ, NetEase, Zoho
    ("550 Message was not accepted -- invalid mailbox. Local mailbox x@mail.ru is unavailable: "
     "account is disabled", "rcpt", (10, "hard", "account_disabled", False)),
    ("550 5.7.1 No such user!", "rcpt", (10, "hard", "user_unknown", False)),
    ("554 5.7.1 [2] Message rejected under suspicion of SPAM", "dot",
     (52, "soft", "refused", False)),
    ("550 Mailbox not found. http://service.mail.qq.com/cgi-bin/help?subtype=1", "rcpt",
     (10, "hard", "user_unknown", False)),
    ("451 Ip frequency limited. http://service.mail.qq.com/cgi-bin/help", "mail",
     (70, "soft", "unreachable", True)),
    ("550 User not found: x@163.com", "rcpt", (10, "hard", "user_unknown", False)),
    ("554 DT:SPM 163 mx12,site,abc, please see http://mail.163.com/help/help_spam_16.htm", "dot",
     (52, "soft", "refused", False)),
    ("550 5.1.1 User does not exist - <x@zoho.example>", "rcpt",
     (10, "hard", "user_unknown", False)),
    # Gateways
    ("554 5.7.1 Service unavailable; Client host [198.51.100.9] blocked using Barracuda "
     "Reputation", "rcpt", (51, "soft", "refused", True)),
    ("550 Invalid Recipient - https://community.mimecast.com/docs/DOC-1369#550", "rcpt",
     (10, "hard", "user_unknown", False)),
    ("554 Blocked - see https://ipcheck.proofpoint.com/?ip=198.51.100.9", "connect",
     (51, "soft", "refused", True)),
    ("550 #5.1.0 Address rejected.", "rcpt", (10, "hard", "user_unknown", False)),
    # MTA defaults
    ("550 5.1.1 <x@example.org>: Recipient address rejected: User unknown in local recipient "
     "table", "rcpt", (10, "hard", "user_unknown", False)),
    ("450 4.7.1 <x@example.org>: Recipient address rejected: Greylisted for 300 seconds", "rcpt",
     (70, "soft", "unreachable", False)),
    ("554 5.7.1 <x@example.org>: Relay access denied", "rcpt", (54, "hard", "invalid_domain", False)),
    ("454 4.7.1 <x@example.org>: Relay access denied", "rcpt", (54, "soft", "refused", False)),
    ("550 5.7.1 Relaying denied", "mail", (54, "soft", "refused", False)),
    ("550 Unrouteable address", "rcpt", (10, "hard", "user_unknown", False)),
    ("550 5.1.1 <x@example.org>... User unknown", "rcpt", (10, "hard", "user_unknown", False)),
    ("551 sorry, no mailbox here by that name. (#5.1.1)", "rcpt",
     (10, "hard", "user_unknown", False)),
    ("452 4.3.1 Insufficient system resources", "mail", (20, "soft", "unreachable", False)),
    ("552 5.3.4 Message size exceeds fixed limit", "dot", (23, "soft", "refused", False)),
    ("550 5.1.2 <x@nowhere.example>: Recipient address rejected: Domain not found", "rcpt",
     (21, "hard", "invalid_domain", False)),
    ("554 5.7.1 Rejected: virus found in message (Eicar-Test-Signature)", "dot",
     (53, "soft", "refused", False)),
]


@pytest.mark.parametrize("reply,command,expected", CASES, ids=[c[0][:48] for c in CASES])
def test_provider_and_mta_texts(impl, reply, command, expected):
    c = impl.classify(reply, command)
    assert (c.bounce_class, c.type, c.reason, c.throttle) == expected, c.rule


def test_success_and_actions(impl):
    c = impl.classify("250 2.0.0 Ok: queued as ABC123", "dot")
    assert (c.bounce_class, c.type, c.action, c.code, c.enhanced) == (0, "none", "deliver_ok", 250, "2.0.0")
    assert impl.classify("550 5.1.1 user unknown", "rcpt").action == "bounce"
    assert impl.classify("421 4.7.0 Too many connections", "connect").action == "reduce_rate"
    assert impl.classify("554 5.7.1 blocked using zen.spamhaus.org", "rcpt").action == "suspend_site"
    assert impl.classify("450 4.2.2 mailbox full", "rcpt").action == "retry"


def test_phase_too_many_recipients_is_retry_not_bounce(impl):
    for text in ("452 4.5.3 Too many recipients", "552 5.5.3 Too many recipients",
                 "552 Too many recipients", "452 Requested action not taken"):
        c = impl.classify(text, "rcpt")
        assert (c.type, c.action, c.bounce_class) == ("soft", "retry", 70), (text, c.rule)
    # The same 552 after the message is a size/storage problem, not a recipient count.
    assert impl.classify("552 5.3.4 Message too big", "dot").bounce_class == 23


def test_generic_421_at_connect_is_not_a_throttle(impl):
    # RFC 5321 4.2.3: 421 = service not available; a rate signal only when the text says so
    c = impl.classify("421 mx.example.net Service not available, closing transmission channel",
                      "connect")
    assert (c.type, c.throttle, c.throttle_scope, c.action) == ("soft", False, "none", "retry")
    c = impl.classify("421 4.7.0 mx.example.net Too many connections from your IP, slow down",
                      "connect")
    assert (c.type, c.throttle, c.throttle_scope, c.action) == ("soft", True, "sender",
                                                                 "reduce_rate")


def test_phase_5xx_to_mail_from_blames_the_sender(impl):
    c = impl.classify("550 5.1.0 Sender rejected", "mail")
    assert (c.type, c.reason) == ("soft", "refused")
    c = impl.classify("553 Requested action not taken: mailbox name not allowed", "mail")
    assert (c.type, c.reason) == ("soft", "refused")
    # The same text to RCPT is about the recipient.
    c = impl.classify("553 Requested action not taken: mailbox name not allowed", "rcpt")
    assert (c.type, c.reason) == ("hard", "user_unknown")


def test_rate_limit_5xx_is_soft_throttle(impl):
    c = impl.classify("550 5.7.1 Too many messages from your IP, rate limit exceeded", "dot")
    assert (c.type, c.throttle, c.action) == ("soft", True, "reduce_rate")


def test_lenient_free_text(impl):
    c = impl.classify("host mx.example.org said: 550 sorry, no mailbox (#5.1.1 - chkusr)")
    assert (c.code, c.enhanced, c.type) == (550, "5.1.1", "hard")
    assert impl.extract_codes("Diagnostic: smtp; 5.2.2 over quota") == (0, "5.2.2")
    assert impl.extract_codes("connect to 192.0.2.25[192.0.2.25]:25: timed out") == (0, None)
    assert impl.extract_codes("4.16.55.1 see 198.51.100.250") == (0, None)
    # A greeting followed by the refusal: the refusal's code counts.
    assert impl.extract_codes("220-mx ready 421 4.7.0 go away")[0] == 421
    c = impl.classify("")
    assert (c.code, c.bounce_class, c.type) == (0, 1, "soft")
    c = impl.classify(b"550 5.1.1 \xff user unknown")
    assert c.type == "hard"


def test_reply_objects_use_their_command(impl):
    p = impl.ReplyParser()
    p.expect("rcpt")
    (r,) = p.feed(b"452-4.5.3 Too many\r\n452 4.5.3 recipients\r\n")
    c = impl.classify(r)
    assert (c.code, c.enhanced, c.action) == (452, "4.5.3", "retry")
    assert impl.classify(r, "dot").rule != "rcpt-too-many-recipients-enhanced"


def test_reply_phrase_wrapped_over_lines(impl):
    p = impl.ReplyParser()
    p.expect("rcpt")
    (r,) = p.feed(b"550-5.1.1 The email account that you tried to reach does\r\n"
                  b"550-5.1.1 not exist. Please try double-checking the address\r\n"
                  b"550 5.1.1 for typos. - gsmtp\r\n")
    c = impl.classify(r)
    assert (c.type, c.reason, c.rule) == ("hard", "user_unknown", "user-unknown")


def test_to_dict_fields(impl):
    d = impl.classify("550 5.1.1 user unknown", "rcpt").to_dict()
    assert set(d) == {"code", "enhanced", "bounce_class", "type", "reason", "throttle", "action",
                      "rule", "throttle_scope", "effect"}


def test_bad_arguments(impl):
    with pytest.raises(TypeError):
        impl.classify(12345)
    with pytest.raises(TypeError):
        impl.classify("550 x", command=5)


# ---------------------------------------------------------------------------------------
# Rule order, operator rule files
# ---------------------------------------------------------------------------------------

def test_rule_order_first_match_wins(impl, tmp_path):
    f = tmp_path / "rules.toml"
    f.write_text(
        '[[rule]]\nname = "first"\ntext = ["acme"]\nbounce_class = 50\ntype = "soft"\n'
        'reason = "refused"\n\n'
        '[[rule]]\nname = "second"\ntext = ["acme widget"]\nbounce_class = 10\ntype = "hard"\n'
        'reason = "user_unknown"\n'
    )
    clf = impl.Classifier(_rules.compile_rules([str(f)], packaged=False))
    assert clf.classify("550 acme widget").rule == "first"
    assert clf.classify("550 nothing").rule == "default"


def test_packaged_rule_order_specific_before_generic():
    names = [r.name for r in _rules.compile_rules([]).rules]
    assert names[0] == "success"
    assert names.index("rcpt-too-many-recipients-enhanced") < names.index("enh-protocol")
    assert names.index("rate-limited") < names.index("blocklist") < names.index("spam-content")
    assert names.index("mailbox-full") < names.index("user-unknown") < names.index("enh-bad-mailbox-5xx")
    assert names[-1] == "fallback-no-code"
    assert names.index("rate-limited-recipient") < names.index("rate-limited")


def test_operator_rules_take_precedence(impl, tmp_path):
    f = tmp_path / "ops.toml"
    f.write_text(
        '[[rule]]\nname = "ops-unknown-is-soft"\ncode = ["550"]\ntext = ["user unknown"]\n'
        'bounce_class = 20\ntype = "soft"\nreason = "not_defined"\n'
    )
    clf = impl.Classifier(_rules.compile_rules([str(f)]))
    assert clf.classify("550 5.1.1 user unknown", "rcpt").rule == "ops-unknown-is-soft"
    assert clf.classify("552 5.2.2 mailbox full", "rcpt").rule == "mailbox-full"
    try:
        impl.load_rules(str(f))
        assert impl.classify("550 5.1.1 user unknown", "rcpt").type == "soft"
    finally:
        impl.load_rules([])
    assert impl.classify("550 5.1.1 user unknown", "rcpt").type == "hard"


def test_rules_env_variable(impl, tmp_path, monkeypatch):
    f = tmp_path / "env.toml"
    f.write_text('[[rule]]\nname = "env"\ntext = ["zzz"]\nbounce_class = 1\ntype = "soft"\n'
                 'reason = "not_defined"\n')
    monkeypatch.setenv(_rules.RULES_ENV, str(f))
    try:
        impl.load_rules()
        assert impl.classify("550 zzz").rule == "env"
    finally:
        monkeypatch.delenv(_rules.RULES_ENV)
        impl.load_rules()


@pytest.mark.parametrize("body,needle", [
    ('[[rule]]\nname = "x"\nbounce_class = 99\ntype = "soft"\nreason = "refused"\n', "bounce_class"),
    ('[[rule]]\nname = "x"\nbounce_class = 10\ntype = "permanent"\nreason = "refused"\n', "type"),
    ('[[rule]]\nname = "x"\ncode = ["5x0"]\nbounce_class = 10\ntype = "hard"\nreason = "refused"\n', "code"),
    ('[[rule]]\nname = "x"\ntext = ["Upper"]\nbounce_class = 10\ntype = "hard"\nreason = "refused"\n', "lower case"),
    ('[[rule]]\nname = "x"\ncolour = 1\nbounce_class = 10\ntype = "hard"\nreason = "refused"\n', "unknown keys"),
    ('[[rule]]\nname = "x"\ncommand = ["fly"]\nbounce_class = 10\ntype = "hard"\nreason = "refused"\n', "command"),
    ('[[rule]\n', "not valid TOML"),
])
def test_bad_rule_files_are_clear_errors(impl, tmp_path, body, needle):
    f = tmp_path / "bad.toml"
    f.write_text(body)
    with pytest.raises(ConfigError, match=needle):
        impl.load_rules(str(f))
    with pytest.raises(ConfigError, match="cannot read"):
        impl.load_rules(str(tmp_path / "missing.toml"))
    # The previous rules stay in place.
    assert impl.classify("550 5.1.1 user unknown", "rcpt").type == "hard"


FALSE_FRIENDS = [
    # text, command, what it must NOT be / must be
    ("550 Mailbox is frozen", "rcpt", ("account_disabled", "hard")),
    ("421 4.4.2 Connection terminated by remote host", None, ("unreachable", "soft")),
    ("552 5.3.4 Message exceeded the maximum size for this server", "dot", ("refused", "soft")),
    ("550 5.1.1 User not listed in public Name & Address Book", "rcpt", ("user_unknown", "hard")),
    ("554 5.7.1 The message absorbs too much", "dot", ("refused", "soft")),
    ("451 4.4.0 MX lookup failed for example.org, try again", None, ("invalid_domain", "soft")),
    ("550 5.7.1 Your account has been suspended for sending spam", "mail", ("refused", "soft")),
    ("551 User not local; please try <x@other.example>", "rcpt", ("user_unknown", "hard")),
    ("554 Sending from your IP is disabled", "rcpt", ("refused", "soft")),
    ("421 4.7.0 TLS handshake failed, try again later", "starttls", ("refused", "soft")),
]


@pytest.mark.parametrize("text,command,expected", FALSE_FRIENDS, ids=[f[0][:40] for f in FALSE_FRIENDS])
def test_false_friends(impl, text, command, expected):
    c = impl.classify(text, command)
    assert (c.reason, c.type) == expected, c.rule


_UNSOURCED_OK: set[str] = set()


def test_packaged_rules_lint():
    compiled = _rules.compile_rules([])
    names = [r.name for r in compiled.rules]
    assert len(names) == len(set(names)), "rule names must be unique"
    for p in compiled.patterns:
        wide = max(map(ord, p)) > 255  # CJK: two ideographs are a word
        assert len(p.strip()) >= (2 if wide else 3) or p.startswith(("[", "(", " ")), \
            f"pattern {p!r} is too short"
    # Every soft rule that blocks the sender is never hard, every hard rule bounces.
    for r in compiled.rules:
        if r.type == "hard":
            assert r.action == "bounce" and r.reason in ("user_unknown", "invalid_domain",
                                                         "account_disabled"), r.name
        if r.reason == "refused":
            assert r.type == "soft", r.name
        if r.throttle:
            assert r.type == "soft", r.name
            assert r.throttle_scope in ("sender", "recipient"), r.name
            if r.throttle_scope == "recipient":
                assert r.action == "defer_recipient" and r.reason == "unreachable", r.name
            else:
                assert r.action in ("reduce_rate", "suspend_site"), r.name
        else:
            assert r.throttle_scope == "none" and r.action not in ("reduce_rate",
                                                                   "defer_recipient"), r.name
        if r.action == "suspend_site":
            assert r.reason == "refused", r.name
        # every packaged rule names where its texts come from (or is a code fallback)
        assert r.ref or r.name in _UNSOURCED_OK, f"rule {r.name} has no source"
        if r.fallback:
            assert r.bounce_class == 1 and r.type == "soft", r.name


def test_regex_rule_runs_only_after_other_conditions(impl, tmp_path):
    f = tmp_path / "rx.toml"
    f.write_text(
        '[[rule]]\nname = "ticket"\ncode = ["55x"]\ntext = ["ticket"]\n'
        "regex = 'ticket #[0-9]{4}\\b'\n"
        'bounce_class = 25\ntype = "soft"\nreason = "refused"\n'
    )
    clf = impl.Classifier(_rules.compile_rules([str(f)]))
    assert clf.classify("550 Rejected, ticket #1234 opened").rule == "ticket"
    assert clf.classify("550 Rejected, TICKET #9876").rule == "ticket"  # lower-cased text
    assert clf.classify("550 Rejected, ticket #12").rule != "ticket"
    assert clf.classify("450 Rejected, ticket #1234").rule != "ticket"
    p = impl.ReplyParser()
    (r,) = p.feed(b"550-Rejected, ticket\r\n550 #4321 opened\r\n")
    assert clf.classify(r).rule == "ticket"  # lines joined by a space


# issue 16 kinds a second held-out batch missed (branch issue16c); own wordings, not the batch's
KINDS_16C = [
    # an hourly recipient count is the sender's rate, not a per-transaction cap
    ("452 Recipient limit per hour reached", "rcpt", (70, True, "sender", "none")),
    # a quota answered to MAIL FROM is the sender's
    ("451 4.7.1 Sender quota exceeded, try later", "mail", (70, True, "sender", "none")),
    # a concurrent-connection limit cuts the connection limit
    ("421 4.7.0 Too many concurrent SMTP connections from this IP", "connect",
     (70, True, "sender", "connection_limit")),
    ("421 mx blocked. See the error codes page. AUP#CXCNCT", "connect",
     (70, True, "sender", "connection_limit")),
    # "too many messages" to MAIL with no time unit or rate: a per-connection cap
    ("451 Too many messages, closing", "mail", (70, False, "none", "session_cap")),
    ("421 4.3.1 You send too many messages", "mail", (70, True, "sender", "none")),
    # the recipient's own block list is not a DNSBL listing of our IP
    ("550 5.7.1 Message refused: sender is blocked by the recipient", "rcpt",
     (50, False, "none", "none")),
    ("550 5.7.1 Your IP 192.0.2.1 is blacklisted", "rcpt", (51, True, "sender", "none")),
    # Exchange store driver: one mailbox receives too quickly
    ("452 4.3.2 recipient thread limit exceeded", "rcpt", (70, True, "recipient", "none")),
    # a server going down is transient, not a rate
    ("421 Service shutting down", "dot", (20, False, "none", "none")),
]


@pytest.mark.parametrize("reply,command,expected", KINDS_16C, ids=[c[0][:48] for c in KINDS_16C])
def test_issue16c_kinds(impl, reply, command, expected):
    c = impl.classify(reply, command)
    assert (c.bounce_class, c.throttle, c.throttle_scope, c.effect) == expected, c.rule
    assert c.type == "soft"


# issue 16 kinds the third held-out batch missed (branch issue16d); own wordings, not the batch's
KINDS_16D = [
    # a full mailbox worded as a count of stored messages is storage, never a rate
    ("452 Mailbox contains too many messages, try later", "rcpt", (22, False, "none", "none"), "soft"),
    ("550 The user keeps too many messages on the server", "rcpt", (22, False, "none", "none"), "soft"),
    ("552 5.2.2 too much mail stored for user", "rcpt", (22, False, "none", "none"), "soft"),
    ("552 Too many messages", "rcpt", (22, False, "none", "none"), "soft"),
    # ... while a count per time stays a rate
    ("452 Too many messages per hour from you", "rcpt", (70, True, "sender", "none"), "soft"),
    # NetEase per-connection caps given only as codes
    ("451 MI:DMC see help page", "mail", (70, False, "none", "session_cap"), "soft"),
    ("451 RP:DRC see help page", "rcpt", (70, False, "none", "too_many_recipients"), "soft"),
    # QQ's wording of a per-recipient receive limit
    ("550 Mailbox unavailable or access denied [MX]", "rcpt", (70, True, "recipient", "none"), "soft"),
    # a block from the receiver's spam statistics is a block of the source
    ("554 Your mail was blocked by spam statistics", "rcpt", (51, True, "sender", "none"), "soft"),
    # qmail's rcpthosts refusal in other words: a relay refusal, hard
    ("553 that domain is not in my list of allowed hosts", "rcpt", (54, False, "none", "none"), "hard"),
]


@pytest.mark.parametrize("reply,command,expected,kind", KINDS_16D, ids=[c[0][:48] for c in KINDS_16D])
def test_issue16d_kinds(impl, reply, command, expected, kind):
    c = impl.classify(reply, command)
    assert (c.bounce_class, c.throttle, c.throttle_scope, c.effect) == expected, c.rule
    assert c.type == kind


# issue 16 kinds the fourth held-out batch missed (branch issue16e): vocabulary rules,
# own wordings (not the batch's), with the near misses that must stay out
KINDS_16E = [
    # an IPv4 literal or "your server/IP" + blocked/blacklisted/listed/banned: a sender block
    ("521 5.7.1 198.51.100.7 has been blacklisted", "connect", (51, True, "sender", "none"), "soft"),
    ("554 [203.0.113.9] is currently banned here", "mail", (51, True, "sender", "none"), "soft"),
    ("550 Your mail server is listed, delivery refused", "rcpt", (51, True, "sender", "none"), "soft"),
    ("521 Host does not accept mail", "connect", (21, False, "none", "none"), "hard"),
    # mailbox/account/user + a state word, final 5xx: the mailbox cannot receive (hard)
    ("550 5.2.1 This account is now deactivated", "rcpt", (10, False, "none", "none"), "hard"),
    ("554 user mailbox has been frozen by the administrator", "dot", (10, False, "none", "none"), "hard"),
    ("550 bob@example.org was permanently closed", "rcpt", (10, False, "none", "none"), "hard"),
    ("550 5.7.1 Your account is suspended for sending spam", "mail", None, "soft"),
    ("450 4.2.1 Mailbox temporarily locked, try again", "rcpt", None, "soft"),
    # relay + disabled/refused/forbidden at RCPT: a relay refusal (hard 54); at MAIL soft
    ("554 5.7.1 Relaying forbidden for this domain", "rcpt", (54, False, "none", "none"), "hard"),
    ("550 relay is not allowed", "mail", (54, False, "none", "none"), "soft"),
    # a recipient that received too much mail in a short time: recipient-scope rate
    ("452 4.2.1 recipient has received too many messages, retry later", "rcpt", (70, True, "recipient", "none"), "soft"),
    ("450 4.2.1 user got too much mail in the last minute", "rcpt", (70, True, "recipient", "none"), "soft"),
    ("452 4.2.2 Mailbox has too many messages stored", "rcpt", (22, False, "none", "none"), "soft"),
    # spam from our host: reputation (51), throttled at the sender
    ("421 4.7.0 Rate limited: too much spam coming from your IP", "mail", (51, True, "sender", "none"), "soft"),
    # connect-time DNS failure is our PTR (policy 50); a busy greeting is transient (70)
    ("451 Temporary DNS lookup failure for your address", "connect", (50, False, "none", "none"), "soft"),
    ("421 Server too busy, come back later", "connect", (70, False, "none", "none"), "soft"),
]


@pytest.mark.parametrize("reply,command,expected,kind", KINDS_16E, ids=[c[0][:48] for c in KINDS_16E])
def test_issue16e_kinds(impl, reply, command, expected, kind):
    c = impl.classify(reply, command)
    if expected is not None:
        assert (c.bounce_class, c.throttle, c.throttle_scope, c.effect) == expected, c.rule
    assert c.type == kind, c.rule


# provider code families and sender-volume vocabulary (branch cls16): own wordings after the
# providers' code tables, with the near misses that must stay out
KINDS_CLS16 = [
    # Yahoo bracketed deferral codes and "messages from <ip> deferred": sender, reputation
    ("421 4.7.0 [TSS07] Messages from 198.51.100.7 temporarily deferred", "mail", (51, True, "sender", "none"), "soft"),
    ("421 [MC02] temporarily deferred", "mail", (51, True, "sender", "none"), "soft"),
    ("421 4.7.1 [TS03] All messages from 198.51.100.7 will be permanently deferred", "mail", (51, True, "sender", "none"), "soft"),
    ("451 Messages from your server are deferred, slow down", "rcpt", (51, True, "sender", "none"), "soft"),
    ("451 Message temporarily deferred due to unresolvable RFC.5321 from domain", "mail", (50, False, "none", "none"), "soft"),
    ("451 4.7.1 Greylisted: messages from 198.51.100.7 deferred for 5 minutes", "rcpt", (70, False, "none", "none"), "soft"),
    # T-Online IP=<ip>: a block of the host; an SPF text with client-ip= is authentication
    ("554 IP=198.51.100.7 - A problem occurred. (BL)", "connect", (51, True, "sender", "none"), "soft"),
    ("550 5.7.23 SPF fail for example.org, client-ip=198.51.100.7", "mail", (50, False, "none", "none"), "soft"),
    # GoDaddy / Spectrum / Cox / Comcast / Orange code ranges
    ("421 Too many sessions. IB007", "connect", (70, True, "sender", "connection_limit"), "soft"),
    ("550 Session message limit. IB510", "mail", (70, False, "none", "session_cap"), "soft"),
    ("554 Connection refused. (IB104)", "connect", (51, True, "sender", "none"), "soft"),
    ("421 4.7.0 Connection refused AUP#I-1330", "connect", (70, True, "sender", "connection_limit"), "soft"),
    ("550 5.7.1 Rejected AUP#I-1220", "connect", (51, True, "sender", "none"), "soft"),
    ("421 4.7.0 Too many messages AUP#CXMXRT", "mail", (70, True, "sender", "none"), "soft"),
    ("554 blocked AUP#IPBL0101", "connect", (51, True, "sender", "none"), "soft"),
    ("554 comcast see smtp-error-codes.php#BL000001", "connect", (51, True, "sender", "none"), "soft"),
    ("421 mwinf ME Trop de connexions. OFR005_104 [104]", "connect", (70, True, "sender", "connection_limit"), "soft"),
    # Microsoft 4.7.5xx-8xx "access denied, try again later"; 5.2.122 recipient limit
    ("451 4.7.855 Access denied, please try again later", "mail", (51, True, "sender", "none"), "soft"),
    ("550 5.2.121 Recipient's per sender limit for number of messages per hour exceeded", "rcpt",
     (70, True, "recipient", "none"), "soft"),
    # policy violations / blocked at connect or MAIL: a reputation slow-down; policy texts out
    ("450 4.7.1 Deferred for policy violation", "rcpt", (51, True, "sender", "none"), "soft"),
    ("421 Service unavailable, your IP has been temporarily banned", "connect", (51, True, "sender", "none"), "soft"),
    ("450 4.7.1 Sender address blocked by policy", "mail", (50, False, "none", "none"), "soft"),
    ("421 4.7.0 TLS policy violation: STARTTLS required", "mail", (50, False, "none", "none"), "soft"),
    # sender volume in the issue's languages; a bare "try again later" stays transient
    ("421 Zu viele E-Mails in kurzer Zeit, bitte spaeter erneut versuchen", "mail", (70, True, "sender", "none"), "soft"),
    ("421 Слишком часто, попробуйте позже", "mail", (70, True, "sender", "none"), "soft"),
    ("421 4.7.0 Try again later", "mail", (20, False, "none", "none"), "soft"),
    # Postfix anvil per-client limits are sender rates, not per-transaction caps
    ("452 4.7.0 Error: too many recipients from 198.51.100.7", "rcpt", (70, True, "sender", "none"), "soft"),
    ("452 4.5.3 Too many recipients", "rcpt", (70, False, "none", "too_many_recipients"), "soft"),
    # AOL legacy block families; RLY:SN is the sender address, not the IP
    ("554 (RLY:B1) http://postmaster.info.aol.com/errors/554rlyb1.html", "connect", (51, True, "sender", "none"), "soft"),
    ("554 5.7.1 (RLY:SN) banned address", "mail", (50, False, "none", "none"), "soft"),
    # suspicious / unusual activity of the sending host at connect: reputation
    ("421 4.7.0 Unusual traffic from your network, try again later", "connect", (51, True, "sender", "none"), "soft"),
    # what a mailbox receives, or a rate with an x.2.0/x.2.1 mailbox status, is the recipient's
    ("450 Incoming rate for this mailbox exceeded", "rcpt", (70, True, "recipient", "none"), "soft"),
    ("450 4.2.1 Too many messages, please slow down", "rcpt", (70, True, "recipient", "none"), "soft"),
    ("450 4.2.1 Too many messages from your IP, slow down", "rcpt", (70, True, "sender", "none"), "soft"),
    ("452 4.2.2 Mailbox full", "rcpt", (22, False, "none", "none"), "soft"),
    # complaint / bounce rates and temporary restrictions of our host: reputation throttles
    ("421 4.7.0 Too many spam complaints, try again later", "mail", (51, True, "sender", "none"), "soft"),
    ("450 4.7.1 Your IP is temporarily restricted", "rcpt", (51, True, "sender", "none"), "soft"),
    ("451 4.7.1 Daily quota exceeded for sender", "rcpt", (70, True, "sender", "none"), "soft"),
    ("452 4.2.2 Quota exceeded", "rcpt", (22, False, "none", "none"), "soft"),
]


@pytest.mark.parametrize("reply,command,expected,kind", KINDS_CLS16, ids=[c[0][:48] for c in KINDS_CLS16])
def test_cls16_provider_codes_and_volume(impl, reply, command, expected, kind):
    c = impl.classify(reply, command)
    assert (c.bounce_class, c.throttle, c.throttle_scope, c.effect) == expected, c.rule
    assert c.type == kind, c.rule
