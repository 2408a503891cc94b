"""Shared pieces of the feedback tests: a spool with a sent delivery and its tokens."""

from __future__ import annotations

import msgspec
from helpers import make_delivery, open_spool

from fastmta.config import Config, FeedbackConfig
from fastmta.feedback.apply import Processor
from fastmta.feedback.tokens import Tokens
from fastmta.records import Result
from fastmta.spool import keys as K

DOMAIN = "bounces.example.com"
ORIG_TPL = ("From: News <news@sender.example>\r\nTo: {email}\r\nSubject: Hi\r\n"
            "Message-ID: {mid}\r\nReturn-Path: <{rp}>\r\n\r\nbody\r\n")


def feedback_config(**kw) -> Config:
    fb = FeedbackConfig(enabled=True, domains=[DOMAIN], **kw)
    return msgspec.structs.replace(Config(), feedback=fb)


def sent_delivery(path: str, n: int, *, sent: int | None = None):
    """A spool, a delivery of ``n`` recipients of which ``sent`` (default all) got a 250."""
    sp = open_spool(path)
    did = make_delivery(sp, n, shards=1)
    items = sp.lease([0], "t", n)
    k = n if sent is None else sent
    res = [Result(key=it.key, outcome="sent", code=250, mx="gmail-smtp-in.l.google.com [127.0.0.9]")
           for it in items[:k]]
    sp.commit(res)
    return sp, did, items


def tokens_for(sp) -> Tokens:
    return Tokens(sp.feedback_key(), DOMAIN, unsubscribe_url="https://u.example.com")


def original(tok: Tokens, did: int, rid: int, email: str) -> bytes:
    t = tok.token(did, rid)
    return ORIG_TPL.format(email=email, mid=tok.message_id(t), rp=tok.return_path(t)).encode()


def processor(sp, **kw) -> Processor:
    return Processor(sp, feedback_config(**kw))


def rid_of(item) -> int:
    return K.unpack_rcpt(item.key)[1]
