"""A large recipients file is streamed, not loaded (issue #9).  CI size: 2,000,000 lines
generated on the fly (the 10M-line figure is in docs/reliability.md, taken with
benchmarks/memory_curve.py --command ...); the analysing process's anonymous memory (its
heap; LMDB map pages are file-backed page cache) must stay bounded."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from pathutil import package_parent

SRC = package_parent()
LINES = 2_000_000
ANON_LIMIT_MB = 150


def rss_anon_mb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


@pytest.mark.timeout(180)
def test_two_million_line_file_is_streamed(tmp_path):
    rcpt = tmp_path / "big.csv"
    with open(rcpt, "w") as f:
        f.write("email,first\n")
        block = []
        for i in range(LINES):
            block.append(f"u{i}@d{i % 5000}.example,N{i}\n")
            if len(block) == 100_000:
                f.write("".join(block))
                block = []
        f.write("".join(block))
    msg = tmp_path / "m.eml"
    msg.write_text("From: a@shop.example\nTo: {{email}}\nSubject: Hi {{first}}\n\nHi\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastmta", "analyze", "--recipients", str(rcpt), "--message",
         str(msg), "--spool", str(tmp_path / "spool"), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=SRC))
    peak = 0
    deadline = time.monotonic() + 170
    while proc.poll() is None:
        assert time.monotonic() < deadline, "analysis did not finish"
        peak = max(peak, rss_anon_mb(proc.pid))
        time.sleep(0.2)
    out, err = proc.communicate()
    assert proc.returncode == 0, err.decode()[-2000:]
    import json

    a = json.loads(out)
    assert a["recipients"] == LINES and a["to_deliver"] == LINES and a["domains"] == 5000
    print(f"\n{LINES} lines: peak anonymous RSS {peak} MB")
    assert 0 < peak < ANON_LIMIT_MB
