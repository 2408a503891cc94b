"""Spool plumbing: the LMDB environment registry, transactions, map size, the KPI and
event ledger shared by every write (``store.py`` composes the operations).

One environment per spool directory, opened by each process itself after it started
(``spawn``); ``Spool.open`` keeps one handle per path per process.  All writes go through
``_write`` which maps LMDB's resize/full conditions onto clear behaviour:

- ``MapResizedError`` (another process raised the map): adopt the new size, retry.
- ``MapFullError``: the transaction is aborted (nothing half-written), ``SpoolFullError``
  is raised with what to do, ``spool.full`` is set and ``on_full`` callbacks alert.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Self

import lmdb
import msgspec

from fastmta.config import SpoolConfig
from fastmta.records import DELIVERY_DECODER, ENCODER, SCHEMA_VERSION, DeliveryRecord
from fastmta.spool import keys as K
from fastmta.spool.errors import SpoolError, SpoolFullError

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
    "control",  # operator controls (fastmta.ops.admin), see spool/controls.py
    "inbound",  # inbound feedback mail and its effects (schema 2), see spool/inbound.py
    "unknown",  # replies no rule recognised, by template (spool/unknown.py)
    "egress",  # learned (site, source) state and warm-up counters, spool/egress_state.py
    "kpilog",  # per-domain KPI deltas of recent commits, folded into ``kpi`` (schema 3)
)
MAX_DBS = 16
_REPLY_MAX = 500  # reply text kept per recipient / event
_U32MAX = 0xFFFFFFFF
_MAX_VALIDITY_MS = int(3.5 * 86400 * 1000)

_MADV_DONTNEED = 4
_TRIM_RECORDS = 1_000  # look at the mapped spool pages this often (records handled)
_TRIM_MAPPED_BYTES = 32 * 1024 * 1024  # unmap once this much more file memory is mapped
_KPI_LOG_FOLD = 32  # fold ``kpilog`` into ``kpi`` once it holds this many records
_KPI_LOG_PAGES = 128  # ... or once it spans this many pages (512 KB: a reader decodes it)
_KPI_LOG_DECODER = msgspec.msgpack.Decoder(list[tuple[int, dict[str, int]]])
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _mapped_file_bytes() -> int:
    """Resident file-backed + shared memory of this process (``/proc/self/statm``
    field 3), 0 where unsupported: one small read, no /proc/self/maps walk."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[2]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


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

def unmap_file_pages(data_file: str) -> None:
    """``MADV_DONTNEED`` on this process's read-only mappings of ``data_file`` (found in
    /proc/self/maps); the pages stay in the page cache.  No-op where unsupported."""
    if _madvise is None:
        return
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                if line.rstrip().endswith(data_file):
                    lo, hi = (int(x, 16) for x in line.split(None, 1)[0].split("-"))
                    _madvise(lo, hi - lo, _MADV_DONTNEED)
    except OSError:
        return


@contextlib.contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """No cyclic garbage collection inside a write transaction.  A commit of 1,000
    results allocates ~10 tracked objects per result (tuples, work items, dicts) that
    refcounting frees; the collector ran a generation-0 pass every 700 of them (perf:
    ~6% of a commit's CPU).  Restored on exit (a process that disabled it keeps it off)."""
    was = gc.isenabled()
    if was:
        gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


_REGISTRY: dict[str, SpoolBase] = {}
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

    __slots__ = ("now", "kpi", "events", "deliveries", "stale", "unknown", "applied", "q_check",
                 "leases", "lease_values")

    def __init__(self, now: int, q_check: bool = True) -> None:
        self.now = now
        self.q_check = q_check  # False when the quarantine table is empty
        self.leases: list[tuple[bytes, bytes]] = []  # written at the end, in key order
        self.lease_values: dict[int, bytes] = {}
        self.kpi: dict[int, defaultdict[str, int]] = {}
        self.events: list[Any] = []  # event structs, or their msgpack bytes
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


class SpoolBase:
    """Environment, transactions and the ledger; ``Spool`` adds the operations."""

    def __init__(self, path: str, cfg: SpoolConfig, env: lmdb.Environment) -> None:
        self.path = path
        self.cfg = cfg
        self.pid = os.getpid()
        self._env = env
        self._db: dict[str, Any] = {}
        self.full: str | None = None  # set while the map is full (the alert text)
        self.on_full: list[Callable[[str], None]] = []
        self._rotate = 0
        self._touched_since_trim = 0
        self._mapped_base = _mapped_file_bytes()  # libraries etc., before any spool page
        with env.begin(write=True) as txn:
            for name in _DBS:
                # seen: key = delivery id, sorted fixed-size duplicates = address digests
                # (8 bytes each on DUPFIXED pages: 4x denser than one key per address)
                # ready/sched: key = shard, DUPFIXED values (one dense list per shard)
                dup = name in ("seen", "ready", "sched")
                self._db[name] = env.open_db(name.encode(), txn=txn, create=True,
                                             dupsort=dup, dupfixed=dup)
            meta = self._db["meta"]
            ver = txn.get(b"schema", db=meta)
            if ver is None or K.unpack_u32(ver)[0] < SCHEMA_VERSION:
                txn.put(b"schema", K.pack_u32(SCHEMA_VERSION), db=meta)
            elif K.unpack_u32(ver)[0] > SCHEMA_VERSION:
                raise SpoolError(
                    f"spool {path} has schema {K.unpack_u32(ver)[0]}, this fastmta reads "
                    f"up to {SCHEMA_VERSION}: upgrade fastmta"
                )

    # ------------------------------------------------------------------ open / close
    @classmethod
    def open(cls, path: str | os.PathLike[str] | None = None, cfg: SpoolConfig | None = None) -> Self:
        """Open (or create) the spool at ``path``; returns this process's single handle."""
        cfg = cfg or SpoolConfig()
        path = os.fspath(path if path is not None else cfg.path)
        try:
            os.makedirs(path, exist_ok=True)
        except FileExistsError:
            raise SpoolError(f"spool {path} exists and is not a directory") from None
        except NotADirectoryError:
            raise SpoolError(f"cannot create the spool {path}: a part of the path is a file, "
                             "not a directory") from None
        except OSError as exc:
            raise SpoolError(f"cannot create the spool directory {path}: {exc.strerror}") from None
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
            try:
                env = _open_env(real, cfg)
            except lmdb.Error as exc:
                raise SpoolError(f"cannot open the spool {real}: {_lmdb_reason(exc)}") from None
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

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ txn plumbing
    def _write(self, fn: Callable[[Any], Any]) -> Any:
        """Run ``fn(txn)`` in one write transaction; ``fn`` may be re-run (no side effects
        outside the transaction)."""
        for _ in range(5):
            try:
                with self._env.begin(write=True) as txn, _no_cyclic_gc():
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
                raise self._paused_full(msg) from exc
            except lmdb.Error as exc:
                # the filesystem ran out of space (LMDB reports ENOSPC on some file
                # systems, EIO on others, e.g. tmpfs): the transaction is aborted whole;
                # pause like a full map until space returns
                if not _disk_full(self.path, exc):
                    raise
                msg = (f"the disk holding spool {self.path} is full ({exc}): delivery is "
                       "paused and nothing is lost; free space on that filesystem and it "
                       "resumes by itself")
                raise self._paused_full(msg) from exc
        raise SpoolError("spool map kept being resized by another process; retry")

    def _paused_full(self, msg: str) -> SpoolFullError:
        """Mark the spool full (map or disk), tell the ``on_full`` hooks the first time,
        and return the error to raise."""
        if not self.full:
            log.error("%s", msg)
            for cb in list(self.on_full):
                try:
                    cb(msg)
                except Exception:  # an alert hook must not break the spool
                    log.exception("on_full callback failed")
        self.full = msg
        return SpoolFullError(msg)

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
        unmap_file_pages(os.path.join(self.path, "data.mdb"))

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

    def _delivery_in(self, txn: Any, did: int, acc: _Acc | None = None) -> DeliveryRecord | None:
        if acc is not None and did in acc.deliveries:
            return acc.deliveries[did]
        raw = txn.get(K.pack_u32(did), db=self._db["deliveries"])
        rec = DELIVERY_DECODER.decode(raw) if raw is not None else None
        if acc is not None:
            acc.deliveries[did] = rec
        return rec

    def _maybe_trim(self, n: int) -> None:
        """Reading records maps file pages; unmap them once the process maps
        ``_TRIM_MAPPED_BYTES`` (32 MB) more file memory than at open (flat RSS).
        Recipients of one shard are spread over the spool, so each record handled maps
        a page or two (~8 KB measured on a 1M-recipient spool): unmapping after a fixed
        count of records (1,000, before) re-faulted the hot pages at every commit and
        cost ~25% of the writer's CPU (``bench_spool.py`` writer_path: 35k -> 46k
        results per CPU-second); the mapped size is checked every ``_TRIM_RECORDS``
        records instead (``/proc/self/statm``, a few us), ``benchmarks/bench_trim.py``."""
        self._touched_since_trim += n
        if self._touched_since_trim >= _TRIM_RECORDS:
            self._touched_since_trim = 0
            mapped = _mapped_file_bytes()
            if not mapped or mapped - self._mapped_base >= _TRIM_MAPPED_BYTES:
                self.trim_rss()

    # ------------------------------------------------------------------ KPIs / events
    @staticmethod
    def _count_failed(kd: defaultdict[str, int], dom: str, reason: str, bclass: int) -> None:
        kd["pending"] -= 1
        kd["failed"] += 1
        kd[f"reason/{reason}"] += 1
        if bclass:
            kd[f"class/{bclass}"] += 1
        kd[f"domain/{dom}/failed"] += 1

    _kpi_log_fold = _KPI_LOG_FOLD

    def _flush(self, txn: Any, acc: _Acc) -> None:
        """Write the transaction's KPI deltas and events.  Delivery counters are updated in
        place; the per-domain ones (``domain/...``: one per touched domain, ~1,000 keys
        per commit at 5,000 domains) go as ONE ``kpilog`` record per transaction, folded
        into ``kpi`` every ``_kpi_log_fold`` records (readers add the unfolded records)."""
        logged: list[tuple[int, dict[str, int]]] = []
        for did, deltas in acc.kpi.items():
            dom = {n: d for n, d in deltas.items() if d and n.startswith("domain/")}
            if dom:
                logged.append((did, dom))
            _add_counters(txn, self._db["kpi"], did,
                          [(n, d) for n, d in deltas.items() if n not in dom])
        if logged:
            ldb = self._db["kpilog"]
            cur = txn.cursor(db=ldb)
            seq = K.unpack_u64(cur.key())[0] + 1 if cur.last() else 1
            cur.put(K.pack_u64(seq), ENCODER.encode(logged), append=True)
            st = txn.stat(ldb)  # bounded in records and in bytes (what a reader decodes)
            if (st["entries"] >= self._kpi_log_fold
                    or st["overflow_pages"] + st["leaf_pages"] >= _KPI_LOG_PAGES):
                self._fold_kpi_log(txn)
        if acc.events:
            self._append_events(txn, acc.events)

    def _fold_kpi_log(self, txn: Any) -> None:
        """Add every ``kpilog`` record into the ``kpi`` counters and empty the log (in the
        caller's write transaction: a crash keeps either the log or its sum)."""
        for did, deltas in sorted(_kpi_log_sum(txn, self._db["kpilog"], None).items()):
            _add_counters(txn, self._db["kpi"], did, sorted(deltas.items()))
        txn.drop(self._db["kpilog"], delete=False)

    def _append_events(self, txn: Any, events: list[Any]) -> None:
        if not events:
            return
        cur = txn.cursor(db=self._db["events"])
        seq = K.unpack_u64(cur.key())[0] + 1 if cur.last() else 1
        items = []
        encode = ENCODER.encode
        for ev in events:  # an event may come encoded already (``rcpt_sent``)
            items.append((K.pack_u64(seq), ev if type(ev) is bytes else encode(ev)))
            seq += 1
        cur.putmulti(items, append=True)



def _add_counters(txn: Any, kdb: Any, did: int, deltas: Iterable[tuple[str, int]]) -> None:
    """Add each (counter name, delta) of delivery ``did`` into the ``kpi`` table."""
    prefix = K.pack_u32(did)
    get, put, unpack, pack = txn.get, txn.put, K.unpack_i64, K.pack_i64
    for name, delta in deltas:
        if delta:
            key = prefix + name.encode()
            raw = get(key, db=kdb)
            put(key, pack((unpack(raw)[0] if raw else 0) + delta), db=kdb)


def _kpi_log_sum(txn: Any, ldb: Any, did: int | None) -> dict[int, dict[str, int]]:
    """The unfolded per-domain deltas of ``kpilog`` (all deliveries, or one), summed:
    delivery id -> counter name -> delta."""
    per: dict[int, dict[str, int]] = {}
    for _k, raw in txn.cursor(db=ldb):
        for d, deltas in _KPI_LOG_DECODER.decode(raw):
            if did is not None and d != did:
                continue
            acc = per.get(d)
            if acc is None:
                per[d] = deltas
                continue
            for name, delta in deltas.items():
                acc[name] = acc.get(name, 0) + delta
    return per


def _open_env(real: str, cfg: SpoolConfig):
    return lmdb.open(
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


def _lmdb_reason(exc: BaseException) -> str:
    """LMDB's error text with the usual causes spelt out."""
    text = str(exc)
    low = text.lower()
    if "read-only" in low or "permission" in low or "access" in low:
        return f"{text} (the spool directory must be writable by this user)"
    if "no space" in low or "mdb_map_full" in low:
        return f"{text} (the disk holding the spool is full)"
    return text


_DISK_LOW_BYTES = 16 * 1024 * 1024


def _disk_full(path: str, exc: BaseException) -> bool:
    """An LMDB error that is (most likely) the filesystem running out of space."""
    text = str(exc)
    if "No space left" in text or "Disk quota" in text:
        return True
    if "Input/output error" not in text:
        return False
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < _DISK_LOW_BYTES
