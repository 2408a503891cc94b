"""A node of a cluster: the worker entry point that injects ``RedisLimits``.

The engine cannot import this layer (it sits above it), so the front ends (CLI, API,
bench) hand ``worker_target(cfg)`` to the ``Supervisor``: with a ``[cluster] redis_url``
each worker holds its sites' limits in Redis, falling back to the node's shared-memory
table (``ShmLimits``, this node's share) when Redis is unreachable.
"""

from __future__ import annotations

from collections.abc import Callable

from fastmta.config import Config
from fastmta.engine.limits import Limits, LocalLimits
from fastmta.engine.worker import worker_main


def make_limits(cfg: Config, node: Limits | None) -> Limits:
    from fastmta.cluster.redis_limits import RedisLimits  # redis is imported by nodes only

    return RedisLimits(cfg.cluster, fallback=node or LocalLimits())


def cluster_worker_main(spec, pipe=None, lock=None) -> None:
    """``engine.worker.worker_main`` with the cluster's limits."""
    worker_main(spec, pipe, lock, limits_factory=make_limits)


def worker_target(cfg: Config) -> Callable | None:
    """The worker entry point for ``cfg`` (None: the engine's own)."""
    return cluster_worker_main if cfg.cluster.redis_url else None
