"""Limits shared by several fastmta nodes through Redis (issue #18; docs/scale.md).

``redis_limits.RedisLimits`` (the backend), ``server.RedisServer`` (a loopback
redis-server for tests and the bench), ``node.cluster_worker_main`` (the worker entry
point that injects the backend into the engine's worker).
"""
