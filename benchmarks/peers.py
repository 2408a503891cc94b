"""Real peers for side-by-side benchmarks: a private Postfix relay instance and smtp-sink.

Everything binds to loopback.  The Postfix instance lives in its own directory
(config, queue, data, log), listens on ``127.0.0.1:<port>`` and relays every domain
through a transport map (``domain smtp:[ip]:port``): Postfix's SMTP client cannot use a
DNS server on a custom port, so the relay skips MX lookups -- say so when reporting.

Running a Postfix instance needs root (it drops privileges to the ``postfix`` user) and
the Debian ``postfix`` package (.ci/run installs it).  The system instance is never
touched except for ``alternate_config_directories`` in /etc/postfix/main.cf, which
Postfix requires to list any other config directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
POSTCONF = shutil.which("postconf") or "/usr/sbin/postconf"
SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"


def postfix_available() -> str | None:
    """None when a private Postfix can run here, else the reason it cannot."""
    if os.geteuid() != 0:
        return "a private Postfix instance needs root"
    for tool in (POSTFIX, POSTCONF):
        if not os.path.exists(tool):
            return f"{tool} not found (apt-get install postfix)"
    return None


def _allow_config_dir(conf: Path) -> None:
    default = Path("/etc/postfix/main.cf")
    if not default.exists():  # a "No configuration" install has none: postconf -e needs one
        default.write_text("# created by fastmta benchmarks/peers.py (alternate configs)\n")
    out = subprocess.run(
        [POSTCONF, "-h", "alternate_config_directories"], capture_output=True, text=True
    ).stdout.strip()
    dirs = [d for d in out.replace(",", " ").split() if d]
    if str(conf) not in dirs:
        dirs.append(str(conf))
        subprocess.run(
            [POSTCONF, "-e", f"alternate_config_directories = {' '.join(dirs)}"], check=True
        )


class PostfixRelay:
    """A private Postfix relay on loopback.

    ``routes`` maps a domain (or ``*``) to ``(ip, port)``.  Use as a context manager;
    ``stop()`` always runs and removes the instance directory unless ``keep=True``.
    """

    def __init__(
        self,
        routes: dict[str, tuple[str, int]],
        port: int = 10025,
        process_limit: int = 100,
        destination_concurrency: int | None = None,
        keep: bool = False,
        extra: dict[str, str] | None = None,
    ):
        self.routes = routes
        self.port = port
        self.process_limit = process_limit
        self.destination_concurrency = destination_concurrency
        self.keep = keep
        self.extra = dict(extra or {})  # more main.cf settings (retry policy...)
        self.root = Path(tempfile.mkdtemp(prefix="fastmta-postfix-", dir="/tmp"))
        self.conf = self.root / "conf"

    def settings(self) -> dict[str, str]:
        """The effective settings worth reporting next to the figures."""
        names = [
            "mail_version",
            "default_process_limit",
            "default_destination_concurrency_limit",
            "initial_destination_concurrency",
            "in_flow_delay",
        ]
        out = subprocess.run(
            [POSTCONF, "-c", str(self.conf), *names], capture_output=True, text=True, check=True
        ).stdout
        return dict(line.split(" = ", 1) for line in out.strip().splitlines())

    def start(self) -> PostfixRelay:
        reason = postfix_available()
        if reason:
            raise RuntimeError(reason)
        self.root.chmod(0o755)
        self.conf.mkdir()
        for sub in ("queue", "data"):
            (self.root / sub).mkdir()
        shutil.chown(self.root / "data", "postfix")
        master = Path("/etc/postfix/master.cf").read_text()
        master = master.replace("smtp      inet", f"127.0.0.1:{self.port} inet", 1)
        (self.conf / "master.cf").write_text(master)
        transport = "".join(
            f"{dom} smtp:[{ip}]:{port}\n" for dom, (ip, port) in self.routes.items()
        )
        (self.conf / "transport").write_text(transport)
        lines = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.root / "queue"),
            "data_directory": str(self.root / "data"),
            "myhostname": "relay.fastmta.test",
            "mydestination": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "relay_domains": "static:ALL",
            "transport_maps": f"texthash:{self.conf / 'transport'}",
            "smtpd_relay_restrictions": "permit_mynetworks, reject",
            "smtpd_peername_lookup": "no",
            "smtp_tls_security_level": "none",
            "smtpd_tls_security_level": "none",
            "disable_dns_lookups": "yes",
            "smtp_host_lookup": "native",
            "maillog_file_prefixes": "/tmp",
            "maillog_file": str(self.root / "maillog"),
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "default_process_limit": str(self.process_limit),
        }
        if self.destination_concurrency is not None:
            lines["default_destination_concurrency_limit"] = str(self.destination_concurrency)
        lines.update(self.extra)
        (self.conf / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in lines.items()))
        _allow_config_dir(self.conf)
        subprocess.run([POSTFIX, "-c", str(self.conf), "start"], check=True)
        return self

    def queue_size(self) -> int:
        """Messages still in the instance's queue (incoming, active, deferred, maildrop)."""
        n = 0
        for sub in ("maildrop", "incoming", "active", "deferred", "hold"):
            d = self.root / "queue" / sub
            if d.exists():
                n += sum(len(files) for _, _, files in os.walk(d))
        return n

    def wait_empty(self, timeout_s: float) -> bool:
        """Poll until the queue is empty (Postfix has no event to await); bounded."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.queue_size() == 0:
                return True
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        subprocess.run(
            [POSTFIX, "-c", str(self.conf), "stop"], capture_output=True, check=False
        )
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostfixRelay:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
