"""The quarantine and denylist shared by the nodes of a cluster, through Redis.

A hard bounce or a complaint quarantines the address in the node's spool (the result
transaction, spool/quarantine.py); ``QuarantineSync`` then publishes the node's new
exclusions (``quarantined``/``denylisted`` entries whose ``last_ms`` is newer than the
last push) to the stream ``fm:q:{all}`` and the hash ``fm:qa:{all}`` (address -> the
latest entry), and adds the other nodes' exclusions to its own spool as entries with
reason ``cluster:<node>:<reason>``, so injection on every node excludes the address.
Each spool keeps its own entries (the node's local copy, for analysis: who excluded
it, when, why); an entry this node already has is left as it is.  Runs in a thread of
each node's first worker (``cluster.node``) every ``SYNC_S``; Redis errors are logged
and retried at the next round (the local quarantine works without Redis).

Releases travel the same way: ``push_releases`` reads the node's event log (from a
cursor kept in Redis per node, ``fm:qcur:{all}``, so a release made while the node was
stopped is sent when it starts) for ``released`` events of its own (an operator's
``quarantine remove``, a delivery that succeeded, an expiry; not the ``cluster:``
releases it applied for others) and publishes them to the stream, dropping the address
from the hash.  A node pulling a release removes its entry for the address: an
operator's or a delivery's release ends the exclusion everywhere (every copy, and the
node's own entry unless it is newer than the release: a bounce after it stays); an
*expiry* removes only the copies of the releasing node's entry (another node's own
quarantine runs its own course).  Copies of bounce quarantines are bounce entries (they
end after ``quarantine_release_days`` on their own too).  Times are the nodes' wall
clocks.

Weak point: ``push`` reads the node's whole quarantine table each round (fine for
hundreds of thousands of entries every few seconds; an index by ``last_ms`` would make
it incremental).
"""

from __future__ import annotations

import json
import logging
import threading

import redis

from fastmta.cluster.redis_limits import connect, node_name
from fastmta.config import ClusterConfig
from fastmta.records import EVENT_DECODER, QuarantineEntry, QuarantineEvent

log = logging.getLogger("fastmta.cluster")
SYNC_S = 2.0
EXCLUDED = ("quarantined", "denylisted")
RELEASED = "released"
EVENTS_PER_ROUND = 200_000  # a bounded read of the event log per round
_QEVENT_TAG = 12  # QuarantineEvent's tag: the second byte of its msgpack array


class QuarantineSync:
    """Push this node's exclusions to Redis and pull the others' (see module doc)."""

    def __init__(self, spool, cfg: ClusterConfig, client: redis.Redis | None = None) -> None:
        self.spool = spool
        self.node = node_name(cfg)
        self.r = client or connect(cfg, 2.0)
        self.stream = f"{cfg.prefix}:q:{{all}}"
        self.latest = f"{cfg.prefix}:qa:{{all}}"
        self.cursors = f"{cfg.prefix}:qcur:{{all}}"
        self.pushed_ms = 0
        self.last_id = "0-0"
        self.event_seq: int | None = None  # this spool's event log, read up to here
        self.pushed = self.pulled = 0
        self.released_out = self.released_in = 0

    def push(self) -> int:
        """Publish the exclusions of this node newer than the last push."""
        new = [e for e in self.spool.quarantine_list()
               if e.state in EXCLUDED and e.last_ms > self.pushed_ms
               and not e.reason.startswith("cluster:")]
        if not new:
            return 0
        pipe = self.r.pipeline(transaction=False)
        for e in new:
            doc = json.dumps({"node": self.node, "address": e.address, "state": e.state,
                              "reason": e.reason, "at_ms": e.last_ms,
                              "delivery_id": e.delivery_id, "source": e.source,
                              "permanent": e.permanent})
            pipe.xadd(self.stream, {"d": doc}, maxlen=1_000_000, approximate=True)
            pipe.hset(self.latest, e.address, doc)
        pipe.execute()
        self.pushed_ms = max(e.last_ms for e in new)
        self.pushed += len(new)
        return len(new)

    def pull(self) -> int:
        """Add the other nodes' new exclusions to this node's spool."""
        added = 0
        while True:
            got = self.r.xread({self.stream: self.last_id}, count=1000)
            if not got:
                return added
            n = 0
            for mid, fields in got[0][1]:
                self.last_id = mid.decode()
                d = json.loads(fields[b"d"])
                if d["node"] == self.node:
                    continue
                if d["state"] == RELEASED:
                    self.released_in += self._apply_release(d)
                    continue
                cur = self.spool.quarantine_get(d["address"])
                if cur is not None and cur.state in EXCLUDED:
                    continue  # this node's own entry stays as it is
                bounce = d.get("source") == "bounce" and not d.get("permanent")
                self.spool.quarantine_add(
                    d["address"], state=d["state"],
                    reason=f"cluster:{d['node']}:{d['reason']}"[:200],
                    permanent=d["state"] == "denylisted" or not bounce,
                    source="bounce" if bounce else "manual")
                n += 1
            added += n
            self.pulled += n

    def _apply_release(self, d: dict) -> int:
        """Another node released ``d["address"]``: drop this node's entry (see module
        doc: any entry not newer than the release; for an expiry, only the copy of that
        node's entry)."""
        at, origin = int(d["at_ms"]), f"cluster:{d['node']}:"
        if d["reason"] == "expired":
            def when(e: QuarantineEntry) -> bool:
                return e.reason.startswith(origin)
        else:  # a copy here was imported from an earlier entry of the stream
            def when(e: QuarantineEntry) -> bool:
                return e.reason.startswith("cluster:") or e.last_ms <= at
        return int(self.spool.quarantine_remove(
            d["address"], reason=f"{origin}{d['reason']}"[:200], when=when))

    def _start_seq(self) -> int:
        """Where to read this spool's event log from: the cursor saved in Redis (a
        release made while the node was stopped is still sent), else the end."""
        last = self.spool.last_event_seq()
        saved = self.r.hget(self.cursors, self.node)
        if saved is None or int(saved) > last:  # none yet, or another (new) spool
            return last
        return int(saved)

    def push_releases(self) -> int:
        """Publish this node's releases since the last round (its event log)."""
        if self.event_seq is None:
            self.event_seq = self._start_seq()
        last, out = self.event_seq, []
        for n, (seq, raw) in enumerate(self.spool.events_raw(since=self.event_seq)):
            last = seq
            # a cheap test before decoding: most events are attempts, not releases
            if len(raw) > 2 and raw[1] == _QEVENT_TAG and b"released" in raw:
                ev = EVENT_DECODER.decode(raw)
                if isinstance(ev, QuarantineEvent) and ev.kind == RELEASED \
                        and not ev.reason.startswith("cluster:"):
                    out.append(ev)
            if n + 1 >= EVENTS_PER_ROUND:
                break
        seq = last
        if seq == self.event_seq:
            return 0
        docs = {ev.address: ev for ev in out}  # the latest release of each address
        latest = self.r.hmget(self.latest, list(docs)) if docs else []
        pipe = self.r.pipeline(transaction=False)
        for ev, cur in zip(docs.values(), latest, strict=True):
            pipe.xadd(self.stream, {"d": json.dumps({
                "node": self.node, "address": ev.address, "state": RELEASED,
                "reason": ev.reason, "at_ms": ev.ts_ms})}, maxlen=1_000_000, approximate=True)
            c = json.loads(cur) if cur else None
            if c is not None and (c["node"] == self.node if ev.reason == "expired"
                                  else c["at_ms"] <= ev.ts_ms):
                pipe.hdel(self.latest, ev.address)
        pipe.hset(self.cursors, self.node, seq)
        pipe.execute()
        self.event_seq = seq
        self.released_out += len(docs)
        return len(docs)

    def sync(self) -> tuple[int, int]:
        """One round: releases first (a release then a new bounce of the same address
        in one round reach the others in that order), then new exclusions, then pull."""
        self.push_releases()
        return self.push(), self.pull()

    def run(self, stop: threading.Event, interval_s: float = SYNC_S) -> None:
        """The sync loop (a thread) until ``stop`` is set."""
        while not stop.is_set():
            try:
                self.sync()
            except (redis.RedisError, OSError) as exc:
                log.warning("cluster: quarantine sync failed (%s); retrying", exc)
            except Exception:  # pragma: no cover - a bug must not kill the worker
                log.exception("cluster: quarantine sync")
            stop.wait(interval_s)
