"""What every route shares: the config, the spool (through the ``WorkerPool`` facade, the
same object the Python API uses), the admin functions, the draft store and the limits."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from fastmta.api import WorkerPool
from fastmta.config import Config
from fastmta.http.auth import Policy
from fastmta.http.drafts import Drafts
from fastmta.http.rcpt_index import RecipientIndexes
from fastmta.http.timeline import Timelines

DEFAULT_MAX_UPLOAD = 512 * 1024 * 1024


@dataclass
class Context:
    cfg: Config
    spool_path: str
    policy: Policy
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD
    sse_poll_s: float = 0.25
    pool: WorkerPool = field(init=False)
    drafts: Drafts = field(init=False)
    timelines: Timelines = field(init=False)
    rcpt_indexes: RecipientIndexes = field(init=False)
    stopping: asyncio.Event | None = None
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.pool = WorkerPool(self.cfg, spool=self.spool_path).open()
        self.drafts = Drafts(self.spool_path)
        self.timelines = Timelines(self.pool.spool)
        self.rcpt_indexes = RecipientIndexes(self.pool.spool)

    @property
    def spool(self):
        return self.pool.spool

    @property
    def admin(self):
        return self.pool.admin

    def lock(self, key: str) -> asyncio.Lock:
        return self.locks.setdefault(key, asyncio.Lock())
