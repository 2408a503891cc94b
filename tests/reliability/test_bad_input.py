"""Bad input (issue #9): each case asserts the exact message a user sees, through the
CLI (click's CliRunner), and that nothing accepted is lost or half-written.

Cases already covered elsewhere are not repeated: tests/delivery/test_cli.py (no email
column in analyze), tests/dkim/test_keys.py (key modes, sizes, encrypted keys, at module
level), tests/unit/test_config.py (config decoding)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from fastmta.cli import main
from fastmta.delivery import Template
from fastmta.spool import Spool
from pathutil import package_parent

pytestmark = pytest.mark.timeout(60)

MSG = b"From: Shop <news@shop.example>\nTo: {{email}}\nSubject: Hi {{first}}\n\nHello {{first}}\n"
SRC = package_parent()


@pytest.fixture
def d(tmp_path):
    (tmp_path / "m.eml").write_bytes(MSG)
    (tmp_path / "ok.csv").write_text("email,first\na@x.example,A\n")
    yield tmp_path
    Spool.close_all()


def cli(*args, code: int | None = None):
    res = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    if code is not None:
        assert res.exit_code == code, res.output
    return res


def analyze(d, recipients, *extra, code=None, message="m.eml"):
    return cli("analyze", "--recipients", d / recipients, "--message", d / message,
               "--spool", d / "spool", *extra, code=code)


def error_of(res) -> str:
    """The 'Error: ...' line click printed."""
    lines = [ln for ln in res.output.splitlines() if ln.startswith("Error: ")]
    assert lines, res.output
    return lines[-1][len("Error: "):]


def exclusions(d, recipients, *extra) -> tuple[dict, list[dict]]:
    out = analyze(d, recipients, "--json", "--exclusions", d / "ex.jsonl", *extra, code=0)
    rows = [json.loads(x) for x in open(d / "ex.jsonl")]
    return json.loads(out.output), rows


# ------------------------------------------------------------------ recipients files


def test_csv_not_utf8(d):
    (d / "r.csv").write_bytes(b"\xff\xfeemail\n")
    assert error_of(analyze(d, "r.csv", code=1)) == (
        f"{d / 'r.csv'}: line 1 is not UTF-8 text (byte 0xff); save the file as UTF-8")


def test_csv_not_utf8_deep_in_the_file_names_the_line(d):
    rows = "".join(f"u{i}@x.example,A\n" for i in range(3000))
    (d / "r.csv").write_bytes(b"email,first\n" + rows.encode() + b"b\xe9d@x.example,B\n")
    assert error_of(analyze(d, "r.csv", code=1)) == (
        f"{d / 'r.csv'}: line 3002 is not UTF-8 text (byte 0xe9); save the file as UTF-8")


def test_failed_injection_cancels_the_delivery_and_sends_nothing(d):
    rows = "".join(f"u{i}@x.example,A\n" for i in range(3000))
    (d / "r.csv").write_bytes(b"email,first\n" + rows.encode() + b"b\xe9d@x.example,B\n")
    # --route domain: no MX pre-scan, so the bad line is met while injecting
    res = cli("inject", "--route", "domain", "--recipients", d / "r.csv", "--message",
              d / "m.eml", "--spool", d / "spool", code=1)
    assert error_of(res) == (
        f"{d / 'r.csv'}: line 3002 is not UTF-8 text (byte 0xe9); save the file as UTF-8 "
        "-- delivery 1 cancelled, nothing was sent; fix the file and inject it again")
    sp = Spool.open(d / "spool")
    rec = sp.delivery(1)
    assert rec.state == "cancelled" and "line 3002" in rec.paused_reason
    assert sp.lease(range(64), "t", 100) == []  # nothing of it can be sent



def test_failed_mx_prescan_creates_no_delivery(d):
    """Routing by MX site (the default) reads the domains first: a bad line is found
    before any delivery exists (DNS points at a closed loopback port, never the system
    resolver)."""
    rows = "".join(f"u{i}@x.example,A\n" for i in range(3000))
    (d / "r.csv").write_bytes(b"email,first\n" + rows.encode() + b"b\xe9d@x.example,B\n")
    (d / "c.toml").write_text('[dns]\nnameservers = ["127.0.0.1"]\nport = 9\ntimeout_s = 0.2\n')
    res = cli("inject", "--config", d / "c.toml", "--recipients", d / "r.csv", "--message",
              d / "m.eml", "--spool", d / "spool", code=1)
    assert error_of(res) == (
        f"{d / 'r.csv'}: line 3002 is not UTF-8 text (byte 0xe9); save the file as UTF-8")
    assert list(Spool.open(d / "spool").deliveries()) == []

def test_csv_empty_file(d):
    (d / "r.csv").write_text("")
    assert error_of(analyze(d, "r.csv", code=1)) == (
        f"{d / 'r.csv'}: empty file or missing header row (need an 'email' column)")


def test_csv_missing_email_column(d):
    (d / "r.csv").write_text("first,last\nA,B\n")
    assert error_of(analyze(d, "r.csv", code=1)) == (
        f"{d / 'r.csv'}: no email column in the header ['first', 'last'] "
        "(expected one of email, e-mail, email_address, mail, address)")


def test_csv_unclosed_quote_at_end(d):
    (d / "r.csv").write_text('email,first\n"a@x.example,A\n')
    assert error_of(analyze(d, "r.csv", code=1)) == (
        f"{d / 'r.csv'}: line 2: a quoted field is never closed, so lines 2-2 were read as "
        'one record; fix the quote (") on line 2')


def test_csv_unclosed_quote_swallowing_recipients(d):
    rows = "".join(f"u{i}@x.example,B\n" for i in range(100))
    (d / "r.csv").write_text('email,first\na@x.example,"A\n' + rows)
    assert error_of(analyze(d, "r.csv", code=1)) == (
        f"{d / 'r.csv'}: line 2: a quoted field is never closed, so lines 2-102 (recipients "
        'among them) were read as one record; fix the quote (") on line 2')


def test_csv_legit_multiline_value_is_kept(d):
    (d / "r.csv").write_text('email,first\na@x.example,"two\nlines"\nb@x.example,B\n')
    a, rows = exclusions(d, "r.csv")
    # a line break in a header value is refused per recipient, not for the whole file
    assert a["recipients"] == 2 and a["to_deliver"] == 1
    assert rows == [{"line": 3, "email": "a@x.example", "reason": "invalid_field",
                     "detail": "field 'first' would inject a line"}]


def test_csv_wrong_column_count(d):
    (d / "r.csv").write_text("email,first\na@x.example,A,extra\nb@x.example,B\n")
    a, rows = exclusions(d, "r.csv")
    assert a["to_deliver"] == 1 and a["excluded"]["malformed_line"] == 1
    assert rows == [{"line": 2, "email": "a@x.example", "reason": "malformed_line",
                     "detail": "3 columns, header has 2"}]


def test_jsonl_truncated_and_non_object_lines(d):
    (d / "r.jsonl").write_text('{"email": "a@x.example"}\n{"email": \n[1, 2]\n"str"\n')
    a, rows = exclusions(d, "r.jsonl")
    assert a["recipients"] == 4 and a["to_deliver"] == 1
    assert [(r["line"], r["reason"]) for r in rows] == [
        (2, "malformed_line"), (3, "malformed_line"), (4, "malformed_line")]
    assert rows[0]["detail"].startswith("invalid JSON: ")
    assert rows[1]["detail"] == rows[2]["detail"] == "not a JSON object"


def test_jsonl_without_email_key(d):
    (d / "r.jsonl").write_text('{"name": "A"}\n')
    a, rows = exclusions(d, "r.jsonl")
    assert a["to_deliver"] == 0
    assert [r["reason"] for r in rows] == ["address_not_specified"]


def test_recipients_file_missing(d):
    assert error_of(analyze(d, "nope.csv", code=1)) == f"{d / 'nope.csv'}: no such recipients file"


def test_recipients_file_is_a_directory(d):
    (d / "dir.csv").mkdir()
    assert error_of(analyze(d, "dir.csv", code=2)) == (
        f"Invalid value for '--recipients': File '{d / 'dir.csv'}' is a directory.")


# ------------------------------------------------------------------ addresses


@pytest.mark.parametrize("email,detail", [
    ("bad", None),
    ("a b@x.example", "bad local part"),
    ("a@@x.example", "bad local part"),
    ("<a@x.example>", "bad local part"),
    ("a@x.example.", "bad domain"),
    ("a@localhost", "bad domain"),
    ("a@[127.0.0.1]", "address literal"),
    ("a1@x.example\r\nRCPT TO:<evil@evil.example>", "control character"),
    ("a1@x.example\x00", "control character"),
])
def test_invalid_addresses_are_excluded_with_a_reason(d, email, detail):
    (d / "r.jsonl").write_text(json.dumps({"email": email, "first": "A"}) + "\n")
    a, rows = exclusions(d, "r.jsonl")
    assert a["to_deliver"] == 0 and rows[0]["reason"] == "unqualified_address"
    if detail:
        assert rows[0]["detail"] == detail


def test_internationalised_addresses(d):
    (d / "r.jsonl").write_text(
        json.dumps({"email": "jöe@exämple.test", "first": "J"}) + "\n"
        + json.dumps({"email": "joe@xn--exmple-cua.test", "first": "J"}) + "\n"
        + json.dumps({"email": "bob@exämple.test", "first": "B"}) + "\n")
    a, rows = exclusions(d, "r.jsonl")
    assert a["to_deliver"] == 3 and rows == []
    assert a["smtputf8"] == 1  # only the UTF-8 local part needs SMTPUTF8; the IDN is A-labels
    assert "1 recipient(s) have a UTF-8 local part and need SMTPUTF8" in a["warnings"]


# ------------------------------------------------------------------ header injection


@pytest.mark.parametrize("value", ["A\r\nBcc: evil@evil.example", "A\nBcc: x@y", "A\rB",
                                   "A\x00B", "A\u2028B", "A\u0085B"])
def test_header_injection_through_a_field(d, value):
    (d / "r.jsonl").write_text(json.dumps({"email": "a@x.example", "first": value}) + "\n")
    a, rows = exclusions(d, "r.jsonl")
    assert a["to_deliver"] == 0
    assert rows == [{"line": 1, "email": "a@x.example", "reason": "invalid_field",
                     "detail": "field 'first' would inject a line"}]


def test_header_injection_through_the_envelope_sender(d):
    res = analyze(d, "ok.csv", "--from", "a@b.example\r\nRCPT TO:<x@y>", code=1)
    assert error_of(res) == (
        "envelope sender 'a@b.example\\r\\nRCPT TO:<x@y>' is not a valid address "
        "(control character)")


def test_header_injection_through_the_from_header_of_the_template(d):
    (d / "f.eml").write_bytes(b"From: {{first}}\nTo: {{email}}\nSubject: s\n\nhi\n")
    (d / "r.jsonl").write_text(json.dumps({"email": "a@x.example",
                                           "first": "x@y.example\r\nBcc: e@vil"}) + "\n")
    res = analyze(d, "r.jsonl", code=None, message="f.eml")
    # either the template is refused (From must be literal) or the row is excluded
    assert res.exit_code in (0, 1)
    if res.exit_code == 0:
        assert "Invalid personalisation field  1" in res.output or "to deliver:  0" in res.output


# ------------------------------------------------------------------ templates


def test_template_without_from(d):
    (d / "t.eml").write_bytes(b"To: {{email}}\nSubject: s\n\nhi\n")
    assert error_of(analyze(d, "ok.csv", message="t.eml", code=1)) == (
        "message has no From header (RFC 5322 requires one)")


def test_template_without_subject_is_a_warning(d):
    (d / "t.eml").write_bytes(b"From: a@shop.example\nTo: {{email}}\n\nhi\n")
    res = analyze(d, "ok.csv", message="t.eml", code=0)
    assert "  warning: no Subject header" in res.output.splitlines()


def test_template_with_unknown_field(d):
    (d / "t.eml").write_bytes(b"From: a@shop.example\nSubject: {{nope}}\n\nhi\n")
    assert error_of(analyze(d, "ok.csv", message="t.eml", code=1)) == (
        "the message uses {{nope}} but the recipients file has no such column "
        "(columns: first)")


def test_template_without_headers(d):
    (d / "t.eml").write_bytes(b"just a body, no header at all\n")
    res = analyze(d, "ok.csv", message="t.eml", code=1)
    assert error_of(res) == ("message file must start with RFC 5322 headers; bad header line "
                             "'just a body, no header at all'")


def test_8bit_body_without_mime_declaration_gets_one():
    t = Template("From: a@shop.example\nTo: {{email}}\nSubject: caf\u00e9\n\n"
                 "body \u00e9 8bit\n".encode())
    out = t.render({"email": "a@x.example"})
    head, _, body = out.partition(b"\r\n\r\n")
    assert b"MIME-Version: 1.0" in head
    assert b"charset=utf-8" in head.lower() and b"Content-Transfer-Encoding: 8bit" in head
    assert "é".encode() in body
    assert b"caf\xc3\xa9" not in head  # the 8-bit Subject is encoded (RFC 2047)


def test_50mb_message_is_refused(d):
    big = b"From: a@shop.example\nTo: {{email}}\nSubject: big\n\n" + b"x" * (50 * 1024 * 1024)
    (d / "big.eml").write_bytes(big)
    assert error_of(analyze(d, "ok.csv", message="big.eml", code=1)) == (
        f"message is {len(big):,} bytes, above the limit of 10,485,760 bytes "
        "([delivery] max_message_bytes); most receivers refuse mail over 10-25 MB")


# ------------------------------------------------------------------ configuration


@pytest.mark.parametrize("toml,message", [
    ("[smtp]\nbogus = 1\n", "Object contains unknown field `bogus` - at `$.smtp`"),
    ("[smtp]\nport = \"x\"\n", "Expected `int`, got `str` - at `$.smtp.port`"),
    ("[nosuch]\na = 1\n", "Object contains unknown field `nosuch`"),
    ("[smtp]\ntls = \"sometimes\"\n", "smtp tls 'sometimes' is not one of none, "
     "opportunistic, required, verify - at `$.smtp`"),
    ("[delivery]\nvalidity_s = -5\n", "delivery validity_s -5 must be > 0 and at most "
     "max_validity_s (302400) - at `$.delivery`"),
])
def test_config_unknown_keys_and_wrong_types(d, toml, message):
    (d / "c.toml").write_text(toml)
    res = analyze(d, "ok.csv", "--config", d / "c.toml", code=1)
    err = error_of(res)
    assert err.startswith(f"invalid configuration in {d / 'c.toml'}: ")
    if message:
        assert err.endswith(message)


def test_config_not_toml(d):
    (d / "c.toml").write_text("[smtp\nport=1\n")
    assert error_of(analyze(d, "ok.csv", "--config", d / "c.toml", code=1)) == (
        f"config file {d / 'c.toml'} is not valid TOML: Expected ']' at the end of a table "
        "declaration (at line 1, column 6)")


def test_validity_out_of_range(d):
    res = cli("inject", "--route", "domain", "--recipients", d / "ok.csv", "--message",
              d / "m.eml", "--spool", d / "spool", "--validity", "5d", code=1)
    assert error_of(res) == "validity 432000s out of range (max 302400s = 3.5 days)"


# ------------------------------------------------------------------ DKIM keys


def _dkim_conf(d, key_file: str, algorithm: str = "ed25519-sha256") -> Path:
    p = d / "dkim.toml"
    p.write_text(f'[[dkim.keys]]\ndomain = "shop.example"\nselector = "s1"\n'
                 f'key_file = "{key_file}"\nalgorithm = "{algorithm}"\n')
    return p


@pytest.fixture
def key(d) -> Path:
    k = d / "k.pem"
    cli("dkim", "keygen", "--domain", "shop.example", "--selector", "s1", "--algorithm",
        "ed25519-sha256", "--out", k, code=0)
    return k


def test_dkim_key_world_readable(d, key):
    key.chmod(0o644)
    res = cli("dkim", "records", "--config", _dkim_conf(d, str(key)), code=1)
    assert error_of(res) == (
        f"DKIM key file {key} is readable by other users (mode 0644); run 'chmod 600 "
        f"{key}' or set [dkim] allow_insecure_key_permissions = true")


def test_dkim_key_garbage(d):
    k = d / "g.pem"
    k.write_text("not a key\n")
    k.chmod(0o600)
    res = cli("dkim", "records", "--config", _dkim_conf(d, str(k)), code=1)
    assert error_of(res) == (
        f"{k}: DKIM key for s1._domainkey.shop.example: not a valid private key (expected "
        "PEM, DER or a base64 Ed25519 seed)")
    assert "not a key" not in res.output  # key material is never echoed


def test_dkim_key_missing_or_directory(d):
    res = cli("dkim", "records", "--config", _dkim_conf(d, str(d / "missing.pem")), code=1)
    assert error_of(res) == (
        f"cannot open DKIM key file {d / 'missing.pem'}: No such file or directory")
    res = cli("dkim", "records", "--config", _dkim_conf(d, str(d)), code=1)
    assert error_of(res) == f"DKIM key file {d} is not a regular file"


def test_dkim_key_wrong_algorithm(d, key):
    res = cli("dkim", "records", "--config", _dkim_conf(d, str(key), "rsa-sha256"), code=1)
    assert error_of(res) == (
        f"{key}: DKIM key for s1._domainkey.shop.example: algorithm rsa-sha256 needs an RSA "
        "key, got an Ed25519 key")


def test_dkim_key_unreadable(d, key):
    """Root reads any file: the child runs without CAP_DAC_OVERRIDE/READ_SEARCH, so the
    file's mode 000 applies to it as to any user."""
    key.chmod(0o000)
    conf = _dkim_conf(d, str(key))
    code = "from fastmta.cli import main; import sys; main(['dkim','records','--config',sys.argv[1]])"
    cmd = [sys.executable, "-c", code, str(conf)]
    if os.geteuid() == 0:
        cmd = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"] + cmd
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30,
                       env=dict(os.environ, PYTHONPATH=SRC))
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        f"Error: cannot open DKIM key file {key}: Permission denied")


# ------------------------------------------------------------------ spool directory


def test_spool_path_through_a_file(d):
    (d / "afile").write_text("")
    res = cli("inject", "--route", "domain", "--recipients", d / "ok.csv", "--message",
              d / "m.eml", "--spool", d / "afile" / "spool", code=1)
    assert error_of(res) == (f"cannot create the spool {d / 'afile' / 'spool'}: a part of "
                             "the path is a file, not a directory")


@pytest.fixture
def ro_mount(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    mnt = tmp_path / "ro"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount tmpfs: {r.stderr}")
    (mnt / "spool").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_spool_on_a_read_only_filesystem(d, ro_mount):
    res = cli("inject", "--route", "domain", "--recipients", d / "ok.csv", "--message",
              d / "m.eml", "--spool", ro_mount / "spool", code=1)
    assert error_of(res) == (
        f"cannot open the spool {ro_mount / 'spool'}: {ro_mount / 'spool'}: Read-only file "
        "system (the spool directory must be writable by this user)")
    res = cli("inject", "--route", "domain", "--recipients", d / "ok.csv", "--message",
              d / "m.eml", "--spool", ro_mount / "new", code=1)
    assert error_of(res) == (
        f"cannot create the spool directory {ro_mount / 'new'}: Read-only file system")
