"""Signatures survive a real SMTP transaction: sign, send over a loopback socket with
smtplib (dot-stuffing, CRLF handling) to an aiosmtpd server, and have dkimpy verify the
bytes the server received."""

from __future__ import annotations

import smtplib
import socket
import threading

import pytest
from aiosmtpd.controller import Controller
from dkim_helpers import verify

from fastmta import dkim


class _Sink:
    def __init__(self):
        self.received: list[bytes] = []
        self.event = threading.Event()

    async def handle_DATA(self, server, session, envelope):
        self.received.append(envelope.original_content)
        self.event.set()
        return "250 OK"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def sink():
    handler = _Sink()
    controller = Controller(handler, hostname="127.0.0.1", port=_free_port(), ready_timeout=10)
    controller.start()
    try:
        yield handler, controller.port
    finally:
        controller.stop()


MESSAGES = {
    "dot_lines": b"From: news@shop.example.com\r\nTo: a@example.net\r\nSubject: dots\r\n\r\n"
    b".\r\n..\r\n.leading\r\n. \r\nend\r\n",
    "long_8bit": "From: Bücher <news@shop.example.com>\r\nTo: a@example.net\r\n"
    "Subject: Grüße\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n".encode()
    + ("ä" * 400 + "\r\n").encode()
    + b"x" * 990
    + b"\r\n\r\n\r\n",
    "no_final_crlf": b"From: news@shop.example.com\r\nTo: a@example.net\r\n\r\nlast  ",
    "empty_body": b"From: news@shop.example.com\r\nTo: a@example.net\r\nSubject: e\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(MESSAGES))
@pytest.mark.parametrize("canon", ["relaxed/relaxed", "simple/simple"])
def test_signature_verifies_after_smtp(sink, keys, name, canon):
    handler, port = sink
    msg = MESSAGES[name]
    rsa_s = dkim.Signer("shop.example.com", "r1", keys.rsa(), canonicalization=canon)
    ed_s = dkim.Signer(
        "shop.example.com", "e1", keys.ed25519(), "ed25519-sha256", canonicalization=canon
    )
    signed = rsa_s.sign(msg) + ed_s.sign(msg) + msg
    with smtplib.SMTP("127.0.0.1", port, local_hostname="localhost", timeout=10) as client:
        client.sendmail(
            "news@shop.example.com", ["a@example.net"], signed, mail_options=["BODY=8BITMIME"]
        )
    assert handler.event.wait(10)
    (received,) = handler.received
    assert verify(received, rsa_s, ed_s, idx=0)
    assert verify(received, rsa_s, ed_s, idx=1)
