"""The provider table: shipped defaults (``fastmta/data/providers.toml``) merged with the
configuration's ``[[providers]]``, and the shaping parameters and rules of a site.  Pure.
"""

from __future__ import annotations

import functools
import tomllib
from collections.abc import Sequence
from importlib import resources

import msgspec

from fastmta.config import ProviderConfig, ShapingConfig, ShapingRule
from fastmta.engine.shaping import validate_rule


def _shipped_providers() -> list[ProviderConfig]:
    data = resources.files("fastmta").joinpath("data/providers.toml").read_bytes()
    raw = tomllib.loads(data.decode("utf-8"))
    return msgspec.convert(raw.get("providers", []), list[ProviderConfig])


@functools.lru_cache(maxsize=1)
def shipped_providers() -> tuple[ProviderConfig, ...]:
    """The provider defaults shipped in ``fastmta/data/providers.toml``."""
    return tuple(_shipped_providers())


def load_providers(overrides: Sequence[ProviderConfig] = (),
                   shipped: bool = True) -> list[ProviderConfig]:
    """Shipped providers merged with the configuration's ``[[providers]]``.

    An override with the name of a shipped provider replaces the fields it sets (lists
    replace when non-empty); other overrides are added, before the shipped ones so they
    match first.  Every rule is validated.
    """
    base = {p.name: p for p in (shipped_providers() if shipped else ())}
    merged: list[ProviderConfig] = []
    for o in overrides:
        b = base.pop(o.name, None)
        if b is not None:
            changes = {f: getattr(o, f) for f in o.__struct_fields__
                       if f != "name" and getattr(o, f) not in (None, [])}
            o = msgspec.structs.replace(b, **changes)
        merged.append(o)
    merged.extend(base.values())
    for p in merged:
        for r in p.rules:
            validate_rule(r)
    return merged


def site_params(shaping: ShapingConfig, provider: ProviderConfig | None) -> ShapingConfig:
    """The shaping parameters of a site: ``[shaping]`` overridden by its provider."""
    if provider is None:
        return shaping
    changes = {}
    for field in ("initial_connections", "max_connections", "max_msgs_per_conn",
                  "msg_rate_per_s", "conn_rate_per_s"):
        value = getattr(provider, field)
        if value is not None:
            changes[field] = value
    # operator bounds of [shaping] still hold
    if "max_connections" in changes:
        changes["max_connections"] = min(changes["max_connections"], shaping.max_connections)
    return msgspec.structs.replace(shaping, **changes)


def site_rules(shaping: ShapingConfig, provider: ProviderConfig | None) -> list[ShapingRule]:
    """Provider rules first, then the general ``[shaping] rules``."""
    return [*(provider.rules if provider else ()), *shaping.rules]
