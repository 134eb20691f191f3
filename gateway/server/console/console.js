// The gateway's ops console: polls /console/api/* with the key kept in sessionStorage.
// Polling (not SSE): every poll may reach any worker, and each answers with every worker's
// merged figures, so nothing is pinned to one process; a 2 s poll is cheap at these sizes.
"use strict";

const POLL_MS = 2000;
const KEY_ITEM = "gateway-console-key";
const state = { loadedSha: null, path: null };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function key() { return sessionStorage.getItem(KEY_ITEM) || ""; }

async function api(path, options) {
  const headers = { "content-type": "application/json" };
  if (key()) headers.authorization = "Bearer " + key();
  const response = await fetch(path, { ...(options || {}), headers });
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  return { status: response.status, ok: response.ok, body };
}

function errorText(result) {
  const error = result.body && result.body.error;
  if (error && error.message) return error.message + " (HTTP " + result.status + ")";
  return "HTTP " + result.status;
}

function notice(text, ok) {
  const box = document.getElementById("notice");
  box.className = ok ? "ok" : "";
  box.textContent = text;
}

function badge(breaker, forced, partly) {
  // A drain reaches each worker within half a second: until then, say how far it got.
  const label = forced ? "OPEN (drained" + (partly ? " on " + partly + ")" : ")") : breaker.replace("_", "-").toUpperCase();
  return el("span", { class: "badge state-" + breaker }, label);
}

function seconds(value) {
  return value === null || value === undefined ? "—" : Number(value).toFixed(value < 1 ? 3 : 1) + " s";
}

function percent(value) {
  return value === null || value === undefined ? "—" : (100 * value).toFixed(1) + " %";
}

function usd(value) { return "$" + Number(value || 0).toFixed(6); }

function renderLive(live) {
  const windowText = live.window_s === null ? "since the server started" : "over the last " + Math.round(live.window_s) + " s";
  document.getElementById("live-summary").textContent =
    "Policy sha256 " + live.policy_sha256.slice(0, 12) + " · " + live.workers.length +
    " worker(s) · error rate and latency " + windowText + " · cost so far " + usd(live.cost_usd_total);
  // Rows are updated in place, never rebuilt: a focused Drain or Reset button keeps its focus
  // through every poll.
  const body = document.querySelector("#providers tbody");
  const names = Object.keys(live.providers);
  for (const row of Array.from(body.rows)) {
    if (!names.includes(row.dataset.provider)) row.remove();
  }
  for (const [name, p] of Object.entries(live.providers)) {
    let probe = "—";
    if (p.forced) probe = "none until reset";
    else if (p.breaker === "open") probe = "in " + seconds(p.seconds_until_probe);
    else if (p.breaker === "half_open") probe = "probing";
    const limit = p.max_concurrency === null ? "no limit" : p.max_concurrency + (p.workers > 1 ? " per worker" : "");
    let row = Array.from(body.rows).find((r) => r.dataset.provider === name);
    if (!row) {
      const drain = el("button", { type: "button", "data-provider": name, "data-action": "force-open",
        "aria-label": "Drain " + name + " (force its breaker open)", onclick: breakerAction }, "Drain");
      const reset = el("button", { type: "button", "data-provider": name, "data-action": "reset",
        "aria-label": "Reset the breaker of " + name, onclick: breakerAction }, "Reset");
      row = el("tr", { "data-provider": name }, el("th", { scope: "row" }, name),
        el("td", { class: "breaker" }), el("td", {}), el("td", {}), el("td", {}), el("td", {}),
        el("td", {}), el("td", {}), el("td", {}, drain, " ", reset));
      body.append(row);
    }
    const cells = row.cells;
    cells[1].replaceChildren(badge(p.breaker, p.forced, p.forced_workers < p.workers ? p.forced_workers + " of " + p.workers + " workers" : ""), " " + p.failure_count + " failures");
    cells[2].textContent = probe;
    cells[3].textContent = p.in_flight + " / " + limit;
    cells[4].textContent = p.calls;
    cells[5].textContent = percent(p.error_rate);
    cells[6].textContent = seconds(p.latency_avg_s);
    cells[7].textContent = usd(p.cost_usd_total);
  }
  const tasks = document.getElementById("tasks");
  tasks.replaceChildren();
  for (const task of live.tasks) {
    const list = el("ol", {});
    for (const c of task.order) {
      const extra = c.available ? "" : " (not configured: " + c.unavailable_reason + ")";
      list.append(el("li", {}, c.provider + " · " + c.model + " ", badge(c.breaker, false), extra));
    }
    tasks.append(el("div", { class: "task", "data-task": task.task },
      el("h4", {}, task.task),
      el("p", {}, task.strategy + " · " + task.requests_total + " requests · " + usd(task.cost_usd_total)),
      list));
  }
}

function fillSelect(select, values, label) {
  const shown = Array.from(select.options).slice(1).map((o) => o.value);
  if (shown.join("\n") === values.join("\n")) return;  // unchanged: leave a focused list be
  const chosen = select.value;
  select.replaceChildren(el("option", { value: "" }, label));
  for (const value of values) select.append(el("option", { value }, value));
  select.value = values.includes(chosen) ? chosen : "";
}

function renderRequests(data) {
  fillSelect(document.getElementById("filter-task"), data.tasks, "All tasks");
  fillSelect(document.getElementById("filter-outcome"), data.outcomes, "All outcomes");
  const body = document.querySelector("#request-table tbody");
  body.replaceChildren();
  for (const r of data.requests) {
    const attempts = r.attempts.map((a) => a.provider + ": " + a.outcome + (a.latency_s === null ? "" : " " + seconds(a.latency_s))).join(", ");
    body.append(el("tr", { "data-task": r.task, "data-outcome": r.outcome },
      el("td", {}, new Date(r.at * 1000).toLocaleTimeString()),
      el("td", {}, r.task),
      el("td", {}, r.outcome),
      el("td", {}, r.provider || "—"),
      el("td", {}, attempts || "—"),
      el("td", {}, seconds(r.duration_s)),
      el("td", {}, r.cost_usd === null ? "—" : usd(r.cost_usd))));
  }
}

async function refresh() {
  const live = await api("/console/api/live");
  if (!live.ok) { notice(errorText(live)); return; }
  renderLive(live.body);
  const params = new URLSearchParams();
  const task = document.getElementById("filter-task").value;
  const outcome = document.getElementById("filter-outcome").value;
  if (task) params.set("task", task);
  if (outcome) params.set("outcome", outcome);
  const recent = await api("/console/api/requests?" + params);
  if (recent.ok) renderRequests(recent.body);
  document.body.dataset.polls = String(Number(document.body.dataset.polls || 0) + 1);
}

async function breakerAction(event) {
  const button = event.currentTarget;
  const provider = button.dataset.provider;
  const result = await api("/console/api/breakers/" + encodeURIComponent(provider) + "/" + button.dataset.action, { method: "POST" });
  if (!result.ok) { notice("Breaker of " + provider + " not changed: " + errorText(result)); return; }
  notice("Breaker of " + provider + " is now " + result.body.breaker + (result.body.forced ? " (drained until reset)" : ""), true);
  await refresh();
  button.focus();
}

function showProblem(problem) {
  const out = document.getElementById("policy-result");
  const where = [];
  if (problem.line !== null) where.push("line " + problem.line);
  if (problem.path) where.push("key " + problem.path);
  const goTo = problem.line === null ? null : el("button", { type: "button", onclick: () => goToLine(problem.line) }, "Go to line " + problem.line);
  out.replaceChildren(el("p", { class: "problem" }, "Invalid" + (where.length ? " at " + where.join(", ") : "")),
    el("pre", { class: "problem-text" }, problem.message), goTo);
}

function goToLine(line) {
  const text = document.getElementById("policy-text");
  const lines = text.value.split("\n");
  const start = lines.slice(0, line - 1).reduce((n, l) => n + l.length + 1, 0);
  text.focus();
  text.setSelectionRange(start, start + (lines[line - 1] || "").length);
}

async function loadPolicy() {
  const result = await api("/console/api/policy");
  if (!result.ok) { document.getElementById("policy-file").textContent = "Not loaded: " + errorText(result); return; }
  document.getElementById("policy-text").value = result.body.text;
  state.loadedSha = result.body.sha256;
  state.path = result.body.path;
  document.getElementById("policy-file").textContent = result.body.path + " · loaded sha256 " + result.body.sha256.slice(0, 12);
  document.getElementById("policy-result").replaceChildren();
}

function draft() { return JSON.stringify({ text: document.getElementById("policy-text").value, loaded_sha256: state.loadedSha || "" }); }

async function checkPolicy() {
  const result = await api("/console/api/policy/check", { method: "POST", body: draft() });
  if (!result.ok) { document.getElementById("policy-result").textContent = errorText(result); return; }
  if (result.body.valid) document.getElementById("policy-result").replaceChildren(el("p", { class: "valid" }, "Valid: the server would load it."));
  else showProblem(result.body.problem);
}

function diffList(title, items) {
  if (!items.length) return null;
  return el("div", {}, el("h4", {}, title), el("ul", {}, ...items.map((i) => el("li", {}, i))));
}

function changedList(title, table) {
  const items = Object.entries(table).map(([name, notes]) => name + ": " + notes.join("; "));
  return diffList(title, items);
}

async function diffPolicy() {
  const result = await api("/console/api/policy/diff", { method: "POST", body: draft() });
  const out = document.getElementById("policy-result");
  if (result.status === 422) { showProblem(result.body.problem); return; }
  if (!result.ok) { out.textContent = errorText(result); return; }
  const d = result.body.diff;
  if (d.unchanged) { out.replaceChildren(el("p", {}, "No change from the policy now serving.")); return; }
  out.replaceChildren(el("h3", {}, "What would change"),
    diffList("Providers added", d.providers_added), diffList("Providers removed", d.providers_removed),
    changedList("Providers changed", d.providers_changed),
    diffList("Tasks added", d.tasks_added), diffList("Tasks removed", d.tasks_removed),
    changedList("Tasks changed", d.tasks_changed), changedList("Other sections changed", d.other_changed),
    el("p", { class: "affected" }, "Tasks affected: " + (d.affected_tasks.join(", ") || "none")));
}

async function applyPolicy() {
  const result = await api("/console/api/policy/apply", { method: "POST", body: draft() });
  const out = document.getElementById("policy-result");
  if (result.status === 422) { showProblem(result.body.problem); return; }
  if (!result.ok) {
    out.replaceChildren(el("p", { class: "problem" }, "Not applied: " + errorText(result)));
    return;
  }
  state.loadedSha = result.body.sha256;
  document.getElementById("policy-file").textContent = state.path + " · loaded sha256 " + result.body.sha256.slice(0, 12);
  out.replaceChildren(el("p", { class: "valid" }, "Applied: sha256 " + result.body.old_sha256.slice(0, 12) + " → " + result.body.sha256.slice(0, 12) + "."));
  await refresh();
}

// An earlier sign-in answered late (the page's own, at load) must not overwrite a later one.
let signIns = 0;

async function useKey(event) {
  if (event) event.preventDefault();
  const input = document.getElementById("api-key");
  if (input.value) sessionStorage.setItem(KEY_ITEM, input.value);
  input.value = "";
  const attempt = ++signIns;
  const who = await api("/console/api/whoami");
  if (attempt !== signIns) return;
  document.getElementById("who").textContent = who.ok
    ? "Signed in as " + who.body.identity + (who.body.admin ? " · admin: may change the policy and breakers" : " · read only: changes need an admin key")
    : "Not signed in: " + errorText(who);
  if (who.ok) notice("");
  await refresh();
  if (who.ok && who.body.admin && state.loadedSha === null) await loadPolicy();
}

function forgetKey() {
  sessionStorage.removeItem(KEY_ITEM);
  document.getElementById("who").textContent = "Key forgotten.";
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("key-form").addEventListener("submit", useKey);
  document.getElementById("key-forget").addEventListener("click", forgetKey);
  document.getElementById("filter-task").addEventListener("change", refresh);
  document.getElementById("filter-outcome").addEventListener("change", refresh);
  document.getElementById("policy-load").addEventListener("click", loadPolicy);
  document.getElementById("policy-check").addEventListener("click", checkPolicy);
  document.getElementById("policy-diff").addEventListener("click", diffPolicy);
  document.getElementById("policy-apply").addEventListener("click", applyPolicy);
  useKey(null);
  setInterval(refresh, POLL_MS);
});
