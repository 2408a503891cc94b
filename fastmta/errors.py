"""Exception hierarchy.

Blame-aware, like h11: ``LocalProtocolError`` means fastmta misused the protocol (a bug
or bad user data such as CR/LF in an address); ``RemoteProtocolError`` means the peer
sent something that is not SMTP.  Both compiled and pure implementations raise these.
"""


class FastMTAError(Exception):
    """Base class of every fastmta error."""


class ProtocolError(FastMTAError):
    """The SMTP exchange cannot continue."""


class LocalProtocolError(ProtocolError):
    """We were asked to send something that is not valid SMTP."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that are not a valid SMTP reply (or too many of them)."""


class ConfigError(FastMTAError):
    """The configuration is invalid; the message says which key and why."""
