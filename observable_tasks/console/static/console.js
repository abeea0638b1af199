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
  const TASK_HASH = /^#task=([0-9a-f]{32})$/;
  let detailId = null; // the task the detail dialog shows
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
    if (iso) td.append(timeNode(iso));
    return td;
  }

  function seconds(value) {
    if (value === null || value === undefined) return "";
    return value < 1 ? `${Math.round(value * 1000)} ms` : `${value.toFixed(2)} s`;
  }

  // Retries and planned starts. A PENDING task that has run before waits to retry (its error is
  // the last attempt's); one that never ran and has a next attempt time waits for its start.
  const waitingToRetry = (task) => task.status === "PENDING" && task.attempts >= 1;

  function attemptsText(task) {
    // "2/3" where it says something (a retry happened or is planned), else the plain count.
    const max = task.max_attempts || 1;
    if (max > 1 && (task.attempts > 1 || waitingToRetry(task))) return `${task.attempts}/${max}`;
    return String(task.attempts);
  }

  function inWords(ms) {
    const total = Math.ceil(ms / 1000);
    if (total < 60) return `${total}s`;
    const minutes = Math.floor(total / 60);
    if (minutes < 60) return `${minutes}m ${String(total % 60).padStart(2, "0")}s`;
    return `${Math.floor(minutes / 60)}h ${String(minutes % 60).padStart(2, "0")}m`;
  }

  function countdownText(node) {
    // node: a <time class="countdown"> with data-what "retry" or "start"; data-short drops the
    // verb (the detail dialog shows it next to the time itself).
    const left = Date.parse(node.dateTime) - Date.now();
    const retry = node.dataset.what === "retry";
    const short = node.dataset.short === "1";
    if (!(left > 0)) return short ? "due" : retry ? "retry due" : "start due";
    const verb = short ? "" : retry ? "retry " : "starts ";
    if (left > 86400000) return `${verb}${new Date(node.dateTime).toLocaleString()}`;
    return `${verb}in ${inWords(left)}`;
  }

  function countdown(task, short) {
    // "retry in 3s" / "starts in 10s" (kept current by tick()); the time itself on hover.
    if (task.status !== "PENDING" || !task.next_attempt_at) return null;
    const time = el("time", null, "countdown");
    time.dateTime = task.next_attempt_at;
    time.dataset.what = waitingToRetry(task) ? "retry" : "start";
    if (short) time.dataset.short = "1";
    time.title = `${new Date(task.next_attempt_at).toLocaleString()} (${task.next_attempt_at.replace("T", " ").replace("Z", " UTC")})`;
    time.textContent = countdownText(time);
    return time;
  }

  function tick() {
    for (const node of document.querySelectorAll("time.countdown")) {
      const text = countdownText(node);
      if (node.textContent !== text) node.textContent = text;
    }
  }

  function errorText(task) {
    if (!task.error_type) return "";
    const text = `${task.error_type}: ${task.error || ""}`;
    return waitingToRetry(task) ? `last attempt: ${text}` : text;
  }

  function fill(tr, task) {
    tr.dataset.taskId = task.id;
    tr.dataset.status = task.status;
    tr.dataset.created = task.created_at;
    tr.replaceChildren();
    const name = el("td", null, "name");
    const open = el("a", null, "open");
    open.href = `#task=${task.id}`;
    open.title = "Details";
    open.append(el("span", task.name));
    name.append(open, el("br"), el("small", task.id));
    tr.append(name, el("td", task.function, "fn"));
    const status = el("td", null, `status s-${task.status}`);
    status.append(el("span", task.status));
    const next = countdown(task);
    if (next) status.append(el("br"), next);
    tr.append(status);
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
    const attempts = el("td", attemptsText(task), task.attempts > 1 ? "attempts retried" : "attempts");
    attempts.title = `attempt ${task.attempts} of at most ${task.max_attempts || 1}`;
    tr.append(attempts, el("td", task.worker || ""));
    tr.append(el("td", errorText(task), waitingToRetry(task) ? "err retrying" : "err"));
    const trace = el("td");
    const traceRef = traceNode(task, false);
    if (traceRef) trace.append(traceRef);
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

  function traceNode(task, full) {
    if (task.trace_url && /^https?:\/\//.test(task.trace_url)) {
      const link = el("a", full ? task.trace_id : "trace");
      link.href = task.trace_url;
      link.target = "_blank";
      link.rel = "noopener noreferrer";
      link.title = task.trace_id;
      return link;
    }
    if (task.trace_id) return el("code", full ? task.trace_id : task.trace_id.slice(0, 8));
    return null;
  }

  // -- the detail dialog (#task=<id>): every field of one task, kept live by the stream ------

  function timeNode(iso) {
    if (!iso) return "—";
    const time = el("time", new Date(iso).toLocaleString());
    time.dateTime = iso;
    time.title = iso.replace("T", " ").replace("Z", " UTC");
    return time;
  }

  function renderDetail(task) {
    $("detail-title").textContent = task.name;
    const list = $("detail-fields");
    list.replaceChildren();
    list.dataset.taskId = task.id;
    list.dataset.status = task.status;
    const field = (label, value, key) => {
      const dd = el("dd");
      if (key) dd.dataset.field = key;
      if (value instanceof Node) dd.append(value);
      else dd.textContent = value === null || value === undefined || value === "" ? "—" : String(value);
      list.append(el("dt", label), dd);
      return dd;
    };
    field("Id", task.id, "id");
    field("Function", task.function, "function");
    const status = field("Status", task.status, "status");
    status.className = `status s-${task.status}`;
    field("Progress", `${Math.round(Math.max(0, Math.min(100, Number(task.progress) || 0)))}%`, "progress");
    field("Attempts", task.attempts, "attempts");
    field("Max attempts", task.max_attempts, "max_attempts");
    if (task.status === "PENDING" && task.next_attempt_at) {
      const next = el("span");
      next.append(timeNode(task.next_attempt_at), " (", countdown(task, true), ")");
      field(waitingToRetry(task) ? "Next attempt" : "Starts", next, "next_attempt_at");
    } else {
      field("Next attempt", null, "next_attempt_at");
    }
    field("Key", task.key, "key");
    field("Created", timeNode(task.created_at), "created_at");
    field("Started", timeNode(task.started_at), "started_at");
    field("Finished", timeNode(task.finished_at), "finished_at");
    field("Duration", seconds(task.duration_s), "duration_s");
    field("Queue wait", seconds(task.queue_wait_s), "queue_wait_s");
    if (task.worker) field("Worker", task.worker, "worker");
    if (task.error_type) {
      const error = field(waitingToRetry(task) ? "Last error" : "Error", `${task.error_type}: ${task.error || ""}`, "error");
      error.className = waitingToRetry(task) ? "err retrying" : "err";
      if (task.error_code) field("Error code", task.error_code, "error_code");
    }
    const trace = traceNode(task, true);
    if (trace) field("Trace", trace, "trace");
    for (const key of ["args", "kwargs", "result"]) {
      if (task[key] !== undefined && task[key] !== null) {
        field(key[0].toUpperCase() + key.slice(1), el("pre", JSON.stringify(task[key], null, 2)), key);
      }
    }
  }

  async function openDetail(id) {
    detailId = id;
    try {
      const task = await api(`/api/tasks/${encodeURIComponent(id)}`);
      if (detailId !== id) return; // another one was asked for meanwhile
      renderDetail(task);
      const dialog = $("detail");
      if (!dialog.open) dialog.showModal();
      showError("");
    } catch (err) {
      detailId = null;
      showError(`Could not load the task: ${err.message}`);
    }
  }

  function followHash() {
    const match = TASK_HASH.exec(location.hash);
    if (match) openDetail(match[1]);
    else if ($("detail").open) $("detail").close();
  }

  async function cancel(id, button) {
    button.disabled = true;
    try {
      const body = await api(`/api/tasks/${encodeURIComponent(id)}/cancel`, {
        method: "POST",
        headers: { "X-Console-Token": TOKEN },
      });
      upsert(body.task, false);
      if (detailId === body.task.id) renderDetail(body.task);
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
      const task = JSON.parse(message.data); // event: created, started, progress, retrying, finished
      upsert(task, true);
      if (detailId === task.id) renderDetail(task);
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

  $("detail-close").addEventListener("click", () => $("detail").close());
  $("detail").addEventListener("close", () => {
    detailId = null;
    if (TASK_HASH.test(location.hash)) history.replaceState(null, "", location.pathname + location.search);
  });
  window.addEventListener("hashchange", followHash);

  loadPage();
  loadCounts();
  loadWorkers();
  setInterval(loadWorkers, 10000);
  setInterval(tick, 1000);
  connect();
  followHash();
})();
