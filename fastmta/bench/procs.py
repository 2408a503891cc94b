"""CPU time and peak RSS of this process and its children, per role.

The sampler polls ``psutil`` every ``interval_s``: for each live descendant it keeps the
latest CPU times and the peak RSS, labelled by role from the process title
(``fastmta: worker N`` = engine worker, ``fastmta sim mx worker`` = sink).  A process
that exits between two samples loses at most ``interval_s`` of CPU in the per-role
figure; ``finish()`` therefore also reads ``RUSAGE_CHILDREN`` (exact for children that
were waited for) and reports both.

Where the wall time of each role went (``sched_by_role``): the kernel's per-thread
``/proc/PID/task/TID/schedstat`` (nanoseconds on a CPU, nanoseconds runnable but waiting
for one), summed over a process's threads at each sample.  A process whose run + wait
is close to the wall time is CPU-bound (and, with a large wait share, starved by the
other processes of a loaded machine); one far below it sleeps, waiting for I/O or work.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import os
import resource
import time

import psutil

MAX_POINTS = 20_000  # samples kept for sched_window (then every other one is dropped)


def schedstat(pid: int | str = "self") -> tuple[float, float]:
    """(seconds on a CPU, seconds runnable waiting for a CPU) of a process, all its live
    threads summed; (0, 0) where the kernel has no schedstat."""
    run = wait = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0, 0.0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                parts = f.read().split()
            run += int(parts[0])
            wait += int(parts[1])
        except (OSError, ValueError, IndexError):
            continue
    return run / 1e9, wait / 1e9


def role_of(proc: psutil.Process) -> str:
    try:
        cmd = " ".join(proc.cmdline())
    except (psutil.Error, OSError):
        return "other"
    if "sim mx" in cmd:
        return "sink"
    if "fastmta: worker" in cmd or "fastmta-worker" in cmd:
        return "worker"
    if "postfix" in cmd or "smtp-sink" in cmd:
        return "postfix"
    return "other"


class ProcSampler:
    """Peak RSS and CPU seconds per process (see module docstring)."""

    def __init__(self, interval_s: float = 0.25) -> None:
        self.interval_s = interval_s
        self.me = psutil.Process(os.getpid())
        self.procs: dict[int, dict] = {}  # pid -> {role, name, cpu0, cpu, rss_peak}
        self._task: asyncio.Task | None = None
        self.self_cpu0 = self._self_cpu()
        mi = self.me.memory_info()
        self.self_rss_peak = mi.rss
        self.self_anon_peak = mi.rss - mi.shared
        self.children_cpu0 = self._children_cpu()
        self.self_sched0 = schedstat()
        self.self_sched = self.self_sched0
        self.series: list[tuple[float, dict[str, list[float]]]] = []  # (wall s, per role)

    @staticmethod
    def _self_cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    @staticmethod
    def _children_cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    def sample(self) -> None:
        with contextlib.suppress(psutil.Error):
            mi = self.me.memory_info()
            self.self_rss_peak = max(self.self_rss_peak, mi.rss)
            self.self_anon_peak = max(self.self_anon_peak, mi.rss - mi.shared)
        self.self_sched = schedstat()
        try:
            kids = self.me.children(recursive=True)
        except psutil.Error:
            return
        for p in kids:
            try:
                with p.oneshot():
                    t = p.cpu_times()
                    cpu = t.user + t.system
                    mi = p.memory_info()
                    rss = mi.rss
                    anon = mi.rss - mi.shared
            except psutil.Error:
                continue
            sched = schedstat(p.pid)
            rec = self.procs.get(p.pid)
            if rec is None:
                rec = self.procs[p.pid] = {"role": role_of(p), "pid": p.pid,
                                           "cpu0": cpu, "cpu": cpu, "rss_peak": rss,
                                           "anon_peak": anon, "sched0": sched,
                                           "sched": sched}
                # a process born during the run starts at zero CPU
                with contextlib.suppress(psutil.Error):
                    if p.create_time() >= self.me.create_time():
                        rec["cpu0"] = 0.0
                        rec["sched0"] = (0.0, 0.0)
            if rec["role"] == "other":  # the title is set a moment after start
                rec["role"] = role_of(p)
            rec["cpu"] = cpu
            if sched != (0.0, 0.0):  # (0, 0): gone between two reads
                rec["sched"] = sched
            rec["rss_peak"] = max(rec["rss_peak"], rss)
            rec["anon_peak"] = max(rec["anon_peak"], anon)
        self._record()

    def _record(self) -> None:
        """One point of the per-role (run, wait) series (``sched_window``)."""
        now = time.time()
        roles: dict[str, list[float]] = {}
        for role, (r0, w0), (r1, w1) in self._sched_rows():
            acc = roles.setdefault(role, [0.0, 0.0, 0])
            acc[0] += max(0.0, r1 - r0)
            acc[1] += max(0.0, w1 - w0)
            acc[2] += 1
        self.series.append((now, roles))
        if len(self.series) >= MAX_POINTS:  # long runs: halve the resolution
            del self.series[1::2]

    async def _loop(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval_s)

    def start(self) -> ProcSampler:
        self._task = asyncio.get_running_loop().create_task(self._loop())
        return self

    async def stop(self) -> None:
        self.sample()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def cpu_by_role(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for rec in self.procs.values():
            out[rec["role"]] = out.get(rec["role"], 0.0) + rec["cpu"] - rec["cpu0"]
        out["main"] = self._self_cpu() - self.self_cpu0
        return out

    def _sched_rows(self):
        rows = [(rec["role"], rec["sched0"], rec["sched"]) for rec in self.procs.values()]
        rows.append(("main", self.self_sched0, self.self_sched))
        return rows

    def sched_window(self, t0: float, t1: float) -> dict[str, dict]:
        """Per role, between the samples nearest to wall times ``t0`` and ``t1`` (s):
        processes, window seconds, seconds on a CPU and waiting for one (threads summed,
        so a worker with its writer thread can pass 100%), and both as a percentage of
        the window per process.  Empty when fewer than two samples cover it."""
        pts = self.series
        if len(pts) < 2:
            return {}
        times = [t for t, _r in pts]
        a = pts[max(0, bisect.bisect_right(times, t0) - 1)]
        b = pts[min(len(pts) - 1, bisect.bisect_left(times, t1))]
        span = b[0] - a[0]
        if span <= 0:
            return {}
        out = {}
        for role, (r1, w1, n) in b[1].items():
            r0, w0, _n = a[1].get(role, (0.0, 0.0, 0))
            run, wait = max(0.0, r1 - r0), max(0.0, w1 - w0)
            out[role] = {"procs": n, "window_s": round(span, 3), "run_s": round(run, 3),
                         "wait_s": round(wait, 3),
                         "run_pct": round(100.0 * run / (n * span), 1),
                         "wait_pct": round(100.0 * wait / (n * span), 1)}
        return out

    def rss_peaks_mb(self) -> dict[str, float]:
        """Peak RSS (MB) per role: the largest single process of that role."""
        out: dict[str, float] = {"main": self.self_rss_peak / 1e6}
        for rec in self.procs.values():
            r = rec["role"]
            out[r] = max(out.get(r, 0.0), rec["rss_peak"] / 1e6)
        return out

    def anon_peaks_mb(self) -> dict[str, float]:
        """Peak private (anonymous) memory per role, MB: RSS minus file-backed and shared
        pages -- the spool's LMDB map pages a process touched count in RSS but are page
        cache, shared and reclaimable."""
        out: dict[str, float] = {"main": self.self_anon_peak / 1e6}
        for rec in self.procs.values():
            r = rec["role"]
            out[r] = max(out.get(r, 0.0), rec["anon_peak"] / 1e6)
        return out

    def children_cpu_exact(self) -> float:
        """CPU of children waited for since the sampler started (RUSAGE_CHILDREN)."""
        return self._children_cpu() - self.children_cpu0
