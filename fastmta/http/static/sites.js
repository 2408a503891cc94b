"use strict";
(() => {
  const {el, api, fmt, time} = FM;
  const $ = (s) => document.querySelector(s);
  let q = "";

  function button(label, action, target) {
    return el("button", {"data-action": action, text: label, on: {click: async () => {
      await FM.admin("/admin/" + action, Object.assign({reason: "from the dashboard"}, target));
      refresh();
    }}});
  }

  function state(s) {
    if (s.admin_suspended) return ["suspended", "suspended by operator" +
      (s.operator_suspension && s.operator_suspension.reason ? ": " + s.operator_suspension.reason : "")];
    if (s.suspended) return ["suspended", "suspended (adaptive)"];
    if (s.throttles) return ["throttled", "throttled (" + s.throttles + ")"];
    return ["normal", "normal"];
  }

  async function refresh() {
    const r = await api("/sites" + (q ? "?q=" + encodeURIComponent(q) : ""));
    $("#snapshot").textContent = r.ts_ms ? time(r.ts_ms) + " UTC (" + r.age_s + " s ago)" +
      (r.engine_running ? "" : " — no engine running") : "no engine has run on this spool";
    $("#queues").textContent = Object.entries(r.queues).map(([k, v]) => k + " " + fmt(v)).join(", ");
    $("#providers tbody").replaceChildren(...r.providers.map((p) => el("tr", {"data-provider": p.provider},
      el("td", {text: p.provider}),
      el("td", {text: p.suspension ? (p.suspension.reason || "suspended") : ""}),
      el("td", {}, p.suspension ? button("Resume", "resume", {provider: p.provider})
                                : button("Suspend", "suspend", {provider: p.provider})))));
    $("#sites tbody").replaceChildren(...r.sites.map((s) => {
      const [cls, label] = state(s);
      const le = s.last_error;
      return el("tr", {"data-site": s.site, "data-state": cls},
        el("td", {text: s.label || s.site, title: s.site}), el("td", {text: s.provider}),
        el("td", {}, el("span", {class: "badge " + cls, text: label})),
        el("td", {class: "num", text: fmt(s.connections) + " / " + fmt(s.limit)}),
        el("td", {class: "num", text: s.rate ? s.rate.toFixed(1) : "–"}),
        el("td", {class: "num", text: fmt(s.queued)}), el("td", {class: "num", text: fmt(s.sent)}),
        el("td", {class: "num", text: fmt(s.failed)}), el("td", {class: "num", text: fmt(s.soft)}),
        el("td", {class: "num", text: fmt(s.throttles)}),
        el("td", {class: "reply", text: le ? (le.reply || ((le.code || "") + " " + (le.reason || ""))) : ""}),
        el("td", {}, s.site.startsWith("(") ? null : s.admin_suspended ? button("Resume", "resume", {site: s.site})
                                       : button("Suspend", "suspend", {site: s.site})));
    }));
    $("#suspensions tbody").replaceChildren(...r.suspensions.map((s) => el("tr", {},
      el("td", {text: s.kind}), el("td", {text: s.name}), el("td", {text: s.reason}),
      el("td", {text: time(s.since_ms)}), el("td", {text: s.until_ms ? time(s.until_ms) : "until resumed"}),
      el("td", {text: s.user}))));
    document.body.setAttribute("data-loaded", "1");
  }
  $("#filter").addEventListener("input", (e) => { q = e.target.value; refresh(); });
  $("#filter").addEventListener("submit", (e) => e.preventDefault());
  const later = FM.throttle(refresh, 1000);
  refresh();
  FM.live("", () => later());
  setInterval(later, 3000);
})();
