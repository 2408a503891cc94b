"""Running the HTTP server: in the foreground (``fastmta serve``) or in a thread beside
the engine (``fastmta run --http``, ``fastmta demo --dashboard``)."""

from __future__ import annotations

import asyncio
import os
import threading

import uvicorn

from fastmta.config import Config
from fastmta.http.app import create_app
from fastmta.http.auth import Policy, new_token
from fastmta.http.context import DEFAULT_MAX_UPLOAD, Context

DEFAULT_LISTEN = "127.0.0.1:8025"


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8025`` for IPv6) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"--listen wants HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def resolve_token(token: str | None) -> tuple[str, bool]:
    """The token to use: given, ``FASTMTA_HTTP_TOKEN``, or a fresh one (generated=True)."""
    t = token or os.environ.get("FASTMTA_HTTP_TOKEN", "")
    return (t, False) if t else (new_token(), True)


class HttpServer:
    """One uvicorn server for one spool; ``run()`` in the foreground, or ``start()`` in a
    daemon thread and ``stop()``."""

    def __init__(self, cfg: Config, spool_path: str, listen: str = DEFAULT_LISTEN, *,
                 token: str = "", max_upload_bytes: int = DEFAULT_MAX_UPLOAD) -> None:
        self.host, self.port = parse_listen(listen)
        self.ctx = Context(cfg, spool_path, Policy(self.host, token),
                           max_upload_bytes=max_upload_bytes)
        self.token = token
        self.app = create_app(self.ctx)
        self.config = uvicorn.Config(self.app, host=self.host, port=self.port,
                                     log_level="warning", lifespan="off",
                                     timeout_graceful_shutdown=3, access_log=False)
        self.server = uvicorn.Server(self.config)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = self.bound_port or self.port
        return f"http://{host}:{port}"

    @property
    def dashboard_url(self) -> str:
        return f"{self.url}/#token={self.token}"

    @property
    def bound_port(self) -> int:
        for s in getattr(self.server, "servers", []) or []:
            for sock in s.sockets:
                return sock.getsockname()[1]
        return 0

    async def serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.ctx.stopping = asyncio.Event()
        await self.server.serve()

    def run(self) -> None:
        asyncio.run(self.serve())

    def start(self, timeout_s: float = 30.0) -> HttpServer:
        self._thread = threading.Thread(target=self.run, name="fastmta-http", daemon=True)
        self._thread.start()
        import time

        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the HTTP server did not start on {self.host}:{self.port}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self._loop is not None and self.ctx.stopping is not None:
            self._loop.call_soon_threadsafe(self.ctx.stopping.set)
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
