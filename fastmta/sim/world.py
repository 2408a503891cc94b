"""The simulated internet as data: providers, their domains, MX hosts and behaviour.

A profile is a TOML file (``fastmta/sim/profiles/NAME.toml`` or any path) decoded into
``WorldSpec``; ``World`` indexes it (domain -> provider, MX host -> 127.0.x.y address)
and answers ``expected(address)``: the final status a correct MTA must reach for that
recipient, so an audit can compare.

Outcomes are deterministic: magic local parts (below) first, then the provider's
behaviour, where rates pick recipients by a hash of the address (same answer every run).

Magic local parts (prefix of the local part, case-insensitive, like KumoMTA's sink):

=======================  ===========================================  ===================
local part starts with    reply                                        expected
=======================  ===========================================  ===================
``unknown``/``nouser``   550 5.1.1 at RCPT                             failed user_unknown
``disabled``             550 5.2.1 at RCPT                             failed account_disabled
``full``                 452 4.2.2 at RCPT                             soft mailbox_full
``tempfail``             451 4.3.0 at RCPT                             soft unreachable
``greylist``             450 4.2.0 until the greylist delay has passed  sent
``disconnect-in-data``   connection dropped in the middle of DATA      soft not_connected
``oddreply``             550 5.9.0 in wording no bounce rule knows     soft not_defined
=======================  ===========================================  ===================

``odd_refusal_rate`` / ``odd_deferral_rate`` pick recipients that get the long tail's
unknown wording (``sim/oddities.py``): refused (soft not_defined: the engine retries an
undetermined reply until it expires) or deferred once (then sent).
"""

from __future__ import annotations

import ipaddress
import zlib
from pathlib import Path

import msgspec

__all__ = ["Behaviour", "Provider", "Record", "WorldSpec", "World", "load_world",
           "profile_path", "MAGIC", "DNS_KINDS"]

PROFILE_DIR = Path(__file__).with_name("profiles")

DNS_KINDS = ("mx", "implicit", "nullmx", "nxdomain", "servfail", "slow", "cname",
             "cname-partial")


class Behaviour(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How the MX hosts of a provider behave (all off = accept everything fast)."""

    pipelining: bool = True
    starttls: bool = False
    chunking: bool = False  # CHUNKING advertised and BDAT accepted (RFC 3030)
    max_size: int = 0  # SIZE advertised; 0 = no limit announced as "SIZE 0"
    greeting: str = ""  # replace the greeting, e.g. "554 5.7.1 go away"
    greeting_delay_s: float = 0.0
    reply_delay_s: float = 0.0  # slow server: every reply is delayed
    silent: bool = False  # accepts TCP, never says anything
    block: bool = False  # 550 5.7.1 sender blocked at MAIL
    unknown_user_rate: float = 0.0
    mailbox_full_rate: float = 0.0
    disconnect_in_data_rate: float = 0.0
    # recipients answered in wording no shipped bounce rule knows (sim/oddities.py): a
    # permanent 5xx refusal (the engine retries it as undetermined until it expires), and
    # a 4xx deferral that clears after odd_defer_s (then the message is accepted)
    odd_refusal_rate: float = 0.0
    odd_deferral_rate: float = 0.0
    odd_defer_s: float = 2.0
    greylist_s: float = 0.0  # > 0: first try of a (ip, from, rcpt) triple gets 450
    max_conn_per_ip: int = 0  # per sender IP across the provider's hosts; 0 = no limit
    max_msgs_per_min_per_ip: int = 0  # message rate per sender IP; 0 = no limit
    # tarpit: one connection gets at most this many acceptances per second (each "250
    # queued" waits its turn), so with max_conn_per_ip the per-IP rate is capped at
    # max_conn_per_ip x conn_msgs_per_s (``cap_per_s``); 0 = no pacing
    conn_msgs_per_s: float = 0.0
    # an IP refused for going over max_conn_per_ip is served at half that pace for this
    # long (the provider's temporary penalty for a burst); 0 = none
    over_cap_penalty_s: float = 0.0
    rate_window_s: float = 60.0  # the sliding window of that cap (tests shorten it)
    max_rcpts_per_txn: int = 0
    max_msgs_per_conn: int = 0
    # per recipient address: at most this many messages per rate_window_s, then Gmail's
    # published 450 4.2.1 "receiving mail too quickly" (a recipient-scope limit); 0 = off
    max_msgs_per_rcpt: int = 0
    # every Nth connection and MAIL FROM (per provider, one counter) gets a generic 421
    # ("Service not available" greeting, "Temporary System Problem" to MAIL) and the
    # connection closes: transient failures, not rate signals; 0 = off
    transient_421_every: int = 0
    garbage: bool = False  # answers MAIL with bytes that are not SMTP
    rcpt_reply: str = ""  # refuse every RCPT with this one-line reply ("550 5.1.1 ...")
    keep_messages: bool = False  # keep accepted messages (for tests)
    # added by issue #17: per source IP behaviour (sim/reputation.py)
    block_ips: list[str] = msgspec.field(default_factory=list)  # 550 5.7.1 for these IPs
    reputation: bool = False  # per-IP allowances growing with clean days
    rep_cold_daily: int = 250  # recipients a day from an unknown IP
    rep_hourly_fraction: float = 0.25  # of the daily allowance per hour
    rep_growth: float = 2.5  # allowance factor per clean day
    rep_burst_fraction: float = 0.0  # > this x daily allowance within 60 s from a cold IP
    rep_warm_ips: list[str] = msgspec.field(default_factory=list)  # known good: no limits
    rep_warm_daily: int = 50000  # IPs allowed this much a day are not "cold" any more
    rep_block_s: float = 4 * 3600.0  # egress seconds

    @property
    def cap_per_s(self) -> float:
        """The hidden per-IP message rate of a paced, connection-capped provider (0: none)."""
        return self.max_conn_per_ip * self.conn_msgs_per_s if self.max_conn_per_ip else 0.0

    @property
    def stateful(self) -> bool:
        """Needs one process to see all its connections (limits, rates, greylisting)."""
        return bool(self.greylist_s or self.max_conn_per_ip or self.max_msgs_per_min_per_ip
                    or self.max_msgs_per_rcpt or self.transient_421_every
                    or self.reputation or self.odd_deferral_rate)


class Provider(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A mailbox provider: its domains share the same MX hosts and behaviour."""

    name: str
    domains: list[str] = msgspec.field(default_factory=list)
    generate: int = 0  # plus this many domains named "d{i}.{name}.test"
    hosts: int = 1  # MX hosts (each on its own 127.0.x.y address)
    mx_names: list[str] = msgspec.field(default_factory=list)  # default mx{i}.{name}.sim.test
    preferences: list[int] = msgspec.field(default_factory=list)  # default: all 10
    dns: str = "mx"  # one of DNS_KINDS
    dns_delay_s: float = 2.0  # for dns = "slow"
    ttl: int = 300
    behaviour: Behaviour = msgspec.field(default_factory=Behaviour)


class Record(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An extra DNS record of the world (the sender's SPF, DMARC, DKIM, PTR, MTA-STS...).

    ``data``: one rdata per item in zone-file text, except TXT, where each item is the
    plain text of one record (split into 255-byte strings and quoted when served).
    """

    name: str
    type: str
    data: list[str]
    ttl: int = 300


class WorldSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str = "custom"
    description: str = ""
    smtp_port: int = 2525
    dns_port: int = 5353
    first_address: str = "127.0.1.1"
    greylist_default_s: float = 1.0  # for the "greylist" magic local part
    time_factor: float = 1.0  # the reputation clock (same compression as [egress])
    time_origin: float = 0.0  # its origin (wall seconds; 0 = when the sim starts)
    providers: list[Provider] = msgspec.field(default_factory=list)
    records: list[Record] = msgspec.field(default_factory=list)  # extra zone data
    servfail_names: list[str] = msgspec.field(default_factory=list)  # any type -> SERVFAIL
    mta_sts: dict[str, str] = msgspec.field(default_factory=dict)  # domain -> policy file


MAGIC = (
    ("disconnect-in-data", "disconnect"),
    ("unknown", "unknown"),
    ("nouser", "unknown"),
    ("disabled", "disabled"),
    ("full", "full"),
    ("tempfail", "tempfail"),
    ("greylist", "greylist"),
    ("oddreply", "odd"),  # a refusal no bounce rule knows (the unknown-reply loop)
)


def _bucket(address: str) -> float:
    return zlib.crc32(address.lower().encode("utf-8")) / 4294967296.0


_MAGIC_FIRST = frozenset(p[0] for p, _ in MAGIC) | frozenset(p[0].upper() for p, _ in MAGIC)


def magic_of(local_part: str) -> str | None:
    if local_part[:1] not in _MAGIC_FIRST:
        return None
    lp = local_part.lower()
    for prefix, kind in MAGIC:
        if lp.startswith(prefix):
            return kind
    return None


def rcpt_fate(beh: Behaviour, address: str) -> str | None:
    """The deterministic fate of one recipient at RCPT/DATA time (None = accept)."""
    local_part = address.rpartition("@")[0]
    m = magic_of(local_part)
    if m is not None:
        return m
    shares = ((beh.unknown_user_rate, "unknown"), (beh.mailbox_full_rate, "full"),
              (beh.disconnect_in_data_rate, "disconnect"),
              (beh.odd_refusal_rate, "odd_refusal"), (beh.odd_deferral_rate, "odd_deferral"))
    if any(rate for rate, _ in shares):
        u = _bucket(address)  # one uniform draw, the shares stacked one after another
        for rate, fate in shares:
            if u < rate:
                return fate
            u -= rate
    return None


_FATE_EXPECTED = {
    None: ("sent", ""),
    "unknown": ("failed", "user_unknown"),
    "disabled": ("failed", "account_disabled"),
    "full": ("soft", "mailbox_full"),
    "tempfail": ("soft", "unreachable"),
    "greylist": ("sent", ""),
    "disconnect": ("soft", "not_connected"),
    # undetermined (class 1, a code-only fallback rule): soft, retried until it expires
    "odd": ("soft", "not_defined"),
    "odd_refusal": ("soft", "not_defined"),
    "odd_deferral": ("sent", ""),
}


class Host(msgspec.Struct, frozen=True):
    name: str
    address: str
    preference: int
    provider: str


class World:
    """An indexed ``WorldSpec``."""

    def __init__(self, spec: WorldSpec) -> None:
        self.spec = spec
        self.providers: dict[str, Provider] = {}
        self.domain_provider: dict[str, Provider] = {}
        self.hosts: dict[str, Host] = {}  # host name -> Host
        self.provider_hosts: dict[str, list[Host]] = {}
        self.address_provider: dict[str, Provider] = {}
        addr = int(ipaddress.IPv4Address(spec.first_address))
        for p in spec.providers:
            if p.name in self.providers:
                raise ValueError(f"provider {p.name!r} defined twice")
            if p.dns not in DNS_KINDS:
                raise ValueError(f"provider {p.name!r}: dns must be one of {DNS_KINDS}")
            self.providers[p.name] = p
            for d in self.domains_of(p):
                if d in self.domain_provider:
                    raise ValueError(f"domain {d!r} belongs to two providers")
                self.domain_provider[d] = p
            names = list(p.mx_names) or [f"mx{i + 1}.{p.name}.sim.test" for i in range(p.hosts)]
            hosts = []
            for i, n in enumerate(names):
                while addr % 256 in (0, 255):
                    addr += 1
                a = str(ipaddress.IPv4Address(addr))
                if not a.startswith("127."):
                    raise ValueError("too many MX hosts for 127.0.0.0/8")
                addr += 1
                pref = p.preferences[i] if i < len(p.preferences) else 10
                h = Host(n.lower().rstrip("."), a, pref, p.name)
                self.hosts[h.name] = h
                self.address_provider[a] = p
                hosts.append(h)
            self.provider_hosts[p.name] = hosts

    @staticmethod
    def domains_of(p: Provider) -> list[str]:
        out = [d.lower().rstrip(".") for d in p.domains]
        out += [f"d{i}.{p.name}.test" for i in range(p.generate)]
        return out

    @property
    def domains(self) -> list[str]:
        return list(self.domain_provider)

    @property
    def addresses(self) -> list[str]:
        return list(self.address_provider)

    def behaviour_at(self, address: str) -> Behaviour:
        return self.address_provider[address].behaviour

    def expected(self, address: str) -> tuple[str, str]:
        """("sent" | "failed" | "soft", reason) a correct MTA ends with for ``address``.

        ``soft`` means every attempt fails temporarily: the recipient stays pending
        and ends ``failed`` with reason ``expired`` (last soft reason kept) after the
        validity period.
        """
        domain = address.rpartition("@")[2].lower()
        p = self.domain_provider.get(domain)
        if p is None or p.dns in ("nxdomain", "nullmx"):
            return ("failed", "invalid_domain")
        if p.dns == "servfail":
            return ("soft", "unreachable")
        b = p.behaviour
        if b.greeting.startswith("5"):
            return ("soft", "refused")  # the host refuses us, not the address
        if b.silent or (b.greeting and not b.greeting.startswith("2")):
            return ("soft", "unreachable")
        if b.garbage:
            return ("soft", "not_connected")
        if b.block:
            return ("soft", "refused")
        return _FATE_EXPECTED[rcpt_fate(b, address)]


def find_profile(name: str, directory: Path) -> Path | None:
    """``name`` as a path to a TOML file, else the bundled ``directory/name.toml``;
    None when neither exists (shared by the sim's and the bench's profiles)."""
    p = Path(name)
    if p.suffix == ".toml" and p.exists():
        return p
    bundled = directory / f"{name}.toml"
    return bundled if bundled.exists() else None


def profile_path(name: str) -> Path:
    """A bundled profile by name, or a path to a TOML file."""
    found = find_profile(name, PROFILE_DIR)
    if found is None:
        names = sorted(x.stem for x in PROFILE_DIR.glob("*.toml"))
        raise FileNotFoundError(f"no sim profile {name!r} (bundled: {', '.join(names)})")
    return found


def load_world(name_or_path: str = "default", **overrides) -> World:
    """Load a profile TOML into a World (``overrides``: top-level WorldSpec fields)."""
    import tomllib

    from fastmta.errors import ConfigError

    path = profile_path(name_or_path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
        data.update(overrides)
        return World(msgspec.convert(data, WorldSpec))
    except (tomllib.TOMLDecodeError, msgspec.ValidationError, ValueError) as exc:
        raise ConfigError(f"sim profile {path}: {exc}") from None
