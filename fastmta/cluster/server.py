"""A throwaway ``redis-server`` on a loopback port in a temporary directory.

Used by the tests and ``fastmta bench --cluster redis`` (never by production nodes,
which are given a ``[cluster] redis_url``).  ``kill()`` is a SIGKILL (no save);
``start()`` again restarts on the same port, empty unless ``persist`` was asked.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from fastmta.errors import FastMTAError


def _free_port(below: int = 0) -> int:
    """A free loopback port (``below``: under it, e.g. a cluster node's, whose bus port
    is 10,000 higher)."""
    if not below:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20_000, below)
        try:
            for p in (port, port + 10_000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise FastMTAError("no free loopback port pair for a Redis Cluster node")


class RedisServer:
    """``with RedisServer() as srv: srv.url``."""

    def __init__(self, port: int = 0, persist: bool = False,
                 extra: tuple[str, ...] = ()) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise FastMTAError("redis-server is not installed (Debian package redis-server)")
        self.exe = exe
        self.port = port or _free_port()
        self.persist = persist
        self.extra = extra
        self.dir = Path(tempfile.mkdtemp(prefix="fastmta-redis-"))
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        args = [self.exe, "--bind", "127.0.0.1", "--port", str(self.port),
                "--dir", str(self.dir), "--save", "", "--protected-mode", "yes",
                "--daemonize", "no", "--loglevel", "warning",
                "--logfile", str(self.dir / "redis.log")]
        if self.persist:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        args += list(self.extra)
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise FastMTAError(f"redis-server exited: {self.log()[-500:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            time.sleep(0.02)
        raise FastMTAError(f"redis-server did not answer on port {self.port}")

    def log(self) -> str:
        p = self.dir / "redis.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def kill(self) -> None:
        """SIGKILL: the server dies at once (an outage, not a shutdown)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisClusterServers:
    """``n`` cluster-enabled ``redis-server`` primaries on loopback, joined with
    ``redis-cli --cluster create`` (no replicas): ``with RedisClusterServers() as c:
    c.url`` (any node's URL; ``redis.RedisCluster`` discovers the others)."""

    def __init__(self, n: int = 3) -> None:
        self.servers = [RedisServer(port=_free_port(below=55_535), extra=("--cluster-enabled", "yes",
                                           "--cluster-config-file", "nodes.conf",
                                           "--cluster-node-timeout", "5000"))
                        for _ in range(n)]

    @property
    def url(self) -> str:
        return self.servers[0].url

    def start(self, timeout_s: float = 30.0) -> RedisClusterServers:
        try:
            return self._start(timeout_s)
        except BaseException:
            self.__exit__()  # none of the servers started is left running
            raise

    def _start(self, timeout_s: float) -> RedisClusterServers:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise FastMTAError("redis-cli is not installed (Debian package redis-tools)")
        for s in self.servers:
            s.start()
        subprocess.run([cli, "--cluster", "create",
                        *[f"127.0.0.1:{s.port}" for s in self.servers],
                        "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, capture_output=True, timeout=timeout_s)
        deadline = time.monotonic() + timeout_s
        for s in self.servers:
            while True:
                out = subprocess.run([cli, "-p", str(s.port), "cluster", "info"],
                                     capture_output=True, text=True, timeout=5).stdout
                if "cluster_state:ok" in out:
                    break
                if time.monotonic() > deadline:
                    raise FastMTAError(f"redis cluster not ok: {out[:200]}")
                time.sleep(0.05)
        return self

    def __enter__(self) -> RedisClusterServers:
        return self.start()

    def __exit__(self, *exc) -> None:
        for s in self.servers:
            s.__exit__(*exc)
