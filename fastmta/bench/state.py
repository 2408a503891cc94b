"""``fastmta bench --state DIR``: carry the engine's delivery memory between bench runs.

Each bench run uses a fresh spool; with ``--state`` the learned (site, source) records
and warm-up counters (the spool's ``egress`` database) are copied in from
``DIR/egress-state.msgpack`` before the engine starts and written back (atomically:
temp file + rename) after it stopped, so a second run starts from the first's memory as
a restarted ``fastmta run`` would from its spool.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

STATE_FILE = "egress-state.msgpack"


def load_state(spool, state_dir: str) -> int:
    """Copy the saved records into ``spool``; returns how many (0 without a file)."""
    path = Path(state_dir) / STATE_FILE
    if not path.exists():
        return 0
    pairs = msgspec.msgpack.decode(path.read_bytes(), type=list[tuple[bytes, bytes]])
    return spool.egress_put(dict(pairs))


def save_state(spool, state_dir: str) -> int:
    """Write every egress record of ``spool`` to ``state_dir``; returns how many."""
    os.makedirs(state_dir, exist_ok=True)
    pairs = spool.egress_items()
    path = Path(state_dir) / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(msgspec.msgpack.encode(pairs))
    os.replace(tmp, path)
    return len(pairs)


def time_to_90pct_cap(shaping: dict, key: str = "reached_90pct_s") -> float | None:
    """The slowest rate-capped provider's ``reached_90pct_s``: seconds from its first
    acceptance to the end of the first 10-s window at >= 90% of its hidden cap's rate
    (``key="converged_s"``: until every later sliding minute holds >= 90%)."""
    vals = [s.get(key) for s in shaping.values() if s.get("windows")]
    if not vals:
        return None
    if any(v is None for v in vals):
        return None
    return max(vals)
