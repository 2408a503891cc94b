"use strict";
(() => {
  const {el, api, fmt} = FM;
  const tbody = document.querySelector("#deliveries tbody");
  function bar(pct) {
    const s = el("span");
    s.style.width = Math.min(100, pct) + "%";  // CSSOM: allowed by the CSP
    return el("div", {class: "bar", title: pct + "%"}, s);
  }
  async function refresh() {
    const r = await api("/deliveries?limit=200");
    tbody.replaceChildren(...r.items.map((d) => el("tr", {"data-delivery": d.delivery_id},
      el("td", {}, el("a", {href: "/deliveries/" + d.delivery_id, text: d.delivery_id})),
      el("td", {text: d.name}),
      el("td", {}, el("span", {class: "badge " + d.state, text: d.state})),
      el("td", {text: d.created}),
      el("td", {class: "num", text: fmt(d.to_deliver)}),
      el("td", {class: "num", text: fmt(d.sent)}),
      el("td", {class: "num", text: fmt(d.failed)}),
      el("td", {class: "num", text: fmt(d.pending)}),
      el("td", {}, bar(d.progress_pct)),
      el("td", {class: "num", text: d.success_pct.toFixed(2)}))));
  }
  const later = FM.throttle(refresh, 1000);
  refresh();
  FM.live("", () => later());
  setInterval(later, 10000);
})();
