"""Helpers shared by the SMTP client, sim and fault tests (issue #4).

``arun(coro, timeout)`` runs a coroutine on a fresh event loop (uvloop when
FASTMTA_TEST_UVLOOP=1) under a hard timeout and fails the test when anything leaked: a
task still pending, an exception reported to the loop's exception handler, or a socket
left open by the test.  ``ScriptServer`` is a scripted SMTP peer for fault tests.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from fastmta.config import SmtpConfig


def open_sockets() -> set[int]:
    """inodes of this process's sockets (leak check)."""
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:"):
            out.add(int(link[8:-1]))
    return out


def arun(coro, timeout: float = 20.0, *, check_sockets: bool = True):
    before = open_sockets()
    errors: list = []

    async def main():
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
        try:
            return await asyncio.wait_for(coro, timeout)
        finally:
            await asyncio.sleep(0)
            me = asyncio.current_task()
            pending = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
            # let transports finish closing before judging
            for _ in range(20):
                if not pending:
                    break
                await asyncio.sleep(0.01)
                pending = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
            assert not pending, f"tasks leaked: {pending}"

    if os.environ.get("FASTMTA_TEST_UVLOOP") == "1":
        import uvloop

        factory = uvloop.new_event_loop
    else:
        factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        result = runner.run(main())
    assert not errors, f"exceptions reached the event loop: {errors}"
    if check_sockets:
        leaked = open_sockets() - before
        deadline = time.monotonic() + 3.0  # peers in threads (aiosmtpd) close late
        while leaked and time.monotonic() < deadline:
            time.sleep(0.02)
            leaked = open_sockets() - before
        assert not leaked, f"sockets leaked: {leaked}"
    return result


def fast_timeouts(**kw) -> SmtpConfig:
    """SmtpConfig with timeouts small enough for tests."""
    base = dict(connect_timeout_s=2.0, greeting_timeout_s=1.0, command_timeout_s=1.0,
                data_init_timeout_s=1.0, data_block_timeout_s=1.0, data_done_timeout_s=1.0,
                tls="none")
    base.update(kw)
    return SmtpConfig(**base)


class ScriptServer:
    """A TCP server on 127.0.0.1 whose connections run ``handler(reader, writer)``."""

    def __init__(self, handler) -> None:
        self.handler = handler
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self.tasks: set[asyncio.Task] = set()
        self.writers: set[asyncio.StreamWriter] = set()
        self.received = bytearray()

    async def __aenter__(self) -> ScriptServer:
        async def on_conn(reader, writer):
            self.writers.add(writer)
            inner = asyncio.ensure_future(self.handler(reader, writer))
            self.tasks.add(inner)
            try:
                await inner
            except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError,
                    AssertionError):
                pass
            finally:
                self.tasks.discard(inner)
                self.writers.discard(writer)
                writer.close()

        self.server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        for w in list(self.writers):
            w.transport.abort()
        for t in list(self.tasks):
            t.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=2)
        await self.server.wait_closed()


async def read_line(reader: asyncio.StreamReader) -> bytes:
    return (await reader.readline()).rstrip(b"\r\n")


async def standard_hello(reader, writer, caps=(b"PIPELINING", b"8BITMIME"),
                         greet: bool = True) -> None:
    """Greeting + EHLO answer."""
    if greet:
        writer.write(b"220 script.test ESMTP\r\n")
    line = await read_line(reader)
    assert line.upper().startswith(b"EHLO"), line
    lines = [b"script.test"] + list(caps)
    out = b"".join(b"250-" + x + b"\r\n" for x in lines[:-1]) + b"250 " + lines[-1] + b"\r\n"
    writer.write(out)
    await writer.drain()


# ------------------------------------------------------------------- Postfix peers

POSTFIX = shutil.which("postfix") or ("/usr/sbin/postfix" if os.path.exists("/usr/sbin/postfix")
                                      else None)
SMTP_SINK = shutil.which("smtp-sink") or ("/usr/sbin/smtp-sink"
                                          if os.path.exists("/usr/sbin/smtp-sink") else None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


class SmtpSink:
    """Postfix's smtp-sink on a loopback port (``pipelining=False`` passes -p)."""

    def __init__(self, pipelining: bool = True) -> None:
        self.port = free_port()
        args = [SMTP_SINK, "-u", "nobody", "-c"]
        if not pipelining:
            args.append("-p")
        args += [f"127.0.0.1:{self.port}", "256"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_port(self.port)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        if self.proc.stderr:
            self.proc.stderr.close()


_MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000    0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
tlsmgr    unix  -       -       n       1000    1       tlsmgr
"""


class PostfixServer:
    """A receiving Postfix instance (own config dir, ``postfix -c``) on a loopback port.

    Accepts mail for ``pf.test`` (discarded after queueing); recipients starting with
    ``unknown`` get 550 5.1.1, ``full`` 452 4.2.2.  ``tls`` enables STARTTLS with the
    given (cert, key); ``pipelining=False`` hides PIPELINING.
    """

    def __init__(self, *, tls: tuple[str, str] | None = None, pipelining: bool = True,
                 extra_main: list[str] | tuple[str, ...] = (),
                 conf_files: dict[str, str] | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="fastmta-postfix-"))
        self.dir.chmod(0o755)  # postfix processes run as the postfix user
        self.port = free_port()
        conf = self.dir / "conf"
        for sub in ("conf", "queue", "data"):
            (self.dir / sub).mkdir()
        shutil.chown(self.dir / "data", "postfix")
        (conf / "rcpt_access").write_text(
            "/^unknown/ 550 5.1.1 User unknown in virtual mailbox table\n"
            "/^full/ 452 4.2.2 Mailbox full\n")
        main = [
            "compatibility_level = 3.6",
            f"queue_directory = {self.dir}/queue",
            f"data_directory = {self.dir}/data",
            "mail_owner = postfix",
            "setgid_group = postdrop",
            "inet_interfaces = 127.0.0.1",
            "inet_protocols = ipv4",
            "myhostname = pf.sim.test",
            "mydestination = pf.test",
            "local_recipient_maps =",
            "local_transport = discard",
            "default_transport = discard",
            "mynetworks = 127.0.0.0/8",
            "smtpd_peername_lookup = no",
            "smtpd_recipient_restrictions = check_recipient_access "
            f"regexp:{conf}/rcpt_access, permit_mynetworks, reject_unauth_destination",
            f"maillog_file_prefixes = {self.dir}",
            f"maillog_file = {self.dir}/maillog",
            "biff = no",
            "smtpd_error_sleep_time = 0",
            "smtpd_soft_error_limit = 1000",
            "smtpd_hard_error_limit = 1000",
        ]
        if tls:
            # smtpd reads them as the postfix user: copy into our world-readable dir
            cert, key = self.dir / "cert.pem", self.dir / "key.pem"
            shutil.copyfile(tls[0], cert)
            shutil.copyfile(tls[1], key)
            key.chmod(0o644)  # a throwaway test key
            main += [f"smtpd_tls_cert_file = {cert}", f"smtpd_tls_key_file = {key}",
                     "smtpd_tls_security_level = may"]
        if not pipelining:
            main.append("smtpd_discard_ehlo_keywords = pipelining")
        keys = {line.partition("=")[0].strip() for line in extra_main}
        main = [line for line in main if line.partition("=")[0].strip() not in keys]
        main += list(extra_main)  # replaces the defaults above with the same keys
        (conf / "main.cf").write_text("\n".join(main) + "\n")
        for rel, text in (conf_files or {}).items():  # e.g. sasl/smtpd.conf
            (conf / rel).parent.mkdir(parents=True, exist_ok=True)
            (conf / rel).write_text(text)
        (conf / "master.cf").write_text(_MASTER_CF.format(port=self.port))
        r = subprocess.run([POSTFIX, "-c", str(conf), "start"], capture_output=True, text=True,
                           timeout=30)
        if r.returncode != 0:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise RuntimeError(f"postfix start failed: {r.stdout} {r.stderr} (postfix logs to "
                               "syslog before maillog_file is up)")
        wait_port(self.port)

    def log(self) -> str:
        p = self.dir / "maillog"
        return p.read_text(errors="replace") if p.exists() else ""

    def stop(self) -> None:
        subprocess.run([POSTFIX, "-c", str(self.dir / "conf"), "stop"], capture_output=True,
                       timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)
