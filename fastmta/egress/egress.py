"""What the engine asks of egress: which source for a message, and what to remember.

``Egress`` holds the resolved model (``model.EgressModel``), one ``PoolSelector`` per
(pool, group) -- a *group* is the provider name when the site's MX matches a provider,
else the site -- the warm-up state per (source, group) with its ramp, and the learned
(site, source) records loaded from the spool.  It does no I/O: the worker loads it with
``load(spool.egress_items())`` and writes ``dirty()`` through its writer thread.

Keys in the spool's ``egress`` database: ``L\\0site\\0source`` -> ``memory.Learned``,
``W\\0source\\0group`` -> ``warmup.WarmupState``, ``C\\0clock`` -> the clock origin.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

import msgspec

from fastmta.config import Config
from fastmta.egress.clock import EgressClock
from fastmta.egress.memory import Learned
from fastmta.egress.model import EgressModel, Pool, Source, build_model
from fastmta.egress.plans import load_plans
from fastmta.egress.selector import DEFER, Choice, PoolSelector
from fastmta.egress.warmup import Ramp, WarmupState
from fastmta.errors import ConfigError

_enc = msgspec.msgpack.Encoder()
_dec_learned = msgspec.msgpack.Decoder(Learned)
_dec_warm = msgspec.msgpack.Decoder(WarmupState)


class ClockRecord(msgspec.Struct):
    factor: float
    origin_wall: float


def learned_key(site: str, source: str) -> bytes:
    return b"L\x00" + site.encode() + b"\x00" + source.encode()


def warm_key(source: str, group: str) -> bytes:
    return b"W\x00" + source.encode() + b"\x00" + group.encode()


CLOCK_KEY = b"C\x00clock"
MAX_WAITING = 200_000  # messages remembered as waiting for a capped source
_SUSPENDED = Choice(None, reason="suspended")


class Egress:
    """Sources, pools, warm-up and memory of one process (see module docstring)."""

    def __init__(self, cfg: Config, clock=None) -> None:
        self.cfg = cfg
        self.eg = cfg.egress
        self.model: EgressModel = build_model(cfg)
        self.plans = load_plans(self.eg.plans)
        for s in self.model.sources.values():
            if (s.warmup or any(o.warmup for o in s.overrides.values())) and \
                    s.plan not in self.plans:
                raise ConfigError(f"egress source {s.name!r}: unknown warm-up plan "
                                  f"{s.plan!r} (plans: {', '.join(self.plans)})")
        self._clock_given = clock is not None
        self.clock = clock or EgressClock(self.eg.time_factor, self.eg.time_origin or 0.0)
        self.selectors: dict[tuple[str, str], PoolSelector] = {}
        self.warm: dict[tuple[str, str], WarmupState] = {}
        self.ramps: dict[tuple[str, str], Ramp] = {}
        self.learned: dict[tuple[str, str], Learned] = {}
        self._dirty: dict[bytes, bytes | None] = {}
        self._dirty_warm: dict[bytes, WarmupState] = {}
        # warm (capless) sources: messages given back since the last fold, per (source,
        # group) -- taken out of used_day/used_hour with the handed ones
        self._returned: dict[tuple[str, str], int] = {}
        self.stats: Counter[str] = Counter()
        self._chosen = {n: Choice(n) for n in self.model.sources}
        # warm-up reservations of capped sources, and how many of them are durable (the
        # worker sets ``durable`` after writing the counters; sends wait for it)
        self.reserved = 0
        self.durable = 0
        # defer: messages waiting for a capped source (spool key -> source), so that they
        # go to it when they come back (selector docstring); lost at a restart (they are
        # then picked afresh), at most MAX_WAITING kept (the oldest are dropped)
        self.waiting: dict[bytes, str] = {}

    # ---------------------------------------------------------------- persistence
    def load(self, items: Iterable[tuple[bytes, bytes]], now_wall: float) -> None:
        """Adopt the records read from the spool (unreadable ones are skipped)."""
        clock = None
        for k, v in items:
            kind, _, rest = k.partition(b"\x00")
            try:
                if kind == b"L":
                    rec = _dec_learned.decode(v)
                    self.learned[(rec.site, rec.source)] = rec
                elif kind == b"W":
                    st = _dec_warm.decode(v)
                    self.warm[(st.source, st.provider)] = st
                elif k == CLOCK_KEY:
                    clock = msgspec.msgpack.decode(v, type=ClockRecord)
            except (msgspec.DecodeError, msgspec.ValidationError):
                self.stats["unreadable_records"] += 1
        if self._clock_given:
            return
        if self.eg.time_factor != 1.0:
            origin = self.eg.time_origin or (clock.origin_wall if clock is not None and
                                             clock.factor == self.eg.time_factor
                                             else now_wall)
            self.clock = EgressClock(self.eg.time_factor, origin)
            if clock is None or clock.origin_wall != origin:
                self._dirty[CLOCK_KEY] = _enc.encode(ClockRecord(self.eg.time_factor, origin))

    def _fold_handed(self) -> None:
        """Warm (capless) sources: the messages handed out since the last call go into
        their per-provider ``used_day``/``used_hour`` (what ``egress status`` shows), less
        the ones given back since (deferred after their selection)."""
        now = None
        for (_pool, group), sel in self.selectors.items():
            if not sel.handed:
                continue
            if now is None:
                now = self.clock.now()
            for name, n in sel.handed.items():
                st = self.state(name, group)
                self._ramp(name, group).roll(st, now)
                Ramp.take(st, now, n)
                self._touch(st)
            sel.handed = {}
        if self._returned:
            for (name, group), n in self._returned.items():
                st = self.state(name, group)
                Ramp.give_back(st, n)
                self._touch(st)
            self._returned = {}

    def dirty(self) -> dict[bytes, bytes | None]:
        """Records changed since the last call (to write to the spool)."""
        self._fold_handed()
        out, self._dirty = self._dirty, {}
        for key, st in self._dirty_warm.items():
            out[key] = _enc.encode(st)
        self._dirty_warm = {}
        return out

    def remember(self, rec: Learned) -> None:
        self._dirty[learned_key(rec.site, rec.source)] = _enc.encode(rec)

    def recall(self, site: str, source: str) -> Learned | None:
        return self.learned.get((site, source))

    # ---------------------------------------------------------------- selection
    def pool_for(self, mail_from: str, explicit: str = "") -> Pool:
        return self.model.pool_for(mail_from.rpartition("@")[2], explicit)

    def source(self, name: str) -> Source:
        return self.model.sources[name]

    def _ramp(self, source: str, group: str) -> Ramp:
        key = (source, group)
        r = self.ramps.get(key)
        if r is None:
            src = self.model.sources[source]
            plan = self.plans.get(src.plan) if src.warms_at(group) else None
            r = self.ramps[key] = Ramp(plan, hold_throttle_pct=self.eg.hold_throttle_pct,
                                       advance_fill_pct=self.eg.advance_fill_pct)
        return r

    def state(self, source: str, group: str) -> WarmupState:
        key = (source, group)
        st = self.warm.get(key)
        if st is None:
            st = self.warm[key] = WarmupState(source=source, provider=group)
            src = self.model.sources[source]
            if src.first_send:
                st.first_send = src.first_send
        return st

    def _touch(self, st: WarmupState) -> None:
        self._dirty_warm[warm_key(st.source, st.provider)] = st

    def capped(self, source: str, group: str) -> bool:
        """Does ``source`` have a warm-up cap for ``group``?"""
        return self._ramp(source, group).plan is not None

    def room(self, source: str, group: str) -> int | None:
        ramp = self._ramp(source, group)
        if ramp.plan is None:
            return None
        return ramp.room(self.state(source, group), self.clock.now())

    def select(self, pool: Pool, group: str, usable: Callable[[str], bool],
               msg: bytes | None = None) -> Choice:
        """Pick a source of ``pool`` for one message to ``group`` and reserve its room.
        ``msg``: the message's spool key (a message that waited keeps its source)."""
        key = (pool.name, group)
        sel = self.selectors.get(key)
        if sel is None:
            sel = self.selectors[key] = PoolSelector(pool.members, pool.overflow)
            sel.capless = all(self._ramp(n, group).plan is None for n, _ in sel.wrr.members)
        if sel.capless:  # the per-message fast path: no caps to count (warm sources)
            name = sel.single if sel.single is not None else sel.wrr.pick(usable)
            if name is None or (sel.single is not None and not usable(name)):
                return _SUSPENDED
            handed = sel.handed  # counted here, folded into used_day/hour by dirty()
            handed[name] = handed.get(name, 0) + 1
            return self._chosen[name]
        now = self.clock.now()

        def has_room(name: str) -> bool:
            ramp = self._ramp(name, group)
            return ramp.plan is None or ramp.room(self.state(name, group), now) > 0

        bound = self.waiting.pop(msg, None) if msg is not None and self.waiting else None
        choice = sel.choose(usable, has_room, bound)
        if choice.reason == "warmup_cap" and msg is not None and sel.overflow == DEFER:
            if len(self.waiting) >= MAX_WAITING:
                del self.waiting[next(iter(self.waiting))]
            self.waiting[msg] = choice.capped
        if choice.source is not None:
            st = self.state(choice.source, group)
            self._ramp(choice.source, group).roll(st, now)
            Ramp.take(st, now)
            self._touch(st)
            if self._ramp(choice.source, group).plan is not None:
                self.reserved += 1
            self.stats["picked_" + choice.source] += 1
            if choice.overflowed:
                self.stats["overflowed"] += 1
        elif choice.reason == "warmup_cap":
            self.stats["deferred"] += 1
            st = self.state(choice.capped, group)  # rolled by has_room
            Ramp.deferred(st)
            self._touch(st)
        return choice

    def wait_s(self, source: str, group: str) -> float:
        """Real seconds until a capped source has room again."""
        st = self.state(source, group)
        egress_s = self._ramp(source, group).frees_in(st, self.clock.now())
        return self.clock.real_delay(egress_s)

    def give_back(self, source: str, group: str) -> None:
        """A message given to ``source`` did not go (deferred, expired): its room comes
        back and it counts as a deferral of that source."""
        ramp = self._ramp(source, group)
        st = self.state(source, group)
        ramp.roll(st, self.clock.now())
        Ramp.deferred(st)
        if ramp.plan is None:  # counted in the selector's handed: out at the next fold
            key = (source, group)
            self._returned[key] = self._returned.get(key, 0) + 1
        else:
            Ramp.give_back(st)
        self._touch(st)

    def feedback(self, source: str, group: str, attempts: int, throttles: int,
                 blocks: int) -> None:
        if not (attempts or throttles or blocks):
            return
        st = self.state(source, group)
        self._ramp(source, group).roll(st, self.clock.now())
        Ramp.feedback(st, attempts, throttles, blocks)
        self._touch(st)

    def status(self) -> list[dict]:
        now = self.clock.now()
        return [self._ramp(s, g).status(st, now) | {"cold": self._ramp(s, g).plan is not None}
                for (s, g), st in sorted(self.warm.items())]
