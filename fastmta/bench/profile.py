"""Bench profiles: a simulated world (a sim ``WorldSpec``) plus how the bench scales it
and spreads recipients over it.

A profile is a TOML file (bundled: ``fastmta/bench/profiles/NAME.toml``, or any path)::

    name = "null"
    description = "..."
    [bench]
    tail = "sink"          # provider replicated to reach --sites / --domains
    validity_s = 60.0      # validity of the bench delivery (soft failures expire)
    [bench.share]          # fraction of recipients per provider (rest: per domain)
    gmail = 0.30
    [world]                # a sim WorldSpec, same keys as fastmta/sim/profiles/*.toml
    [[world.providers]]
    name = "sink"
    ...

Scaling (``expand``): every provider except the tail is kept as written (one site each,
its domains as listed or generated).  The tail provider is copied ``k`` times
(``tail-1`` ... ``tail-k``, one MX site each) so that the world has ``sites`` sites, and
the copies share the remaining ``domains`` domains.  Recipients: the providers named in
``[bench.share]`` get that fraction of the recipients; the rest is spread evenly over
every domain of the other providers.  Everything is deterministic for a given seed.
"""

from __future__ import annotations

import bisect
import json
import random
import tomllib
from collections.abc import Iterator
from pathlib import Path

import msgspec

from fastmta.errors import FastMTAError
from fastmta.sim.world import Provider, World, WorldSpec, find_profile

PROFILE_DIR = Path(__file__).with_name("profiles")


class BenchError(FastMTAError):
    """The bench cannot run as asked (bad profile, non-loopback peer...)."""


class MessageKind(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One kind of message in a campaign mix: a share of the recipients, a size and a
    body type (``html``: multipart/alternative text + HTML, as newsletters are)."""

    name: str
    share: float
    size: int
    html: bool = True


class BenchSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    tail: str = ""
    validity_s: float = 60.0
    retry_s: float = 5.0
    share: dict[str, float] = msgspec.field(default_factory=dict)
    # > 0: the recipients not in ``share`` go to the other domains with Zipf-like sizes
    # (weight 1 / rank ** tail_zipf) instead of evenly
    tail_zipf: float = 0.0
    # a mix of messages (one delivery per kind, sent at the same time); empty = one
    # delivery of ``--size`` bytes
    messages: list[MessageKind] = msgspec.field(default_factory=list)
    dkim: str = ""  # sign by default: "ed25519-sha256" or "rsa-sha256" ("" = --dkim)
    source: str = ""  # where the provider mix comes from (public statistics)


class BenchProfile(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    description: str = ""
    bench: BenchSpec = msgspec.field(default_factory=BenchSpec)
    world: WorldSpec = msgspec.field(default_factory=WorldSpec)


def profile_names() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


def profile_path(name: str) -> Path:
    """A bundled profile by name, or a path to a TOML file."""
    found = find_profile(name, PROFILE_DIR)
    if found is None:
        raise BenchError(f"no bench profile {name!r} (bundled: {', '.join(profile_names())}; "
                         "or give a path to a .toml file)")
    return found


def load_profile(name: str) -> BenchProfile:
    path = profile_path(name)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
        prof = msgspec.convert(data, BenchProfile)
    except (tomllib.TOMLDecodeError, msgspec.ValidationError, ValueError) as exc:
        raise BenchError(f"bench profile {path}: {exc}") from None
    names = {p.name for p in prof.world.providers}
    if prof.bench.tail and prof.bench.tail not in names:
        raise BenchError(f"bench profile {path}: tail provider {prof.bench.tail!r} not defined")
    for n, s in prof.bench.share.items():
        if n not in names:
            raise BenchError(f"bench profile {path}: share for unknown provider {n!r}")
        if not 0 <= s <= 1:
            raise BenchError(f"bench profile {path}: share of {n!r} must be in [0, 1]")
    if sum(prof.bench.share.values()) > 1.0 + 1e-9:
        raise BenchError(f"bench profile {path}: shares add up to more than 1")
    kinds = prof.bench.messages
    if kinds and abs(sum(k.share for k in kinds) - 1.0) > 1e-6:
        raise BenchError(f"bench profile {path}: [[bench.messages]] shares must add up to 1")
    if any(k.size < 200 for k in kinds):
        raise BenchError(f"bench profile {path}: a message kind is smaller than 200 bytes")
    if prof.bench.dkim not in ("", "ed25519-sha256", "rsa-sha256"):
        raise BenchError(f"bench profile {path}: dkim must be ed25519-sha256 or rsa-sha256")
    return prof


def _ndomains(p: Provider) -> int:
    return len(p.domains) + p.generate


def expand(prof: BenchProfile, domains: int, sites: int) -> World:
    """The profile's world scaled to about ``domains`` domains over ``sites`` MX sites."""
    spec = prof.world
    tail = next((p for p in spec.providers if p.name == prof.bench.tail), None)
    if tail is None:
        return World(spec)
    fixed = [p for p in spec.providers if p is not tail]
    fixed_domains = sum(_ndomains(p) for p in fixed)
    fixed_sites = sum(1 for p in fixed if p.dns in ("mx", "cname", "cname-partial", "slow"))
    k = max(1, min(sites - fixed_sites, domains - fixed_domains))  # no site without a domain
    rest = max(k, domains - fixed_domains)
    copies = []
    for i in range(k):
        n = rest // k + (1 if i < rest % k else 0)
        name = f"{tail.name}-{i + 1}" if k > 1 else tail.name
        copies.append(msgspec.structs.replace(tail, name=name, domains=[], generate=n))
    return World(msgspec.structs.replace(spec, providers=[*fixed, *copies]))


def tail_of(prof: BenchProfile, provider: str) -> str:
    """The profile provider a (possibly copied) world provider comes from."""
    t = prof.bench.tail
    if t and (provider == t or provider.startswith(t + "-") and provider[len(t) + 1:].isdigit()):
        return t
    return provider


def recipients(prof: BenchProfile, world: World, n: int, seed: int = 1) -> Iterator[str]:
    """``n`` distinct addresses spread over the world as the profile says (deterministic).

    Addresses are ``r{i}@domain`` (no magic local parts: outcomes come from the
    providers' behaviour)."""
    rng = random.Random(seed)
    shared: list[tuple[float, list[str]]] = []
    rest: list[str] = []
    for p in world.spec.providers:
        doms = World.domains_of(p)
        s = prof.bench.share.get(p.name)
        if s is not None:
            shared.append((s, doms))
        else:
            rest.extend(doms)
    cum: list[float] = []
    acc = 0.0
    for s, _ in shared:
        acc += s
        cum.append(acc)
    rest_n = len(rest)
    if not rest and not shared:
        raise BenchError("the bench world has no domains")
    zipf = zipf_cumulative(rest_n, prof.bench.tail_zipf) if rest_n else None
    if zipf is not None:  # ranks spread over the tail's sites, not site by site
        random.Random(seed + 1).shuffle(rest)
    for i in range(n):
        u = rng.random()
        dom = None
        for j, c in enumerate(cum):
            if u < c:
                doms = shared[j][1]
                dom = doms[rng.randrange(len(doms))]
                break
        if dom is None:
            if not rest_n:
                dom = shared[-1][1][0]
            elif zipf is not None:
                dom = rest[min(rest_n - 1, bisect.bisect_right(zipf, rng.random()))]
            else:
                dom = rest[i % rest_n]
        yield f"r{i}@{dom}"


def zipf_cumulative(n: int, s: float) -> list[float] | None:
    """Cumulative weights 1 / rank ** s over ``n`` ranks, normalised to 1 (None: s <= 0)."""
    if s <= 0 or n < 1:
        return None
    w = [1.0 / (k ** s) for k in range(1, n + 1)]
    total = sum(w)
    acc = 0.0
    out = []
    for x in w:
        acc += x
        out.append(acc / total)
    return out


def world_toml(world: World) -> str:
    """The expanded world as a sim profile (``fastmta sim serve --profile FILE``)."""
    data = msgspec.to_builtins(world.spec)
    return _toml(data)


def _val(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a TOML basic string (\n, quotes, non-ASCII escaped)
    if isinstance(v, list):
        return "[" + ", ".join(_val(x) for x in v) + "]"
    if isinstance(v, dict):  # inline table (sim records, MTA-STS policies)
        return "{" + ", ".join(f"{_val(str(k))} = {_val(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def _toml(data: dict) -> str:
    lines = [f"{k} = {_val(v)}" for k, v in data.items() if k != "providers"]
    for p in data.get("providers", []):
        lines.append("\n[[providers]]")
        beh = p.pop("behaviour", {})
        lines += [f"{k} = {_val(v)}" for k, v in p.items()]
        if beh:
            lines.append("[providers.behaviour]")
            lines += [f"{k} = {_val(v)}" for k, v in beh.items()]
    return "\n".join(lines) + "\n"
