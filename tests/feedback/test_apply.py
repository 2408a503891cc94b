"""Effects on recipients (EFS model): transitions, KPIs, quarantine/denylist, events,
idempotence, unmatched mail; on a real LMDB spool."""

from __future__ import annotations

from fbhelpers import feedback_config, original, processor, rid_of, sent_delivery, tokens_for

from fastmta.ops.events import from_stored
from fastmta.records import FeedbackEvent, Status
from fastmta.sim.feedback import build_arf, build_autoreply, build_dsn


def _events(sp, kind=None):
    out = []
    for seq, ev in sp.events():
        if isinstance(ev, FeedbackEvent) and (kind is None or ev.kind == kind):
            out.append((seq, ev))
    return out


def test_hard_dsn_fails_a_sent_recipient_once(tmp_path):
    sp, did, items = sent_delivery(str(tmp_path / "s"), 5)
    tok = tokens_for(sp)
    proc = processor(sp)
    it = items[2]
    rid = rid_of(it)
    rp = tok.return_path(tok.token(did, rid))
    raw = build_dsn(it.email, rp, original(tok, did, rid, it.email))
    before = sp.kpis(did)
    rec = proc.process(raw, source="test", rcpt_to=[rp])
    assert (rec.matched, rec.effect, rec.delivery_id, rec.rcpt_id) == (True, "failed", did, rid)
    r = sp.recipient(did, rid)
    assert r.status == Status.FAILED and r.reason == "user_unknown" and r.bounce_class == 10
    assert "bounced_async" in r.feedback
    k = sp.kpis(did)
    assert k["sent"] == before["sent"] - 1 and k["failed"] == before.get("failed", 0) + 1
    assert k["async_bounces"] == 1 and k["reason/user_unknown"] == 1
    q = sp.quarantine_get(it.email)
    assert q is not None and q.state == "quarantined"
    evs = _events(sp, "bounce_async")
    assert len(evs) == 1 and evs[0][1].email == it.email
    pub = from_stored(*evs[0])
    assert pub is not None and type(pub).__name__ == "AsyncBounce"
    # the same DSN again (and in another style): nothing changes
    rec2 = proc.process(raw, source="test", rcpt_to=[rp])
    rec3 = proc.process(build_dsn(it.email, rp, original(tok, did, rid, it.email),
                                  style="qmail"), source="test", rcpt_to=[rp])
    assert rec2.effect == "duplicate" and rec3.effect == "duplicate"
    assert sp.kpis(did) == k and len(_events(sp, "bounce_async")) == 1
    # the KPIs still equal a recount of the recipient records
    recs = list(sp.recipients(did))
    assert k["sent"] == sum(x.status == Status.SENT for _, x in recs)
    assert k["failed"] == sum(x.status == Status.FAILED for _, x in recs)


def test_soft_dsn_updates_the_reason_only(tmp_path):
    sp, did, items = sent_delivery(str(tmp_path / "s"), 3)
    tok = tokens_for(sp)
    it = items[0]
    rid = rid_of(it)
    rp = tok.return_path(tok.token(did, rid))
    k0 = sp.kpis(did)
    rec = processor(sp).process(build_dsn(it.email, rp, original(tok, did, rid, it.email),
                                          soft=True), source="t", rcpt_to=[rp])
    assert rec.effect == "reason_updated"
    r = sp.recipient(did, rid)
    assert r.status == Status.SENT and r.reason == "mailbox_full"
    k = sp.kpis(did)
    assert k["sent"] == k0["sent"] and k["async_soft"] == 1
    assert sp.quarantine_get(it.email) is None


def test_complaint_flags_denylists_and_counts(tmp_path):
    sp, did, items = sent_delivery(str(tmp_path / "s"), 4)
    tok = tokens_for(sp)
    proc = processor(sp)
    it = items[1]
    rid = rid_of(it)
    # ARF to the fixed FBL address, recipient redacted: the token in the copy matches
    raw = build_arf(it.email, original(tok, did, rid, it.email))
    rec = proc.process(raw, source="t", rcpt_to=["fbl@bounces.example.com"])
    assert (rec.matched, rec.effect, rec.kind) == (True, "complained", "arf")
    r = sp.recipient(did, rid)
    assert r.status == Status.SENT and "complained" in r.feedback
    q = sp.quarantine_get(it.email)
    assert q.state == "denylisted" and q.reason == "complaint"
    k = sp.kpis(did)
    assert k["complaints"] == 1 and k["provider/gmail/complaints"] == 1
    assert proc.process(raw, source="t", rcpt_to=["fbl@bounces.example.com"]).effect == "duplicate"
    assert sp.kpis(did)["complaints"] == 1 and len(_events(sp, "complaint")) == 1


def test_autoreply_is_recorded_only(tmp_path):
    sp, did, items = sent_delivery(str(tmp_path / "s"), 2)
    tok = tokens_for(sp)
    it = items[0]
    rid = rid_of(it)
    rp = tok.return_path(tok.token(did, rid))
    raw = build_autoreply(it.email, rp, original(tok, did, rid, it.email))
    proc = processor(sp)
    assert proc.process(raw, source="t", rcpt_to=[rp]).effect == "recorded"
    assert proc.process(raw, source="t", rcpt_to=[rp]).effect == "duplicate"
    assert sp.recipient(did, rid).status == Status.SENT
    assert sp.quarantine_get(it.email) is None
    assert sp.kpis(did)["autoreplies"] == 1 and len(_events(sp, "autoreply")) == 1


def test_mailto_unsubscribe(tmp_path):
    sp, did, items = sent_delivery(str(tmp_path / "s"), 2)
    tok = tokens_for(sp)
    it = items[1]
    t = tok.token(did, rid_of(it))
    raw = f"From: {it.email}\r\nTo: u-{t}@bounces.example.com\r\nSubject: unsubscribe\r\n\r\n".encode()
    rec = processor(sp).process(raw, source="t", rcpt_to=[f"u-{t}@bounces.example.com"])
    assert (rec.kind, rec.effect) == ("unsubscribe", "unsubscribed")
    assert sp.quarantine_get(it.email).reason == "unsubscribed"
    assert sp.kpis(did)["unsubscribes"] == 1


def test_unmatched_is_counted_and_listed_never_applied(tmp_path):
    sp, did, items = sent_delivery(str(tmp_path / "s"), 3)
    tok = tokens_for(sp)
    proc = processor(sp)
    it = items[0]
    rid = rid_of(it)
    good = tok.token(did, rid)
    k0 = sp.kpis(did)
    cases = {
        "forged": "b-" + "a" * 21,
        "truncated": "b-" + good[:-2],
        "case": "b-" + good.upper(),
    }
    for name, local in cases.items():
        rp = f"{local}@bounces.example.com"
        rec = proc.process(build_dsn(it.email, rp, b"Subject: x\r\n\r\n"), source="t",
                           rcpt_to=[rp])
        assert (rec.matched, rec.effect) == (False, "unmatched"), name
    # a valid token of one recipient in a report naming another recipient (text only)
    other = items[1]
    raw = build_dsn(other.email, "x@elsewhere.example", original(tok, did, rid, it.email))
    rec = proc.process(raw, source="t", rcpt_to=["fbl@bounces.example.com"])
    assert not rec.matched and "another recipient" in rec.why
    # a token of a delivery that is not in the spool
    rp = tok.return_path(tok.token(did + 99, 0))
    assert proc.process(build_dsn("z@z.example", rp, b""), source="t",
                        rcpt_to=[rp]).effect == "unmatched"
    assert sp.kpis(did) == k0
    assert all(sp.recipient(did, rid_of(x)).status == Status.SENT for x in items)
    listed = list(sp.inbound_list(effect="unmatched"))
    assert len(listed) == 5
    assert sp.inbound_counters()["effect/unmatched"] == 5
    got = sp.inbound_get(listed[0].id)
    assert got is not None and got[1].startswith(b"From:")


def test_events_and_accounting_csv_carry_the_feedback(tmp_path):
    from fastmta.ops.events import TYPES, EventReader
    from fastmta.ops.exports import CsvExporter

    sp, did, items = sent_delivery(str(tmp_path / "s"), 2)
    tok = tokens_for(sp)
    proc = processor(sp)
    a, b = items
    rp = tok.return_path(tok.token(did, rid_of(a)))
    proc.process(build_dsn(a.email, rp, original(tok, did, rid_of(a), a.email)),
                 source="t", rcpt_to=[rp])
    proc.process(build_arf(b.email, original(tok, did, rid_of(b), b.email)), source="t",
                 rcpt_to=["fbl@bounces.example.com"])
    assert {"bounce_async", "complaint", "autoreply", "unsubscribe"} <= set(TYPES)
    pubs = EventReader(sp, types=["bounce_async", "complaint"]).poll()
    assert [type(e).__name__ for e in pubs] == ["AsyncBounce", "Complaint"]
    assert pubs[0].email == a.email and pubs[0].status == "failed"
    assert pubs[1].feedback_type == "abuse" and pubs[1].email == b.email
    ex = CsvExporter(sp, tmp_path / "acct.csv")
    rows = [ex.row(e) for e in pubs]
    assert rows[0][0] == "rb" and rows[0][4] == a.email and rows[0][9] == "bad-mailbox"
    assert rows[1][0] == "f" and rows[1][12] == "abuse"


def test_raw_copies_are_purged_records_stay(tmp_path):
    sp, did, items = sent_delivery(str(tmp_path / "s"), 1)
    proc = processor(sp)
    rec = proc.process(b"From: a@b.example\r\nSubject: hi\r\n\r\nx\r\n", source="t", now_ms=1000)
    assert sp.inbound_get(rec.id)[1].startswith(b"From:")
    assert sp.inbound_purge_raw(older_than_ms=500) == 0
    assert sp.inbound_purge_raw(older_than_ms=2000) == 1
    got = sp.inbound_get(rec.id)
    assert got is not None and got[1] == b"" and got[0].id == rec.id


def test_applied_complaints_feed_the_complaint_guard_once(tmp_path):
    """An ARF applied by the feedback processor reaches the compliance guard's window
    (issue 20's complaint guard reads issue 15's KPIs); a second tick, or a new guard
    runner after a restart, does not count it again."""
    from fastmta.compliance.guard_runner import COMPLAINT_PREFIX, GuardRunner

    sp, did, items = sent_delivery(str(tmp_path / "s"), 4)
    tok = tokens_for(sp)
    proc = processor(sp)
    for it in items[:2]:
        raw = build_arf(it.email, original(tok, did, rid_of(it), it.email))
        assert proc.process(raw, source="t", rcpt_to=["fbl@bounces.example.com"]).effect \
            == "complained"

    def windowed() -> int:
        return sum(int(v) for v in sp.controls(f"{COMPLAINT_PREFIX}{did}/").values())

    cfg = feedback_config()
    paused: list = []

    class _Admin:
        def suspend(self, **kw):
            paused.append(kw)

    sp.set_state(did, "active")  # the guard watches active deliveries
    assert any(k.endswith("/complaints") and k.startswith("domain/") for k in sp.kpis(did)), sp.kpis(did)
    for _ in range(2):  # a second runner = a supervisor restart
        runner = GuardRunner(sp, cfg, _Admin(), clock=lambda: 1_000_000.0)
        runner.tick()
        runner.tick()
        assert windowed() == 2
    assert paused == []  # 2 complaints over 4 delivered: below the 1,000-message minimum
