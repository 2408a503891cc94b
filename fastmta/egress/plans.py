"""Warm-up plans as data: the shipped table (``data/warmup_plans.toml``) plus the
operator's ``[[egress.plans]]`` (same fields; a plan of the same name replaces the
shipped one).  A plan maps (provider, stage) to a daily and an hourly cap."""

from __future__ import annotations

import math
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources

from fastmta.config import WarmupPlanConfig
from fastmta.errors import ConfigError


@dataclass(frozen=True)
class Plan:
    """Daily caps per stage (stage 1 = index 0); after the last stage the source is warm."""

    name: str
    daily: tuple[int, ...]
    hourly_fraction: float = 0.125
    providers: dict[str, tuple[int, ...]] = field(default_factory=dict)
    description: str = ""
    source: str = ""

    @property
    def stages(self) -> int:
        return len(self.daily)

    def table(self, provider: str) -> tuple[int, ...]:
        return self.providers.get(provider, self.daily)

    def caps(self, provider: str, stage: int) -> tuple[int, int] | None:
        """(daily, hourly) caps at ``stage`` (1-based) for ``provider``; None = warm."""
        table = self.table(provider)
        if stage > len(table):
            return None
        daily = table[max(1, stage) - 1]
        return daily, max(1, math.ceil(daily * self.hourly_fraction))


def _plan(d: WarmupPlanConfig) -> Plan:
    if not d.daily or any(c <= 0 for c in d.daily):
        raise ConfigError(f"warm-up plan {d.name!r}: daily must list positive caps")
    if not 0 < d.hourly_fraction <= 1:
        raise ConfigError(f"warm-up plan {d.name!r}: hourly_fraction must be in (0, 1]")
    for prov, caps in d.providers.items():
        if not caps or any(c <= 0 for c in caps):
            raise ConfigError(f"warm-up plan {d.name!r}: provider {prov!r} needs positive caps")
    return Plan(d.name, tuple(d.daily), d.hourly_fraction,
                {k: tuple(v) for k, v in d.providers.items()}, d.description, d.source)


def shipped_plans() -> dict[str, Plan]:
    import msgspec

    raw = tomllib.loads(resources.files("fastmta").joinpath("data/warmup_plans.toml")
                        .read_text())
    plans = msgspec.convert(raw["plans"], list[WarmupPlanConfig])
    return {p.name: _plan(p) for p in plans}


def load_plans(extra: Sequence[WarmupPlanConfig] = ()) -> dict[str, Plan]:
    """Shipped plans overlaid by the configured ones."""
    plans = shipped_plans()
    for d in extra:
        plans[d.name] = _plan(d)
    return plans
