"""fastmta: an outbound MTA for bulk email campaigns."""

from fastmta.core import IMPL, Classification, Reply, ReplyParser, classify, parse_reply
from fastmta.errors import (
    ConfigError,
    FastMTAError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)

__version__ = "0.1.0"

_LAZY = {"WorkerPool": "api", "AsyncWorkerPool": "api", "DeliveryHandle": "api",
         "AsyncDeliveryHandle": "api", "PoolError": "api", "Config": "config",
         "load_config": "config", "Admin": "admin"}


def __getattr__(name: str):
    """The Python API is imported on first use (``import fastmta`` stays light)."""
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'fastmta' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{mod}"), name)


__all__ = [
    "IMPL",
    "Reply",
    "ReplyParser",
    "parse_reply",
    "classify",
    "Classification",
    "ConfigError",
    "FastMTAError",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "__version__",
    "WorkerPool",
    "AsyncWorkerPool",
    "DeliveryHandle",
    "AsyncDeliveryHandle",
    "PoolError",
    "Config",
    "load_config",
    "Admin",
]
