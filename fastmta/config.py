"""Configuration: TOML decoded with msgspec into frozen structs that reject unknown keys.

Each section belongs to one concern; a module that needs settings reads its own section.
Add fields with defaults only (old config files must keep loading).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import msgspec

from fastmta.errors import ConfigError


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class DnsConfig(_Section):
    """Where MX/A lookups go.  Tests and benchmarks point this at the simulated internet."""

    nameservers: list[str] = msgspec.field(default_factory=list)  # empty = system resolver
    port: int = 53
    timeout_s: float = 5.0
    cache_size: int = 100_000
    negative_ttl_s: float = 300.0
    # added by issue #4 (resolver)
    max_ttl_s: float = 86400.0  # cap on cached TTLs
    servfail_ttl_s: float = 30.0  # how long a SERVFAIL/timeout is cached
    ipv6: bool = False  # also look up AAAA of MX hosts
    allow_private_mx: bool = False  # MX hosts on private/unspecified addresses
    allow_loopback_mx: bool | None = None  # None: allowed iff all nameservers are loopback
    providers: dict[str, list[str]] = msgspec.field(
        default_factory=lambda: {
            "gmail": ["google.com", "googlemail.com"],
            "outlook": ["outlook.com", "hotmail.com"],
            "yahoo": ["yahoodns.net"],
            "apple": ["icloud.com", "me.com"],
            "gmx": ["gmx.net", "web.de"],
            "orange": ["orange.fr"],
            "free": ["free.fr"],
            "sfr": ["sfr.fr"],
            "laposte": ["laposte.net"],
            "ovh": ["ovh.net"],
            "proofpoint": ["pphosted.com"],
            "mimecast": ["mimecast.com"],
        }
    )  # provider -> MX host suffixes


class SmtpConfig(_Section):
    """SMTP client settings (RFC 5321 section 4.5.3.2 timeouts by default)."""

    port: int = 25
    ehlo_name: str = "localhost"
    # several addresses = an implicit egress pool of equal weights (docs/egress.md)
    source_ips: list[str] = msgspec.field(default_factory=list)
    tls: str = "opportunistic"  # none | opportunistic | required | verify
    connect_timeout_s: float = 60.0
    greeting_timeout_s: float = 300.0
    command_timeout_s: float = 300.0
    data_init_timeout_s: float = 120.0
    data_block_timeout_s: float = 180.0
    data_done_timeout_s: float = 600.0
    idle_timeout_s: float = 30.0
    max_msgs_per_conn: int = 100
    max_rcpts_per_txn: int = 100
    allow_private_mx: bool = False  # refuse MX hosts on private/unspecified addresses
    # added by issue #4 (client)
    pipelining: bool = True  # use PIPELINING when offered
    chunking: bool = False  # use BDAT (RFC 3030) when CHUNKING and PIPELINING are offered
    tls_cafile: str = ""  # CA bundle for tls = "verify" (empty: system store)
    max_reply_bytes: int = 65536

    def __post_init__(self) -> None:
        # added by issue #9: a typo in a policy must not silently mean something else
        if self.tls not in ("none", "opportunistic", "required", "verify"):
            raise ValueError(f"smtp tls {self.tls!r} is not one of none, opportunistic, "
                             "required, verify")
        if not 0 < self.port < 65536:
            raise ValueError(f"smtp port {self.port} out of range")
        if len(set(self.source_ips)) != len(self.source_ips):
            raise ValueError("smtp source_ips: an address is listed twice")
        for name in ("connect_timeout_s", "greeting_timeout_s", "command_timeout_s",
                     "data_init_timeout_s", "data_block_timeout_s", "data_done_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"smtp {name} must be > 0")


class SpoolConfig(_Section):
    """The LMDB spool (docs/spool.md explains each trade-off)."""

    path: str = "./fastmta-spool"
    # Sparse reservation: the file grows with the data, the map is only address space.
    # Every process must use the same value; raise it (and restart or `fastmta spool
    # resize`) if the spool fills up.
    map_size_bytes: int = 64 * 1024**3
    sync: bool = True  # fsync the data at each commit (durability of `pending`/results)
    metasync: bool = True  # fsync the meta page too (False: last commit may roll back)
    commit_batch: int = 1024  # results per group commit (ResultWriter); bench_spool.py
    commit_window_ms: float = 20.0  # max wait for more results before a commit
    lease_s: float = 300.0  # claim duration of leased work
    max_readers: int = 512  # fixed by the first process that opens the spool
    max_spare_txns: int = 1  # 0 in a process that forks with the spool open
    writer_queue: int = 8192  # bound on results waiting for the writer thread
    inject_batch: int = 20_000  # recipients per injection transaction
    full_retry_s: float = 2.0  # while the map is full, retry commits this often
    defer_s: float = 60.0  # default delay of a `defer` result without next_attempt_ms
    retry_s: float = 300.0  # default delay of a `soft` result without next_attempt_ms
    quarantine_soft_threshold: int = 3  # expired deliveries to one address -> quarantine
    quarantine_release_days: float = 30.0  # bounce quarantine ends after this (0 = never)


class DeliveryConfig(_Section):
    """Defaults for new deliveries."""

    validity_s: float = 3 * 86400.0
    max_validity_s: float = 3.5 * 86400.0  # a longer validity is refused
    warn_message_bytes: int = 100_000  # analysis warns above (Gmail clips at ~102 KB)
    max_message_bytes: int = 10 * 1024 * 1024  # analysis refuses above
    retry_initial_s: float = 300.0
    retry_max_s: float = 4 * 3600.0

    def __post_init__(self) -> None:
        # added by issue #9
        if not 0 < self.max_validity_s <= 3.5 * 86400:
            raise ValueError("delivery max_validity_s must be > 0 and at most 3.5 days")
        if not 0 < self.validity_s <= self.max_validity_s:
            raise ValueError(f"delivery validity_s {self.validity_s:g} must be > 0 and at "
                             f"most max_validity_s ({self.max_validity_s:g})")
        if self.retry_initial_s <= 0 or self.retry_max_s < self.retry_initial_s:
            raise ValueError("delivery retry_initial_s must be > 0 and <= retry_max_s")


class EngineConfig(_Section):
    """Supervisor and workers."""

    workers: int = 0  # 0 = one per core
    shards: int = 64
    spread_sites: bool = False  # every worker leases every shard; site limits held node-wide


class ShapingRule(_Section, kw_only=True):
    """Traffic-shaping automation: a reply-text pattern -> an action for a duration.

    ``action``: ``suspend`` (no new connections to the site), ``set_connections`` (cap
    the site's connection limit to ``value``), ``set_rate`` (cap its message rate to
    ``value`` per second) or ``bounce`` (fail the site's queued recipients for the
    duration, reason ``refused``).  Applied after ``threshold`` matches within
    ``period_s``; reverts by itself after ``duration_s``.
    """

    name: str = ""
    pattern: str
    action: str
    value: float = 0.0
    duration_s: float = 600.0
    threshold: int = 1
    period_s: float = 300.0


class ShapingConfig(_Section):
    """Per-site shaping defaults and the adaptive algorithm's parameters (docs/shaping.md)."""

    initial_connections: int = 2
    min_connections: int = 1
    max_connections: int = 32
    increase_step: int = 1
    decrease_factor: float = 0.5
    throttle_holdoff_s: float = 2.0
    throttle_pause_s: float = 1.0
    probe_interval_s: float = 30.0
    ceiling_ttl_s: float = 900.0
    adaptive: bool = True
    adaptive_rate: bool = True
    rate_recover_fraction: float = 0.95
    rate_probe_fraction: float = 0.03
    rate_window_s: float = 60.0
    rate_pause_max_s: float = 60.0
    suspend_initial_s: float = 60.0
    suspend_max_s: float = 3600.0
    suspend_factor: float = 2.0
    connect_failures_to_suspend: int = 3
    msg_rate_per_s: float = 0.0  # 0 = no fixed cap
    msg_burst: int = 0  # 0 = about a tenth of a second of the rate
    conn_rate_per_s: float = 0.0
    conn_burst: int = 0
    max_msgs_per_conn: int = 0  # 0 = [smtp] max_msgs_per_conn
    idle_timeout_s: float = 0.0  # 0 = [smtp] idle_timeout_s
    ready_queue_size: int = 10000
    use_provider_defaults: bool = True
    rules: list[ShapingRule] = msgspec.field(default_factory=list)


class ProviderConfig(_Section, kw_only=True):
    """A mailbox provider: matched by MX host suffix; overrides the site defaults.

    Fields left unset inherit from ``[shaping]`` (or the shipped defaults of a provider
    of the same name).  ``provider_max_connections`` and ``provider_msg_rate_per_s`` cap
    the sum over all of the provider's sites.
    """

    name: str
    mx_suffixes: list[str] = msgspec.field(default_factory=list)
    initial_connections: int | None = None
    max_connections: int | None = None
    max_msgs_per_conn: int | None = None
    msg_rate_per_s: float | None = None
    conn_rate_per_s: float | None = None
    provider_max_connections: int | None = None
    provider_msg_rate_per_s: float | None = None
    tls: str | None = None
    rules: list[ShapingRule] = msgspec.field(default_factory=list)


class ClassifyConfig(_Section):
    """Bounce classification: an operator rules file tried before the packaged rules."""

    rules_file: str = ""  # empty = $FASTMTA_BOUNCE_RULES or packaged rules only


class DkimKeyConfig(_Section):
    """One DKIM key: mail whose From domain is ``domain`` is signed with it."""

    domain: str
    selector: str
    key_file: str
    algorithm: str = "rsa-sha256"  # rsa-sha256 | ed25519-sha256
    subdomains: bool = False  # also sign for From domains below ``domain``
    canonicalization: str | None = None  # default: the section's
    headers: list[str] | None = None  # default: the section's
    identity: str | None = None  # i= (default: none, meaning @domain)

    def __post_init__(self) -> None:
        if self.algorithm not in ("rsa-sha256", "ed25519-sha256"):
            raise ValueError(
                f"dkim key {self.selector}/{self.domain}: algorithm must be "
                f"rsa-sha256 or ed25519-sha256, not {self.algorithm!r}"
            )
        if not self.domain or not self.selector or not self.key_file:
            raise ValueError("dkim key needs domain, selector and key_file")


class DkimConfig(_Section):
    """DKIM signing: keys per signing domain, what to sign, key file safety."""

    enabled: bool = True
    keys: list[DkimKeyConfig] = msgspec.field(default_factory=list)
    canonicalization: str = "relaxed/relaxed"
    headers: list[str] = msgspec.field(default_factory=list)  # empty = built-in list
    extra_headers: list[str] = msgspec.field(default_factory=list)  # added to the list
    oversign_from: bool = True
    oversign_headers: list[str] = msgspec.field(default_factory=list)
    expiration_s: int = 0  # 0 = no x= tag
    allow_insecure_key_permissions: bool = False  # accept world-readable key files
    where: str = "send"  # send: at delivery, from the template (the only one implemented)

    def __post_init__(self) -> None:
        parts = self.canonicalization.split("/")
        if len(parts) > 2 or any(p not in ("relaxed", "simple") for p in parts):
            raise ValueError(f"dkim canonicalization {self.canonicalization!r} is invalid")
        if self.where == "inject":
            # refused rather than silently ignored: an operator asking for it expects
            # signed copies in the spool (docs/dkim.md: why fastmta signs at send time)
            raise ValueError("dkim where = 'inject' is not implemented: fastmta signs at "
                             "send time (where = 'send'); see docs/dkim.md")
        if self.where != "send":
            raise ValueError("dkim where must be 'send'")
        if self.expiration_s < 0:
            raise ValueError("dkim expiration_s must be >= 0")


class OpsConfig(_Section):
    """Operations (docs/operations.md): events, exports, metrics, admin polling.

    Everything here runs in the supervisor process (exports and the metrics endpoint in
    their own threads) except ``site_events`` and ``admin_poll_s``, which the workers
    use.  Empty paths / URL / port 0 disable an export / the endpoint.
    """

    enabled: bool = True  # False: no ops hooks at all (no admin requests, metrics, exports)
    site_events: bool = True  # workers log site suspension / limit changes as events
    admin_poll_s: float = 1.0  # how often workers look for admin requests
    suspend_recheck_s: float = 30.0  # recipients of an admin-suspended site come back this soon
    status_interval_s: float = 1.0  # status.json snapshot for `fastmta top` / inspect
    metrics_port: int = 0  # Prometheus endpoint (0 = off)
    metrics_host: str = "127.0.0.1"
    metrics_token: str = ""  # required (Bearer) when metrics_host is not loopback
    jsonl_dir: str = ""  # JSONL event files, rotated
    jsonl_max_bytes: int = 64 * 1024 * 1024
    jsonl_max_age_s: float = 3600.0
    csv_path: str = ""  # PowerMTA-style accounting CSV (rotated like the JSONL files)
    webhook_url: str = ""  # batched HTTP POST of events (JSON)
    webhook_batch: int = 500
    webhook_timeout_s: float = 10.0
    webhook_backoff_s: float = 1.0  # first retry delay, doubled up to webhook_backoff_max_s
    webhook_backoff_max_s: float = 60.0
    webhook_token: str = ""  # sent as "Authorization: Bearer ..." when set
    webhook_types: list[str] = msgspec.field(default_factory=list)  # empty = all types
    export_interval_s: float = 0.5  # how often exporters look for new events
    export_nice: int = 0  # >0: lower the export thread's CPU priority (exports lag under load)

    def __post_init__(self) -> None:
        if self.webhook_batch < 1:
            raise ValueError("ops webhook_batch must be >= 1")
        if self.metrics_port and self.metrics_host not in ("127.0.0.1", "::1", "localhost") \
                and not self.metrics_token:
            raise ValueError("ops metrics_token is required when metrics_host is not loopback")


class FeedbackConfig(_Section):
    """Asynchronous feedback (issue 15, docs/feedback.md): VERP return paths, the inbound
    listener for bounces/complaints/auto-replies, one-click unsubscribe."""

    enabled: bool = False  # VERP return path + token Message-ID on every message
    domain: str = ""  # bounce domain of the return paths (default: the first of domains)
    bounce_prefix: str = "b-"  # local part = prefix + token
    domains: list[str] = msgspec.field(default_factory=list)  # the listener accepts these only
    listen: str = ""  # host:port of the inbound SMTP listener in `fastmta run` ("" = off)
    http_listen: str = ""  # host:port of the one-click unsubscribe endpoint ("" = off)
    unsubscribe_url: str = ""  # base URL: List-Unsubscribe <URL/u/TOKEN> ("" = no header)
    max_message_bytes: int = 10 * 1024 * 1024  # 552 above
    max_recipients: int = 50  # per transaction (452 above)
    max_connections: int = 200  # in total (421 above)
    max_connections_per_ip: int = 20  # per client address (421 above)
    # per client address, token buckets (0 = no limit; burst 0 = twice the rate):
    # beyond them "421 4.7.0" and the connection is closed (the client retries later)
    max_messages_per_s_per_ip: float = 200.0  # MAIL FROM per second
    messages_burst_per_ip: float = 2000.0
    max_connections_per_s_per_ip: float = 200.0  # new connections per second
    connections_burst_per_ip: float = 2000.0
    command_timeout_s: float = 30.0
    max_line: int = 2048  # SMTP command line length (500 above)
    keep_raw_days: float = 7.0  # raw inbound mail kept for `fastmta inbound show`
    keep_raw_bytes: int = 256 * 1024  # stored copy truncated to this
    tls_cert: str = ""  # STARTTLS offered when both are set
    tls_key: str = ""
    parse_max_bytes: int = 50 * 1024 * 1024  # parser bound (bigger input: the head only)
    parse_max_parts: int = 200
    parse_max_depth: int = 8
    parse_processes: int = 0  # listener: parser processes beside the SMTP loop (0 = the commit thread)
    # listener processes on the same address (SO_REUSEPORT), each with its own accept
    # loop, parser and group commits into the spool; the limits are shared out among them
    listen_processes: int = 1

    def __post_init__(self) -> None:
        if self.listen_processes < 1:
            raise ValueError("feedback listen_processes must be >= 1")
        for name in ("max_messages_per_s_per_ip", "messages_burst_per_ip",
                     "max_connections_per_s_per_ip", "connections_burst_per_ip"):
            if getattr(self, name) < 0:
                raise ValueError(f"feedback {name} must be >= 0 (0 = no limit)")

    @property
    def bounce_domain(self) -> str:
        return (self.domain or (self.domains[0] if self.domains else "")).lower()


class ComplianceConfig(_Section):
    """Sender compliance (docs/compliance.md): pre-flight checks, send guards, MTA-STS."""

    preflight: str = "enforce"  # enforce: errors block a send (unless --force) | warn | off
    source_ips: list[str] = msgspec.field(default_factory=list)  # public sending IPs (NAT);
    # empty = [smtp] source_ips; both empty = SPF/PTR are checked for no address (warning)
    max_message_bytes: int = 25 * 1024 * 1024  # Gmail/Yahoo refuse larger messages
    complaint_guard: bool = True
    complaint_rate_limit: float = 0.003  # pause the delivery for the provider above this
    complaint_rate_warn: float = 0.001  # event + flag above this
    complaint_window_s: float = 86400.0  # sliding window of the complaint rate
    complaint_min_messages: int = 1000  # delivered messages in the window before acting
    bounce_guard: bool = True
    bounce_rate_limit: float = 0.05  # hard bounces / attempts above this pauses the delivery
    bounce_min_attempts: int = 1000
    mta_sts: bool = True  # honour destinations' MTA-STS policies (RFC 8461)
    mta_sts_cafile: str = ""  # trust anchors for policy fetch and enforce TLS (empty: system)
    mta_sts_port: int = 443  # HTTPS port of policy hosts (the sim serves another one)
    mta_sts_timeout_s: float = 10.0
    tls_rpt_dir: str = ""  # per-attempt TLS results (JSONL per day); empty: <spool>/tls-rpt

    def __post_init__(self) -> None:
        if self.preflight not in ("enforce", "warn", "off"):
            raise ValueError("compliance preflight must be enforce, warn or off")
        for name in ("complaint_rate_limit", "complaint_rate_warn", "bounce_rate_limit"):
            v = getattr(self, name)
            if not 0.0 < v < 1.0:
                raise ValueError(f"compliance {name} must be between 0 and 1")
        if self.complaint_rate_warn > self.complaint_rate_limit:
            raise ValueError("compliance complaint_rate_warn must be <= complaint_rate_limit")
class EgressSourceOverride(_Section):
    """Per-provider settings of one source (``[egress.sources.providers.NAME]``)."""

    ehlo_name: str = ""
    max_connections: int = 0  # 0 = the site's
    msg_rate_per_s: float = 0.0  # 0 = the site's
    warmup: bool | None = None  # None = the source's


class EgressSource(_Section):
    """One source address (``[[egress.sources]]``; KumoMTA egress source, PowerMTA VMTA)."""

    name: str
    source_ip: str = ""  # empty: the OS picks (no bind)
    ehlo_name: str = ""  # empty: [smtp] ehlo_name
    warmup: bool = False  # True: a new IP, its traffic follows the warm-up plan
    plan: str = ""  # warm-up plan name (empty: [egress] warmup_plan)
    first_send: str = ""  # ISO date the IP started sending (its age); empty = persisted
    providers: dict[str, EgressSourceOverride] = msgspec.field(default_factory=dict)


class EgressMember(_Section):
    source: str
    weight: float = 1.0  # 0 = excluded


class EgressPool(_Section):
    """A pool of sources with weights (``[[egress.pools]]``)."""

    name: str
    members: list[EgressMember] = msgspec.field(default_factory=list)
    overflow: str = ""  # spill | defer (empty: [egress] overflow)


class EgressRule(_Section):
    """Pick a pool by the From domain (``[[egress.rules]]``; first match wins)."""

    from_domain: str  # "example.com" (and its subdomains) or "*"
    pool: str


class WarmupPlanConfig(_Section):
    """A warm-up plan given in the configuration (``[[egress.plans]]``)."""

    name: str
    description: str = ""
    source: str = ""  # the published schedule it follows
    daily: list[int] = msgspec.field(default_factory=list)  # cap per stage (day)
    hourly_fraction: float = 0.125  # hourly cap = ceil(daily * this)
    providers: dict[str, list[int]] = msgspec.field(default_factory=dict)  # own daily caps


class EgressConfig(_Section):
    """IP pools, sources, warm-up and the delivery memory (docs/egress.md)."""

    sources: list[EgressSource] = msgspec.field(default_factory=list)
    pools: list[EgressPool] = msgspec.field(default_factory=list)
    rules: list[EgressRule] = msgspec.field(default_factory=list)
    plans: list[WarmupPlanConfig] = msgspec.field(default_factory=list)
    default_pool: str = ""  # empty: the first pool (or every source)
    overflow: str = "spill"  # spill | defer: traffic above a cold source's cap
    warmup_plan: str = "sparkpost"  # plan of sources with warmup = true
    hold_throttle_pct: float = 2.0  # ramp holds above this throttle rate (% of attempts)
    advance_fill_pct: float = 90.0  # ramp advances after a day at >= this % of the cap
    time_factor: float = 1.0  # egress clock speed (tests and benches compress days)
    time_origin: float = 0.0  # wall time where a compressed clock starts (0: persisted/now)
    memory: bool = True  # persist and reload per (site, source) learned state
    memory_half_life_s: float = 86400.0  # learned levels decay towards the start values
    memory_forget_s: float = 14 * 86400.0  # older records are ignored
    flush_s: float = 1.0  # how often a worker writes its learned state

    def __post_init__(self) -> None:
        if self.overflow not in ("spill", "defer"):
            raise ValueError(f"egress overflow {self.overflow!r} is not spill or defer")
        for p in self.pools:
            if p.overflow not in ("", "spill", "defer"):
                raise ValueError(f"egress pool {p.name}: overflow {p.overflow!r} is not "
                                 "spill or defer")
        if self.time_factor <= 0:
            raise ValueError("egress time_factor must be > 0")


class RoutingConfig(_Section):
    """Where mail goes instead of the MX hosts (a smarthost relay)."""

    smarthost: str = ""  # "host:port": every domain through this relay
    # per domain or provider name: "host:port" ("" = MX lookups for that one)
    smarthosts: dict[str, str] = msgspec.field(default_factory=dict)
    auth_user: str = ""
    auth_password: str = ""
    auth_mechanism: str = ""  # PLAIN | LOGIN | "" (best offered)
    auth_allow_plaintext_loopback: bool = False  # AUTH without TLS to a loopback relay
    tls: str = ""  # empty: [smtp] tls


class ClusterConfig(_Section):
    """Limits shared by several nodes through Redis (docs/scale.md; off when no URL)."""

    redis_url: str = ""  # e.g. "redis://127.0.0.1:6379/0"
    redis_cluster: bool = False  # the URL is a node of a Redis Cluster (RedisCluster client)
    node: str = ""  # this node's name (default: the host name)
    lease_ttl_s: float = 30.0  # a connection lease lives this long without renewal
    token_batch_s: float = 0.05  # rate tokens taken per Redis call: this much of the rate
    token_ahead_s: float = 0.5  # a batch of tokens may be reserved this far ahead
    signal_poll_s: float = 0.25  # how often a worker reads the others' learned limits
    timeout_s: float = 0.2  # a Redis call slower than this counts as an outage
    retry_s: float = 1.0  # how often a degraded node tries Redis again
    prefix: str = "fm"  # key prefix (several clusters on one Redis)

    def __post_init__(self) -> None:
        if self.lease_ttl_s < 3:
            raise ValueError("cluster lease_ttl_s must be >= 3")


class Config(_Section):
    """The whole configuration file."""

    dns: DnsConfig = msgspec.field(default_factory=DnsConfig)
    smtp: SmtpConfig = msgspec.field(default_factory=SmtpConfig)
    spool: SpoolConfig = msgspec.field(default_factory=SpoolConfig)
    delivery: DeliveryConfig = msgspec.field(default_factory=DeliveryConfig)
    engine: EngineConfig = msgspec.field(default_factory=EngineConfig)
    shaping: ShapingConfig = msgspec.field(default_factory=ShapingConfig)
    providers: list[ProviderConfig] = msgspec.field(default_factory=list)
    classify: ClassifyConfig = msgspec.field(default_factory=ClassifyConfig)
    dkim: DkimConfig = msgspec.field(default_factory=DkimConfig)
    ops: OpsConfig = msgspec.field(default_factory=OpsConfig)
    feedback: FeedbackConfig = msgspec.field(default_factory=FeedbackConfig)
    compliance: ComplianceConfig = msgspec.field(default_factory=ComplianceConfig)
    egress: EgressConfig = msgspec.field(default_factory=EgressConfig)  # issue #17
    routing: RoutingConfig = msgspec.field(default_factory=RoutingConfig)  # issue #17
    cluster: ClusterConfig = msgspec.field(default_factory=ClusterConfig)


def _absolute_key_files(data: dict, base: Path) -> None:
    """DKIM key files are relative to the config file's directory (docs/dkim.md), so
    every process that receives the decoded config finds them whatever its cwd."""
    dkim = data.get("dkim")
    if not isinstance(dkim, dict):
        return
    for entry in dkim.get("keys") or []:
        if isinstance(entry, dict) and isinstance(entry.get("key_file"), str):
            entry["key_file"] = str(base / entry["key_file"])


def load_config(path: str | Path | None = None, **overrides) -> Config:
    """Load a TOML config file (or the defaults when ``path`` is None).

    ``overrides`` are top-level sections given as dicts, merged over the file's values.
    Raises ``ConfigError`` naming the offending key on unknown keys or wrong types.
    """
    data: dict = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    for section, values in overrides.items():
        merged = dict(data.get(section, {}))
        merged.update(values)
        data[section] = merged
    if path is not None:
        _absolute_key_files(data, Path(path).resolve().parent)
    try:
        return msgspec.convert(data, Config)
    except msgspec.ValidationError as exc:
        where = f" in {path}" if path else ""
        raise ConfigError(f"invalid configuration{where}: {exc}") from exc


def to_toml(cfg: Config) -> str:
    """The scalar and string-list settings of ``cfg`` as TOML (enough to hand a
    configuration to a ``fastmta run`` subprocess; tables of tables are left out)."""
    import json

    out = []
    for section, values in msgspec.to_builtins(cfg).items():
        if not isinstance(values, dict):
            continue
        out.append(f"[{section}]")
        for k, v in values.items():
            if isinstance(v, bool):
                out.append(f"{k} = {'true' if v else 'false'}")
            elif isinstance(v, int | float):
                out.append(f"{k} = {v}")
            elif isinstance(v, str):
                out.append(f"{k} = {json.dumps(v)}")
            elif isinstance(v, list) and all(isinstance(x, str) for x in v):
                out.append(f"{k} = {json.dumps(v)}")
        out.append("")
    return "\n".join(out)
