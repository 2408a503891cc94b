"""The README's "Python API" examples, extracted and run as scripts against the simulated
internet (a config file pointing at it; loopback only)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from ops_helpers import MESSAGE, domains_of, make_config

from pathutil import package_parent

pytestmark = pytest.mark.timeout(120)
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def readme_blocks() -> list[str]:
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def config_toml(cfg) -> str:
    return (f"[dns]\nnameservers = {cfg.dns.nameservers!r}\nport = {cfg.dns.port}\n"
            f"timeout_s = 2.0\n"
            f"[smtp]\nport = {cfg.smtp.port}\nehlo_name = \"fastmta.readme\"\n"
            f"idle_timeout_s = 2.0\n"
            f"[engine]\nworkers = 1\n"
            f"[delivery]\nvalidity_s = 30.0\nretry_initial_s = 1.0\n"
            # the sim's sender zones are not compliant: report, do not block the submit
            f"[compliance]\npreflight = \"warn\"\n").replace("'", '"')


def test_readme_python_api_examples_run(sim, world, tmp_path):
    blocks = readme_blocks()
    assert len(blocks) == 2
    cfg = make_config(sim)
    (tmp_path / "fastmta.toml").write_text(config_toml(cfg))
    (tmp_path / "message.eml").write_text(MESSAGE)
    fast = domains_of(world, "fast")
    unknown = domains_of(world, "unknownusers")
    lines = ["email,name"]
    lines += [f"u{i}@{fast[0] if i % 2 else fast[i % len(fast)]},N{i}" for i in range(60)]
    lines += [f"u{i}@{unknown[0]},N{i}" for i in range(60, 100)]
    (tmp_path / "recipients.csv").write_text("\n".join(lines) + "\n")
    env = dict(os.environ, PYTHONPATH=package_parent())
    outs = []
    for i, code in enumerate(blocks):
        script = tmp_path / f"example{i}.py"
        script.write_text(code)
        r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=100, check=False)
        assert r.returncode == 0, r.stderr[-3000:]
        outs.append(r.stdout)
    out = outs[0]
    assert "delivery 1 to deliver: 100" in out
    sent = int(re.search(r"sent (\d+), failed (\d+)", out).group(1))
    failed = int(re.search(r"sent (\d+), failed (\d+)", out).group(2))
    assert sent + failed == 100 and failed == out.count("bounce u") > 0
    assert "user_unknown" in out and "vip: ['250']" in out
    assert "'sent': 1" in outs[1]
