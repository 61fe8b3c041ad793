// Continuum console: status of every pair this daemon protects, and planned switchovers.
// Everything goes through the same API as the CLI, with the token the user gives (kept in
// sessionStorage: this tab only). All text is inserted with textContent, never as HTML.
"use strict";

const TOKEN_KEY = "continuum.token";
const REFRESH_MS = 2000;
let token = null;
let pending = null; // { pair, to } while the plan dialog is open
let refreshTimer = null;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function banner(message) {
  const b = document.getElementById("banner");
  b.textContent = message || "";
  b.hidden = !message;
}

async function api(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: Object.assign({ Authorization: "Bearer " + token }, body ? { "Content-Type": "application/json" } : {}),
    body: body ? JSON.stringify(body) : undefined,
    cache: "no-store",
  });
  const text = await response.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (_) { /* not JSON */ }
  if (!response.ok) {
    const message = json && json.error ? json.error.message : text || response.statusText;
    const error = new Error(response.status + ": " + message);
    error.status = response.status;
    throw error;
  }
  return json;
}

function ms(value) {
  if (value === null || value === undefined) return "–";
  return value >= 1000 ? (value / 1000).toFixed(1) + " s" : value + " ms";
}

function renderPair(pair) {
  const lease = pair.lease.state === "held"
    ? "held, " + ms(pair.lease.remaining_ms) + " left"
    : pair.lease.state;
  const facts = el("div", { class: "facts" },
    el("span", {}, "holder ", el("strong", { class: "holder" }, pair.holder || "none")),
    el("span", {}, "epoch ", el("strong", { class: "epoch" }, pair.epoch)),
    el("span", {}, "lease ", lease),
    el("span", {}, "durability ", pair.durability),
    el("span", {}, "sync standby ", pair.sync_standby || "none"),
    el("span", {}, "auto failover ", pair.auto_failover ? "on" : "off"));
  const rows = pair.regions.map((r) => {
    const canMove = pair.holder && r.region !== pair.holder && !pair.in_flight;
    const button = canMove
      ? el("button", {
          type: "button",
          class: "switch",
          "data-to": r.region,
          disabled: !r.eligible,
          title: r.eligible ? "plan a switchover to " + r.region : r.ineligible_reason || "not eligible",
          onclick: () => openPlan(pair.name, r.region),
        }, "Switch over to " + r.region)
      : null;
    return el("tr", { "data-region": r.region },
      el("td", {}, r.region),
      el("td", { class: "role role-" + r.role }, r.role),
      el("td", {}, r.lag_bytes === null ? "–" : r.lag_bytes + " B"),
      el("td", {}, r.lag_seconds === null ? "–" : r.lag_seconds.toFixed(2) + " s"),
      el("td", {}, r.sync_state || "–"),
      el("td", {}, r.eligible ? "yes" : el("span", { class: "warn" }, r.ineligible_reason || "no")),
      el("td", {}, button));
  });
  const table = el("table", {},
    el("thead", {}, el("tr", {}, ...["region", "role", "lag", "lag time", "sync", "eligible", ""].map((h) => el("th", {}, h)))),
    el("tbody", {}, ...rows));
  const last = pair.last_switchover;
  return el("article", { class: "pair", "data-pair": pair.name, "data-holder": pair.holder || "" },
    el("h2", {}, pair.name),
    facts,
    pair.writes_blocked ? el("p", { class: "warn writes-blocked" }, "Writes blocked: " + pair.writes_blocked) : null,
    pair.in_flight ? el("p", { class: "warn" }, "Switchover in progress: " + pair.in_flight) : null,
    table,
    last ? el("p", { class: "muted last" },
      "Last switchover: " + last.from + " → " + last.to + ", " + last.state +
      (last.write_gap_ms !== null && last.write_gap_ms !== undefined ? ", write gap " + ms(last.write_gap_ms) : "") +
      (last.reason ? " (" + last.reason + ")" : "")) : null);
}

async function refresh() {
  try {
    const status = await api("GET", "/v1/status");
    document.getElementById("region").textContent = "region " + status.region;
    document.getElementById("pairs").replaceChildren(...status.pairs.map(renderPair));
    document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
    banner(null);
  } catch (e) {
    if (e.status === 401) { forget("That token was not accepted."); return; }
    banner("Status unavailable: " + e.message);
  }
}

async function openPlan(pair, to) {
  pending = { pair, to };
  document.getElementById("dialog-title").textContent = "Switch " + pair + " over to " + to + "?";
  const steps = document.getElementById("plan-steps");
  const blockers = document.getElementById("plan-blockers");
  steps.replaceChildren();
  blockers.replaceChildren();
  document.getElementById("dialog").hidden = false;
  try {
    const plan = await api("POST", "/v1/plan", { to, pair });
    steps.replaceChildren(...plan.steps.map((s) =>
      el("li", {}, s.step + " (" + s.region + "): " + s.action + (s.skipped ? " — skipped: " + s.skipped : ""))));
    blockers.replaceChildren(...plan.blockers.map((b) => el("li", {}, b)));
    document.getElementById("confirm").disabled = plan.blockers.length > 0;
  } catch (e) {
    blockers.replaceChildren(el("li", {}, "Plan unavailable: " + e.message));
    document.getElementById("confirm").disabled = true;
  }
}

async function confirmSwitchover() {
  if (!pending) return;
  const { pair, to } = pending;
  const reason = document.getElementById("reason").value || "console";
  document.getElementById("confirm").disabled = true;
  try {
    const accepted = await api("POST", "/v1/switchover", { to, pair, reason });
    document.getElementById("dialog").hidden = true;
    pending = null;
    showProgress(accepted.id);
  } catch (e) {
    const hint = e.status === 403 ? " (switchovers need an owner token)" : "";
    banner("Switchover refused: " + e.message + hint);
    document.getElementById("confirm").disabled = false;
  }
}

async function showProgress(id) {
  document.getElementById("progress").hidden = false;
  document.getElementById("progress-id").textContent = id;
  document.getElementById("progress-state").textContent = "pending";
  document.getElementById("progress-steps").replaceChildren();
  // Events sent before this page knew the id are not replayed: read the record once.
  try {
    const record = await api("GET", "/v1/switchovers/" + encodeURIComponent(id));
    for (const s of record.steps) {
      onEvent({ type: "step", switchover: id, step: s.step, state: s.state, duration_ms: s.duration_ms });
    }
    onEvent({ type: "switchover", id, state: record.state });
  } catch (_) { /* the event stream keeps it current */ }
}

function onEvent(event) {
  const current = document.getElementById("progress-id").textContent;
  if (event.type === "step" && event.switchover === current) {
    const list = document.getElementById("progress-steps");
    let item = list.querySelector('[data-step="' + CSS.escape(event.step) + '"]');
    if (!item) { item = el("li", { "data-step": event.step }); list.append(item); }
    item.className = event.state;
    item.textContent = event.step + ": " + event.state + (event.duration_ms !== null && event.duration_ms !== undefined ? " (" + ms(event.duration_ms) + ")" : "");
  } else if (event.type === "switchover" && event.id === current) {
    document.getElementById("progress-state").textContent = event.state;
  }
  if (event.type !== "step") refresh();
}

// Server-sent events through fetch (EventSource cannot send the Authorization header).
async function followEvents() {
  while (token) {
    try {
      const response = await fetch("/v1/events", { headers: { Authorization: "Bearer " + token } });
      if (!response.ok || !response.body) throw new Error("events: " + response.status);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
          if (data) { try { onEvent(JSON.parse(data)); } catch (_) { /* keep-alive or foreign line */ } }
        }
      }
    } catch (_) { /* reconnect below */ }
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

function start() {
  document.getElementById("login").hidden = true;
  document.getElementById("logout").hidden = false;
  refresh();
  refreshTimer = setInterval(refresh, REFRESH_MS);
  followEvents();
}

function forget(message) {
  token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  if (refreshTimer) clearInterval(refreshTimer);
  document.getElementById("pairs").replaceChildren();
  document.getElementById("login").hidden = false;
  document.getElementById("logout").hidden = true;
  banner(message || null);
}

document.addEventListener("DOMContentLoaded", () => {
  // `#token=...` (as printed by `continuum demo`): the fragment never reaches the server; it
  // is moved to this tab's storage and removed from the address bar at once.
  const fromFragment = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromFragment) {
    sessionStorage.setItem(TOKEN_KEY, fromFragment);
    history.replaceState(null, "", location.pathname + location.search);
  }
  token = sessionStorage.getItem(TOKEN_KEY);
  document.getElementById("login").addEventListener("submit", (e) => {
    e.preventDefault();
    token = document.getElementById("token").value.trim();
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    start();
  });
  document.getElementById("logout").addEventListener("click", () => forget(null));
  document.getElementById("confirm").addEventListener("click", confirmSwitchover);
  document.getElementById("cancel").addEventListener("click", () => {
    document.getElementById("dialog").hidden = true;
    pending = null;
  });
  if (token) start(); else forget(null);
});
