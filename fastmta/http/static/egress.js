"use strict";
// Sources and warm-up: GET /api/v1/egress (= fastmta egress status --json).  Every cell
// carries data-field="<JSON field>" and data-value (the raw JSON value) for tools/tests.
(() => {
  const {el, api, fmt} = FM;
  const $ = (s) => document.querySelector(s);
  const raw = (v) => (v === null || v === undefined ? "null" : String(v));

  function cell(field, v, text, cls) {
    return el("td", {"data-field": field, "data-value": raw(v), class: cls || null,
                     text: text !== undefined ? text : (v === null ? "–" : fmt(v))});
  }

  function usage(used, cap) {
    if (cap === null || cap === undefined) return el("span", {class: "muted", text: "no cap"});
    const s = el("span");
    s.style.width = Math.min(100, cap ? (100 * used) / cap : 0) + "%";
    return el("div", {class: "bar", title: used + " / " + cap}, s);
  }

  function nextBadge(next) {
    const cls = /hold|pause|back|block|throttl/i.test(next) ? "throttled" :
      next === "warm" ? "normal" : "pending";
    return el("span", {class: "badge " + cls, text: next});
  }

  const ago = (t, now) => (t === null || t === undefined ? "never" :
    Math.max(0, Math.round(now - t)) + " s ago");

  function totals(s, now) {  // a source's use today over its providers (warm ones too)
    const cap = (v, c) => (c === null || c === undefined ? String(v) : v + " / " + c);
    const f = (field, v, text) => el("span", {"data-field": field, "data-value": raw(v),
                                              text: text !== undefined ? text : String(v)});
    return el("div", {class: "muted usage"}, "used today ",
      f("used_today", s.used_today, cap(s.used_today, s.daily_allowance)),
      " · this hour ", f("used_this_hour", s.used_this_hour,
                         cap(s.used_this_hour, s.hourly_allowance)),
      " · attempts ", f("attempts_today", s.attempts_today),
      " · throttles ", f("throttles_today", s.throttles_today),
      " · deferrals ", f("deferred_today", s.deferred_today),
      " · last used ", f("last_used", s.last_used, ago(s.last_used, now)));
  }

  function source(s, now) {
    const head = el("h2", {}, "Source " + s.name + " ",
      el("span", {class: "muted", text: (s.source_ip || "OS-chosen address") + " · EHLO " +
        s.ehlo_name + " · pools " + (s.pools.join(", ") || "–")}));
    const state = s.warmup ? "warming up: plan " + s.plan + ", day " + s.day : "warm";
    const rows = s.providers.map((r) => el("tr", {"data-source": s.name, "data-provider": r.provider},
      el("td", {text: r.provider}),
      cell("stage", r.stage), cell("day", r.day), cell("send_days", r.send_days),
      cell("used_today", r.used_today), cell("daily_cap", r.daily_cap),
      el("td", {}, usage(r.used_today, r.daily_cap)),
      cell("used_this_hour", r.used_this_hour), cell("hourly_cap", r.hourly_cap),
      cell("attempts_today", r.attempts_today), cell("throttles_today", r.throttles_today),
      cell("throttle_pct_today", r.throttle_pct_today, r.throttle_pct_today.toFixed(2)),
      cell("blocks_today", r.blocks_today), cell("deferred_today", r.deferred_today),
      cell("last_used", r.last_used, ago(r.last_used, now)),
      el("td", {"data-field": "next", "data-value": r.next}, nextBadge(r.next)),
      cell("last_action", r.last_action, r.last_action || "")));
    const table = el("table", {class: "warmup"},
      el("thead", {}, el("tr", {}, ...["provider", "stage", "day", "send days", "used today",
        "daily cap", "", "used this hour", "hourly cap", "attempts today", "throttles today",
        "throttle %", "blocks today", "deferrals today", "last used", "next ramp action",
        "last action"].map((h) =>
          el("th", {text: h})))),
      el("tbody", {}, ...(rows.length ? rows : [el("tr", {}, el("td", {colspan: 17,
        class: "muted", text: s.warmup ? "no traffic yet" : "warm: no caps"}))])));
    return el("div", {class: "card", "data-source": s.name, "data-warmup": String(s.warmup),
                      "data-day": String(s.day)}, head,
      el("div", {class: "muted", text: state}), totals(s, now), table);
  }

  async function refresh() {
    const d = await api("/egress");
    $("#clock").textContent = "factor " + d.clock_factor + (d.clock_factor !== 1 ? " (compressed)" : "");
    $("#sources").replaceChildren(...(d.sources.length ? d.sources.map((s) => source(s, d.egress_time)) :
      [el("p", {class: "muted", text: "no [[egress.sources]] configured: every connection uses [smtp] source_ips"})]));
    $("#learned tbody").replaceChildren(...d.learned.map((r) => el("tr", {"data-site": r.site, "data-source": r.source},
      el("td", {text: r.site}), el("td", {text: r.provider}), el("td", {text: r.source}),
      cell("connections", r.connections), cell("throttled_at", r.throttled_at),
      cell("rate_per_s", r.rate_per_s), cell("sent", r.sent), cell("throttles", r.throttles),
      cell("blocks", r.blocks),
      cell("suspended_for_s", r.suspended_for_s, r.suspended_for_s ? r.suspended_for_s + " s: " + r.suspend_reason : ""),
      cell("age_s", r.age_s))));
    document.body.setAttribute("data-loaded", String(Date.now()));
  }
  const later = FM.throttle(refresh, 1000);
  refresh();
  FM.live("", () => later());
  setInterval(later, 3000);
})();
