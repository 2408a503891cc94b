"""Smarthost routing (``[routing]``): deliver through a relay instead of the MX hosts.

``smarthost = "host:port"`` sends every domain through that relay; ``smarthosts`` maps a
domain (and its subdomains) or a provider name (``[dns] providers``) to a relay, or to
``""`` for "MX lookups for this one".  A relay is one site (``relay:host:port``) with its
own shaping; the connection authenticates (``[routing] auth_user``...) after STARTTLS
(``smtp.relay``).  The relay host is an IP address or ``localhost``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from fastmta.config import RoutingConfig
from fastmta.dns.resolver import MxHost, MxResult
from fastmta.errors import ConfigError


@dataclass(frozen=True)
class Smarthost:
    host: str
    port: int
    address: str

    @property
    def site(self) -> str:
        return f"relay:{self.host}:{self.port}"


def parse_relay(text: str) -> Smarthost:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"[routing] smarthost {text!r}: expected host:port")
    host = host.strip("[]")
    address = "127.0.0.1" if host == "localhost" else host
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise ConfigError(f"[routing] smarthost {text!r}: the host must be an IP address "
                          "or localhost") from None
    return Smarthost(host, int(port), address)


class Relays:
    """Which relay (if any) a domain or provider goes through."""

    def __init__(self, cfg: RoutingConfig) -> None:
        self.cfg = cfg
        self.default = parse_relay(cfg.smarthost) if cfg.smarthost else None
        self.by_name = {k.lower(): (parse_relay(v) if v else None)
                        for k, v in cfg.smarthosts.items()}
        self.auth = bool(cfg.auth_user)
        if cfg.auth_mechanism and cfg.auth_mechanism.upper() not in ("PLAIN", "LOGIN"):
            raise ConfigError(f"[routing] auth_mechanism {cfg.auth_mechanism!r}: PLAIN or "
                              "LOGIN")
        self.active = self.default is not None or any(self.by_name.values())

    def for_domain(self, domain: str) -> tuple[bool, Smarthost | None]:
        """(decided, relay): decided False = ask again with the provider after MX."""
        d = domain.lower()
        while d:
            if d in self.by_name:
                return True, self.by_name[d]
            d = d.partition(".")[2]
        return False, self.default

    def for_provider(self, provider: str | None) -> tuple[bool, Smarthost | None]:
        if provider and provider.lower() in self.by_name:
            return True, self.by_name[provider.lower()]
        return False, self.default

    @staticmethod
    def mx(domain: str, relay: Smarthost) -> MxResult:
        return MxResult(domain=domain, site=relay.site,
                        hosts=[MxHost(relay.host, 0, [relay.address])])
