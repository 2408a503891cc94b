"""The operations side of the supervisor process (hooked into ``supervisor.py``).

``start()`` after the spool is open, ``tick()`` from the supervisor's loop, ``stop()`` at
shutdown.  Per ``[ops]``: folds worker heartbeats into the metrics state and serves the
Prometheus endpoint, writes ``status.json`` (for ``fastmta top`` / ``admin inspect``),
runs the exporters in a thread, and sweeps cancelled deliveries.
"""

from __future__ import annotations

import logging
import threading
import time

from fastmta.ops import admin as A
from fastmta.ops.exports import from_config, run_exporters
from fastmta.ops.metrics import MetricsServer, MetricsState

log = logging.getLogger("fastmta.ops")


class SupervisorOps:
    """See module docstring.  ``sup``: the ``Supervisor``."""

    def __init__(self, sup, *, extra_exporters=()) -> None:
        self.sup = sup
        self.cfg = sup.cfg.ops
        self.state = MetricsState()
        self.server: MetricsServer | None = None
        self.exporters = list(extra_exporters)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_status = 0.0
        self._last_sweep = 0.0
        self.admin: A.Admin | None = None
        self.guards = None
        self.started = time.time()

    def start(self) -> None:
        spool = self.sup.spool
        self.admin = A.Admin(spool, self.sup.cfg)
        from fastmta.compliance.guard_runner import GuardRunner

        self.guards = GuardRunner(spool, self.sup.cfg, self.admin)  # bounce/complaint guards
        if not self.cfg.enabled:
            return
        if self.cfg.metrics_port:
            try:
                self.server = MetricsServer(self.state, self.cfg.metrics_host,
                                            self.cfg.metrics_port, self.cfg.metrics_token
                                            ).start()
                log.info("metrics on %s", self.server.url)
            except OSError as exc:
                log.error("metrics endpoint %s:%s: %s", self.cfg.metrics_host,
                          self.cfg.metrics_port, exc)
        self.exporters += from_config(spool, self.cfg)
        if self.exporters:
            self._thread = threading.Thread(
                target=run_exporters, args=(self.exporters, self._stop,
                                            self.cfg.export_interval_s, 30.0,
                                            self.cfg.export_nice),
                name="fastmta-exports", daemon=True)
            self._thread.start()

    def workers(self) -> list[dict]:
        out = []
        for slot in self.sup.slots:
            beat = dict(slot.beat)
            beat.setdefault("index", slot.index)
            beat["alive"] = slot.proc is not None and slot.proc.is_alive()
            beat["last_beat_mono"] = slot.last_beat
            beat["restarts"] = slot.restarts
            out.append(beat)
        return out

    def tick(self) -> None:
        """Called from the supervisor loop (every <= 0.1 s); does work at most 1/s."""
        now = time.monotonic()
        if not self.cfg.enabled or now - self._last_status < self.cfg.status_interval_s:
            return
        self._last_status = now
        try:
            spool = self.sup.spool
            workers = self.workers()
            info = spool.info()
            info["inbound"] = spool.inbound_counters()  # fastmta.feedback (metrics)
            queues = spool.queue_counts()
            self.state.update(workers, info, queues)
            A.write_status(self.sup.spool_path, self.status(workers, info, queues))
            if now - self._last_sweep >= 1.0:
                self._last_sweep = now
                self.admin.sweep_all_cancelled()
                self.guards.tick()
                self.state.guards = self.guards.flags  # metric fastmta_compliance_guard
        except Exception:  # operations must never take the supervisor down
            log.exception("ops tick")

    def status(self, workers: list[dict], info: dict, queues: dict) -> dict:
        sites: dict[str, dict] = {}
        for w in workers:
            for name, row in (w.get("ops") or {}).get("sites", {}).items():
                r = {k: v for k, v in row.items() if k not in ("classes",)}
                r["worker"] = w.get("index")
                o = r.get("outcomes", {})
                r["sent"] = o.get("sent", 0)
                r["failed"] = o.get("hard", 0) + o.get("expired", 0) + o.get("canceled", 0)
                r["soft"] = o.get("soft", 0)
                r["deferred"] = o.get("defer", 0)
                sites[name] = r
        return {
            "ts_ms": int(time.time() * 1000),
            "pid": self.sup_pid(),
            "started_ms": int(self.started * 1000),
            "workers": [{k: w.get(k) for k in ("index", "pid", "alive", "inflight", "queued",
                                                 "restarts", "draining", "commit_errors")}
                        for w in workers],
            "queues": queues,
            "spool": {k: info.get(k) for k in ("map_size", "used_bytes", "file_bytes",
                                                "full")},
            "sites": sites,
            "suspensions": [
                {"kind": s.kind, "name": s.name, "reason": s.reason, "since_ms": s.since_ms,
                 "until_ms": s.until_ms, "user": s.user}
                for s in A.read_controls(self.sup.spool)[0].values()],
            "metrics_url": self.server.url if self.server else "",
            # compliance guards: delivery id -> {guard: {state, reason}} (dashboard flag)
            "guards": {str(k): v for k, v in (self.guards.flags if self.guards else {}).items()},
        }

    @staticmethod
    def sup_pid() -> int:
        import os

        return os.getpid()

    def stop(self) -> None:
        """Final status, exporters caught up (bounded), endpoint closed."""
        self._last_status = 0.0
        self.tick()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30.0)
        if self.server is not None:
            self.server.stop()
