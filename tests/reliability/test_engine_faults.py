"""The scheduler against a scripted server that resets the connection after the dot:
the recipient's outcome is soft (retried, at-least-once) and it is counted as a possible
duplicate in the scheduler's stats (reported by the worker heartbeat)."""

from __future__ import annotations

import asyncio
import socket
import struct
import sys
import time
from pathlib import Path

import msgspec
import pytest

from fastmta.config import Config
from fastmta.delivery import Template
from fastmta.dns.resolver import MxHost, MxResult
from fastmta.engine.scheduler import Scheduler
from fastmta.engine.sites import Job
from fastmta.records import WorkItem

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from smtputil import ScriptServer, read_line, standard_hello  # noqa: E402

BODY = b"From: a@sender.example\r\nTo: x@y\r\nSubject: t\r\n\r\nhello\r\n"


@pytest.mark.timeout(30)
def test_rst_after_dot_is_retried_and_counted_as_possible_duplicate():
    async def handler(reader, writer):
        await standard_hello(reader, writer, caps=(b"8BITMIME",))
        while True:
            line = await read_line(reader)
            if line.upper() == b"DATA":
                writer.write(b"354 go\r\n")
                await writer.drain()
                await reader.readuntil(b"\r\n.\r\n")
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
                return
            writer.write(b"250 ok\r\n")
            await writer.drain()

    async def go():
        async with ScriptServer(handler) as srv:
            r = msgspec.structs.replace
            base = Config()
            cfg = r(base, smtp=r(base.smtp, port=srv.port, tls="none", command_timeout_s=2.0,
                                 data_done_timeout_s=2.0, ehlo_name="t.test"))
            results = []
            done = asyncio.Event()

            def on_result(job, res):
                results.append(res)
                done.set()

            tpl = Template(BODY)
            sched = Scheduler(cfg, [], on_result, lambda it: tpl.render({"email": it.email}),
                              is_static=lambda did: True)
            mx = MxResult(domain="b.test", site="mx.b.test",
                          hosts=[MxHost("mx.b.test", 10, ["127.0.0.1"])])
            site = sched.site_for(mx)
            exp = int(time.time() * 1000) + 600_000
            sched.enqueue(site, Job(WorkItem(key=b"\0" * 8, delivery_id=1, rcpt_id=1,
                                             email="u@b.test", shard=0,
                                             mail_from="a@sender.example", expires_ms=exp)))
            await asyncio.wait_for(done.wait(), 10)
            await sched.stop()
            return sched, results

    sched, results = asyncio.run(go())
    [res] = results
    assert res.outcome == "soft" and res.reason == "not_connected"
    assert res.reply.endswith("(fate unknown: possible duplicate)")
    assert sched.stats.get("possible_duplicates") == 1
