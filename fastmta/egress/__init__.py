"""Egress: source addresses, pools, warm-up plans and the delivery memory (issue #17).

- ``clock``: the egress clock (wall time, optionally compressed for tests and benches).
- ``model``: sources, pools and pool rules resolved from ``[egress]`` / ``[smtp]``.
- ``plans``: warm-up plans as data (shipped ``data/warmup_plans.toml`` + ``[[egress.plans]]``).
- ``warmup``: per (source, provider) warm-up state, caps and the ramp policy.  Pure.
- ``selector``: smooth weighted round robin over a pool's sources with capacity.  Pure.
- ``memory``: snapshot / restore of a (site, source) shaper with decay.  Pure.
- ``egress``: ``Egress``, what the engine asks (pick a source, record, persist).

docs/egress.md explains the model, the shipped ramp and the memory's decay.
"""
