// observable-tasks console: vanilla JS, no build step. Everything a task supplies is set with
// textContent (never as markup), so a task named "<img src=x onerror=alert(1)>" is that text.
"use strict";
(function () {
  const meta = (name) => document.querySelector(`meta[name="${name}"]`).content;
  const BASE = meta("console-base");
  const TOKEN = meta("console-token");
  const READ_ONLY = meta("console-read-only") === "1";
  const REPLAYS = meta("console-replays") === "1"; // Redis: a reconnect resumes (Last-Event-ID)
  const STATUSES = ["PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"];
  const ACTIVE = new Set(["PENDING", "RUNNING"]);
  const LIMIT = 50;
  const $ = (id) => document.getElementById(id);
  const rows = new Map(); // task id -> <tr>
  const state = { filters: { status: "", function: "", q: "" }, cursors: [null], next: null };

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }

  function showError(message) {
    const box = $("error");
    box.textContent = message || "";
    box.hidden = !message;
  }

  async function api(path, options) {
    const response = await fetch(BASE + path, Object.assign({ credentials: "same-origin" }, options));
    let body = null;
    try { body = await response.json(); } catch (_) { body = null; }
    if (!response.ok) throw new Error((body && body.error) || `HTTP ${response.status}`);
    return body;
  }

  function timeCell(iso) {
    const td = el("td");
    if (iso) {
      const time = el("time", new Date(iso).toLocaleString());
      time.dateTime = iso;
      time.title = iso.replace("T", " ").replace("Z", " UTC");
      td.append(time);
    }
    return td;
  }

  function seconds(value) {
    if (value === null || value === undefined) return "";
    return value < 1 ? `${Math.round(value * 1000)} ms` : `${value.toFixed(2)} s`;
  }

  function fill(tr, task) {
    tr.dataset.taskId = task.id;
    tr.dataset.status = task.status;
    tr.dataset.created = task.created_at;
    tr.replaceChildren();
    const name = el("td", null, "name");
    name.append(el("span", task.name), el("br"), el("small", task.id));
    tr.append(name, el("td", task.function, "fn"));
    tr.append(el("td", task.status, `status s-${task.status}`));
    const progress = el("td");
    const bar = el("div", null, "bar");
    const value = Math.max(0, Math.min(100, Number(task.progress) || 0));
    bar.setAttribute("role", "progressbar");
    bar.setAttribute("aria-valuemin", "0");
    bar.setAttribute("aria-valuemax", "100");
    bar.setAttribute("aria-valuenow", String(value));
    bar.setAttribute("aria-label", `Progress of ${task.name}`);
    const fillBar = el("span");
    fillBar.style.width = `${value}%`;
    bar.append(fillBar);
    progress.append(bar, el("small", ` ${Math.round(value)}%`));
    tr.append(progress, timeCell(task.created_at), timeCell(task.started_at), timeCell(task.finished_at));
    tr.append(el("td", seconds(task.duration_s)), el("td", seconds(task.queue_wait_s)));
    tr.append(el("td", task.attempts), el("td", task.worker || ""));
    const error = task.error_type ? `${task.error_type}: ${task.error || ""}` : "";
    tr.append(el("td", error, "err"));
    const trace = el("td");
    if (task.trace_url && /^https?:\/\//.test(task.trace_url)) {
      const link = el("a", "trace");
      link.href = task.trace_url;
      link.target = "_blank";
      link.rel = "noopener noreferrer";
      link.title = task.trace_id;
      trace.append(link);
    } else if (task.trace_id) {
      trace.append(el("code", task.trace_id.slice(0, 8), null));
    }
    tr.append(trace);
    const actions = el("td");
    if (!READ_ONLY && ACTIVE.has(task.status)) {
      const button = el("button", "Cancel");
      button.type = "button";
      button.setAttribute("aria-label", "Cancel");
      button.addEventListener("click", () => cancel(task.id, button));
      actions.append(button);
    }
    tr.append(actions);
  }

  async function cancel(id, button) {
    button.disabled = true;
    try {
      const body = await api(`/api/tasks/${encodeURIComponent(id)}/cancel`, {
        method: "POST",
        headers: { "X-Console-Token": TOKEN },
      });
      upsert(body.task, false);
      showError("");
    } catch (err) {
      showError(`Cancel failed: ${err.message}`);
      button.disabled = false;
    }
  }

  function matches(task) {
    const f = state.filters;
    if (f.status && task.status !== f.status) return false;
    if (f.function && task.function !== f.function) return false;
    const q = f.q.trim().toLowerCase();
    if (q && !task.name.toLowerCase().includes(q) && !task.id.startsWith(q)) return false;
    return true;
  }

  function isNewer(task) {
    // Newer than every row shown: it belongs at the top (its "created" event may have been
    // missed while the stream reconnected).
    const first = $("rows").firstElementChild;
    return !first || task.created_at >= first.dataset.created;
  }

  function upsert(task, mayInsert) {
    let tr = rows.get(task.id);
    if (tr) {
      fill(tr, task);
      return;
    }
    // New tasks appear on the first page only (later pages are a fixed window of the past).
    if (!mayInsert || !isNewer(task) || state.cursors.length > 1 || !matches(task)) return;
    tr = el("tr");
    fill(tr, task);
    rows.set(task.id, tr);
    $("rows").prepend(tr);
    while (rows.size > LIMIT) {
      const last = $("rows").lastElementChild;
      rows.delete(last.dataset.taskId);
      last.remove();
    }
    $("empty").hidden = true;
  }

  async function loadPage() {
    const base = new URLSearchParams();
    for (const [key, value] of Object.entries(state.filters)) if (value) base.set(key, value);
    let cursor = state.cursors[state.cursors.length - 1];
    try {
      // A filtered page on Redis looks at a bounded part of the history per call: fetch on
      // (a few calls at most) until the page is full or the history ends.
      const tasks = [];
      for (let hop = 0; hop < 10; hop++) {
        const params = new URLSearchParams(base);
        params.set("limit", String(LIMIT - tasks.length));
        if (cursor) params.set("cursor", cursor);
        const body = await api(`/api/tasks?${params}`);
        tasks.push(...body.tasks);
        cursor = body.next_cursor;
        if (!cursor || tasks.length >= LIMIT) break;
      }
      rows.clear();
      const fresh = tasks.map((task) => {
        const tr = el("tr");
        fill(tr, task);
        rows.set(task.id, tr);
        return tr;
      });
      $("rows").replaceChildren(...fresh);
      $("empty").hidden = fresh.length > 0;
      state.next = cursor;
      $("older").disabled = !state.next;
      $("newest").disabled = state.cursors.length <= 1;
      showError("");
    } catch (err) {
      showError(`Could not load tasks: ${err.message}`);
    }
  }

  async function loadCounts() {
    try {
      const body = await api("/api/counts");
      const nav = $("counts");
      nav.replaceChildren();
      const all = el("button", `All ${body.total}`);
      all.type = "button";
      all.setAttribute("aria-pressed", String(!state.filters.status));
      all.addEventListener("click", () => setStatus(""));
      nav.append(all);
      for (const status of STATUSES) {
        const button = el("button", `${status} ${body.counts[status] || 0}`, `s-${status}`);
        button.type = "button";
        button.dataset.status = status;
        button.setAttribute("aria-pressed", String(state.filters.status === status));
        button.addEventListener("click", () => setStatus(status));
        nav.append(button);
      }
    } catch (err) {
      showError(`Could not load counts: ${err.message}`);
    }
  }

  async function loadWorkers() {
    try {
      const body = await api("/api/workers");
      const list = $("workers");
      list.replaceChildren(
        ...body.workers.map((w) => {
          const item = el("li", `${w.id} — ${w.alive ? "alive" : "not seen lately"}`);
          if (w.last_seen) item.title = `last seen ${w.last_seen}`;
          return item;
        })
      );
    } catch (_) { /* the task list says it when the API is down */ }
  }

  function setStatus(status) {
    state.filters.status = status;
    document.querySelector('#filters [name="status"]').value = status;
    state.cursors = [null];
    loadPage();
    loadCounts();
  }

  let countsTimer = null;
  function countsSoon() {
    if (countsTimer === null) countsTimer = setTimeout(() => { countsTimer = null; loadCounts(); }, 2000);
  }

  function connect() {
    const source = new EventSource(`${BASE}/api/events`);
    let opened = false;
    source.addEventListener("open", () => {
      $("live").textContent = "live";
      if (opened && !REPLAYS) { loadPage(); countsSoon(); } // back after a gap: catch up
      opened = true;
    });
    source.addEventListener("error", () => { $("live").textContent = "reconnecting…"; });
    source.addEventListener("task", (message) => {
      const task = JSON.parse(message.data);
      upsert(task, true);
      if (task.event !== "progress") countsSoon();
    });
    source.addEventListener("resync", () => { loadPage(); countsSoon(); });
  }

  $("filters").addEventListener("submit", (event) => {
    event.preventDefault();
    const form = new FormData(event.target);
    state.filters = { status: form.get("status") || "", function: (form.get("function") || "").trim(), q: form.get("q") || "" };
    state.cursors = [null];
    loadPage();
    loadCounts();
  });
  $("older").addEventListener("click", () => { if (state.next) { state.cursors.push(state.next); loadPage(); } });
  $("newest").addEventListener("click", () => { state.cursors = [null]; loadPage(); });

  loadPage();
  loadCounts();
  loadWorkers();
  setInterval(loadWorkers, 10000);
  connect();
})();
