"""What the cluster's Redis holds right now (``fastmta cluster status``).

Read-only: the members (nodes seen, seconds since each renewed), the connection leases
per key and node (expired members excluded), and the learned state per key (limit,
rate, suspension left).  Every time is the server's ``TIME``.
"""

from __future__ import annotations

import redis

from fastmta.cluster.redis_limits import connect
from fastmta.config import ClusterConfig


def _key_name(prefix: str, kind: str, rkey: str) -> str:
    """``fm:c:{provider:p}/site:s`` -> ``provider:p/site:s`` (the engine's name)."""
    rest = rkey[len(f"{prefix}:{kind}:"):]
    if rest.startswith("{"):
        tag, _, tail = rest[1:].partition("}")
        return tag + tail
    return rest


def cluster_status(cfg: ClusterConfig, client: redis.Redis | None = None,
                   limit: int = 1000) -> dict:
    """The cluster state as a dict (``--json``); ``reachable`` False on a Redis error."""
    p = cfg.prefix
    out: dict = {"redis_url": cfg.redis_url, "prefix": p, "reachable": False,
                 "nodes": [], "leases": [], "state": []}
    try:
        c = client or connect(cfg, 2.0)
    except (redis.RedisError, OSError) as exc:
        out["error"] = str(exc)
        return out
    try:
        sec, usec = c.time()
        now_us = sec * 1_000_000 + usec
        for name, seen in c.zrange(f"{p}:members:{{all}}", 0, -1, withscores=True):
            out["nodes"].append({"node": name.decode(),
                                 "seen_s_ago": round((now_us - seen) / 1e6, 1)})
        by_node: dict[str, int] = {}
        for i, rkey in enumerate(c.scan_iter(f"{p}:c:*", count=500)):
            if i >= limit:
                out["truncated"] = True
                break
            members = c.zrangebyscore(rkey, now_us, "+inf")
            counts: dict[str, int] = {}
            for m in members:
                node = m.decode().partition(":")[0]
                counts[node] = counts.get(node, 0) + 1
                by_node[node] = by_node.get(node, 0) + 1
            if counts:
                out["leases"].append({"key": _key_name(p, "c", rkey.decode()),
                                      "held": len(members), "by_node": counts})
        for i, rkey in enumerate(c.scan_iter(f"{p}:s:*", count=500)):
            if i >= limit:
                out["truncated"] = True
                break
            h = {k.decode(): v.decode() for k, v in c.hgetall(rkey).items()}
            row: dict = {"key": _key_name(p, "s", rkey.decode())}
            if "limit" in h:
                row["limit"] = int(float(h["limit"]))
            if "rate" in h:
                row["rate"] = float(h["rate"])
            susp = float(h.get("suspend", 0) or 0)
            if susp > now_us:
                row["suspended_s"] = round((susp - now_us) / 1e6, 1)
            out["state"].append(row)
        out["leases_by_node"] = by_node
        out["reachable"] = True
    except (redis.RedisError, OSError) as exc:
        out["error"] = str(exc)
    finally:
        if client is None:
            c.close()
    out["leases"].sort(key=lambda x: x["key"])
    out["state"].sort(key=lambda x: x["key"])
    return out
