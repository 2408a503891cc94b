"""Node-wide limits: the workers of one supervisor share one table in shared memory.

The supervisor creates the table (``NodeTable.create``) and a lock, and hands both to
each worker (spawn arguments); every worker opens a ``ShmLimits`` on it.  One slot per
key (site or provider), found by a 64-bit hash with linear probing; when the table is
full a key shares the slot it hashes to (stricter, never looser).  Per slot:

    [0] key hash  [1] connections (sum)  [2] GCRA TAT  [3] learned limit  [4] its version
    [5] suspended until  [6] learned rate  [7] its version  [8 + w] connections of worker w
    [8 + MAX_WORKERS + w] when worker w was last refused a connection of the key

Fair shares (demand-based): while other workers were refused a connection of a key in
the last ``WANT_S``, a worker holds at most ceil(limit / workers wanting) of it, so the
worker that opened the connections first does not keep them all (a worker holding none
is never refused a free slot: no stall).

The per-worker columns let the supervisor give back the connections of a worker that
died (``NodeTable.reclaim``) before it restarts it: no slot is leaked.  Every operation
holds the lock for a few microseconds (docs/architecture.md has the measurements that
chose this over an LMDB counter or shares allocated by the supervisor).
"""

from __future__ import annotations

import hashlib
import itertools
import mmap
import os
import tempfile
import time
from collections.abc import Iterable, Sequence

from fastmta.engine.limits import Learned, Limits

SLOTS = 16384
MAX_WORKERS = 24
STRIDE = 8 + 2 * MAX_WORKERS
WANT = 8 + MAX_WORKERS
WANT_S = 1.0
_HASH, _CONNS, _TAT, _LIMIT, _LVER, _SUSP, _RATE, _RVER = range(8)


def key_hash(key: str) -> int:
    h = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big", signed=True)
    return h or 1  # 0 marks an empty slot


class NodeTable:
    """The shared-memory table (owned by the supervisor, opened by the workers)."""

    SIZE = SLOTS * STRIDE * 8

    def __init__(self, path: str, owner: bool) -> None:
        # a file mapped shared (in /dev/shm when there is one): the supervisor creates and
        # removes it; workers map it by name (multiprocessing.shared_memory would have
        # each spawned worker's resource tracker claim it)
        self.path = path
        self.owner = owner
        fd = os.open(path, os.O_RDWR)
        try:
            self.mm = mmap.mmap(fd, self.SIZE, mmap.MAP_SHARED)
        finally:
            os.close(fd)
        view = memoryview(self.mm)
        self.q = view.cast("q")
        self.d = view.cast("d")
        view.release()
        self._slots: dict[str, int] = {}

    @classmethod
    def create(cls) -> NodeTable:
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None
        fd, path = tempfile.mkstemp(prefix="fastmta-node-", dir=base)
        try:
            os.ftruncate(fd, cls.SIZE)
        finally:
            os.close(fd)
        return cls(path, owner=True)

    @classmethod
    def attach(cls, name: str) -> NodeTable:
        return cls(name, owner=False)

    @property
    def name(self) -> str:
        return self.path

    def slot(self, key: str) -> int:
        """Base index of ``key``'s slot (claimed on first use; caller holds the lock)."""
        base = self._slots.get(key)
        if base is not None:
            return base
        h = key_hash(key)
        q = self.q
        start = h % SLOTS
        for i in range(SLOTS):
            b = ((start + i) % SLOTS) * STRIDE
            if q[b + _HASH] == h:
                break
            if q[b + _HASH] == 0:
                q[b + _HASH] = h
                break
        else:
            b = start * STRIDE  # full: share (stricter, never looser)
        self._slots[key] = b
        return b

    def reclaim(self, worker: int, lock) -> int:
        """Give back every connection counted for ``worker`` (it died); returns how many."""
        q, n = self.q, 0
        col = 8 + worker
        with lock:
            for b in range(0, SLOTS * STRIDE, STRIDE):
                c = q[b + col]
                if c:
                    q[b + _CONNS] = max(0, q[b + _CONNS] - c)
                    q[b + col] = 0
                    n += c
        return n

    def close(self) -> None:
        self.q.release()
        self.d.release()
        self.mm.close()
        if self.owner:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


class ShmLimits(Limits):
    """``Limits`` over a ``NodeTable``, for worker ``worker`` of the node."""

    scope = "node"

    def __init__(self, table: NodeTable, lock, worker: int) -> None:
        if not 0 <= worker < MAX_WORKERS:
            raise ValueError(f"node limits hold at most {MAX_WORKERS} workers")
        self.t = table
        self.lock = lock
        self.col = 8 + worker
        self.worker = worker
        self.leases: dict[str, tuple[int, ...]] = {}
        self._ids = itertools.count(1)
        self._seen: dict[str, tuple[int, int, float]] = {}  # key -> (lver, rver, susp)
        self.ops = 0

    def acquire(self, keys: Sequence[str], limits: Sequence[int]) -> str | None:
        q, d, t = self.t.q, self.t.d, self.t
        now = time.monotonic()
        with self.lock:
            self.ops += 1
            bases = [t.slot(k) for k in keys]
            for b, lim in zip(bases, limits, strict=True):
                if lim < 0:
                    continue
                deny = q[b + _CONNS] >= lim
                if not deny and q[b + self.col] > 0:
                    since = now - WANT_S
                    wanting = sum(1 for w in range(MAX_WORKERS)
                                  if w != self.worker and d[b + WANT + w] > since) + 1
                    deny = wanting > 1 and q[b + self.col] >= -(-lim // wanting)
                if deny:
                    d[b + WANT + self.worker] = now
                    return None
            for b in bases:
                q[b + _CONNS] += 1
                q[b + self.col] += 1
        lease = f"n{next(self._ids)}"
        self.leases[lease] = tuple(bases)
        return lease

    def release(self, lease: str) -> None:
        bases = self.leases.pop(lease, None)
        if not bases:
            return
        q = self.t.q
        with self.lock:
            self.ops += 1
            for b in bases:
                if q[b + self.col] > 0:  # not reclaimed meanwhile
                    q[b + self.col] -= 1
                    q[b + _CONNS] = max(0, q[b + _CONNS] - 1)

    def take(self, keys, rates, n):
        d, t = self.t.d, self.t
        now = time.monotonic()
        with self.lock:
            self.ops += 1
            bases = [t.slot(k) for k in keys]
            new, wait = [], 0.0
            for b, (rate, burst) in zip(bases, rates, strict=True):
                interval = 1.0 / rate
                tat = max(d[b + _TAT], now)
                allow = tat + interval * (n - 1) - interval * (max(1, burst) - 1)
                wait = max(wait, allow - now)
                new.append(tat + interval * n)
            if wait > 1e-9:
                return wait
            for b, tat in zip(bases, new, strict=True):
                d[b + _TAT] = tat
        return 0.0

    def publish(self, key, *, limit=None, rate=None, suspend_s=0.0):
        q, d = self.t.q, self.t.d
        with self.lock:
            self.ops += 1
            b = self.t.slot(key)
            if limit is not None:
                q[b + _LIMIT] = limit
                q[b + _LVER] += 1
            if rate is not None:
                d[b + _RATE] = rate
                q[b + _RVER] += 1
            if suspend_s > 0:
                d[b + _SUSP] = max(d[b + _SUSP], time.monotonic() + suspend_s)
            # what we published ourselves is not a signal for us
            self._seen[key] = (q[b + _LVER], q[b + _RVER], d[b + _SUSP])

    def _read(self, key: str) -> tuple[int, int, float, int, float]:
        q, d = self.t.q, self.t.d
        with self.lock:
            b = self.t.slot(key)
            return q[b + _LVER], q[b + _RVER], d[b + _SUSP], q[b + _LIMIT], d[b + _RATE]

    def learned(self, key):
        lver, rver, susp, limit, rate = self._read(key)
        self._seen[key] = (lver, rver, susp)
        if not (lver or rver or susp):
            return None
        return Learned(limit=limit if lver else None, rate=rate if rver else None,
                       suspend_s=max(0.0, susp - time.monotonic()))

    def signals(self, keys: Iterable[str]) -> list[tuple[str, Learned]]:
        out = []
        now = time.monotonic()
        for key in keys:
            lver, rver, susp, limit, rate = self._read(key)
            seen = self._seen.get(key, (0, 0, 0.0))
            if (lver, rver, susp) == seen:
                continue
            self._seen[key] = (lver, rver, susp)
            out.append((key, Learned(
                limit=limit if lver != seen[0] else None,
                rate=rate if rver != seen[1] else None,
                suspend_s=max(0.0, susp - now) if susp > seen[2] else 0.0)))
        return out

    def held(self):
        return len(self.leases)

    def status(self):
        return {"scope": self.scope, "degraded": False, "leases": self.held(),
                "ops": self.ops}

    def close(self):
        for lease in list(self.leases):
            self.release(lease)
