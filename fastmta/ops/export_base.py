"""What every exporter shares: the cursor in the event log, the feed and the base class.

``Cursor``: the durable position (``acked``) plus the batch in flight, a small JSON file
replaced atomically.  ``Exporter``: reads the events after its cursor (filtered by type)
and hands them to ``export``, advancing the cursor only once that returned (at-least-once).
``EventFeed``: the converted events shared when several exporters run together.  The
exporters themselves (JSONL, CSV, webhook) are in ``exports.py``.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

from fastmta.ops import events as E


class Cursor:
    """A durable position in the event log (``acked``) plus the batch in flight."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.acked = 0
        self.inflight: tuple[int, int] | None = None
        self._tmp: str | None = None
        try:
            data = json.loads(self.path.read_text())
            self.acked = int(data.get("acked", 0))
            inf = data.get("inflight")
            self.inflight = (int(inf[0]), int(inf[1])) if inf else None
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            raise ValueError(f"export cursor {self.path} is unreadable: {exc}") from None

    def save(self, sync: bool = True) -> None:
        """Replace the cursor file atomically; ``sync`` also fsyncs it (without, a power
        loss may roll the cursor back: events are exported again, never skipped)."""
        if self._tmp is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._tmp = str(self.path.with_suffix(".tmp"))
        with open(self._tmp, "w") as f:
            inflight = json.dumps(list(self.inflight)) if self.inflight else "null"
            f.write(f'{{"acked":{self.acked},"inflight":{inflight}}}')
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(self._tmp, self.path)


class EventFeed:
    """Converted events shared by several exporters (read and converted once).

    Keeps the last ``keep`` log records as ``(seq, event | None)``; the log is gap-free,
    so a record is found by arithmetic on its sequence number."""

    def __init__(self, spool, keep: int = 50_000) -> None:
        self.spool = spool
        self.keep = keep
        self.buf: list[tuple[int, E.OpsEvent | None]] = []
        self.lock = threading.Lock()

    def _fetch(self, after: int, n: int) -> list[tuple[int, E.OpsEvent | None]]:
        out = []
        for seq, raw in self.spool.events(after, chunk=max(1, min(5000, n))):
            out.append((seq, E.from_stored(seq, raw)))
            if len(out) >= n:
                break
        return out

    def records(self, after: int, n: int) -> list[tuple[int, E.OpsEvent | None]]:
        """Up to ``n`` records with sequence number > ``after``."""
        with self.lock:
            buf = self.buf
            if not buf or after + 1 < buf[0][0] or after > buf[-1][0]:
                got = self._fetch(after, n)
                if got and (not buf or got[0][0] != buf[-1][0] + 1):
                    self.buf = got[-self.keep:]
                return got
            i = after + 1 - buf[0][0]
            if len(buf) - i < n:
                buf.extend(self._fetch(buf[-1][0], n - (len(buf) - i)))
                if len(buf) > self.keep:
                    drop = len(buf) - self.keep
                    del buf[:drop]
                    i -= drop
            return buf[max(0, i): max(0, i) + n]


class Exporter:
    """Base: reads new events after the cursor and hands them to ``export``."""

    name = "exporter"

    def __init__(self, spool, *, name: str | None = None, types: Iterable[str] | None = None,
                 batch: int = 1000, cursor_dir: str | os.PathLike | None = None) -> None:
        self.spool = spool
        self.name = name or self.name
        self.batch = batch
        self.cursor = Cursor(Path(cursor_dir or Path(spool.path) / "exports")
                             / f"{self.name}.cursor")
        self.types = list(types) if types else None
        self._match = E._matcher(self.types, None)
        self.feed: EventFeed | None = None  # shared reads when several run together
        self.exported = 0
        self.errors = 0

    def _read(self, after: int, upto: int | None = None) -> tuple[list[E.OpsEvent], int]:
        """Events after ``after`` (filtered; up to ``upto`` inclusive when given, else at
        most ``batch``), and the last raw sequence number read."""
        out: list[E.OpsEvent] = []
        last = after
        match = self._match
        if self.feed is not None:
            want = (upto - after) if upto is not None else self.batch
            while want > 0:
                recs = self.feed.records(last, min(want, 5000))
                if not recs:
                    break
                for seq, ev in recs:
                    last = seq
                    if ev is not None and (match is None or match(ev)):
                        out.append(ev)
                if upto is not None:
                    want = upto - last
                elif len(out) >= self.batch or last - after >= 50 * self.batch:
                    break
                else:
                    want = self.batch - len(out)
            return out, last
        scanned = 0
        chunk = min(5000, (upto - after) if upto is not None else self.batch)
        for seq, raw in self.spool.events(after, chunk=max(1, chunk)):
            if upto is not None and seq > upto:
                break
            last = seq
            scanned += 1
            ev = E.from_stored(seq, raw)
            if ev is not None and (match is None or match(ev)):
                out.append(ev)
            if upto is None and (len(out) >= self.batch or scanned >= 50 * self.batch):
                break
        return out, last

    def step(self) -> int:
        """Export one batch if there is one; returns the number of events exported.
        Raises on failure (the cursor is unchanged)."""
        c = self.cursor
        if c.inflight is not None:
            first, last = c.inflight
            evs, _ = self._read(first - 1, upto=last)
        else:
            evs, last = self._read(c.acked)
            if last == c.acked:
                return 0
            first = c.acked + 1
            if evs and self.needs_stable_batches:
                c.inflight = (first, last)
                c.save(sync=True)  # durable before the batch leaves: same id on re-send
        if evs:
            self.export(evs, first, last)
        c.acked = last
        c.inflight = None
        c.save(sync=False)  # the output itself is durable; a rolled-back cursor re-exports
        self.exported += len(evs)
        return len(evs)

    needs_stable_batches = False

    def export(self, evs: Sequence[E.OpsEvent], first: int, last: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass
