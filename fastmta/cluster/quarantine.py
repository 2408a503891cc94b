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

Weak point: ``push`` reads the node's whole quarantine table each round (fine for
hundreds of thousands of entries every few seconds; an index by ``last_ms`` would make
it incremental).
"""

from __future__ import annotations

import json
import logging
import threading

import redis

from fastmta.cluster.redis_limits import node_name
from fastmta.config import ClusterConfig

log = logging.getLogger("fastmta.cluster")
SYNC_S = 2.0
EXCLUDED = ("quarantined", "denylisted")


class QuarantineSync:
    """Push this node's exclusions to Redis and pull the others' (see module doc)."""

    def __init__(self, spool, cfg: ClusterConfig, client: redis.Redis | None = None) -> None:
        self.spool = spool
        self.node = node_name(cfg)
        self.r = client or redis.Redis.from_url(cfg.redis_url, socket_timeout=2.0,
                                                socket_connect_timeout=2.0)
        self.stream = f"{cfg.prefix}:q:{{all}}"
        self.latest = f"{cfg.prefix}:qa:{{all}}"
        self.pushed_ms = 0
        self.last_id = "0-0"
        self.pushed = self.pulled = 0

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
                              "delivery_id": e.delivery_id})
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
            for mid, fields in got[0][1]:
                self.last_id = mid.decode()
                d = json.loads(fields[b"d"])
                if d["node"] == self.node:
                    continue
                cur = self.spool.quarantine_get(d["address"])
                if cur is not None and cur.state in EXCLUDED:
                    continue  # this node's own entry stays as it is
                self.spool.quarantine_add(
                    d["address"], state=d["state"],
                    reason=f"cluster:{d['node']}:{d['reason']}"[:200],
                    permanent=d["state"] == "denylisted")
                added += 1
            self.pulled += added

    def sync(self) -> tuple[int, int]:
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
