"""Prometheus metrics (prometheus_client), multiprocess-safe by construction.

Workers never touch prometheus_client: each sends its counters in its heartbeat (see
``ops_worker``); the supervisor folds them into one ``MetricsState`` (counters of a
restarted worker are carried over, so totals never go backwards) and serves them from a
custom collector together with spool figures read at scrape time.  One process serves,
so there are no per-process files to merge and no stale gauges of dead workers.

The endpoint binds 127.0.0.1 by default; bound elsewhere it requires
``Authorization: Bearer <[ops] metrics_token>``.
"""

from __future__ import annotations

import hmac
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector


class MetricsState:
    """Latest worker heartbeats and spool figures, folded for the collector."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.base: dict[tuple, float] = defaultdict(float)  # counters of exited workers
        self.current: dict[int, tuple[int, dict[tuple, float]]] = {}  # slot -> (pid, counters)
        self.sites: dict[str, dict] = {}
        self.workers: list[dict] = []
        self.spool: dict = {}
        self.queues: dict[str, int] = {}
        self.dkim = (0.0, 0)
        self.updated = 0.0
        self.guards: dict[int, dict] = {}  # compliance guards: delivery -> {guard: state}

    @staticmethod
    def _counters(ops: dict) -> dict[tuple, float]:
        out: dict[tuple, float] = {}
        for name, row in ops.get("sites", {}).items():
            prov = row.get("provider") or ""
            for outcome, n in row.get("outcomes", {}).items():
                out[("messages", prov, name, outcome)] = n
            out[("throttles", prov, name)] = row.get("throttles", 0)
        for cls, n in ops.get("classes", {}).items():
            bclass, _, typ = cls.partition("/")
            out[("classes", bclass, typ)] = n
        out[("dkim_s",)] = ops.get("dkim_s", 0.0)
        out[("dkim_n",)] = ops.get("dkim_n", 0)
        return out

    def update(self, workers: list[dict], spool_info: dict | None = None,
               queues: dict | None = None) -> None:
        """Fold the workers' latest heartbeats (``Supervisor.workers_status()``)."""
        with self.lock:
            sites: dict[str, dict] = {}
            for beat in workers:
                idx = beat.get("index")
                if idx is None:
                    continue
                ops = beat.get("ops") or {}
                pid = beat.get("pid", 0)
                counters = self._counters(ops)
                prev = self.current.get(idx)
                if prev is not None and prev[0] != pid:  # restarted: keep its totals
                    for k, v in prev[1].items():
                        self.base[k] += v
                self.current[idx] = (pid, counters)
                for name, row in ops.get("sites", {}).items():
                    if "limit" in row:
                        sites[name] = row
            self.sites = sites
            self.workers = workers
            if spool_info is not None:
                self.spool = spool_info
            if queues is not None:
                self.queues = queues
            self.updated = time.time()

    def totals(self) -> dict[tuple, float]:
        with self.lock:
            out = defaultdict(float, self.base)
            for _pid, counters in self.current.values():
                for k, v in counters.items():
                    out[k] += v
            return dict(out)


class OpsCollector(Collector):
    """Builds the metric families from a ``MetricsState`` at scrape time."""

    def __init__(self, state: MetricsState) -> None:
        self.state = state

    def collect(self) -> Iterator:
        st = self.state
        tot = st.totals()
        msgs = CounterMetricFamily("fastmta_messages", "Recipient outcomes by provider/site",
                                   labels=["provider", "site", "outcome"])
        thr = CounterMetricFamily("fastmta_throttle_replies",
                                  "Throttle replies (rate/connection limits) by site",
                                  labels=["provider", "site"])
        cls = CounterMetricFamily("fastmta_classifications",
                                  "Non-2xx replies by bounce class and type",
                                  labels=["bounce_class", "type"])
        for k, v in tot.items():
            if k[0] == "messages":
                msgs.add_metric([k[1], k[2], k[3]], v)
            elif k[0] == "throttles":
                thr.add_metric([k[1], k[2]], v)
            elif k[0] == "classes":
                cls.add_metric([k[1], k[2]], v)
        yield msgs
        yield thr
        yield cls
        dk = CounterMetricFamily("fastmta_dkim_sign_seconds",
                                 "Time spent DKIM-signing (sum) and messages signed (count)")
        dk.add_metric([], tot.get(("dkim_s",), 0.0))
        yield dk
        dkn = CounterMetricFamily("fastmta_dkim_signed", "Messages DKIM-signed")
        dkn.add_metric([], tot.get(("dkim_n",), 0))
        yield dkn
        gd = GaugeMetricFamily("fastmta_compliance_guard",
                               "Compliance guards flagging a delivery (1 = in this state)",
                               labels=["delivery", "guard", "state"])
        for did, flags in dict(st.guards).items():
            for guard, f in flags.items():
                gd.add_metric([str(did), guard, f.get("state", "")], 1)
        yield gd
        with st.lock:
            sites = dict(st.sites)
            workers = list(st.workers)
            spool = dict(st.spool)
            queues = dict(st.queues)
        conns = GaugeMetricFamily("fastmta_site_connections", "Open connections per site",
                                  labels=["provider", "site"])
        lim = GaugeMetricFamily("fastmta_site_connection_limit",
                                "Current adaptive connection limit per site",
                                labels=["provider", "site"])
        rate = GaugeMetricFamily("fastmta_site_rate_limit",
                                 "Current message-rate limit per site (msgs/s, 0 = none)",
                                 labels=["provider", "site"])
        qd = GaugeMetricFamily("fastmta_site_queued", "Recipients in a site's ready queue "
                               "(worker memory)", labels=["provider", "site"])
        sus = GaugeMetricFamily("fastmta_site_suspended", "1 while the site is suspended",
                                labels=["provider", "site"])
        for name, row in sites.items():
            lab = [row.get("provider") or "", name]
            conns.add_metric(lab, row.get("active", 0))
            lim.add_metric(lab, row.get("limit", 0))
            rate.add_metric(lab, row.get("rate") or 0.0)
            qd.add_metric(lab, row.get("queued", 0))
            sus.add_metric(lab, 1 if row.get("suspended") else 0)
        yield from (conns, lim, rate, qd, sus)
        q = GaugeMetricFamily("fastmta_queue_depth", "Spool queues (ready, scheduled, leased)",
                              labels=["queue"])
        for name, label in (("ready", "ready"), ("sched", "scheduled"), ("lease", "leased")):
            q.add_metric([label], queues.get(name, 0))
        yield q
        if spool:
            g = GaugeMetricFamily("fastmta_spool_bytes", "Spool map size, used and free bytes",
                                  labels=["kind"])
            used = spool.get("used_bytes", 0)
            size = spool.get("map_size", 0)
            g.add_metric(["map"], size)
            g.add_metric(["used"], used)
            g.add_metric(["free"], max(0, size - used))
            g.add_metric(["file"], spool.get("file_bytes", 0))
            yield g
            full = GaugeMetricFamily("fastmta_spool_full", "1 while the spool map is full")
            full.add_metric([], 1 if spool.get("full") else 0)
            yield full
            inb = CounterMetricFamily("fastmta_inbound_messages",
                                      "Inbound feedback mail by kind and effect (fastmta.feedback)",
                                      labels=["what", "value"])
            for name, v in sorted((spool.get("inbound") or {}).items()):
                what, _, value = name.partition("/")
                if value:
                    inb.add_metric([what, value], v)
            yield inb
        up = GaugeMetricFamily("fastmta_worker_up", "1 if the worker process is alive",
                               labels=["worker"])
        age = GaugeMetricFamily("fastmta_worker_heartbeat_age_seconds",
                                "Seconds since the worker's last heartbeat", labels=["worker"])
        inf = GaugeMetricFamily("fastmta_worker_inflight", "Recipients leased by the worker",
                                labels=["worker"])
        now = time.monotonic()
        for i, w in enumerate(workers):
            lab = [str(w.get("index", i))]
            up.add_metric(lab, 1 if w.get("alive") else 0)
            age.add_metric(lab, max(0.0, now - w.get("last_beat_mono", now)))
            inf.add_metric(lab, w.get("inflight", 0))
        yield from (up, age, inf)
        yield from _limits_families(workers)


def _limits_families(workers: list[dict]) -> Iterator:
    """The shared limits of each worker (node/cluster scope, docs/scale.md): degraded
    (on its local share), leases held, nodes seen, Redis round trips and outages."""
    lab = ["worker", "scope", "node"]
    deg = GaugeMetricFamily("fastmta_limits_degraded", "1 while the worker sends on its "
                            "local share (the cluster's Redis unreachable)", labels=lab)
    lea = GaugeMetricFamily("fastmta_limits_leases", "Connection leases held", labels=lab)
    nod = GaugeMetricFamily("fastmta_cluster_nodes", "Nodes of the cluster seen (Redis "
                            "membership)", labels=lab)
    rts = CounterMetricFamily("fastmta_limits_round_trips", "Calls to the limits backend "
                              "(Redis round trips) since the worker started", labels=lab)
    out = CounterMetricFamily("fastmta_limits_outages", "Switches to the local share "
                              "since the worker started", labels=lab)
    for i, w in enumerate(workers):
        st = w.get("limits") or {}
        if not st:
            continue
        lv = [str(w.get("index", i)), str(st.get("scope", "")), str(st.get("node", ""))]
        deg.add_metric(lv, 1 if st.get("degraded") else 0)
        lea.add_metric(lv, st.get("leases", 0))
        if "nodes" in st:
            nod.add_metric(lv, st["nodes"])
        rts.add_metric(lv, st.get("round_trips", 0))
        out.add_metric(lv, st.get("outages", 0))
    yield from (deg, lea, nod, rts, out)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args) -> None:  # noqa: A002
        pass


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def _with_token(app, token: str):
    want = f"Bearer {token}".encode()

    def guarded(environ, start_response):
        got = environ.get("HTTP_AUTHORIZATION", "").encode()
        if not hmac.compare_digest(got, want):
            start_response("401 Unauthorized", [("Content-Type", "text/plain"),
                                                ("WWW-Authenticate", "Bearer")])
            return [b"token required\n"]
        return app(environ, start_response)

    return guarded


class MetricsServer:
    """The HTTP endpoint (``/metrics``) in a daemon thread."""

    def __init__(self, state: MetricsState, host: str = "127.0.0.1", port: int = 0,
                 token: str = "") -> None:
        loopback = host in ("127.0.0.1", "::1", "localhost") or host.startswith("127.")
        if not loopback and not token:
            raise ValueError("a metrics token is required when not bound to loopback")
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(OpsCollector(state))
        app = make_wsgi_app(self.registry)
        if token:
            app = _with_token(app, token)
        self.httpd = make_server(host, port, app, _ThreadingWSGIServer, _QuietHandler)
        self.port = self.httpd.server_port
        self.host = host
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="fastmta-metrics",
                                       daemon=True)

    def start(self) -> MetricsServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"
