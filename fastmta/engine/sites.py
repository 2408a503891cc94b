"""The sites of one worker: a leased recipient (``Job``), an MX site's queue, shaper and
connection bookkeeping (``Site``), and the order a connection tries the site's MX hosts.

A *site* is the sorted set of a domain's MX hosts (``routing.site_of``).
"""

from __future__ import annotations

import asyncio
from collections import deque

from fastmta.config import ProviderConfig
from fastmta.engine.shaping import SiteShaper
from fastmta.records import WorkItem


class Job:
    """A leased recipient in a site queue."""

    __slots__ = ("item", "body", "requeues", "site", "done", "egress")

    def __init__(self, item: WorkItem) -> None:
        self.item = item
        self.body: bytes | None = None
        self.requeues = 0
        self.site: Site | None = None
        self.done = False
        self.egress: tuple[str, str] | None = None  # (source, group) holding warm-up room


class Site:
    """Queue, shaper and connection bookkeeping of one MX site."""

    def __init__(self, name: str, hosts: list, shaper: SiteShaper, params,
                 provider: ProviderConfig | None) -> None:
        self.name = name
        self.hosts = hosts  # [MxHost(name, preference, addresses)] in preference order
        self.shaper = shaper
        self.params = params
        self.provider = provider
        self.queue: deque[Job] = deque()
        self.active = 0  # connection tasks (connecting or connected)
        self.connecting = 0
        self.waiting = 0  # idle connections waiting for work
        self.wakeup = asyncio.Event()
        self.rr = 0
        self.host_down: dict[str, float] = {}
        self.timer: asyncio.TimerHandle | None = None
        self.attempts = 0
        self.throttled = 0
        self.msgs_cap = 0  # learned: the server ends sessions after this many messages
        self.rcpts_cap = 0  # learned: the server takes at most this many RCPTs
        # egress (engine/egress_sites.py): a (site, source) site has its source set
        self.source = None  # egress.model.Source
        self.base: Site | None = None  # the MX site it belongs to
        self.subs: list[Site] = []  # on a base site: its (site, source) sites
        self.memory = None  # the egress.memory.Learned record it started from
        # a (site, source) whose source has a warm-up cap here: its sends wait until the
        # counters that reserved them are durable (worker._reserve_gate)
        self.capped = False
        self.flushed: tuple | None = None
        self.relay = None  # engine.relay.Smarthost: deliver through this relay
        self.qkey = name  # its key in Scheduler.sites (name + source for a source site)

    def label(self) -> str:
        return self.provider.name if self.provider else self.name

    def key(self) -> str:
        """Name in status displays: the label, with the source when it has one."""
        label = self.label()
        return f"{label}@{self.source.name}" if self.source is not None else label

    def over_share(self) -> bool:
        """More connections than the shared limits let this worker keep now (a cluster
        node on its local share during a Redis outage): one should close."""
        share = getattr(self.shaper.provider, "share", None)
        return share is not None and self.active > share

    def in_use(self) -> int:
        """Connections counted for the site's adaptive limit: this worker's, or the
        whole limit when the site's shared budget (engine/limits.py) said it is full."""
        budget = self.shaper.provider
        if getattr(budget, "denied", False):
            return max(self.active, self.shaper.limit)
        return self.active


def mx_candidates(site: Site, now: float) -> list[tuple[str, str]]:
    """(host, ip) in MX preference order, equal preferences rotated, down hosts last."""
    groups: list[list[tuple[str, str]]] = []
    last_pref = None
    for h in site.hosts:
        pairs = [(h.name, ip) for ip in h.addresses]
        if not pairs:
            continue
        if last_pref is not None and h.preference == last_pref:
            groups[-1].extend(pairs)
        else:
            groups.append(pairs)
        last_pref = h.preference
    out: list[tuple[str, str]] = []
    site.rr += 1
    for g in groups:
        k = site.rr % len(g)
        out.extend(g[k:] + g[:k])
    up = [c for c in out if site.host_down.get(c[1], 0.0) <= now]
    down = [c for c in out if site.host_down.get(c[1], 0.0) > now]
    return up + down
