"""The Prometheus endpoint, scraped over HTTP during a real run."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request

import pytest
from ops_helpers import MESSAGE, make_config, recipients
from prometheus_client.parser import text_string_to_metric_families

from fastmta import WorkerPool
from fastmta.ops.metrics import MetricsServer, MetricsState

pytestmark = pytest.mark.timeout(120)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(url: str, token: str = "") -> dict[tuple, float]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"}
                                 if token else {})
    with urllib.request.urlopen(req, timeout=10) as resp:
        text = resp.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(m: dict, name: str, **labels) -> float:
    return sum(v for (n, lab), v in m.items() if n == name
               and all(dict(lab).get(k) == val for k, val in labels.items()))


def test_metrics_change_during_a_run(sim, world, spool_dir):
    port = free_port()
    cfg = make_config(sim, metrics_port=port, validity_s=30.0)
    rows = recipients(world, 300, ["fast", "unknownusers", "greylister", "blocker"],
                      prefix="m")
    url = f"http://127.0.0.1:{port}/metrics"
    with WorkerPool(cfg, spool=spool_dir) as pool:
        assert pool.metrics_url == url
        before = scrape(url)
        assert total(before, "fastmta_worker_up") == 1
        assert total(before, "fastmta_messages_total") == 0
        h = pool.submit(rows, MESSAGE)
        blocked = sum(1 for r in rows if "blocker" in r["email"])
        samples = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            m = scrape(url)
            samples.append(m)
            sent = total(m, "fastmta_messages_total", outcome="sent")
            st = h.status()
            if st["pending"] == blocked and sent == st["sent"]:
                break
            time.sleep(0.3)
        st = h.status()
        time.sleep(cfg.ops.status_interval_s * 2 + 1.2)  # one more heartbeat + fold
        after = scrape(url)
        h.cancel()  # the blocked site's recipients
    sent_series = [total(m, "fastmta_messages_total", outcome="sent") for m in samples]
    assert sent_series == sorted(sent_series)  # counters never go backwards
    assert total(after, "fastmta_messages_total", outcome="sent") == st["sent"]
    assert total(after, "fastmta_messages_total", outcome="hard") == \
        sum(1 for r in rows if world.expected(r["email"]) == ("failed", "user_unknown"))
    assert total(after, "fastmta_messages_total", outcome="soft") > 0  # greylisting
    assert total(after, "fastmta_classifications_total", bounce_class="10", type="hard") > 0
    # a site suspended for blocking shows as suspended with its limit
    blk = [lab for (n, lab), v in after.items()
           if n == "fastmta_site_suspended" and v == 1 and "blocker" in dict(lab)["site"]]
    assert blk
    assert total(after, "fastmta_site_connection_limit") >= 1
    assert total(after, "fastmta_spool_bytes", kind="map") > \
        total(after, "fastmta_spool_bytes", kind="used") > 0
    assert ("fastmta_queue_depth", (("queue", "scheduled"),)) in after
    assert any(total(m, "fastmta_site_connections") > 0 for m in samples)
    assert total(after, "fastmta_worker_heartbeat_age_seconds") < 5


def test_metrics_token_and_binding():
    state = MetricsState()
    with pytest.raises(ValueError, match="token"):
        MetricsServer(state, "0.0.0.0", 0)
    srv = MetricsServer(state, "127.0.0.1", 0, token="s3cret").start()
    try:
        with pytest.raises(urllib.error.HTTPError) as exc:
            scrape(srv.url)
        assert exc.value.code == 401
        with pytest.raises(urllib.error.HTTPError):
            scrape(srv.url, token="wrong")
        m = scrape(srv.url, token="s3cret")
        assert ("fastmta_queue_depth", (("queue", "ready"),)) in m
    finally:
        srv.stop()


def test_restarted_worker_counters_carry_over():
    st = MetricsState()

    def beat(pid, sent):
        return {"index": 0, "pid": pid, "alive": True, "ops": {"sites": {"s": {
            "provider": "", "outcomes": {"sent": sent}}}}}

    st.update([beat(10, 5)])
    st.update([beat(10, 7)])
    assert st.totals()[("messages", "", "s", "sent")] == 7
    st.update([beat(11, 2)])  # restarted: its counters start again
    assert st.totals()[("messages", "", "s", "sent")] == 9
