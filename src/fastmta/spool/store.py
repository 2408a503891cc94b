"""The LMDB spool: the only module that talks to lmdb (with ``scratch.py``).

One environment per spool directory, opened by each process itself after it started
(``spawn``); ``Spool.open`` keeps one handle per path per process.  All writes go through
``_write`` which maps LMDB's resize/full conditions onto clear behaviour:

- ``MapResizedError`` (another process raised the map): adopt the new size, retry.
- ``MapFullError``: the transaction is aborted (nothing half-written), ``SpoolFullError``
  is raised with what to do, ``spool.full`` is set and ``on_full`` callbacks alert.

Status semantics follow ARCHITECTURE.md section 3; see docs/spool.md.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import lmdb
import msgspec

from ..config import SpoolConfig
from ..records import (
    DELIVERY_DECODER,
    ENCODER,
    EVENT_DECODER,
    LEASE_DECODER,
    QUARANTINE_DECODER,
    RCPT_DECODER,
    SCHEMA_VERSION,
    AttemptEvent,
    DeliveryEvent,
    DeliveryRecord,
    Event,
    Lease,
    QuarantineEntry,
    QuarantineEvent,
    Rcpt,
    RecipientIn,
    Result,
    Status,
    WorkItem,
)
from . import keys as K
from .errors import DeliveryNotFound, SpoolError, SpoolFullError

log = logging.getLogger("fastmta.spool")

_DBS = (
    "meta",
    "deliveries",
    "templates",
    "rcpt",
    "ready",
    "sched",
    "lease",
    "seen",
    "kpi",
    "events",
    "quarantine",
)
MAX_DBS = 16
_REPLY_MAX = 500  # reply text kept per recipient / event
_U32MAX = 0xFFFFFFFF
_MAX_VALIDITY_MS = int(3.5 * 86400 * 1000)

_MADV_DONTNEED = 4


def _load_madvise() -> Callable[[int, int, int], int] | None:
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.madvise
        fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        fn.restype = ctypes.c_int
        return fn
    except (OSError, AttributeError):
        return None


_madvise = _load_madvise() if os.name == "posix" else None

_REGISTRY: dict[str, Spool] = {}
_REGISTRY_LOCK = threading.Lock()


def clock_ms() -> int:
    """Wall-clock milliseconds (persisted timestamps are ``*_ms`` epoch)."""
    return time.time_ns() // 1_000_000


now_ms = clock_ms


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def dedupe_hash(address: str) -> bytes:
    """64-bit digest used for duplicate detection (collisions ~1e-6 at 10M addresses)."""
    return hashlib.blake2b(address.encode(), digest_size=8).digest()


class _Acc:
    """Per-transaction accumulator: KPI deltas, events, deliveries read, quarantine."""

    __slots__ = ("now", "kpi", "events", "deliveries", "stale", "unknown", "applied", "q_check")

    def __init__(self, now: int, q_check: bool = True) -> None:
        self.now = now
        self.q_check = q_check  # False when the quarantine table is empty
        self.kpi: dict[int, defaultdict[str, int]] = {}
        self.events: list[Any] = []
        self.deliveries: dict[int, DeliveryRecord | None] = {}
        self.stale = 0
        self.unknown = 0
        self.applied = 0

    def k(self, did: int) -> defaultdict[str, int]:
        d = self.kpi.get(did)
        if d is None:
            d = self.kpi[did] = defaultdict(int)
        return d


class CommitStats(msgspec.Struct):
    applied: int = 0  # results that changed a recipient
    stale: int = 0  # results for a recipient already final (e.g. repeated after a crash)
    unknown: int = 0  # results for keys not in the spool


class InjectStats(msgspec.Struct):
    recipients: int = 0  # input items seen (this call)
    added: int = 0  # queued as pending (to deliver)
    excluded: dict[str, int] = msgspec.field(default_factory=dict)
    skipped: int = 0  # already injected before (resume)
    last_line: int = 0


class Spool:
    """Handle on one spool directory.  Use ``Spool.open``; never share across processes."""

    def __init__(self, path: str, cfg: SpoolConfig, env: lmdb.Environment) -> None:
        self.path = path
        self.cfg = cfg
        self.pid = os.getpid()
        self._env = env
        self._db: dict[str, Any] = {}
        self.full: str | None = None  # set while the map is full (the alert text)
        self.on_full: list[Callable[[str], None]] = []
        self._rotate = 0
        with env.begin(write=True) as txn:
            for name in _DBS:
                # seen: key = delivery id, sorted fixed-size duplicates = address digests
                # (8 bytes each on DUPFIXED pages: 4x denser than one key per address)
                dup = name == "seen"
                self._db[name] = env.open_db(name.encode(), txn=txn, create=True,
                                             dupsort=dup, dupfixed=dup)
            meta = self._db["meta"]
            ver = txn.get(b"schema", db=meta)
            if ver is None:
                txn.put(b"schema", K.pack_u32(SCHEMA_VERSION), db=meta)
            elif K.unpack_u32(ver)[0] > SCHEMA_VERSION:
                raise SpoolError(
                    f"spool {path} has schema {K.unpack_u32(ver)[0]}, this fastmta reads "
                    f"up to {SCHEMA_VERSION}: upgrade fastmta"
                )

    # ------------------------------------------------------------------ open / close
    @classmethod
    def open(cls, path: str | os.PathLike[str] | None = None, cfg: SpoolConfig | None = None) -> Spool:
        """Open (or create) the spool at ``path``; returns this process's single handle."""
        cfg = cfg or SpoolConfig()
        path = os.fspath(path if path is not None else cfg.path)
        os.makedirs(path, exist_ok=True)
        real = os.path.realpath(path)
        with _REGISTRY_LOCK:
            sp = _REGISTRY.get(real)
            if sp is not None:
                if sp.pid != os.getpid():
                    raise SpoolError(
                        f"spool {real} was opened before this process was forked; "
                        "start processes with multiprocessing 'spawn' and open it there"
                    )
                return sp
            env = lmdb.open(
                real,
                map_size=cfg.map_size_bytes,
                subdir=True,
                max_dbs=MAX_DBS,
                max_readers=cfg.max_readers,
                max_spare_txns=cfg.max_spare_txns,
                sync=cfg.sync,
                metasync=cfg.metasync,
                readahead=False,
                writemap=False,
                lock=True,
            )
            try:
                sp = cls(real, cfg, env)
            except BaseException:
                env.close()
                raise
            _REGISTRY[real] = sp
            return sp

    def close(self) -> None:
        """Close the environment (no transaction of this handle may be open)."""
        with _REGISTRY_LOCK:
            if _REGISTRY.get(self.path) is self:
                del _REGISTRY[self.path]
        self._env.close()

    @staticmethod
    def close_all() -> None:
        """Close every spool opened by this process (tests, clean shutdown)."""
        for sp in list(_REGISTRY.values()):
            sp.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ txn plumbing
    def _write(self, fn: Callable[[Any], Any]) -> Any:
        """Run ``fn(txn)`` in one write transaction; ``fn`` may be re-run (no side effects
        outside the transaction)."""
        for _ in range(5):
            try:
                with self._env.begin(write=True) as txn:
                    out = fn(txn)
                if self.full:
                    log.warning("spool %s: space available again, resuming", self.path)
                    self.full = None
                return out
            except lmdb.MapResizedError:
                self._env.set_mapsize(0)  # adopt the size another process set
            except lmdb.MapFullError as exc:
                # Another process may have raised the map without writing past our end
                # (LMDB then reports no MAP_RESIZED): adopt the size in the meta page.
                before = self._env.info()["map_size"]
                try:
                    self._env.set_mapsize(0)
                except lmdb.Error:
                    pass
                if self._env.info()["map_size"] > before:
                    log.warning("spool %s: adopted a larger map size", self.path)
                    continue
                msg = (
                    f"spool {self.path} is full (map_size_bytes={self._env.info()['map_size']}): "
                    "delivery is paused and nothing is lost; raise [spool] map_size_bytes "
                    "and run `fastmta spool resize` (or purge finished deliveries)"
                )
                if not self.full:
                    log.error("%s", msg)
                    for cb in list(self.on_full):
                        try:
                            cb(msg)
                        except Exception:  # an alert hook must not break the spool
                            log.exception("on_full callback failed")
                self.full = msg
                raise SpoolFullError(msg) from exc
        raise SpoolError("spool map kept being resized by another process; retry")

    def _read(self) -> Any:
        try:
            return self._env.begin(write=False, buffers=False)
        except lmdb.MapResizedError:
            self._env.set_mapsize(0)
            return self._env.begin(write=False, buffers=False)

    def set_map_size(self, size_bytes: int) -> None:
        """Raise the map size (no transaction of this process may be open).  Other
        processes adopt it at their next transaction."""
        if size_bytes < self._env.info()["map_size"]:
            raise SpoolError("the map size can only be raised")
        self._env.set_mapsize(size_bytes)
        # Persist it in the meta page so other processes see it.
        self._write(lambda txn: txn.put(b"map_size", K.pack_u64(size_bytes), db=self._db["meta"]))

    def trim_rss(self) -> None:
        """Drop this process's page-table mappings of the spool file (``MADV_DONTNEED``).

        The map is read-only for us (``writemap`` off: LMDB writes with ``pwrite``), so
        this only unmaps clean page-cache pages; they stay in the kernel's page cache and
        are faulted back on the next read.  It keeps a long injection's RSS flat instead
        of growing with every page it has read.  No-op where unsupported."""
        if _madvise is None:
            return
        target = os.path.join(self.path, "data.mdb")
        try:
            with open("/proc/self/maps") as f:
                for line in f:
                    if line.rstrip().endswith(target):
                        lo, hi = (int(x, 16) for x in line.split(None, 1)[0].split("-"))
                        _madvise(lo, hi - lo, _MADV_DONTNEED)
        except OSError:
            return

    def info(self) -> dict[str, Any]:
        """Map size, bytes used, file bytes on disk, entries per database."""
        inf = self._env.info()
        st = self._env.stat()
        out = {
            "path": self.path,
            "map_size": inf["map_size"],
            "used_bytes": (inf["last_pgno"] + 1) * st["psize"],
            "readers": inf["num_readers"],
            "max_readers": inf["max_readers"],
            "full": self.full,
        }
        data = os.path.join(self.path, "data.mdb")
        try:
            out["file_bytes"] = os.stat(data).st_blocks * 512
        except OSError:
            out["file_bytes"] = 0
        with self._read() as txn:
            out["entries"] = {n: txn.stat(self._db[n])["entries"] for n in _DBS}
        return out

    # ------------------------------------------------------------------ deliveries
    def create_delivery(self, rec: DeliveryRecord, template: bytes) -> int:
        """Store a delivery and its template (once); returns the new delivery id."""
        now = clock_ms()
        created = rec.created_ms or now
        expires = rec.expires_ms or created + 3 * 86400 * 1000
        if expires - created > _MAX_VALIDITY_MS:
            raise SpoolError("validity period longer than 3.5 days")

        def fn(txn: Any) -> int:
            meta = self._db["meta"]
            raw = txn.get(b"next_did", db=meta)
            did = K.unpack_u32(raw)[0] if raw else 1
            txn.put(b"next_did", K.pack_u32(did + 1), db=meta)
            r = msgspec.structs.replace(rec, id=did, created_ms=created, expires_ms=expires)
            txn.put(K.pack_u32(did), ENCODER.encode(r), db=self._db["deliveries"])
            txn.put(K.pack_u32(did), template, db=self._db["templates"])
            self._append_events(txn, [DeliveryEvent(ts_ms=now, delivery_id=did, kind="created")])
            return did

        return self._write(fn)

    def delivery(self, did: int) -> DeliveryRecord:
        with self._read() as txn:
            raw = txn.get(K.pack_u32(did), db=self._db["deliveries"])
        if raw is None:
            raise DeliveryNotFound(f"no delivery {did} in spool {self.path}")
        return DELIVERY_DECODER.decode(raw)

    def deliveries(self) -> list[DeliveryRecord]:
        with self._read() as txn:
            return [DELIVERY_DECODER.decode(v) for _, v in txn.cursor(db=self._db["deliveries"])]

    def template(self, did: int) -> bytes:
        with self._read() as txn:
            raw = txn.get(K.pack_u32(did), db=self._db["templates"])
        if raw is None:
            raise DeliveryNotFound(f"no delivery {did} in spool {self.path}")
        return bytes(raw)

    def set_state(self, did: int, state: str, reason: str = "") -> DeliveryRecord:
        """Change a delivery's state: ``active``, ``paused`` (lease skips it),
        ``cancelled`` (lease skips it), ``injecting``."""
        if state not in ("injecting", "active", "paused", "cancelled"):
            raise SpoolError(f"unknown delivery state {state!r}")

        def fn(txn: Any) -> DeliveryRecord:
            rec = self._delivery_in(txn, did)
            if rec is None:
                raise DeliveryNotFound(f"no delivery {did} in spool {self.path}")
            rec = msgspec.structs.replace(rec, state=state, paused_reason=reason)
            txn.put(K.pack_u32(did), ENCODER.encode(rec), db=self._db["deliveries"])
            ev = DeliveryEvent(ts_ms=clock_ms(), delivery_id=did, kind=state, text=reason)
            self._append_events(txn, [ev])
            return rec

        return self._write(fn)

    def _delivery_in(self, txn: Any, did: int, acc: _Acc | None = None) -> DeliveryRecord | None:
        if acc is not None and did in acc.deliveries:
            return acc.deliveries[did]
        raw = txn.get(K.pack_u32(did), db=self._db["deliveries"])
        rec = DELIVERY_DECODER.decode(raw) if raw is not None else None
        if acc is not None:
            acc.deliveries[did] = rec
        return rec

    # ------------------------------------------------------------------ injection
    def add_recipients(
        self,
        did: int,
        items: Iterable[RecipientIn],
        *,
        on_excluded: Callable[[RecipientIn, str], None] | None = None,
        batch: int | None = None,
        now_ms: int | None = None,
    ) -> InjectStats:
        """Add recipients, streamed in transactions of ``batch`` items; each batch is
        durable (``pending``) before the next starts.  Excludes duplicates, quarantined and
        denylisted addresses (items arriving with ``exclude`` set keep that reason).
        Items whose ``line`` is at or before the delivery's ``injected_line`` were injected
        by an earlier, interrupted call and are skipped (resume by re-reading the input).
        Raises ``SpoolFullError`` (with ``.added``) when the map is full."""
        batch = batch or self.cfg.inject_batch
        stats = InjectStats()
        it = iter(items)
        d = self.delivery(did)
        resume_line = d.injected_line
        t0 = now_ms or clock_ms()
        while True:
            chunk = list(itertools.islice(it, batch))
            if not chunk:
                break
            if resume_line and chunk[0].line <= resume_line:
                keep = [x for x in chunk if x.line > resume_line]
                stats.skipped += len(chunk) - len(keep)
                chunk = keep
                if not chunk:
                    continue
            try:
                res = self._write(lambda txn, c=chunk: self._inject_chunk(txn, did, c, t0))
            except SpoolFullError as exc:
                exc.added = stats.added
                raise
            added, excluded = res
            self.trim_rss()  # keep RSS flat over millions of recipients
            stats.recipients += len(chunk)
            stats.added += added
            stats.last_line = chunk[-1].line
            for item, reason in excluded:
                stats.excluded[reason] = stats.excluded.get(reason, 0) + 1
                if on_excluded is not None:
                    on_excluded(item, reason)
        return stats

    def _inject_chunk(
        self, txn: Any, did: int, chunk: list[RecipientIn], t0: int
    ) -> tuple[int, list[tuple[RecipientIn, str]]]:
        db = self._db
        acc = _Acc(t0)
        d = self._delivery_in(txn, did, acc)
        if d is None:
            raise DeliveryNotFound(f"no delivery {did} in spool {self.path}")
        kd = acc.k(did)
        raw = txn.get(K.pack_u32(did) + b"recipients", db=db["kpi"])
        rid = K.unpack_i64(raw)[0] if raw else 0
        did4 = K.pack_u32(did)
        check_q = txn.stat(db["quarantine"])["entries"] > 0
        dups = self._find_doubles(txn, did4, chunk)
        rcpt_items: list[tuple[bytes, bytes]] = []
        ready_keys: list[tuple[bytes, bytes]] = []
        excluded: list[tuple[RecipientIn, str]] = []
        domains: defaultdict[str, int] = defaultdict(int)
        encode = ENCODER.encode
        pack_rcpt = K.pack_rcpt
        pack_ready = K.pack_ready
        added = 0
        for idx, item in enumerate(chunk):
            email = item.email
            reason = item.exclude
            if not reason:
                if dups and idx in dups:
                    reason = "double"
                elif check_q:
                    reason = self._quarantine_reason(txn, email, t0) or ""
            if reason:
                rec = Rcpt(email=email, fields=item.fields, shard=item.shard, line=item.line,
                           status=Status.IGNORED, done_ms=t0, reason=reason,
                           smtputf8=item.smtputf8)
                excluded.append((item, reason))
                kd["excluded/" + reason] += 1
            else:
                rec = Rcpt(email, item.fields, item.shard, item.line, Status.PENDING,
                           item.smtputf8)
                ready_keys.append((pack_ready(item.shard, did, rid), b""))
                domains[email[email.rindex("@") + 1:]] += 1
                added += 1
            rcpt_items.append((pack_rcpt(did, rid), encode(rec)))
            rid += 1
        cur = txn.cursor(db=db["rcpt"])
        append = not cur.last() or cur.key() < rcpt_items[0][0]
        cur.putmulti(rcpt_items, append=append)
        if ready_keys:
            ready_keys.sort()
            txn.cursor(db=db["ready"]).putmulti(ready_keys)
        kd["recipients"] += len(chunk)
        kd["to_deliver"] += added
        kd["pending"] += added
        kd["excluded"] += len(excluded)
        for dom, n in domains.items():
            kd[f"domain/{dom}/to_deliver"] += n
        last_line = chunk[-1].line
        if last_line > d.injected_line:
            d2 = msgspec.structs.replace(d, injected_line=last_line)
            txn.put(did4, encode(d2), db=db["deliveries"])
        self._flush(txn, acc)
        return added, excluded

    def _find_doubles(self, txn: Any, did4: bytes, chunk: list[RecipientIn]) -> set[int]:
        """Indexes of the chunk's duplicates (of earlier items or of earlier chunks), and
        record the others in ``seen``.  Fast path: one sorted ``putmulti`` in a nested
        transaction; only if it finds an existing key are the items checked one by one."""
        blake = hashlib.blake2b
        dups: set[int] = set()
        first: dict[bytes, int] = {}
        for idx, item in enumerate(chunk):
            if item.exclude:
                continue
            h = blake(item.email.encode(), digest_size=8).digest()
            if h in first:
                dups.add(idx)
            else:
                first[h] = idx
        if not first:
            return dups
        seen_db = self._db["seen"]
        sub = self._env.begin(write=True, parent=txn)
        try:
            consumed, added = sub.cursor(db=seen_db).putmulti(
                [(did4, h) for h in sorted(first)], dupdata=False)
        except BaseException:
            sub.abort()
            raise
        if added == len(first):
            sub.commit()
            return dups
        sub.abort()
        put = txn.put
        for h, idx in sorted(first.items(), key=lambda kv: kv[1]):
            if not put(did4, h, dupdata=False, db=seen_db):
                dups.add(idx)
        return dups

    def precheck(self, address: str, *, now_ms: int | None = None) -> str | None:
        """Exclusion reason from the quarantine/denylist for ``address`` (analysis)."""
        with self._read() as txn:
            return self._quarantine_reason(txn, address, now_ms or clock_ms())

    # ------------------------------------------------------------------ leasing
    def lease(
        self,
        shards: Iterable[int],
        owner: str,
        max_n: int,
        now_ms: int | None = None,
        lease_s: float | None = None,
    ) -> list[WorkItem]:
        """Claim up to ``max_n`` due items of ``shards`` for ``owner``: due retries first
        (scheduled queue, by due time), then the ready queue (FIFO by delivery, recipient).
        Items of paused/cancelled deliveries stay queued; items past their delivery's
        validity become ``failed``/``expired`` here instead of being returned."""
        t = now_ms or clock_ms()
        exp = t + int((lease_s if lease_s is not None else self.cfg.lease_s) * 1000)
        shard_list = list(shards)
        if not shard_list or max_n <= 0:
            return []
        self._rotate = (self._rotate + 1) % len(shard_list)
        order = shard_list[self._rotate:] + shard_list[: self._rotate]
        return self._write(lambda txn: self._lease_txn(txn, order, owner, max_n, t, exp))

    def _lease_txn(
        self, txn: Any, shards: list[int], owner: str, max_n: int, t: int, exp: int
    ) -> list[WorkItem]:
        acc = _Acc(t)
        out: list[WorkItem] = []
        pid = self.pid
        per_shard = max(1, -(-max_n // len(shards)))  # fair share first, then fill
        for shard in shards:
            room = max_n - len(out)
            if room <= 0:
                break
            self._lease_shard(txn, acc, shard, owner, pid, min(room, per_shard), t, exp, out)
        for shard in shards:
            room = max_n - len(out)
            if room <= 0:
                break
            self._lease_shard(txn, acc, shard, owner, pid, room, t, exp, out)
        self._flush(txn, acc)
        return out

    def _lease_shard(
        self, txn: Any, acc: _Acc, shard: int, owner: str, pid: int, limit: int,
        t: int, exp: int, out: list[WorkItem],
    ) -> int:
        db = self._db
        got = 0
        prefix = K.pack_u16(shard)
        # 1. scheduled items that are due
        hi = K.pack_sched(shard, t, _U32MAX, _U32MAX)
        cur = txn.cursor(db=db["sched"])
        ok = cur.set_range(prefix)
        while ok and got < limit:
            k = cur.key()
            if k[:2] != prefix or k > hi:
                break
            _, _, did, rid = K.unpack_sched(k)
            r = self._claim(txn, acc, did, rid, shard, owner, pid, t, exp)
            if r is _SKIP:
                ok = cur.next()
                continue
            cur.delete()
            ok = bool(cur.key())
            if r is not None:
                out.append(r)
                got += 1
        # 2. ready queue
        cur = txn.cursor(db=db["ready"])
        ok = cur.set_range(prefix)
        while ok and got < limit:
            k = cur.key()
            if k[:2] != prefix:
                break
            _, did, rid = K.unpack_ready(k)
            r = self._claim(txn, acc, did, rid, shard, owner, pid, t, exp)
            if r is _SKIP:  # delivery paused: jump over its items
                ok = cur.set_range(K.pack_ready(shard, did + 1, 0)) if did < _U32MAX else False
                continue
            cur.delete()
            ok = bool(cur.key())
            if r is not None:
                out.append(r)
                got += 1
        return got

    def _claim(
        self, txn: Any, acc: _Acc, did: int, rid: int, shard: int, owner: str, pid: int,
        t: int, exp: int,
    ) -> Any:
        d = self._delivery_in(txn, did, acc)
        if d is None:
            return None  # orphan queue entry: drop it
        if d.state in ("paused", "cancelled"):
            return _SKIP
        rkey = K.pack_rcpt(did, rid)
        raw = txn.get(rkey, db=self._db["rcpt"])
        if raw is None:
            return None
        rec = RCPT_DECODER.decode(raw)
        if rec.status != Status.PENDING:
            return None  # stale queue entry
        if d.expires_ms <= t:
            self._finish_expired(txn, acc, did, rid, rkey, rec, d, t)
            return None
        txn.put(rkey, ENCODER.encode(Lease(owner, pid, exp, shard, t)), db=self._db["lease"])
        fields = dict(zip(d.fields, rec.fields, strict=False)) if d.fields else {}
        return WorkItem(
            key=rkey, delivery_id=did, rcpt_id=rid, email=rec.email, shard=shard,
            fields=fields, attempts=rec.attempts, first_attempt_ms=rec.first_attempt_ms,
            smtputf8=rec.smtputf8 or d.smtputf8, mail_from=d.mail_from,
            expires_ms=d.expires_ms, last_reason=rec.reason,
        )

    def recover_leases(self, owner: str | None = None, now_ms: int | None = None) -> int:
        """Return leased items to their ready queue: all of ``owner``'s, or (owner None)
        those whose lease expired or whose holder process is gone.  Returns the count."""
        t = now_ms or clock_ms()
        alive: dict[int, bool] = {}

        def dead(lease: Lease) -> bool:
            if owner is not None:
                return lease.owner == owner
            if lease.expires_ms <= t:
                return True
            if lease.pid not in alive:
                alive[lease.pid] = _pid_alive(lease.pid)
            return not alive[lease.pid]

        def fn(txn: Any) -> int:
            db = self._db
            n = 0
            cur = txn.cursor(db=db["lease"])
            ok = cur.first()
            recovered: dict[int, int] = defaultdict(int)
            while ok:
                lease = LEASE_DECODER.decode(cur.value())
                if not dead(lease):
                    ok = cur.next()
                    continue
                k = cur.key()
                did, rid = K.unpack_rcpt(k)
                raw = txn.get(k, db=db["rcpt"])
                if raw is not None and RCPT_DECODER.decode(raw).status == Status.PENDING:
                    txn.put(K.pack_ready(lease.shard, did, rid), b"", db=db["ready"])
                    recovered[did] += 1
                    n += 1
                cur.delete()
                ok = bool(cur.key())
            evs = [DeliveryEvent(ts_ms=t, delivery_id=d, kind="recovered", count=c)
                   for d, c in recovered.items()]
            self._append_events(txn, evs)
            return n

        return self._write(fn)

    def leases(self, did: int | None = None) -> list[tuple[int, int, Lease]]:
        """Current leases (delivery id, recipient id, lease)."""
        out = []
        with self._read() as txn:
            cur = txn.cursor(db=self._db["lease"])
            ok = cur.set_range(K.pack_u32(did)) if did is not None else cur.first()
            while ok:
                d, r = K.unpack_rcpt(cur.key())
                if did is not None and d != did:
                    break
                out.append((d, r, LEASE_DECODER.decode(cur.value())))
                ok = cur.next()
        return out

    def next_due_ms(self, shards: Iterable[int]) -> int | None:
        """Earliest due time among ``shards`` (0 if something is ready now), or None."""
        best: int | None = None
        with self._read() as txn:
            rc = txn.cursor(db=self._db["ready"])
            sc = txn.cursor(db=self._db["sched"])
            for shard in shards:
                p = K.pack_u16(shard)
                if rc.set_range(p) and rc.key()[:2] == p:
                    return 0
                if sc.set_range(p) and sc.key()[:2] == p:
                    due = K.unpack_sched(sc.key())[1]
                    best = due if best is None else min(best, due)
        return best

    # ------------------------------------------------------------------ results
    def commit(self, results: list[Result], now_ms: int | None = None) -> CommitStats:
        """Apply results in ONE durable transaction (statuses, queues, KPIs, quarantine,
        event log).  Idempotent per recipient: a result for a recipient that is already
        final is counted as ``stale`` and changes nothing."""
        t = now_ms or clock_ms()

        def fn(txn: Any) -> CommitStats:
            acc = _Acc(t, txn.stat(self._db["quarantine"])["entries"] > 0)
            for res in results:
                self._apply(txn, acc, res)
            self._flush(txn, acc)
            return CommitStats(applied=acc.applied, stale=acc.stale, unknown=acc.unknown)

        return self._write(fn)

    def _apply(self, txn: Any, acc: _Acc, res: Result) -> None:
        db = self._db
        rkey = res.key
        raw = txn.get(rkey, db=db["rcpt"])
        if raw is None:
            acc.unknown += 1
            return
        rec = RCPT_DECODER.decode(raw)
        had_lease = txn.delete(rkey, db=db["lease"])
        if rec.status != Status.PENDING:
            acc.stale += 1
            return
        did, rid = K.unpack_rcpt(rkey)
        d = self._delivery_in(txn, did, acc)
        if d is None:
            acc.unknown += 1
            return
        if not had_lease:  # lease was recovered meanwhile: take it out of its queue
            self._unqueue(txn, did, rid, rec)
        t = res.time_ms or acc.now
        kd = acc.k(did)
        outcome = res.outcome
        if outcome == "sent":  # the hot path, kept lean
            new = msgspec.structs.replace(
                rec, status=Status.SENT, done_ms=t, next_attempt_ms=0,
                reason=rec.reason if rec.type == "soft" else "",  # a soft reason stays as history
                code=res.code, enhanced=res.enhanced, bounce_class=res.bounce_class,
                type=res.type, reply=res.reply[:_REPLY_MAX], mx=res.mx or rec.mx,
                source_ip=res.source_ip or rec.source_ip, attempts=rec.attempts + 1,
                first_attempt_ms=rec.first_attempt_ms or t, last_attempt_ms=t,
            )
            kd["attempts"] += 1
            kd["pending"] -= 1
            kd["sent"] += 1
            email = rec.email
            kd["domain/" + email[email.rindex("@") + 1:] + "/sent"] += 1
            if acc.q_check:
                self._quarantine_on_success(txn, acc, email)
            txn.put(rkey, ENCODER.encode(new), db=db["rcpt"])
            acc.events.append(AttemptEvent(
                ts_ms=t, delivery_id=did, rcpt_id=rid, email=email, outcome=outcome,
                status=Status.SENT, attempt=new.attempts, code=res.code, enhanced=res.enhanced,
                bounce_class=res.bounce_class, type=res.type, reply=new.reply, mx=res.mx,
                source_ip=res.source_ip,
            ))
            acc.applied += 1
            return
        dom = rec.email.rpartition("@")[2]
        reply = res.reply[:_REPLY_MAX]
        common = dict(
            code=res.code, enhanced=res.enhanced, bounce_class=res.bounce_class,
            type=res.type, reply=reply, mx=res.mx or rec.mx,
            source_ip=res.source_ip or rec.source_ip,
        )
        attempt = outcome in ("sent", "hard", "soft")
        if attempt:
            common["attempts"] = rec.attempts + 1
            common["first_attempt_ms"] = rec.first_attempt_ms or t
            common["last_attempt_ms"] = t
            kd["attempts"] += 1
        if outcome == "hard":
            reason = res.reason or "not_defined"
            new = msgspec.structs.replace(
                rec, status=Status.FAILED, done_ms=t, next_attempt_ms=0, reason=reason,
                **common,
            )
            self._count_failed(kd, dom, reason, res.bounce_class)
            kd["failed_hard"] += 1
            self._quarantine_on_hard(txn, acc, did, rec.email, reason, res, t)
        elif outcome == "expired":
            self._finish_expired(txn, acc, did, rid, rkey, rec, d, t, res=res)
            acc.events.append(self._attempt_event(t, did, rid, rec, res, Status.FAILED))
            acc.applied += 1
            return
        elif outcome in ("soft", "defer"):
            if outcome == "soft":
                kd["soft_bounces"] += 1
                reason = res.reason or "not_defined"
                kd[f"soft_reason/{reason}"] += 1
                due = res.next_attempt_ms or t + int(self.cfg.retry_s * 1000)
                new = msgspec.structs.replace(rec, reason=reason, last_soft_reason=reason, **common)
            else:
                kd["deferrals"] += 1
                due = res.next_attempt_ms or t + int(self.cfg.defer_s * 1000)
                new = msgspec.structs.replace(rec, deferrals=rec.deferrals + 1)
            if due >= d.expires_ms and t >= d.expires_ms:
                self._finish_expired(txn, acc, did, rid, rkey, new, d, t)
                acc.events.append(self._attempt_event(t, did, rid, rec, res, Status.FAILED))
                acc.applied += 1
                return
            due = min(due, d.expires_ms)  # expires exactly at the end of validity
            new = msgspec.structs.replace(new, next_attempt_ms=due)
            txn.put(K.pack_sched(rec.shard, due, did, rid), b"", db=db["sched"])
        else:
            raise SpoolError(f"unknown result outcome {outcome!r}")
        txn.put(rkey, ENCODER.encode(new), db=db["rcpt"])
        acc.events.append(self._attempt_event(t, did, rid, rec, res, new.status))
        acc.applied += 1

    @staticmethod
    def _attempt_event(t: int, did: int, rid: int, rec: Rcpt, res: Result, status: Status) -> AttemptEvent:
        return AttemptEvent(
            ts_ms=t, delivery_id=did, rcpt_id=rid, email=rec.email, outcome=res.outcome,
            status=status, attempt=rec.attempts + (res.outcome in ("sent", "hard", "soft")),
            code=res.code, enhanced=res.enhanced, bounce_class=res.bounce_class,
            type=res.type, reason=res.reason, reply=res.reply[:_REPLY_MAX], mx=res.mx,
            source_ip=res.source_ip,
        )

    @staticmethod
    def _count_failed(kd: defaultdict[str, int], dom: str, reason: str, bclass: int) -> None:
        kd["pending"] -= 1
        kd["failed"] += 1
        kd[f"reason/{reason}"] += 1
        if bclass:
            kd[f"class/{bclass}"] += 1
        kd[f"domain/{dom}/failed"] += 1

    def _unqueue(self, txn: Any, did: int, rid: int, rec: Rcpt) -> None:
        txn.delete(K.pack_ready(rec.shard, did, rid), db=self._db["ready"])
        if rec.next_attempt_ms:
            txn.delete(K.pack_sched(rec.shard, rec.next_attempt_ms, did, rid), db=self._db["sched"])

    def _finish_expired(
        self, txn: Any, acc: _Acc, did: int, rid: int, rkey: bytes, rec: Rcpt,
        d: DeliveryRecord, t: int, res: Result | None = None,
    ) -> None:
        """Validity period over while pending: failed / expired, last soft reason kept."""
        last_soft = rec.last_soft_reason or (rec.reason if rec.type == "soft" else "")
        upd: dict[str, Any] = {}
        if res is not None and res.code:
            upd = dict(code=res.code, enhanced=res.enhanced, reply=res.reply[:_REPLY_MAX])
        bclass = rec.bounce_class if rec.type == "soft" else 0
        new = msgspec.structs.replace(
            rec, status=Status.FAILED, done_ms=t, next_attempt_ms=0, reason="expired",
            type="soft", last_soft_reason=last_soft, bounce_class=bclass, **upd,
        )
        txn.put(rkey, ENCODER.encode(new), db=self._db["rcpt"])
        kd = acc.k(did)
        self._count_failed(kd, rec.email.rpartition("@")[2], "expired", bclass)
        kd["failed_expired"] += 1
        if last_soft:
            self._quarantine_on_expired(txn, acc, did, rec.email, last_soft, t)

    def expire_due(self, now_ms: int | None = None, limit: int = 50_000) -> int:
        """Sweep: every pending recipient of a delivery whose validity ended becomes
        failed/expired (queued items; leased ones expire when their result comes back
        or their lease is recovered).  Returns how many; call until it returns < limit."""
        t = now_ms or clock_ms()
        expired = [d for d in self.deliveries() if d.expires_ms <= t]
        if not expired:
            return 0
        ids = {d.id for d in expired}

        def fn(txn: Any) -> int:
            acc = _Acc(t)
            n = 0
            for dbname in ("ready", "sched"):
                cur = txn.cursor(db=self._db[dbname])
                ok = cur.first()
                while ok and n < limit:
                    k = cur.key()
                    if dbname == "ready":
                        _, did, rid = K.unpack_ready(k)
                    else:
                        _, _, did, rid = K.unpack_sched(k)
                    if did not in ids:
                        ok = cur.next()
                        continue
                    rkey = K.pack_rcpt(did, rid)
                    raw = txn.get(rkey, db=self._db["rcpt"])
                    if raw is not None:
                        rec = RCPT_DECODER.decode(raw)
                        if rec.status == Status.PENDING:
                            d = self._delivery_in(txn, did, acc)
                            assert d is not None
                            self._finish_expired(txn, acc, did, rid, rkey, rec, d, t)
                            n += 1
                    cur.delete()
                    ok = bool(cur.key())
            if n:
                for did in ids:
                    if did in acc.kpi:
                        acc.events.append(DeliveryEvent(
                            ts_ms=t, delivery_id=did, kind="expired",
                            count=-acc.kpi[did].get("pending", 0)))
            self._flush(txn, acc)
            return n

        return self._write(fn)

    # ------------------------------------------------------------------ quarantine
    def _quarantine_reason(self, txn: Any, address: str, t: int) -> str | None:
        qdb = self._db["quarantine"]
        low = address.lower()
        for key in (low, "@" + low.rpartition("@")[2]):
            raw = txn.get(key.encode(), db=qdb)
            if raw is None:
                continue
            e = QUARANTINE_DECODER.decode(raw)
            if e.state == "denylisted":
                return "denylisted_address"
            if e.state == "quarantined" and self._q_active(e, t):
                return "address_in_quarantine"
        return None

    def _q_active(self, e: QuarantineEntry, t: int) -> bool:
        days = self.cfg.quarantine_release_days
        if e.permanent or e.source != "bounce" or days <= 0:
            return True
        return t - e.last_ms < days * 86400 * 1000

    def _q_get(self, txn: Any, low: str) -> QuarantineEntry | None:
        raw = txn.get(low.encode(), db=self._db["quarantine"])
        return QUARANTINE_DECODER.decode(raw) if raw is not None else None

    def _q_put(self, txn: Any, e: QuarantineEntry) -> None:
        txn.put(e.address.encode(), ENCODER.encode(e), db=self._db["quarantine"])

    def _quarantine_on_hard(
        self, txn: Any, acc: _Acc, did: int, email: str, reason: str, res: Result, t: int
    ) -> None:
        low = email.lower()
        e = self._q_get(txn, low)
        if e is not None and e.state == "denylisted":
            return
        e = e or QuarantineEntry(address=low, state="quarantined", first_ms=t)
        e = msgspec.structs.replace(
            e, state="quarantined", reason=reason, bounce_class=res.bounce_class,
            reply=res.reply[:_REPLY_MAX], last_ms=t, hard_count=e.hard_count + 1,
            delivery_id=did, source=e.source or "bounce", first_ms=e.first_ms or t,
        )
        self._q_put(txn, e)
        acc.events.append(QuarantineEvent(ts_ms=t, address=low, kind="quarantined",
                                          reason=reason, delivery_id=did))

    def _quarantine_on_expired(
        self, txn: Any, acc: _Acc, did: int, email: str, reason: str, t: int
    ) -> None:
        low = email.lower()
        e = self._q_get(txn, low)
        if e is not None and e.state in ("denylisted", "quarantined"):
            return
        e = e or QuarantineEntry(address=low, state="erroneous", first_ms=t, source="bounce")
        n = e.soft_count + 1
        state = "quarantined" if n >= self.cfg.quarantine_soft_threshold else "erroneous"
        e = msgspec.structs.replace(e, state=state, soft_count=n, reason=reason, last_ms=t,
                                    delivery_id=did)
        self._q_put(txn, e)
        acc.events.append(QuarantineEvent(ts_ms=t, address=low, kind=state, reason=reason,
                                          delivery_id=did))

    def _quarantine_on_success(self, txn: Any, acc: _Acc, email: str) -> None:
        low = email.lower()
        e = self._q_get(txn, low)
        if e is None or e.state == "denylisted" or e.source != "bounce":
            return
        txn.delete(low.encode(), db=self._db["quarantine"])  # delivered: errors cleared
        acc.events.append(QuarantineEvent(ts_ms=acc.now, address=low, kind="released",
                                          reason="delivered"))

    def quarantine_add(
        self, address: str, *, state: str = "quarantined", reason: str = "manual",
        permanent: bool = True, now_ms: int | None = None,
    ) -> QuarantineEntry:
        """Add an address (or ``@domain``) by hand: ``quarantined`` or ``denylisted``."""
        if state not in ("quarantined", "denylisted"):
            raise SpoolError("state must be 'quarantined' or 'denylisted'")
        low = address.strip().lower()
        if "@" not in low:
            raise SpoolError(f"not an address or @domain: {address!r}")
        t = now_ms or clock_ms()

        def fn(txn: Any) -> QuarantineEntry:
            old = self._q_get(txn, low)
            e = QuarantineEntry(address=low, state=state, reason=reason, first_ms=t, last_ms=t,
                                source="manual", permanent=permanent,
                                hard_count=old.hard_count if old else 0,
                                soft_count=old.soft_count if old else 0)
            self._q_put(txn, e)
            self._append_events(txn, [QuarantineEvent(ts_ms=t, address=low, kind=state,
                                                      reason=reason)])
            return e

        return self._write(fn)

    def quarantine_remove(self, address: str, now_ms: int | None = None) -> bool:
        low = address.strip().lower()
        t = now_ms or clock_ms()

        def fn(txn: Any) -> bool:
            if not txn.delete(low.encode(), db=self._db["quarantine"]):
                return False
            self._append_events(txn, [QuarantineEvent(ts_ms=t, address=low, kind="released",
                                                      reason="manual")])
            return True

        return self._write(fn)

    def quarantine_get(self, address: str) -> QuarantineEntry | None:
        with self._read() as txn:
            return self._q_get(txn, address.strip().lower())

    def quarantine_list(self, state: str | None = None) -> Iterator[QuarantineEntry]:
        with self._read() as txn:
            for _, v in txn.cursor(db=self._db["quarantine"]):
                e = QUARANTINE_DECODER.decode(v)
                if state is None or e.state == state:
                    yield e

    def quarantine_release_expired(self, now_ms: int | None = None) -> int:
        """Delete bounce quarantines older than ``quarantine_release_days``."""
        t = now_ms or clock_ms()

        def fn(txn: Any) -> int:
            n = 0
            cur = txn.cursor(db=self._db["quarantine"])
            ok = cur.first()
            while ok:
                e = QUARANTINE_DECODER.decode(cur.value())
                if e.state == "quarantined" and not self._q_active(e, t):
                    cur.delete()
                    ok = bool(cur.key())
                    n += 1
                else:
                    ok = cur.next()
            return n

        return self._write(fn)

    # ------------------------------------------------------------------ KPIs / events
    def _flush(self, txn: Any, acc: _Acc) -> None:
        kdb = self._db["kpi"]
        for did, deltas in acc.kpi.items():
            prefix = K.pack_u32(did)
            for name, delta in deltas.items():
                if not delta:
                    continue
                key = prefix + name.encode()
                raw = txn.get(key, db=kdb)
                val = (K.unpack_i64(raw)[0] if raw else 0) + delta
                txn.put(key, K.pack_i64(val), db=kdb)
        if acc.events:
            self._append_events(txn, acc.events)

    def _append_events(self, txn: Any, events: list[Any]) -> None:
        if not events:
            return
        cur = txn.cursor(db=self._db["events"])
        seq = K.unpack_u64(cur.key())[0] + 1 if cur.last() else 1
        items = []
        for ev in events:
            items.append((K.pack_u64(seq), ENCODER.encode(ev)))
            seq += 1
        cur.putmulti(items, append=True)

    def kpis(self, did: int) -> dict[str, int]:
        """KPI counters of a delivery (maintained incrementally, never recounted)."""
        prefix = K.pack_u32(did)
        out: dict[str, int] = {}
        with self._read() as txn:
            cur = txn.cursor(db=self._db["kpi"])
            ok = cur.set_range(prefix)
            while ok:
                k = cur.key()
                if k[:4] != prefix:
                    break
                out[k[4:].decode()] = K.unpack_i64(cur.value())[0]
                ok = cur.next()
        return out

    def recipients(
        self, did: int, *, chunk: int = 5000
    ) -> Iterator[tuple[int, Rcpt]]:
        """Every recipient of a delivery in id order (short read transactions)."""
        start = K.pack_rcpt(did, 0)
        prefix = K.pack_u32(did)
        while True:
            batch = []
            with self._read() as txn:
                cur = txn.cursor(db=self._db["rcpt"])
                ok = cur.set_range(start)
                while ok and len(batch) < chunk:
                    k = cur.key()
                    if k[:4] != prefix:
                        break
                    batch.append((K.unpack_rcpt(k)[1], RCPT_DECODER.decode(cur.value())))
                    ok = cur.next()
            yield from batch
            if len(batch) < chunk:
                return
            start = K.pack_rcpt(did, batch[-1][0] + 1)

    def recipient(self, did: int, rid: int) -> Rcpt | None:
        with self._read() as txn:
            raw = txn.get(K.pack_rcpt(did, rid), db=self._db["rcpt"])
        return RCPT_DECODER.decode(raw) if raw is not None else None

    def events(
        self, since: int = 0, *, delivery_id: int | None = None, chunk: int = 5000
    ) -> Iterator[tuple[int, Event]]:
        """Events with sequence number > ``since``, in order (short read transactions)."""
        start = since + 1
        while True:
            batch = []
            with self._read() as txn:
                cur = txn.cursor(db=self._db["events"])
                ok = cur.set_range(K.pack_u64(start))
                while ok and len(batch) < chunk:
                    batch.append((K.unpack_u64(cur.key())[0], EVENT_DECODER.decode(cur.value())))
                    ok = cur.next()
            for seq, ev in batch:
                if delivery_id is None or getattr(ev, "delivery_id", None) == delivery_id:
                    yield seq, ev
            if len(batch) < chunk:
                return
            start = batch[-1][0] + 1

    def queue_counts(self, shards: Iterable[int] | None = None) -> dict[str, int]:
        """Entries in the ready, scheduled and lease tables (whole spool)."""
        with self._read() as txn:
            return {n: txn.stat(self._db[n])["entries"] for n in ("ready", "sched", "lease")}

    # ------------------------------------------------------------------ purge
    def purge_delivery(self, did: int, *, chunk: int = 20_000) -> int:
        """Delete a delivery and everything about it (frees space).  Events stay."""
        n_total = 0
        prefix = K.pack_u32(did)
        while True:
            def fn(txn: Any) -> int:
                n = 0
                cur = txn.cursor(db=self._db["rcpt"])
                ok = cur.set_range(prefix)
                while ok and n < chunk:
                    k = cur.key()
                    if k[:4] != prefix:
                        break
                    rec = RCPT_DECODER.decode(cur.value())
                    rid = K.unpack_rcpt(k)[1]
                    if rec.status == Status.PENDING:
                        self._unqueue(txn, did, rid, rec)
                        txn.delete(k, db=self._db["lease"])
                    cur.delete()
                    ok = bool(cur.key())
                    n += 1
                return n

            n = self._write(fn)
            n_total += n
            if n < chunk:
                break

        def rest(txn: Any) -> None:
            txn.delete(prefix, db=self._db["seen"])  # all digests of the delivery
            for name in ("kpi",):
                cur = txn.cursor(db=self._db[name])
                ok = cur.set_range(prefix)
                while ok and cur.key()[:4] == prefix:
                    cur.delete()
                    ok = bool(cur.key())
            txn.delete(prefix, db=self._db["templates"])
            txn.delete(prefix, db=self._db["deliveries"])
            self._append_events(txn, [DeliveryEvent(ts_ms=clock_ms(), delivery_id=did,
                                                    kind="purged", count=n_total)])

        self._write(rest)
        return n_total


_SKIP = object()
