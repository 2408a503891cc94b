"use strict";
(() => {
  const {el, api, fmt} = FM;
  const did = Number(location.pathname.split("/").pop());
  const $ = (s) => document.querySelector(s);
  $("#did").textContent = did;
  $("#export").setAttribute("href", "/api/v1/deliveries/" + did + "/export.csv");

  // ---- charts (uPlot, vendored): the delivery's whole past from the spool's event log
  // (GET .../timeline), re-read after each live update: throughput and status over time
  const W = Math.min(600, Math.max(320, (window.innerWidth - 80) / 2));
  const rateChart = new uPlot({width: W, height: 200, scales: {x: {time: true}},
    series: [{}, {label: "msgs/s", stroke: "#2f7de1", fill: "#2f7de122"}],
    axes: [{}, {size: 60}]}, [[], []], $("#chart-rate"));
  const statusChart = new uPlot({width: W, height: 200, scales: {x: {time: true}},
    series: [{}, {label: "sent", stroke: "#1a7f37"}, {label: "failed", stroke: "#b42318"},
             {label: "pending", stroke: "#9a6700"}], axes: [{}, {size: 70}]},
    [[], [], [], []], $("#chart-status"));
  const sum = (a) => a.reduce((x, y) => x + y, 0);

  async function charts() {
    const t = await api("/deliveries/" + did + "/timeline");
    rateChart.setData([t.t, t.rate]);
    statusChart.setData([t.t, t.cum_sent, t.cum_failed, t.pending]);
    const last = t.t.length - 1;
    for (const [node, attrs] of [[$("#chart-rate"), {points: t.t.length, step: t.step_s,
        "first-ts": t.t[0] ?? "", "total-sent": sum(t.sent), "total-failed": sum(t.failed),
        "peak-rate": t.rate.length ? Math.max(...t.rate) : 0}],
      [$("#chart-status"), {points: t.t.length, "last-sent": last >= 0 ? t.cum_sent[last] : 0,
        "last-failed": last >= 0 ? t.cum_failed[last] : 0,
        "last-pending": last >= 0 ? t.pending[last] : 0}]])
      for (const [k, v] of Object.entries(attrs)) node.setAttribute("data-" + k, String(v));
    $("#chart-rate").parentNode.setAttribute("data-seq", String(t.last_seq));
  }

  function table(tbody, entries, head) {
    tbody.replaceChildren(...(entries.length ? entries : [["(none)", ""]]).map(([k, v]) =>
      el("tr", {}, el("td", {text: k}), el("td", {class: "num", text: fmt(v)}))));
  }

  function show(r) {
    for (const node of document.querySelectorAll("[data-kpi]")) {
      const k = node.getAttribute("data-kpi");
      if (!(k in r)) continue;
      node.textContent = k === "success_pct" ? r[k].toFixed(2) : (typeof r[k] === "number" ? fmt(r[k]) : r[k]);
      node.setAttribute("data-value", String(r[k]));
    }
    $("#state").className = "badge " + r.state;
    $("#name").textContent = r.name;
    $("#mail_from").textContent = r.mail_from;
    $("#created").textContent = r.created;
    $("#expires").textContent = r.expires;
    table($("#by-reason tbody"), Object.entries(r.by_reason));
    table($("#by-class tbody"), Object.entries(r.by_bounce_class));
    table($("#excluded tbody"), Object.entries(r.excluded_by_reason).filter(([, v]) => v));
    $("#by-domain tbody").replaceChildren(...Object.entries(r.by_domain).slice(0, 15).map(
      ([d, x]) => el("tr", {}, el("td", {text: d}), el("td", {class: "num", text: fmt(x.to_deliver)}),
        el("td", {class: "num", text: fmt(x.sent)}), el("td", {class: "num", text: fmt(x.failed)}),
        el("td", {class: "num", text: fmt(x.pending)}),
        el("td", {class: "num", text: x.success_pct.toFixed(2)}))));
  }

  let reportSeq = 0;
  async function refresh() {
    const n = ++reportSeq;
    const r = await api("/deliveries/" + did + "/report");
    if (n === reportSeq) show(r);
    await charts();
    document.body.setAttribute("data-loaded", "1");
  }
  const later = FM.throttle(refresh, 1000);

  // ---- the delivery log: filtered pages by cursor
  let cursor = null, filters = "";
  const logBody = $("#log tbody");
  async function loadLog(reset) {
    if (reset) { cursor = 0; logBody.replaceChildren(); }
    let got = 0, scanned = 0, rounds = 0;
    while (cursor !== null && got < 50 && rounds < 20) {
      const r = await api("/deliveries/" + did + "/recipients?limit=" + (50 - got) + "&cursor=" + cursor + filters);
      rounds++; got += r.count; scanned += r.scanned; cursor = r.next_cursor;
      logBody.append(...r.items.map((x) => el("tr", {"data-rcpt": x.rcpt_id},
        el("td", {text: x.rcpt_id}), el("td", {class: "email", text: x.email}),
        el("td", {}, el("span", {class: "badge " + x.status, text: x.status})),
        el("td", {text: x.reason || x.last_soft_reason}), el("td", {class: "num", text: x.attempts}),
        el("td", {text: x.code ? x.code + " " + x.enhanced : ""}),
        el("td", {class: "reply", text: x.reply}), el("td", {text: x.mx}),
        el("td", {text: x.last_attempt}))));
    }
    $("#more").hidden = cursor === null;
    $("#log-info").textContent = logBody.children.length + " shown" + (cursor === null ? " (end)" : "");
  }
  $("#search").addEventListener("submit", (e) => {
    e.preventDefault();
    const p = new URLSearchParams();
    for (const [k, v] of new FormData(e.target)) if (v) p.set(k, v);
    filters = p.toString() ? "&" + p.toString() : "";
    loadLog(true);
  });
  $("#more").addEventListener("click", () => loadLog(false));

  for (const b of document.querySelectorAll("button[data-action]"))
    b.addEventListener("click", async () => {
      const a = b.getAttribute("data-action");
      if (a === "cancel" && !confirm("Cancel delivery " + did + "? Remaining recipients fail.")) return;
      await FM.admin("/deliveries/" + did + "/" + a, {reason: "from the dashboard"});
      refresh();
    });

  refresh().then(() => loadLog(true));
  FM.live("", () => later());  // the log moved: refresh the report (at most 1/s)
  setInterval(later, 5000);
})();
