"""`fastmta run` with `[feedback] listen`: the listener answers while the pool runs and
is closed with it."""

from __future__ import annotations

import asyncio
import os
import smtplib
import sys
import threading

import msgspec
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "engine"))

from engine_helpers import inject, make_config, write_inputs  # noqa: E402

from fastmta.engine import entry as engine  # noqa: E402
from fastmta.sim import SimInternet  # noqa: E402
from fastmta.sim.mx import free_port  # noqa: E402
from fastmta.sim.world import Provider, World, WorldSpec  # noqa: E402
from fastmta.spool import Spool  # noqa: E402


@pytest.mark.timeout(120)
def test_listener_runs_with_the_pool(tmp_path):
    world = World(WorldSpec(name="fbrun", providers=[Provider(name="alpha", generate=3)]))
    rcpt, msg, _ = write_inputs(tmp_path, world, 50)
    port = free_port()
    http_port = free_port()
    seen: dict[str, object] = {}

    def probe() -> None:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
                c.ehlo("probe")
                c.mail("")
                seen["relay"] = c.rcpt("x@gmail.com")[0]
            import urllib.error
            import urllib.request
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{http_port}/u/" + "a" * 21, timeout=10)
            except urllib.error.HTTPError as e:
                seen["http"] = e.code
        except OSError as exc:
            seen["error"] = exc

    async def go():
        async with SimInternet(world) as sim:
            base = make_config(sim, validity_s=20.0)
            fb = msgspec.structs.replace(base.feedback, enabled=True,
                                         domains=["bounces.run.test"],
                                         listen=f"127.0.0.1:{port}",
                                         http_listen=f"127.0.0.1:{http_port}")
            cfg = msgspec.structs.replace(base, feedback=fb)
            spool = Spool.open(tmp_path / "spool", cfg.spool)
            did = await inject(spool, cfg, rcpt, msg, 20.0)
            started = threading.Event()

            def progress(_p) -> None:
                if not started.is_set():
                    started.set()
                    t = threading.Thread(target=probe)
                    t.start()
                    seen["thread"] = t

            await asyncio.wait_for(engine.run(cfg, tmp_path / "spool", [did],
                                              progress=progress), 90)
            await asyncio.to_thread(seen["thread"].join, 20)
            return spool, did

    spool, did = asyncio.run(go())
    assert seen.get("relay") == 550, seen
    assert seen.get("http") == 404, seen  # the one-click endpoint ran too (a bad token)
    assert spool.kpis(did)["pending"] == 0
    # closed with the run
    with pytest.raises(OSError):
        smtplib.SMTP("127.0.0.1", port, timeout=5)
