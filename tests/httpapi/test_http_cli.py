"""The commands: ``fastmta serve``, ``fastmta run --http`` (engine + API in one process,
sending what the API injects) and ``fastmta demo --dashboard``, as subprocesses."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import httpx
import pytest
from http_helpers import TOKEN, cli_report, csv_text, upload, wait_for
from ops_helpers import recipients

from pathutil import package_parent

pytestmark = pytest.mark.timeout(150)
ENV = dict(os.environ, PYTHONPATH=package_parent())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(*args: str, token: str | None = TOKEN) -> subprocess.Popen:
    env = dict(ENV)
    env.pop("FASTMTA_HTTP_TOKEN", None)
    if token:
        env["FASTMTA_HTTP_TOKEN"] = token
    return subprocess.Popen([sys.executable, "-m", "fastmta", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def stop(proc: subprocess.Popen) -> tuple[int, str]:
    proc.send_signal(signal.SIGINT)
    try:
        _out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        _out, err = proc.communicate()
    return proc.returncode, err


def up(url: str) -> bool:
    try:
        return httpx.get(url + "/api/v1/deliveries", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_serve_refuses_a_public_address_without_a_token(tmp_path):
    r = subprocess.run([sys.executable, "-m", "fastmta", "serve", "--listen", "0.0.0.0:0",
                        "--spool", str(tmp_path / "s")], env={k: v for k, v in ENV.items()
                                                              if k != "FASTMTA_HTTP_TOKEN"},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "needs --token" in r.stderr


def test_run_http_sends_what_the_api_injects(sim, world, tmp_path, cfg):
    conf = tmp_path / "fastmta.toml"
    conf.write_text(f"[dns]\nnameservers = {cfg.dns.nameservers!r}\nport = {cfg.dns.port}\n"
                    f"[smtp]\nport = {cfg.smtp.port}\n[engine]\nworkers = 1\n"
                    "[delivery]\nvalidity_s = 30.0\nretry_initial_s = 1.0\n"
                    .replace("'", '"'))
    port = free_port()
    spool = str(tmp_path / "spool")
    proc = start("run", "--http", f"127.0.0.1:{port}", "--spool", spool, "--config",
                 str(conf))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: up(url) or proc.poll() is not None, timeout=60)
        assert proc.poll() is None, proc.stderr.read()
        with httpx.Client(base_url=url, timeout=30,
                          headers={"Authorization": f"Bearer {TOKEN}"}) as c:
            rows = recipients(world, 25, ["fast"], prefix="run-")
            r = upload(c, csv_text(rows), confirm="1")
            assert r.status_code == 201, r.text
            did = r.json()["delivery_id"]
            rep = wait_for(lambda: (lambda x: x if x["pending"] == 0 else None)(
                c.get(f"/api/v1/deliveries/{did}/report").json()), timeout=60)
            assert rep["sent"] == 25
            wait_for(lambda: any(s["sent"] for s in c.get("/api/v1/sites").json()["sites"]),
                     timeout=30)  # the engine's status snapshot (every status_interval_s)
    finally:
        code, err = stop(proc)
    assert "dashboard: http://127.0.0.1" in err
    assert cli_report(spool, did)["sent"] == 25


def test_demo_dashboard_serves_until_ctrl_c(tmp_path):
    port = free_port()
    spool = tmp_path / "demo"
    proc = start("demo", "--recipients", "500", "--domains", "20", "--validity", "4s",
                 "--dashboard", "--listen", f"127.0.0.1:{port}", "--spool", str(spool),
                 token=None)
    lines: list[str] = []
    try:
        while not any("still serving" in x for x in lines):
            line = proc.stderr.readline()
            assert line, "demo exited: " + "".join(lines)[-2000:]
            lines.append(line)
        url = next(x for x in lines if x.startswith("dashboard: ")).split()[1]
        assert url.startswith(f"http://127.0.0.1:{port}/#token=")
        token = url.split("#token=")[1]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            rep = c.get("/api/v1/deliveries/1/report").json()
            assert rep["pending"] == 0 and rep["sent"] + rep["failed"] == 500
            assert c.get("/").status_code == 200
            assert c.post("/api/v1/admin/suspend", json={"site": "x"}).status_code == 401
            assert c.post("/api/v1/admin/suspend", json={"site": "x"}, headers={
                "Authorization": f"Bearer {token}"}).status_code == 200
    finally:
        code, err = stop(proc)
    assert code == 0, err[-2000:]
