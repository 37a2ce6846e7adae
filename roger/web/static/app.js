// The roger status page: polls /api/state and draws it; actions POST JSON
// with the token in a header. Text goes in with textContent only (job names
// and errors come from users), never as HTML.
"use strict";

// Every 10 s unless the address asks otherwise: /?refresh=2 (1-300 s), say
// for a wall screen.
const REFRESH_SECONDS = refreshSeconds(new URLSearchParams(location.search).get("refresh"));
const MAX_ROWS = 200; // running jobs listed
const TOKEN_KEY = "roger-token";
let state = null;
let receivedAt = 0;
let timer = null;
let listing = null; // {kind, partition, queue} shown below the running jobs

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function $(id) { return document.getElementById(id); }

function fill(id, ...children) {
  $(id).replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
}

function age(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 60) return `${seconds.toFixed(0)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.floor(seconds % 60)} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min`;
}

function rate(value) {
  if (value === null || value === undefined) return "–";
  return value >= 10 ? value.toFixed(0) : value.toFixed(2);
}

function count(value) { return value === null || value === undefined ? "–" : String(value); }

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

function canAct() { return state && state.actions; }

function say(text, kind) {
  const box = $("message");
  box.textContent = text;
  box.className = `message ${kind || ""}`;
  box.hidden = !text;
}

// ------------------------------------------------------------------ polling

function refreshSeconds(asked) {
  const seconds = Number(asked);
  return asked && Number.isFinite(seconds) && seconds >= 1 && seconds <= 300 ? seconds : 10;
}

async function refresh() {
  clearTimeout(timer);
  try {
    const response = await fetch("/api/state", {cache: "no-store"});
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
    state = body;
    receivedAt = Date.now();
    draw();
    if ($("message").classList.contains("stale")) say("");
  } catch (error) {
    say(`Cannot reach the node (${error.message}); showing the last view.`, "stale error");
  }
  timer = setTimeout(refresh, REFRESH_SECONDS * 1000);
}

function draw() {
  $("served-by").textContent = `cluster as seen by ${state.node}`;
  $("token-form").hidden = !state.actions;
  $("readonly").hidden = state.actions;
  drawCards();
  drawPartitions();
  drawRunning();
  drawPeriodic();
  drawNodes();
  tick();
}

function tick() {
  if (!state) return;
  const seconds = Math.round((Date.now() - receivedAt) / 1000);
  $("freshness").textContent = `updated ${seconds} s ago`;
  for (const cell of document.querySelectorAll("[data-started]")) {
    const started = Number(cell.dataset.started);
    const elapsed = (state.generated_at + (Date.now() - receivedAt) - started) / 1000;
    cell.textContent = age(elapsed);
  }
}

// ------------------------------------------------------------------ drawing

function drawCards() {
  const queues = state.partitions.flatMap((p) => p.queues);
  const total = (key) => queues.reduce((sum, q) => sum + (q[key] || 0), 0);
  const rates = state.rate_window_seconds > 0;
  const done = total("done_per_second"), failed = total("failed_per_second");
  // [label, value, class]: red only for trouble that is there.
  const cards = [
    ["Nodes", state.nodes.length, ""],
    ["Partitions", state.partitions.length, ""],
    ["Running", state.running.length, ""],
    ["Ready", total("ready"), ""],
    ["Done / s", rate(rates ? done : null), rates && done ? "good" : ""],
    ["Failed / s", rate(rates ? failed : null), rates && failed ? "bad" : ""],
    ["Buried", total("buried"), total("buried") ? "bad" : ""],
    ["Rejected", total("rejected"), total("rejected") ? "bad" : ""],
  ];
  fill("cards", cards.map(([label, value, kind]) =>
    h("div", {class: `card ${kind}`, "data-card": label.toLowerCase().replace(/[^a-z]/g, "")},
      h("div", {class: "value"}, value), h("div", {class: "label"}, label))));
}

function nodeChips(partition) {
  return Object.entries(partition.nodes).map(([node, info]) =>
    h("span", {class: `chip ${info.state}`, title: `pid ${info.pid ?? "–"}, restarts ${info.restarts}`},
      node, info.active ? " ★" : "", ` · ${info.state}`));
}

function drawPartitions() {
  if (!state.partitions.length) {
    fill("partitions", h("p", {class: "muted"}, "No partition runs on any live node."));
    return;
  }
  const filter = $("filter").value.trim().toLowerCase();
  const shown = state.partitions.filter((p) => p.name.toLowerCase().includes(filter));
  if (!shown.length) {
    fill("partitions", h("p", {class: "muted"}, `No partition matches “${filter}”.`));
    return;
  }
  fill("partitions", shown.map((p) => h("div", {class: "partition", "data-partition": p.name},
    h("div", {class: "partition-head"}, h("h3", {}, p.name), nodeChips(p)),
    h("table", {},
      h("thead", {}, h("tr", {},
        ["Queue", "State", "Busy", "Ready", "Held", "Done/s", "Failed/s", "Buried", "Rejected", ""]
          .map((t) => h("th", {}, t)))),
      h("tbody", {}, p.queues.map((q) => queueRow(p, q)))))));
}

function queueState(q) {
  const chips = [];
  if (q.paused) chips.push(h("span", {class: "chip paused"}, "paused"));
  if (q.idle_on.length) chips.push(h("span", {class: "chip idle", title: q.idle_on.join(", ")}, "idle"));
  if (!q.paused && q.consuming_on.length) chips.push(h("span", {class: "chip running"}, "consuming"));
  if (!chips.length) chips.push(h("span", {class: "chip waiting"}, "waiting"));
  return chips;
}

function busyBar(q) {
  const share = q.workers ? Math.min(1, q.busy / q.workers) : 0;
  const bar = h("div", {class: "bar"}, h("div", {class: "fill"}));
  bar.firstChild.style.width = `${Math.round(share * 100)}%`; // CSSOM: allowed by the CSP
  return h("div", {class: "busy"}, bar, h("span", {}, `${q.busy}/${q.workers}`));
}

function queueRow(p, q) {
  const key = `${p.name}/${q.name}`;
  const listLink = (kind, n) => n ? h("a", {href: "#", onclick: (e) => {
    e.preventDefault(); showListing(kind, p.name, q.name);
  }}, String(n)) : count(n);
  const actions = [];
  if (canAct()) {
    actions.push(q.paused
      ? h("button", {"data-action": "resume", "data-queue": key,
          onclick: () => act("resume", {partition: p.name, queue: q.name})}, "Resume")
      : h("button", {"data-action": "pause", "data-queue": key,
          onclick: () => act("pause", {partition: p.name, queue: q.name})}, "Pause"));
    if (q.buried) actions.push(h("button", {"data-action": "retry-buried", "data-queue": key,
      onclick: () => act("retry-buried", {partition: p.name, queue: q.name})}, "Retry buried"));
    if (q.rejected) actions.push(h("button", {"data-action": "replay-rejected", "data-queue": key,
      onclick: () => act("replay-rejected", {partition: p.name, queue: q.name})}, "Replay rejected"));
  }
  return h("tr", {"data-queue": key, class: q.paused ? "is-paused" : null},
    h("td", {class: "name"}, q.name),
    h("td", {class: "state"}, queueState(q)),
    h("td", {}, busyBar(q)),
    h("td", {class: "num"}, count(q.ready)),
    h("td", {class: "num", title: "delivered to a consumer, waiting for a worker"}, count(q.held)),
    h("td", {class: "num"}, rate(q.done_per_second)),
    h("td", {class: `num ${q.failed_per_second ? "bad" : ""}`}, rate(q.failed_per_second)),
    h("td", {class: `num ${q.buried ? "bad" : ""}`, "data-count": "buried"}, listLink("buried", q.buried)),
    h("td", {class: `num ${q.rejected ? "bad" : ""}`, "data-count": "rejected"}, listLink("rejected", q.rejected)),
    h("td", {class: "actions"}, actions));
}

function drawRunning() {
  $("running-count").textContent = `(${state.running.length})`;
  if (!state.running.length) {
    fill("running", h("p", {class: "muted"}, "No job is running."));
    return;
  }
  // The oldest first, and not thousands of rows: a page must stay quick to draw.
  const shown = state.running.slice(0, MAX_ROWS);
  const more = state.running.length - shown.length;
  fill("running", h("table", {},
    h("thead", {}, h("tr", {}, ["Job", "Id", "Partition / queue", "Node", "Age", ""].map((t) => h("th", {}, t)))),
    h("tbody", {}, shown.map((job) => h("tr", {"data-job": job.id},
      h("td", {class: "name"}, job.name),
      h("td", {class: "mono"}, job.id),
      h("td", {}, `${job.partition} / ${job.queue}`),
      h("td", {}, job.node),
      h("td", {class: "num", "data-started": job.started_at ?? ""}, age(job.age_seconds)),
      h("td", {class: "actions"}, canAct() ? h("button", {"data-action": "cancel", "data-job": job.id,
        onclick: () => act("cancel", {partition: job.partition, job_id: job.id})}, "Cancel") : null))))),
    more > 0 ? h("p", {class: "muted"}, `and ${more} more (roger info running lists them all)`) : null);
}

function drawPeriodic() {
  const entries = state.periodic;
  $("periodic-section").hidden = !entries;
  if (!entries) return;
  if (!entries.length) { fill("periodic", h("p", {class: "muted"}, "No periodic job is configured.")); return; }
  const keys = [...new Set(entries.flatMap((e) => Object.keys(e)))].filter((k) => k !== "args");
  fill("periodic", h("table", {},
    h("thead", {}, h("tr", {}, keys.map((k) => h("th", {}, k.replace(/_/g, " "))))),
    h("tbody", {}, entries.map((e) => h("tr", {}, keys.map((k) => h("td", {}, count(e[k]))))))));
}

function drawNodes() {
  fill("nodes", h("table", {},
    h("thead", {}, h("tr", {}, ["Node", "Pid", "Partitions", "Idle", "Waiting"].map((t) => h("th", {}, t)))),
    h("tbody", {}, state.nodes.map((n) => h("tr", {"data-node": n.name},
      h("td", {class: "name"}, n.name, n.name === state.node ? h("span", {class: "muted"}, " (this page)") : null),
      h("td", {class: "mono"}, count(n.pid)),
      h("td", {class: "num"}, n.partitions),
      h("td", {}, n.idle.join(", ") || "–"),
      h("td", {class: n.waiting.length ? "bad" : ""}, n.waiting.join(", ") || "–"))))));
}

async function showListing(kind, partition, queue) {
  listing = {kind, partition, queue};
  $("listing-section").hidden = false;
  $("listing-title").textContent = `${kind === "buried" ? "Buried" : "Rejected"} in ${partition} / ${queue}`;
  fill("listing", h("p", {class: "muted"}, "loading…"));
  const query = new URLSearchParams({partition, queue});
  try {
    const response = await fetch(`/api/${kind}?${query}`, {cache: "no-store"});
    const body = await response.json();
    if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
    fill("listing", body.items.length ? h("table", {},
      h("thead", {}, h("tr", {}, ["Id", "Job", "Args / body", "Reason", "Error"].map((t) => h("th", {}, t)))),
      h("tbody", {}, body.items.map((item) => h("tr", {},
        h("td", {class: "mono"}, count(item.id)), h("td", {}, count(item.name)),
        h("td", {class: "mono clip"}, count(item.args)), h("td", {}, count(item.reason)),
        h("td", {class: "mono clip"}, count(item.error))))))
      : h("p", {class: "muted"}, "Empty."));
    $("listing-section").scrollIntoView({behavior: "smooth"});
  } catch (error) {
    fill("listing", h("p", {class: "error"}, `Cannot list: ${error.message}`));
  }
}

// ------------------------------------------------------------------ actions

async function act(action, body) {
  if (!token()) { say("Enter the token (http_token) first.", "error"); $("token").focus(); return; }
  try {
    const response = await fetch(`/api/${action}`, {
      method: "POST",
      headers: {"Content-Type": "application/json", "X-Roger-Token": token()},
      body: JSON.stringify(body),
    });
    const answer = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(answer.error || `HTTP ${response.status}`);
    const what = Object.values(body).join(" / ");
    const moved = typeof answer.result === "number" ? ` (${answer.result} moved)` : "";
    say(`${action}: ${what} done${moved}.`, "ok");
  } catch (error) {
    say(`${action} refused: ${error.message}`, "error");
  }
  await refresh();
  if (listing && action !== "pause" && action !== "resume") showListing(listing.kind, listing.partition, listing.queue);
}

document.addEventListener("DOMContentLoaded", () => {
  $("interval").textContent = REFRESH_SECONDS;
  const input = $("token");
  input.value = token();
  input.addEventListener("input", () => sessionStorage.setItem(TOKEN_KEY, input.value));
  $("token-form").addEventListener("submit", (e) => e.preventDefault());
  $("filter").addEventListener("input", () => state && drawPartitions());
  setInterval(tick, 1000);
  refresh();
});
