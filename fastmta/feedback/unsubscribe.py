"""One-click unsubscribe (RFC 8058): ``POST /u/TOKEN`` with the body
``List-Unsubscribe=One-Click`` unsubscribes (200); ``GET /u/TOKEN`` shows a small page with
a confirmation button and changes nothing (link scanners and prefetchers GET URLs).
A token that does not verify is a 404; nothing else is served.  Loopback by default
(put a TLS-terminating proxy in front: the List-Unsubscribe URL must be HTTPS)."""

from __future__ import annotations

import asyncio
import html
import urllib.parse

from fastmta.feedback.apply import Processor
from fastmta.feedback.tokens import verify

_MAX_BODY = 4096
_PAGE = ("<!doctype html><html><head><meta charset='utf-8'><title>Unsubscribe</title></head>"
         "<body><p>Unsubscribe {who} from these mailings?</p>"
         "<form method='post' action='/u/{tok}'>"
         "<input type='hidden' name='List-Unsubscribe' value='One-Click'>"
         "<button type='submit'>Unsubscribe</button></form></body></html>")


class UnsubscribeServer:
    """A minimal HTTP/1.1 server for ``/u/TOKEN`` (commits through the listener's
    group committer, so a 200 means durable)."""

    def __init__(self, proc: Processor, committer) -> None:
        self.proc = proc
        self.committer = committer
        self.server: asyncio.AbstractServer | None = None
        self.stats = {"post": 0, "get": 0, "bad": 0}

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self.server = await asyncio.start_server(self._client, host, port, limit=8192)
        s = self.server.sockets[0].getsockname()
        return s[0], s[1]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, body, ctype = await asyncio.wait_for(self._handle(reader, writer), 30)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError, ValueError):
            status, body, ctype = 400, b"bad request\n", "text/plain"
        head = (f"HTTP/1.1 {status} {_REASON.get(status, 'Error')}\r\n"
                f"Content-Type: {ctype}; charset=utf-8\r\nContent-Length: {len(body)}\r\n"
                "Cache-Control: no-store\r\nConnection: close\r\n\r\n")
        try:
            writer.write(head.encode() + body)
            await writer.drain()
            writer.close()
            await writer.wait_closed()
        except (ConnectionError, OSError):
            pass

    async def _handle(self, reader, writer) -> tuple[int, bytes, str]:
        line = (await reader.readuntil(b"\r\n")).decode("latin-1").strip()
        method, _, rest = line.partition(" ")
        target = rest.rpartition(" ")[0] or rest
        headers: dict[str, str] = {}
        while True:
            h = (await reader.readuntil(b"\r\n")).decode("latin-1")
            if h in ("\r\n", "\n"):
                break
            k, _, v = h.partition(":")
            headers[k.strip().lower()] = v.strip()
            if len(headers) > 100:
                raise ValueError("too many headers")
        path = urllib.parse.urlsplit(target).path
        if not path.startswith("/u/"):
            return 404, b"not found\n", "text/plain"
        tok = path[3:]
        ids = verify(self.proc.key, tok)
        if ids is None:
            self.stats["bad"] += 1
            return 404, b"unknown or invalid unsubscribe link\n", "text/plain"
        if method == "GET" or method == "HEAD":
            self.stats["get"] += 1
            rcpt = self.proc.spool.recipient(*ids)
            who = html.escape(rcpt.email) if rcpt is not None else "this address"
            return 200, _PAGE.format(who=who, tok=html.escape(tok)).encode(), "text/html"
        if method != "POST":
            return 405, b"method not allowed\n", "text/plain"
        n = int(headers.get("content-length", "0") or 0)
        if n < 0 or n > _MAX_BODY:
            return 413, b"body too large\n", "text/plain"
        body = await reader.readexactly(n) if n else b""
        form = urllib.parse.parse_qs(body.decode("latin-1"))
        if form.get("List-Unsubscribe") != ["One-Click"]:
            return 400, b"expected List-Unsubscribe=One-Click\n", "text/plain"
        self.stats["post"] += 1
        rec = await self.committer.submit(b"", source="http",
                                          peer=str((writer.get_extra_info("peername") or ["?"])[0]),
                                          unsubscribe_token=tok)
        if not rec.matched:
            return 404, b"unknown recipient\n", "text/plain"
        return 200, b"unsubscribed\n", "text/plain"


_REASON = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           413: "Payload Too Large"}
