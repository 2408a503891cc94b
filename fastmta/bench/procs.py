"""CPU time and peak RSS of this process and its children, per role.

The sampler polls ``psutil`` every ``interval_s``: for each live descendant it keeps the
latest CPU times and the peak RSS, labelled by role from the process title
(``fastmta: worker N`` = engine worker, ``fastmta sim mx worker`` = sink).  A process
that exits between two samples loses at most ``interval_s`` of CPU in the per-role
figure; ``finish()`` therefore also reads ``RUSAGE_CHILDREN`` (exact for children that
were waited for) and reports both.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource

import psutil


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
            rec = self.procs.get(p.pid)
            if rec is None:
                rec = self.procs[p.pid] = {"role": role_of(p), "pid": p.pid,
                                           "cpu0": cpu, "cpu": cpu, "rss_peak": rss,
                                           "anon_peak": anon}
                # a process born during the run starts at zero CPU
                with contextlib.suppress(psutil.Error):
                    if p.create_time() >= self.me.create_time():
                        rec["cpu0"] = 0.0
            if rec["role"] == "other":  # the title is set a moment after start
                rec["role"] = role_of(p)
            rec["cpu"] = cpu
            rec["rss_peak"] = max(rec["rss_peak"], rss)
            rec["anon_peak"] = max(rec["anon_peak"], anon)

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
