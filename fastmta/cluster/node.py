"""A node of a cluster: the worker entry point that injects ``RedisLimits``.

The engine cannot import this layer (it sits above it), so the front ends (CLI, API,
bench) hand ``worker_target(cfg)`` to the ``Supervisor``: with a ``[cluster] redis_url``
each worker holds its sites' limits in Redis, falling back to the node's shared-memory
table (``ShmLimits``, this node's share) when Redis is unreachable; the first worker
also runs the shared quarantine (``cluster.quarantine.QuarantineSync``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from fastmta.config import Config
from fastmta.engine.limits import Limits, LocalLimits
from fastmta.engine.worker import worker_main


def make_limits(cfg: Config, node: Limits | None) -> Limits:
    from fastmta.cluster.redis_limits import RedisLimits  # redis is imported by nodes only

    return RedisLimits(cfg.cluster, fallback=node or LocalLimits())


def _quarantine_thread(spec, stop: threading.Event) -> None:
    """The shared quarantine (cluster/quarantine.py), in the node's first worker."""
    import msgspec

    from fastmta.cluster.quarantine import SYNC_S, QuarantineSync
    from fastmta.spool import Spool

    if stop.wait(SYNC_S):  # the worker opens its spool first
        return
    cfg = msgspec.convert(spec.config, Config)
    QuarantineSync(Spool.open(spec.spool_path, cfg.spool), cfg.cluster).run(stop)


def cluster_worker_main(spec, pipe=None, lock=None) -> None:
    """``engine.worker.worker_main`` with the cluster's limits; worker 0 also shares
    the node's quarantine and denylist through Redis."""
    stop = threading.Event()
    if spec.index == 0:
        threading.Thread(target=_quarantine_thread, args=(spec, stop), daemon=True,
                         name="quarantine-sync").start()
    try:
        worker_main(spec, pipe, lock, limits_factory=make_limits)
    finally:
        stop.set()


def worker_target(cfg: Config) -> Callable | None:
    """The worker entry point for ``cfg`` (None: the engine's own)."""
    return cluster_worker_main if cfg.cluster.redis_url else None
