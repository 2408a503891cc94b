"""``fastmta sim serve`` as a process: prints its ports, writes routes, counts, stops on SIGINT."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from fastmta.smtp.messages import Envelope
from fastmta.smtp.transport import Connection
from smtputil import arun, fast_timeouts


def test_sim_serve_cli(tmp_path):
    routes = tmp_path / "routes.txt"
    # the child imports fastmta exactly as this process does (src tree or installed)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastmta", "sim", "serve", "--dns-port", "0", "--smtp-port", "0",
         "--workers", "1", "--routes", str(routes), "--duration", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        info = json.loads(proc.stdout.readline())
        assert info["dns_port"] > 0 and info["smtp_port"] > 0
        lines = routes.read_text().splitlines()
        assert f"accept.test\tsmtp:[127.0.1.1]:{info['smtp_port']}" in lines
        assert not any(x.startswith("nxdomain.test") for x in lines)

        async def go():
            conn = await Connection.open("127.0.1.1", info["smtp_port"], timeouts=fast_timeouts())
            res = await conn.send(Envelope("s@x.test", ["a@accept.test", "b@accept.test"], b"x"))
            await conn.quit()
            return res

        assert arun(go()).ok
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    stats = json.loads(out.strip().splitlines()[-1])["stats"]
    assert stats["messages"] == 1 and stats["recipients_accepted"] == 2
    assert proc.returncode == 0, err
