"""The shard -> worker plan: balanced by weight, stable, deterministic (pure)."""

from __future__ import annotations

import random

import pytest

from fastmta.engine.routing import shard_of
from fastmta.engine.shard_plan import ShardPlan, plan_lpt

# a consumer list's shape (the campaign profile): three big providers, a tail of sites
CAMPAIGN = {"provider:gmail": 3400, "provider:outlook": 1500, "provider:yahoo": 1000,
            "provider:apple": 600, "provider:gmx": 300, "provider:orange": 200}
CAMPAIGN.update({f"site:mx{i}.tail.test": 3000 // 94 for i in range(94)})


def _loads(plan: ShardPlan, weights: dict[int, int]) -> list[int]:
    loads = [0] * plan.workers
    for s, w in plan.owner.items():
        loads[w] += weights.get(s, 0)
    return loads


def _by_shard(keys: dict[str, int], shards: int) -> dict[int, int]:
    out: dict[int, int] = {}
    for k, n in keys.items():
        s = shard_of(k, shards)
        out[s] = out.get(s, 0) + n
    return out


def test_lpt_balances_campaign_weights_within_tolerance():
    weights = _by_shard(CAMPAIGN, 64)
    for workers in (2, 3, 4):
        plan = ShardPlan(64, workers)
        plan.add(weights)
        loads = _loads(plan, weights)
        # greedy LPT: max load <= mean + heaviest shard, and here within 10% of mean
        # unless one shard alone outweighs a worker's fair share
        mean = sum(weights.values()) / workers
        assert max(loads) <= max(mean * 1.10, max(weights.values()) + 1)
        assert sorted(plan.owner) == sorted(s for s, w in weights.items() if w > 0)


def test_lpt_beats_modulo_on_colliding_big_keys():
    # the big keys on even shards: shard % 2 puts 90% on worker 0, LPT splits evenly
    weights = {0: 34, 2: 15, 4: 10, 6: 10, 1: 5, 3: 5, 5: 5, 7: 5, 8: 11}
    modulo = [sum(w for s, w in weights.items() if s % 2 == i) for i in range(2)]
    assert max(modulo) >= 80
    plan = ShardPlan(16, 2)
    plan.add(weights)
    assert sorted(_loads(plan, weights)) == [49, 51]  # LPT: near, not always exact


def test_plan_is_deterministic_and_shards_never_move():
    rng = random.Random(7)
    weights = {s: rng.randint(0, 500) for s in range(64)}
    a, b = ShardPlan(64, 2), ShardPlan(64, 2)
    a.add(weights)
    b.add(dict(reversed(list(weights.items()))))  # order of the mapping does not matter
    assert a.owner == b.owner
    before = dict(a.owner)
    # later backlogs (any weights, even the old shards much heavier) only add shards
    for _ in range(20):
        a.add({s: rng.randint(0, 10_000) for s in range(64)})
        assert {s: a.owner[s] for s in before} == before
    assert a.complete and a.unassigned() == []


def test_new_shards_go_to_the_least_loaded_worker():
    plan = ShardPlan(8, 2)
    assert plan.add({0: 100, 1: 10}) == {0, 1}
    assert plan.owner == {0: 0, 1: 1}
    # worker 0 still has 90 queued, worker 1 has drained: the new shard goes to 1
    assert plan.add({0: 90, 1: 0, 5: 40}) == {1}
    assert plan.shards_of(1) == [1, 5]
    assert plan.add({0: 0, 1: 0, 5: 0}) == set()  # nothing queued: nothing planned


def test_one_worker_owns_everything_at_once():
    plan = ShardPlan(4, 1)
    assert plan.complete and plan.shards_of(0) == [0, 1, 2, 3]
    assert plan.add({0: 5}) == set()


def test_plan_lpt_edges():
    assert plan_lpt({}, [0, 0]) == {}
    assert plan_lpt({3: 0}, [0]) == {}
    assert plan_lpt({1: 5, 2: 5}, [10, 0]) == {1: 1, 2: 1}
    with pytest.raises(ValueError):
        plan_lpt({1: 1}, [])
    with pytest.raises(ValueError):
        ShardPlan(0, 2)
