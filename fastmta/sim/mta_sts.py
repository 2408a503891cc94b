"""The simulated internet's MTA-STS policy hosts: HTTPS on a loopback port, serving
``/.well-known/mta-sts.txt`` of ``mta-sts.<domain>`` (by the Host header) from
``WorldSpec.mta_sts`` with a certificate from the sim's own CA (``certs.py``)."""

from __future__ import annotations

import asyncio
import ssl

__all__ = ["PolicyServer"]


class PolicyServer:
    """``await start(host, port)``; ``requests`` counts the policy requests served."""

    def __init__(self, policies: dict[str, str], tls_context: ssl.SSLContext) -> None:
        self.policies = {d.lower().rstrip("."): p for d, p in policies.items()}
        self.ctx = tls_context
        self.requests = 0
        self.port = 0
        self._server: asyncio.AbstractServer | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        if not host.startswith("127.") and host != "::1":
            raise ValueError("the simulated MTA-STS server listens on loopback only")
        self._server = await asyncio.start_server(self._serve, host, port, ssl=self.ctx)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10.0)
            lines = head.decode("latin-1").split("\r\n")
            method, _, rest = lines[0].partition(" ")
            path = rest.split(" ", 1)[0]
            host = ""
            for line in lines[1:]:
                k, _, v = line.partition(":")
                if k.strip().lower() == "host":
                    host = v.strip().lower().split(":", 1)[0]
            domain = host[len("mta-sts."):] if host.startswith("mta-sts.") else ""
            policy = self.policies.get(domain)
            if method != "GET" or path != "/.well-known/mta-sts.txt" or policy is None:
                status, body = "404 Not Found", b"not found\n"
            else:
                self.requests += 1
                status, body = "200 OK", policy.encode()
            writer.write(f"HTTP/1.0 {status}\r\nContent-Type: text/plain\r\nContent-Length: "
                         f"{len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (TimeoutError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ssl.SSLError):
            pass
        finally:
            writer.close()
