"""Helpers for the HTTP tests: CSV bodies, uploads, the CLI report, SSE parsing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from fastmta.sim.world import Behaviour, Provider, World, WorldSpec
from pathutil import package_parent

TOKEN = "test-token-123"
HOSTILE = ('550 5.1.1 <script>window.__pwned=1</script><img src=x '
           'onerror="window.__pwned=2"> go away')


def http_world() -> World:
    return World(WorldSpec(name="http", providers=[
        Provider(name="fast", generate=6, hosts=1),
        Provider(name="slowpoke", generate=2, hosts=1,
                 behaviour=Behaviour(reply_delay_s=0.01)),
        Provider(name="greylister", generate=2, behaviour=Behaviour(greylist_s=1.0)),
        Provider(name="unknownusers", generate=2, behaviour=Behaviour(unknown_user_rate=0.3)),
        Provider(name="hostile", generate=1, behaviour=Behaviour(rcpt_reply=HOSTILE)),
    ]))

MESSAGE = (
    "From: Sender <news@sender.example>\n"
    "To: {{email}}\n"
    "Subject: Hello {{name}}\n"
    "List-Unsubscribe: <mailto:u@sender.example>\n"
    "\n"
    "Hi {{name}}, a test message.\n"
)


def csv_text(rows: list[dict]) -> str:
    return "email,name\n" + "".join(f"{r['email']},{r.get('name', '')}\n" for r in rows)


def upload(client, recipients: str, *, filename: str = "r.csv", message: str = MESSAGE,
           **fields):
    files = {"recipients": (filename, recipients.encode(), "text/csv"),
             "message": ("m.eml", message.encode(), "message/rfc822")}
    return client.post("/api/v1/deliveries", files=files, data=fields)


def cli_report(spool_dir: str, did: int) -> dict:
    env = dict(os.environ, PYTHONPATH=package_parent())
    r = subprocess.run([sys.executable, "-m", "fastmta", "report", str(did), "--json",
                        "--spool", spool_dir], capture_output=True, text=True, env=env,
                       timeout=60, check=True)
    return json.loads(r.stdout)


def parse_sse(lines) -> list[dict]:
    """SSE frames (id, event, data) from an iterator of lines."""
    out, cur = [], {}
    for line in lines:
        if line == "":
            if "data" in cur:
                out.append(cur)
            cur = {}
        elif line.startswith(":"):
            continue
        else:
            k, _, v = line.partition(": ")
            cur[k] = v
    return out


def wait_for(cond, timeout: float = 30.0, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(step)
