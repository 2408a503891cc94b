"""A disk-backed set of 64-bit digests for analysing inputs larger than memory.

Used by ``fastmta analyze`` to find duplicates in a 10M-line file with flat memory: a
throw-away LMDB environment in a temporary directory, no fsync, removed on close.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

import lmdb

from fastmta.spool.base import dedupe_hash, unmap_file_pages


class ScratchSet:
    """``add(address) -> bool`` (False if it was already there); batched transactions."""

    def __init__(self, *, map_size: int = 4 * 1024**3, batch: int = 50_000, dir: str | None = None) -> None:
        self._dir = tempfile.mkdtemp(prefix="fastmta-scratch-", dir=dir)
        # writemap: dirty pages are the file's own (page cache), not malloc'd copies --
        # random inserts touch most leaf pages per batch, and with copies the process
        # kept about the set's size in anonymous memory (issue #9: ~11 bytes/address)
        self._env = lmdb.open(self._dir, map_size=map_size, sync=False, metasync=False,
                              writemap=True, readahead=False, max_dbs=2, lock=False)
        # one key, 8-byte digests as sorted DUPFIXED values: dense pages
        self._db = self._env.open_db(b"seen", dupsort=True, dupfixed=True)
        self._data = os.path.join(self._dir, "data.mdb")
        self._batch = batch
        self._n = 0
        self._txn: Any = None

    def add(self, address: str) -> bool:
        if self._txn is None:
            self._txn = self._env.begin(write=True)
        added = self._txn.put(b"s", dedupe_hash(address), dupdata=False, db=self._db)
        self._n += 1
        if self._n >= self._batch:
            self._txn.commit()
            self._txn = None
            self._n = 0
            unmap_file_pages(self._data)
        return added

    def close(self) -> None:
        if self._txn is not None:
            self._txn.abort()
            self._txn = None
        self._env.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> ScratchSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
