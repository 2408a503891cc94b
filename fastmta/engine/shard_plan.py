"""Which worker owns which shard: balanced by weight, and a shard never moves in a run.

Pure (no I/O).  A routing key (a provider, or an MX site) hashes to one shard and a
shard belongs to one worker, so a site's adaptive limits stay one worker's.  Spreading
the shards by number (``shard % workers``) ignores their weight: on a consumer list the
big providers' keys (Gmail a third of the mail) can fall on the same worker while the
other idles.  ``ShardPlan`` instead gives each shard, the first time it has a backlog,
to the worker with the least backlog on its shards (heaviest shards first: greedy
longest-processing-time).  A shard once given is kept for the whole run (the plan only
grows), so nothing a worker learned about a site moves.  A new supervisor (restart,
kill -9) plans again from the backlog persisted in the spool (ready + scheduled queues),
which is deterministic: ties go to the lower shard number and the lower worker index.
"""

from __future__ import annotations

from collections.abc import Mapping


def plan_lpt(weights: Mapping[int, int], loads: list[int]) -> dict[int, int]:
    """Shard -> worker for the shards of ``weights`` (shard -> weight): heaviest first,
    each to the worker with the least load so far (``loads``, one per worker, is the
    load they already carry and is not modified).  Zero-weight shards are left out."""
    if not loads:
        raise ValueError("at least one worker")
    load = list(loads)
    out: dict[int, int] = {}
    for shard, w in sorted(weights.items(), key=lambda kv: (-kv[1], kv[0])):
        if w <= 0:
            continue
        worker = min(range(len(load)), key=lambda i: (load[i], i))
        out[shard] = worker
        load[worker] += w
    return out


class ShardPlan:
    """The shard -> worker map of one supervisor run (see module docstring)."""

    def __init__(self, shards: int, workers: int) -> None:
        if shards <= 0 or workers <= 0:
            raise ValueError("shards and workers must be positive")
        self.shards = shards
        self.workers = workers
        # one worker: every shard is its own from the start, nothing to balance
        self.owner: dict[int, int] = dict.fromkeys(range(shards), 0) if workers == 1 else {}

    @property
    def complete(self) -> bool:
        """Every shard has its worker (nothing more to plan in this run)."""
        return len(self.owner) == self.shards

    def unassigned(self) -> list[int]:
        return [s for s in range(self.shards) if s not in self.owner]

    def shards_of(self, worker: int) -> list[int]:
        return sorted(s for s, w in self.owner.items() if w == worker)

    def add(self, backlog: Mapping[int, int]) -> set[int]:
        """Give every unassigned shard with a backlog (``backlog``: shard -> recipients
        queued, for any shards) to a worker; returns the workers whose shards changed.
        A worker's load is the backlog of the shards it already owns."""
        loads = [0] * self.workers
        new: dict[int, int] = {}
        for shard, n in backlog.items():
            w = self.owner.get(shard)
            if w is not None:
                loads[w] += n
            elif 0 <= shard < self.shards and n > 0:
                new[shard] = n
        given = plan_lpt(new, loads)
        self.owner.update(given)
        return set(given.values())
