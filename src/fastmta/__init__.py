"""fastmta: an outbound MTA for bulk email campaigns."""

from .core import IMPL, Classification, Reply, ReplyParser, classify, parse_reply
from .errors import (
    ConfigError,
    FastMTAError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)

__version__ = "0.1.0"

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
]
