"""Security (issue #9): nothing from user data puts CR, LF or NUL on the wire (checked on
the bytes a loopback server received), TLS is enforced as configured and reported per
recipient, private keys never reach output or logs, and there is no inbound listener."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner

from fastmta.cli import main
from fastmta.config import Config
from fastmta.delivery import Template
from fastmta.delivery.template import HeaderInjectionError
from fastmta.dns.resolver import MxHost, MxResult
from fastmta.engine.scheduler import Scheduler
from fastmta.engine.sites import Job
from fastmta.errors import LocalProtocolError
from fastmta.records import Result, WorkItem
from fastmta.sim.certs import make_self_signed, server_context
from fastmta.smtp.messages import Envelope
from fastmta.spool import Spool
from smtputil import ScriptServer

pytestmark = pytest.mark.timeout(60)

SRC = Path(__file__).resolve().parents[2] / "src" / "fastmta"


class Capture:
    """A loopback SMTP server that records every byte it receives (after TLS too)."""

    def __init__(self, tls: tuple[str, str] | None = None) -> None:
        self.raw = bytearray()
        self.messages: list[bytes] = []
        self.tls = tls
        self.tls_used = False

    async def handler(self, reader, writer) -> None:
        writer.write(b"220 capture.test ESMTP\r\n")
        await writer.drain()
        while True:
            line = await reader.readline()
            if not line:
                return
            self.raw += line
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                caps = [b"capture.test", b"8BITMIME"] + ([b"STARTTLS"] if self.tls and
                                                         not self.tls_used else [])
                writer.write(b"".join(b"250-" + c + b"\r\n" for c in caps[:-1])
                             + b"250 " + caps[-1] + b"\r\n")
            elif verb == b"STAR":
                writer.write(b"220 go ahead\r\n")
                await writer.drain()
                await writer.start_tls(server_context(*self.tls))
                self.tls_used = True
                continue
            elif verb == b"DATA":
                writer.write(b"354 go\r\n")
                await writer.drain()
                data = await reader.readuntil(b"\r\n.\r\n")
                self.raw += data
                self.messages.append(data)
                writer.write(b"250 2.0.0 queued\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                await writer.drain()
                return
            else:
                writer.write(b"250 ok\r\n")
            await writer.drain()


def deliver(items: list[WorkItem], template: bytes, fields: dict[str, dict], *,
            tls: str = "none", cert: tuple[str, str] | None = None):
    """Run the scheduler for ``items`` against a Capture server; returns (results, cap)."""
    cap = Capture(tls=cert)

    async def go():
        async with ScriptServer(cap.handler) as srv:
            r = msgspec.structs.replace
            base = Config()
            cfg = r(base, smtp=r(base.smtp, port=srv.port, tls=tls, command_timeout_s=5.0,
                                 ehlo_name="sender.test"))
            results = []
            done = asyncio.Event()

            def on_result(job, res):
                results.append(res)
                if len(results) == len(items):
                    done.set()

            tpl = Template(template)
            sched = Scheduler(cfg, [], on_result,
                              lambda it: tpl.render(fields[it.email]),
                              is_static=lambda did: False)
            mx = MxResult(domain="b.test", site="mx.b.test",
                          hosts=[MxHost("mx.b.test", 10, ["127.0.0.1"])])
            site = sched.site_for(mx)
            for it in items:
                sched.enqueue(site, Job(it))
            await asyncio.wait_for(done.wait(), 20)
            await sched.stop()
            return results

    return asyncio.run(go()), cap


def item(i: int, email: str) -> WorkItem:
    return WorkItem(key=i.to_bytes(8, "big"), delivery_id=1, rcpt_id=i, email=email,
                    shard=0, mail_from="news@sender.example",
                    expires_ms=int(time.time() * 1000) + 600_000)


def assert_clean_wire(raw: bytes) -> None:
    """Every line on the wire ends in CRLF; no bare CR, bare LF or NUL anywhere."""
    assert b"\x00" not in raw
    assert re.search(rb"\r(?!\n)", raw) is None, "bare CR on the wire"
    assert re.search(rb"(?<!\r)\n", raw) is None, "bare LF on the wire"


# ------------------------------------------------------------------ the wire


def test_user_data_cannot_smuggle_lines_onto_the_wire():
    # a template with bare CR/LF and a dot line (operator data), fields with tricky but
    # legal values (user data): everything normalised, dot-stuffed, one message each
    tpl = (b"From: news@sender.example\nTo: {{email}}\nSubject: Hi {{first}}\n\n"
           b"Hello {{first}}\r.\nline with bare CR\rand LF\n.\n..two dots\n{{note}}\n")
    fields = {
        "a@b.test": {"email": "a@b.test", "first": "Ann", "note": ". a dot first"},
        "c@b.test": {"email": "c@b.test", "first": "QUIT", "note": "DATA"},
    }
    results, cap = deliver([item(1, "a@b.test"), item(2, "c@b.test")], tpl, fields)
    assert [r.outcome for r in results] == ["sent", "sent"]
    assert_clean_wire(bytes(cap.raw))
    assert len(cap.messages) == 2
    for m in cap.messages:
        assert m.count(b"\r\n.\r\n") == 1 and m.endswith(b"\r\n.\r\n")  # only the end
        assert b"\r\n..\r\n" in m and b"\r\n...two dots" in m  # stuffed
    commands = [ln for ln in bytes(cap.raw).split(b"\r\n") if ln[:4] in (b"MAIL", b"RCPT")]
    assert commands == [b"MAIL FROM:<news@sender.example>", b"RCPT TO:<a@b.test>",
                        b"MAIL FROM:<news@sender.example>", b"RCPT TO:<c@b.test>"] or \
        sorted(commands) == sorted([b"MAIL FROM:<news@sender.example>"] * 2
                                   + [b"RCPT TO:<a@b.test>", b"RCPT TO:<c@b.test>"])


@pytest.mark.parametrize("value", ["x\r\nBcc: evil@evil.example", "x\nBcc: e@v", "x\rBcc: e",
                                   "x\x00y"])
def test_render_refuses_line_breaks_and_nul_in_header_fields(value):
    """Defence in depth: even when analysis is bypassed (the Python API), rendering
    refuses a field that would add a header line."""
    tpl = Template(b"From: a@sender.example\nTo: {{email}}\nSubject: {{first}}\n\nhi\n")
    with pytest.raises(HeaderInjectionError):
        tpl.render({"email": "a@b.test", "first": value})


@pytest.mark.parametrize("addr", ["a@b.test\r\nRCPT TO:<evil@evil.example>", "a@b.test\n",
                                  "a@b.test\x00", "a@b.test> SIZE=1", "<a@b.test"])
def test_envelope_arguments_refuse_control_characters(addr):
    with pytest.raises(LocalProtocolError):
        Envelope("s@a.test", [addr], b"x")
    with pytest.raises(LocalProtocolError):
        Envelope(addr, ["r@b.test"], b"x")


# ------------------------------------------------------------------ TLS reported


def test_tls_is_reported_per_recipient_and_in_the_log(tmp_path):
    cert = make_self_signed(tmp_path / "c", names=["mx.b.test"])
    tpl = b"From: news@sender.example\nTo: {{email}}\nSubject: s\n\nhi\n"
    results, cap = deliver([item(1, "a@b.test")], tpl, {"a@b.test": {"email": "a@b.test"}},
                           tls="opportunistic", cert=cert)
    [res] = results
    assert cap.tls_used and res.outcome == "sent"
    assert res.tls.startswith("TLSv1.") and len(res.tls.split()) == 2, res.tls
    plain, _ = deliver([item(1, "a@b.test")], tpl, {"a@b.test": {"email": "a@b.test"}})
    assert plain[0].outcome == "sent" and plain[0].tls == ""
    # the spool keeps it: event log and the accounting export
    sp = Spool.open(tmp_path / "spool")
    try:
        from fastmta.records import DeliveryRecord, RecipientIn
        did = sp.create_delivery(DeliveryRecord(mail_from="news@sender.example"), tpl)
        sp.add_recipients(did, [RecipientIn(email="a@b.test", shard=0, line=2)])
        sp.set_state(did, "active")
        [w] = sp.lease(range(64), "t", 10)
        sp.commit([Result(key=w.key, outcome="sent", code=250, tls=res.tls)])
        out = CliRunner().invoke(main, ["log", str(did), "--attempts", "--format", "jsonl", "--spool",
                                        str(tmp_path / "spool")])
        rows = [msgspec.json.decode(x) for x in out.output.splitlines() if x.strip()]
        assert rows and rows[-1]["dlvTls"] == res.tls
    finally:
        sp.close()


# ------------------------------------------------------------------ private keys


def test_private_key_never_reaches_output_or_logs(tmp_path, caplog):
    key = tmp_path / "k.pem"
    runner = CliRunner()
    r = runner.invoke(main, ["dkim", "keygen", "--domain", "shop.example", "--selector", "s1",
                             "--out", str(key), "--bits", "1024"])
    assert r.exit_code == 0, r.output
    pem = key.read_text()
    body = "".join(pem.strip().splitlines()[1:-1])
    chunks = [body[i:i + 24] for i in range(0, len(body) - 24, 24)]
    conf = tmp_path / "c.toml"
    conf.write_text(f'[[dkim.keys]]\ndomain = "shop.example"\nselector = "s1"\n'
                    f'key_file = "{key}"\n')
    msg = tmp_path / "m.eml"
    msg.write_bytes(b"From: a@shop.example\r\nTo: b@x.example\r\nSubject: s\r\n\r\nhi\r\n")
    outputs = [r.output]
    with caplog.at_level(logging.DEBUG):
        for args in (["dkim", "records", "--config", str(conf)],
                     ["dkim", "sign", "--config", str(conf), str(msg)]):
            res = runner.invoke(main, args)
            assert res.exit_code == 0, res.output
            outputs.append(res.output)
        # a broken key: the error names the file, never its content
        key.write_text(pem.replace("A", "#", 5))
        res = runner.invoke(main, ["dkim", "records", "--config", str(conf)])
        assert res.exit_code == 1
        outputs.append(res.output)
    everything = "\n".join(outputs) + "\n" + caplog.text
    assert "PRIVATE KEY" not in everything
    assert not any(c in everything for c in chunks)


# ------------------------------------------------------------------ no inbound relay


def test_no_inbound_smtp_listener_outside_the_simulator():
    """fastmta is outbound only: no module except the simulated internet (a test tool)
    opens a listening socket, so it cannot be an open relay."""
    offenders = []
    for p in SRC.rglob("*.py"):
        if "sim" in p.relative_to(SRC).parts:
            continue
        text = p.read_text()
        for pat in ("start_server(", "create_server(", ".listen(", "SMTPServer",
                    "aiosmtpd"):
            if pat in text:
                offenders.append(f"{p.relative_to(SRC)}: {pat}")
    assert offenders == []
