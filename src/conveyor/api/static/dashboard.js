// The dashboard: a page over the public HTTP API (/v1/...), nothing the API does not offer.
// Every value from the server is put in the page as text (never as HTML): job arguments,
// results and names come from users.
"use strict";

const STATUSES = ["waiting", "scheduled", "queued", "running", "retrying", "succeeded", "failed", "cancelled", "expired"];
const TERMINAL = new Set(["succeeded", "failed", "cancelled", "expired"]);
const REFRESH_MS = 2000;
const TOKEN_KEY = "conveyor-token";

const view = { cursors: [null], page: 0, selected: null, busy: false, noticeUntil: 0 };

const $ = (selector) => document.querySelector(selector);

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child ?? ""));
  return node;
}

class AuthNeeded extends Error {}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = (response.headers.get("content-type") || "").includes("json") ? await response.json() : null;
  if (response.status === 401 || response.status === 403) {
    showLogin(response.status === 401 ? "This server needs an API token." : (data && data.detail) || "This token may not do that.");
    throw new AuthNeeded(data && data.detail);
  }
  if (!response.ok) throw new Error((data && (data.detail || data.title)) || `${response.status} ${response.statusText}`);
  return data;
}

// -- formatting ---------------------------------------------------------------------------------
function time(text) {
  if (!text) return "";
  const at = new Date(text);
  const age = (Date.now() - at.getTime()) / 1000;
  if (age >= 0 && age < 86400) return at.toLocaleTimeString();
  return at.toLocaleString();
}

function seconds(value) {
  if (value >= 86400) return `${+(value / 86400).toFixed(1)} d`;
  if (value >= 3600) return `${+(value / 3600).toFixed(1)} h`;
  if (value >= 60) return `${+(value / 60).toFixed(1)} min`;
  return `${value} s`;
}

const badge = (status) => el("span", { class: `status ${status}` }, status);
const num = (value) => el("td", { class: "num" }, value);

function button(label, action, danger = false) {
  return el("button", {
    type: "button", class: danger ? "danger" : "",
    onclick: async (event) => {
      event.stopPropagation();
      try {
        await action();
        banner("");
      } catch (error) {
        if (!(error instanceof AuthNeeded)) notice(`${label}: ${error.message}`);
      }
      refresh();
    },
  }, label);
}

function banner(text) {
  $("#banner").textContent = text;
  $("#banner").hidden = !text;
}

function notice(text) {  // an action's error: shown for a while, not wiped by the next refresh
  banner(text);
  view.noticeUntil = Date.now() + 8000;
}

function fill(select, values) {
  const chosen = select.value;
  const known = new Set([...select.options].map((o) => o.value));
  for (const value of values) if (!known.has(value)) select.append(el("option", { value }, value));
  select.value = chosen;
}

// -- the three tables -----------------------------------------------------------------------------
function renderQueues(queues) {
  const rows = queues.map((q) => el("tr", {},
    el("td", {}, q.name, " ", q.paused ? badge("paused") : ""),
    num(q.queued), num(q.scheduled), num(q.running), num(q.failed),
    el("td", {}, seconds(q.visibility_timeout)), el("td", {}, seconds(q.retention)), num(q.max_deliveries),
    el("td", {},
      q.paused ? button("resume", () => api("PATCH", `/v1/queues/${encodeURIComponent(q.name)}`, { paused: false }))
        : button("pause", () => api("PATCH", `/v1/queues/${encodeURIComponent(q.name)}`, { paused: true })),
      " ",
      q.failed ? button("redrive", () => api("POST", `/v1/queues/${encodeURIComponent(q.name)}/redrive`)) : "",
      " ",
      q.queued ? button("purge", async () => {
        if (confirm(`Cancel the ${q.queued} queued jobs of ${q.name}?`)) {
          await api("POST", `/v1/queues/${encodeURIComponent(q.name)}/purge`);
        }
      }, true) : "")));
  $("#queues tbody").replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 9, class: "muted" }, "no queues yet"))]));
  fill($("#f-queue"), queues.map((q) => q.name));
}

function renderWorkers(workers) {
  const rows = workers.map((w) => el("tr", {},
    el("td", {}, el("code", {}, w.id)), el("td", {}, w.host), num(w.pid), el("td", {}, w.queues.join(", ")),
    el("td", {}, `${w.running.length} / ${w.concurrency}`), el("td", {}, time(w.last_heartbeat))));
  $("#workers tbody").replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 6, class: "muted" }, "no live worker"))]));
}

function progressOf(job) {
  const p = job.progress;
  if (!p || typeof p.fraction !== "number") return "";
  return el("span", { title: p.message || "" }, el("progress", { max: 1, value: p.fraction }), ` ${Math.round(p.fraction * 100)}%`);
}

function renderJobs(page) {
  const rows = page.items.map((job) => {
    const row = el("tr", { class: `job${job.id === view.selected ? " selected" : ""}`, "data-id": job.id, onclick: () => select(job.id) },
      el("td", {}, el("code", { title: job.id }, job.id.slice(-12))), el("td", {}, job.task), el("td", {}, job.queue),
      el("td", {}, badge(job.status)), el("td", {}, progressOf(job)), num(job.attempt),
      el("td", {}, time(job.created_at)), el("td", {}, time(job.finished_at)),
      el("td", {},
        TERMINAL.has(job.status) ? "" : button("cancel", () => api("POST", `/v1/jobs/${job.id}/cancel`), true),
        ["failed", "cancelled", "expired"].includes(job.status) ? button("retry", () => api("POST", `/v1/jobs/${job.id}/retry`)) : ""));
    return row;
  });
  $("#jobs tbody").replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 9, class: "muted" }, "no jobs"))]));
  view.cursors[view.page + 1] = page.next_cursor;
  $("#older").disabled = !page.next_cursor;
  $("#newer").disabled = view.page === 0;
}

async function select(id) {
  view.selected = id;
  history.replaceState(null, "", `#job=${id}`);  // a link to this job's details
  for (const row of document.querySelectorAll("tr.job")) row.classList.toggle("selected", row.dataset.id === id);
  await showDetail();
}

async function showDetail() {
  if (!view.selected) return;
  const job = await api("GET", `/v1/jobs/${view.selected}`);
  $("#detail-title").textContent = `${job.task} · ${job.status} · ${job.id}`;
  $("#detail-json").textContent = JSON.stringify(job, null, 2);
  $("#detail").hidden = false;
}

// -- refreshing -----------------------------------------------------------------------------------
function jobsQuery() {
  const query = new URLSearchParams({ limit: "50" });
  for (const name of ["status", "queue", "task"]) {
    const value = $(`#f-${name}`).value;
    if (value) query.set(name, value);
  }
  const cursor = view.cursors[view.page];
  if (cursor) query.set("cursor", cursor);
  return query;
}

async function refresh() {
  if (view.busy) return;
  view.busy = true;
  try {
    const [queues, workers, jobs] = await Promise.all([
      api("GET", "/v1/queues"), api("GET", "/v1/workers"), api("GET", `/v1/jobs?${jobsQuery()}`)]);
    renderQueues(queues.items);
    renderWorkers(workers.items);
    renderJobs(jobs);
    if (view.selected) await showDetail();
    $("#login").hidden = true;
    $("#signout").hidden = !sessionStorage.getItem(TOKEN_KEY);
    $("#updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    if (Date.now() > view.noticeUntil) banner("");
  } catch (error) {
    if (!(error instanceof AuthNeeded)) banner(`cannot reach the API: ${error.message}`);
  } finally {
    view.busy = false;
  }
}

function showLogin(why) {
  $("#login-why").textContent = why;
  $("#login").hidden = false;
  $("#updated").textContent = "";
}

function restart() {
  view.cursors = [null];
  view.page = 0;
  refresh();
}

async function loadTasks() {
  try {
    fill($("#f-task"), (await api("GET", "/v1/tasks")).items.map((t) => t.name));
  } catch (error) {
    // the jobs table works without the list of tasks
  }
}

document.addEventListener("DOMContentLoaded", () => {
  fill($("#f-status"), STATUSES);
  for (const name of ["status", "queue", "task"]) $(`#f-${name}`).addEventListener("change", restart);
  $("#older").addEventListener("click", () => { view.page += 1; refresh(); });
  $("#newer").addEventListener("click", () => { view.page = Math.max(0, view.page - 1); refresh(); });
  $("#login").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("#login-token").value.trim());
    $("#login-token").value = "";
    loadTasks();
    restart();
  });
  $("#signout").addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); location.reload(); });
  setInterval(() => { if ($("#live").checked && !document.hidden) refresh(); }, REFRESH_MS);
  const linked = /^#job=([0-9a-fA-F-]{36})$/.exec(location.hash);
  if (linked) view.selected = linked[1].toLowerCase();
  loadTasks();
  refresh();
});
