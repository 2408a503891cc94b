"""Helpers for the HTTP tests: CSV bodies, uploads, the CLI report, SSE parsing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from pathutil import package_parent

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
