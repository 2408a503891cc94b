"""HeapTrimmer: freed C-heap memory goes back to the system, at most every every_s."""

from __future__ import annotations

import pytest

from fastmta.engine.heap import HeapTrimmer


def _anon_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


def test_trims_at_most_every_interval():
    h = HeapTrimmer(every_s=10.0)
    if not h.available:
        pytest.skip("no glibc malloc_trim here")
    t0 = h._last
    assert not h.maybe(t0 + 5)
    assert h.maybe(t0 + 10.5)
    assert not h.maybe(t0 + 15.5)
    assert h.maybe(t0 + 21.0) and h.trims == 2


def test_freed_heap_memory_is_returned():
    h = HeapTrimmer(every_s=0.0)
    if not h.available:
        pytest.skip("no glibc malloc_trim here")
    h.maybe()
    # 80 MB of 4 KB buffers (malloc'd on the heap, not mmap'd), 9 in 10 freed: the
    # survivors pin the heap's top, so free() alone gives nothing back
    bufs = [bytearray(4000) for _ in range(20_000)]
    for b in bufs:
        b[0] = 1  # touched: resident
    keep = bufs[::10]
    del bufs
    before = _anon_kb()
    assert h.maybe()
    after = _anon_kb()
    assert before - after > 30_000, (before, after)
    assert len(keep) == 2_000
