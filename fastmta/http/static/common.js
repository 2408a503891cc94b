// fastmta dashboard: shared helpers.  Every value reaches the page through textContent or
// an attribute set with setAttribute: nothing from the server is ever parsed as HTML.
"use strict";
const FM = (() => {
  const h = new URLSearchParams(location.hash.slice(1));
  if (h.get("token")) {
    sessionStorage.setItem("fastmta-token", h.get("token"));
    history.replaceState(null, "", location.pathname + location.search);
  }
  const token = () => sessionStorage.getItem("fastmta-token") || "";

  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") e.textContent = String(v);
      else if (k === "on") for (const [ev, fn] of Object.entries(v)) e.addEventListener(ev, fn);
      else e.setAttribute(k, String(v));
    }
    for (const kid of kids) if (kid !== null && kid !== undefined)
      e.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    return e;
  }

  async function api(path, opts) {
    opts = opts || {};
    const headers = Object.assign({}, opts.headers || {});
    if (token()) headers["Authorization"] = "Bearer " + token();
    if (opts.json !== undefined) {
      headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(opts.json);
    }
    const r = await fetch("/api/v1" + path, {method: opts.method || "GET", headers,
                                              body: opts.body, cache: "no-store"});
    const body = await r.json().catch(() => ({}));
    if (!r.ok) {
      const err = new Error((body.error && body.error.message) || r.statusText);
      err.code = body.error && body.error.code;
      throw err;
    }
    return body;
  }

  function flash(text, bad) {
    const f = document.getElementById("flash");
    if (!f) return;
    f.textContent = text;
    f.className = bad ? "flash bad" : "flash";
  }

  async function admin(path, json) {
    if (!token()) {
      flash("admin actions need the token: open the URL printed by fastmta (…/#token=…) " +
            "or paste it in the token field", true);
      return null;
    }
    try {
      const r = await api(path, {method: "POST", json: json || {}});
      flash("done: " + path.split("/").pop());
      return r;
    } catch (e) {
      flash(String(e.message), true);
      return null;
    }
  }

  // one EventSource in summary mode; calls onBatch(batch) for each message
  function live(query, onBatch) {
    let url = "/api/v1/events?mode=summary" + (query ? "&" + query : "");
    if (token()) url += "&access_token=" + encodeURIComponent(token());
    const es = new EventSource(url);
    const dot = document.getElementById("live");
    es.addEventListener("batch", (m) => {
      if (dot) { dot.textContent = "live"; dot.className = "live on"; }
      onBatch(JSON.parse(m.data));
    });
    es.onopen = () => { if (dot) { dot.textContent = "live"; dot.className = "live on"; } };
    es.onerror = () => { if (dot) { dot.textContent = "reconnecting"; dot.className = "live"; } };
    return es;
  }

  // refresh(fn) at most once per `ms`, trailing call guaranteed
  function throttle(fn, ms) {
    let last = 0, timer = null;
    return function () {
      const wait = last + ms - Date.now();
      if (timer) return;
      timer = setTimeout(async () => { timer = null; last = Date.now(); await fn(); },
                         Math.max(0, wait));
    };
  }

  function tokenBox() {
    const box = document.getElementById("token");
    if (!box) return;
    box.value = token();
    box.addEventListener("change", () => sessionStorage.setItem("fastmta-token", box.value.trim()));
  }

  const fmt = (n) => (typeof n === "number" ? n.toLocaleString("en-US") : String(n ?? ""));
  const time = (ms) => (ms ? new Date(ms).toISOString().replace("T", " ").slice(0, 19) : "");
  function fill(root, tbody, rows) { tbody.replaceChildren(...rows); }
  document.addEventListener("DOMContentLoaded", tokenBox);
  return {el, api, admin, live, throttle, flash, fmt, time, fill, token};
})();
