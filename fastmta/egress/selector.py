"""Source selection: smooth weighted round robin with capacity and overflow.  Pure.

nginx's smooth weighted round robin: every pick adds each eligible member's weight to
its credit, takes the member with the most credit and charges it the total eligible
weight.  The spread is exact (within one message of the weights over any window), not
probabilistic as in KumoMTA, and members that cannot take traffic now (suspended at the
site, excluded) are simply not eligible, so the others share their part by weight.

A member with no warm-up room (``has_room`` false) is handled by the overflow policy:
``spill`` gives the message to the other members that have room (a second round robin,
so the warm members still share the overflow by weight), ``defer`` keeps the message
for the capped member (it waits until the cap frees).  Never over a cap either way.

With ``defer`` a message that waited comes back ``bound`` to the member it waited for
and goes to it without a new pick (its first pick already counted in that member's
share), like KumoMTA's ``StickyWeightedRoundRobin`` or a PowerMTA virtual MTA queue: over
a backlog every member carries its weight of the messages, the warm ones no more.  A
bound member that is suspended at the site is picked afresh.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

SPILL, DEFER = "spill", "defer"


class SmoothWrr:
    """Smooth weighted round robin over named members."""

    __slots__ = ("members", "credit")

    def __init__(self, members: Sequence[tuple[str, float]]) -> None:
        self.members = [(n, float(w)) for n, w in members if w > 0]
        self.credit = {n: 0.0 for n, _ in self.members}

    def pick(self, eligible: Callable[[str], bool] | None = None) -> str | None:
        best = None
        best_credit = 0.0
        total = 0.0
        credit = self.credit
        for name, w in self.members:
            if eligible is not None and not eligible(name):
                continue
            c = credit[name] + w
            credit[name] = c
            total += w
            if best is None or c > best_credit:
                best, best_credit = name, c
        if best is not None:
            credit[best] -= total
        return best


class Choice:
    """The outcome of a selection: a source, or why none (``wait`` = defer)."""

    __slots__ = ("source", "overflowed", "capped", "reason")

    def __init__(self, source: str | None, overflowed: bool = False,
                 capped: str | None = None, reason: str = "") -> None:
        self.source = source
        self.overflowed = overflowed  # spilled from a capped member to another
        self.capped = capped  # the capped member this message waits for (defer)
        self.reason = reason


class PoolSelector:
    """Selection within one pool for one provider or site (module docstring)."""

    __slots__ = ("wrr", "spill", "overflow", "single", "capless", "handed")

    def __init__(self, members: Sequence[tuple[str, float]], overflow: str = SPILL) -> None:
        self.wrr = SmoothWrr(members)
        self.spill = SmoothWrr(members)
        self.overflow = overflow
        self.single = self.wrr.members[0][0] if len(self.wrr.members) == 1 else None
        self.capless = False  # set by the owner: no member has a warm-up cap here
        self.handed: dict[str, int] = {}  # capless picks not yet folded into the counters

    def choose(self, usable: Callable[[str], bool], has_room: Callable[[str], bool],
               bound: str | None = None) -> Choice:
        """``usable``: not suspended for this site; ``has_room``: under its warm-up caps;
        ``bound``: the member this message waited for (``defer``), if any."""
        if bound is not None and self.overflow == DEFER and bound in self.wrr.credit \
                and usable(bound):
            if has_room(bound):
                return Choice(bound)
            return Choice(None, capped=bound, reason="warmup_cap")
        name = self.wrr.pick(usable)
        if name is None:
            return Choice(None, reason="suspended")
        if has_room(name):
            return Choice(name)
        if self.overflow == DEFER:
            return Choice(None, capped=name, reason="warmup_cap")
        other = self.spill.pick(lambda n: n != name and usable(n) and has_room(n))
        if other is None:
            return Choice(None, capped=name, reason="warmup_cap")
        return Choice(other, overflowed=True)
