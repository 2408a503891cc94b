"""`fastmta demo` (the README's first command) end to end, in a subprocess: the
simulated internet, injection, the engine and the report, checked against the demo
world's own verdict for every recipient."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fastmta.sim.config import demo_world
from fastmta.spool import Spool
from pathutil import package_parent

ENV = dict(os.environ, PYTHONPATH=package_parent() + os.pathsep + os.environ.get("PYTHONPATH", ""))


@pytest.mark.timeout(180)
def test_demo_delivers_every_recipient_to_its_expected_end(tmp_path):
    spool_dir = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "fastmta", "demo", "--recipients", "2000", "--domains", "50",
         "--validity", "8s", "--spool", str(spool_dir), "--json"],
        env=ENV, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rep = json.loads(proc.stdout)
    assert rep["state"] == "done" and rep["pending"] == 0
    assert rep["sent"] + rep["failed"] == rep["to_deliver"] == 2000
    # every sent recipient was accepted exactly once by the simulated MX hosts
    assert rep["sim"]["messages"] == rep["sent"]
    assert {"user_unknown", "invalid_domain"} <= set(rep["by_reason"])
    assert rep["compliance"] == []  # the demo sender passes its own pre-flight
    assert "pre-flight: passed" in proc.stderr

    world = demo_world(50)
    spool = Spool.open(str(spool_dir / "spool"))
    try:
        wrong, late, deliverable = [], 0, 0
        for _rid, r in spool.recipients(rep["delivery_id"]):
            verdict, reason = world.expected(r.email)
            if verdict == "sent":
                # greylisting: sent on a retry, or expired if the 8 s ran out first
                deliverable += 1
                late += r.status_name == "failed"
                ok = r.status_name == "sent" or (r.status_name == "failed"
                                                 and r.reason == "expired")
            elif verdict == "failed":
                ok = r.status_name == "failed" and r.reason == reason
            else:  # soft: retried until the validity ends
                ok = r.status_name == "failed" and r.reason == "expired"
            if not ok:
                wrong.append((r.email, verdict, reason, r.status_name, r.reason))
        assert not wrong, wrong[:10]
        assert late <= 0.05 * deliverable, (late, deliverable)
    finally:
        Spool.close_all()
