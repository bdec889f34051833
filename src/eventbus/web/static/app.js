// The eventbus dashboard: plain DOM and EventSource, no build step.
//
// Every view is made from the API: the sessions list from /api/sessions
// (refreshed when /api/stream says something changed), one session from its
// stored events (/api/sessions/{id}/events, page by page) and then its live
// stream, resumed after the last stored event (last_event_id), so that no
// event is missed or shown twice. The URL's ?token= is sent to the API.
// Times are UTC, as in the logs and the CLI, to the millisecond: the feed
// shows the date on its top row and wherever the date changes.

import { ControlPanel } from "./control.js";

const token = new URLSearchParams(location.search).get("token");
const $ = (id) => document.getElementById(id);

// --- API -----------------------------------------------------------------

function apiUrl(path, query = {}, withToken = false) {
  const url = new URL(path, location.origin);
  for (const [key, value] of Object.entries(query)) {
    if (value !== null && value !== undefined) url.searchParams.set(key, value);
  }
  if (withToken && token) url.searchParams.set("token", token);
  return url;
}

async function getJson(path, query) {
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const response = await fetch(apiUrl(path, query), { headers });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function openStream(path, query, handlers) {
  const source = new EventSource(apiUrl(path, query, true));
  source.onopen = () => setConnection("live");
  source.onerror = () => setConnection(source.readyState === 2 ? "closed" : "reconnecting…");
  // A line stored without an id (the seed's format): its id is the message's.
  source.onmessage = (message) =>
    handlers.event({ id: message.lastEventId, ...JSON.parse(message.data) });
  source.addEventListener("gap", (message) => handlers.gap(JSON.parse(message.data).missed));
  return source;
}

function setConnection(text) {
  $("connection").textContent = text;
}

// --- formatting ----------------------------------------------------------

const pick = (object, ...keys) => keys.map((key) => object?.[key]).find((v) => v != null);
// UTC, from the ISO form: "YYYY-MM-DDTHH:MM:SS.mmmZ".
const utc = (iso) => (iso ? new Date(iso).toISOString() : "");
const day = (iso) => utc(iso).slice(0, 10);
const clock = (iso) => utc(iso).slice(11, 23); // HH:MM:SS.mmm
const stamp = (iso) => utc(iso).slice(0, 23).replace("T", " "); // YYYY-MM-DD HH:MM:SS.mmm
const seconds = (s) => (s == null ? "" : s < 10 ? `${s.toFixed(2)} s` : `${s.toFixed(0)} s`);
const usd = (x) => (x ?? 0).toFixed(6);
const tokensOf = (meta) =>
  meta.total_tokens ?? (meta.prompt_tokens ?? 0) + (meta.completion_tokens ?? 0);

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text ?? "";
  if (className) td.className = className;
  return td;
}

// --- the sessions list ------------------------------------------------------

let sessionsSource = null;
let sessionsTimer = null;

async function loadSessions() {
  const { sessions } = await getJson("/api/sessions");
  const body = $("sessions");
  body.replaceChildren();
  for (const s of sessions) {
    const id = pick(s, "session_id", "id");
    const row = body.insertRow();
    row.dataset.testid = "session-row";
    row.dataset.sessionId = id;
    const link = document.createElement("a");
    link.href = `#/sessions/${encodeURIComponent(id)}`;
    link.textContent = id;
    row.insertCell().append(link);
    cell(row, pick(s, "status"), `status ${pick(s, "status") ?? ""}`);
    cell(row, pick(s, "phase"));
    cell(row, pick(s, "tasks_completed", "tasks_done"), "num");
    cell(row, pick(s, "tasks_failed"), "num");
    cell(row, pick(s, "total_tokens", "tokens"), "num");
    cell(row, usd(pick(s, "cost_usd", "cost")), "num");
    cell(row, stamp(pick(s, "started_at", "started")).slice(0, 19), "time");
    cell(row, seconds(pick(s, "duration_s", "duration")), "num");
  }
  $("no-sessions").hidden = sessions.length > 0;
}

function showSessions() {
  $("sessions-view").hidden = false;
  $("session-view").hidden = true;
  loadSessions().catch(showError);
  // Any session event may change a row: reload the list at most twice a second.
  sessionsSource = openStream("/api/stream", {}, {
    event: () => {
      sessionsTimer ??= setTimeout(() => {
        sessionsTimer = null;
        loadSessions().catch(showError);
      }, 500);
    },
    gap: () => loadSessions().catch(showError),
  });
}

// --- one session ---------------------------------------------------------

const TASK_STATUS = {
  task_scheduled: "scheduled",
  task_started: "running",
  task_retrying: "retrying",
  task_completed: "completed",
  task_failed: "failed",
  task_skipped: "skipped",
};
const SESSION_STATUS = {
  session_started: "running",
  session_completed: "completed",
  session_failed: "failed",
  session_aborted: "aborted",
};
const PAGE = 5000;
const MAX_FEED_ROWS = 5000;

class SessionView {
  constructor(sessionId) {
    this.id = sessionId;
    this.seen = new Set();
    this.lastId = null;
    this.tasks = new Map(); // task id -> {id, role, status, attempts, start, end, duration}
    this.phases = []; // [{phase, at}]
    this.usage = []; // [{t, model, tokens, cost}] in arrival order
    this.calls = new Map(); // request id -> element
    this.totals = { tokens: 0, cost: 0, calls: 0 };
    this.status = "";
    this.phase = "";
    this.first = null;
    this.firstPhase = null;
    this.last = null;
    this.hiddenTypes = new Set();
    this.types = new Set();
    this.pendingRows = [];
    this.dirtyTasks = new Set();
    this.frame = null;
    this.plot = null;
    this.plotModels = "";
    this.source = null;
    this.closed = false;
  }

  async start() {
    $("session-id").textContent = this.id;
    this.control = new ControlPanel(this.id, $("control")); // control.js
    await this.catchUp();
    this.listen();
  }

  async catchUp() {
    // The stored events after the last one applied, page by page.
    let after = this.lastId;
    do {
      const page = await getJson(`/api/sessions/${encodeURIComponent(this.id)}/events`, {
        after,
        limit: PAGE,
      });
      // A line stored without an id (the seed's format) has its derived one in ids.
      page.events.forEach((event, i) => this.apply({ id: page.ids[i], ...event }));
      after = page.next;
    } while (after && !this.closed);
  }

  listen() {
    if (this.closed) return;
    this.source = openStream(
      `/api/sessions/${encodeURIComponent(this.id)}/stream`,
      { last_event_id: this.lastId },
      {
        event: (event) => this.apply(event),
        gap: (missed) => this.resync(missed),
      },
    );
  }

  async resync(missed) {
    // The live stream dropped events for us: read them from the log, then resume.
    this.source?.close();
    const notice = $("gap-notice");
    notice.hidden = false;
    notice.textContent = `(${missed} live events were late: read from the log)`;
    await this.catchUp();
    this.listen();
  }

  stop() {
    this.closed = true;
    this.control?.stop();
    this.source?.close();
    if (this.frame) cancelAnimationFrame(this.frame);
    this.plot?.destroy();
  }

  apply(event) {
    if (this.seen.has(event.id)) return;
    this.seen.add(event.id);
    this.lastId = event.id;
    this.control?.event(event);
    const at = Date.parse(event.timestamp);
    this.first ??= at;
    this.firstPhase ??= event.phase;
    this.last = at;
    const type = event.event_type;
    const meta = event.metadata ?? {};
    if (event.phase) this.phase = event.phase;
    if (type in SESSION_STATUS) this.status = SESSION_STATUS[type];
    if (type === "phase_transition") this.phases.push({ phase: meta.new_phase, at });
    if (type in TASK_STATUS && event.task_id) this.applyTask(event, type, meta, at);
    if (type === "llm_request_sent") this.addCall(event, meta);
    if (type === "llm_response_received") {
      const tokens = tokensOf(meta);
      const cost = meta.cost_usd ?? 0;
      this.totals.tokens += tokens;
      this.totals.cost += cost;
      this.totals.calls += 1;
      this.usage.push({ t: at / 1000, model: event.model ?? "?", tokens, cost });
      this.addResponse(event, meta);
    }
    this.pendingRows.push(event);
    this.schedule();
  }

  applyTask(event, type, meta, at) {
    let task = this.tasks.get(event.task_id);
    if (!task) {
      task = { id: event.task_id, role: "", status: "", attempts: 0, start: null, end: null };
      this.tasks.set(event.task_id, task);
    }
    task.role = event.agent_role ?? task.role;
    task.status = TASK_STATUS[type];
    if (type === "task_started") {
      task.attempts += 1;
      task.start ??= at;
    }
    if (meta.attempts) task.attempts = Math.max(task.attempts, meta.attempts);
    if (["task_completed", "task_failed", "task_skipped"].includes(type)) {
      task.end = at;
      task.duration = meta.duration_s ?? (task.start ? (at - task.start) / 1000 : null);
    }
    this.dirtyTasks.add(task.id);
  }

  addCall(event, meta) {
    const details = document.createElement("details");
    details.className = "llm-call";
    const summary = document.createElement("summary");
    summary.textContent = `${clock(event.timestamp)} ${event.model ?? ""} · ${event.agent_role ?? ""}`
      + `${event.task_id ? " · " + event.task_id : ""} · waiting for the response…`;
    details.append(summary);
    for (const message of meta.messages ?? []) {
      const pre = document.createElement("pre");
      pre.className = `message ${message.role}`;
      pre.textContent = `${message.role}: ${message.content}`;
      details.append(pre);
    }
    if (!meta.messages) details.append(note("no prompt recorded"));
    this.calls.set(event.id, { details, summary });
    $("llm-calls").prepend(details);
  }

  addResponse(event, meta) {
    let call = this.calls.get(event.parent_id);
    if (!call) {
      this.addCall({ ...event, id: `response-${event.id}` }, {});
      call = this.calls.get(`response-${event.id}`);
    }
    call.summary.textContent = call.summary.textContent.replace(
      "waiting for the response…",
      `${tokensOf(meta)} tokens · $${usd(meta.cost_usd)}`,
    );
    const pre = document.createElement("pre");
    pre.className = "message response";
    pre.textContent = meta.response ?? "(no response text recorded)";
    call.details.append(pre);
  }

  schedule() {
    this.frame ??= requestAnimationFrame(() => {
      this.frame = null;
      this.render();
    });
  }

  render() {
    $("session-status").textContent = this.status;
    $("session-status").className = `status ${this.status}`;
    $("session-phase").textContent = this.phase;
    $("total-tokens").textContent = String(this.totals.tokens);
    $("total-cost").textContent = usd(this.totals.cost);
    $("total-calls").textContent = String(this.totals.calls);
    this.renderFeed();
    this.renderTasks();
    this.renderTimeline();
    this.renderChart();
  }

  renderFeed() {
    // Newest first. A row shows the date when it is the top row or its date
    // differs from the row above it; other rows show the time only.
    const body = $("events");
    const oldTop = body.rows[0] ?? null;
    const rows = document.createDocumentFragment();
    let above = null; // the date of the row above
    for (const event of this.pendingRows.reverse()) {
      const row = document.createElement("tr");
      row.dataset.testid = "event-row";
      row.dataset.eventId = event.id;
      row.dataset.type = event.event_type;
      row.dataset.timestamp = event.timestamp;
      row.hidden = this.hiddenTypes.has(event.event_type);
      cell(row, "", "time").title = `${stamp(event.timestamp)} UTC`;
      showTime(row, above);
      above = day(event.timestamp);
      cell(row, event.event_type, `type ${event.event_type}`);
      cell(row, event.phase);
      cell(row, event.task_id);
      cell(row, event.agent_role);
      cell(row, event.message, "message");
      rows.append(row);
      this.addTypeFilter(event.event_type);
    }
    this.pendingRows = [];
    body.prepend(rows);
    if (oldTop && above !== null) showTime(oldTop, above);
    while (body.rows.length > MAX_FEED_ROWS) body.deleteRow(-1);
  }

  addTypeFilter(type) {
    if (this.types.has(type)) return;
    this.types.add(type);
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = true;
    box.dataset.type = type;
    box.addEventListener("change", () => {
      if (box.checked) this.hiddenTypes.delete(type);
      else this.hiddenTypes.add(type);
      for (const row of $("events").rows) row.hidden = this.hiddenTypes.has(row.dataset.type);
    });
    label.append(box, ` ${type}`);
    $("type-filters").append(label);
  }

  renderTasks() {
    const body = $("tasks");
    for (const id of this.dirtyTasks) {
      const task = this.tasks.get(id);
      let row = body.querySelector(`tr[data-task-id="${CSS.escape(id)}"]`);
      if (!row) {
        row = body.insertRow();
        row.dataset.testid = "task-row";
        row.dataset.taskId = id;
        for (let i = 0; i < 5; i++) row.insertCell();
      }
      row.dataset.status = task.status;
      const values = [task.id, task.role, task.status, task.attempts, seconds(task.duration)];
      values.forEach((value, i) => (row.cells[i].textContent = value ?? ""));
      row.cells[2].className = `status ${task.status}`;
      row.cells[3].className = row.cells[4].className = "num";
    }
    this.dirtyTasks.clear();
  }

  renderTimeline() {
    const box = $("timeline");
    if (this.first === null) return;
    const start = this.first;
    const end = Math.max(this.last, this.status === "running" ? Date.now() : this.last);
    const span = Math.max(end - start, 1);
    const pct = (t) => `${(((t - start) / span) * 100).toFixed(2)}%`;
    const width = (a, b) => `${Math.max(((b - a) / span) * 100, 0.3).toFixed(2)}%`;
    const rows = [];
    const phaseRow = timelineRow("phases");
    const marks = [{ phase: this.firstPhase ?? "", at: start }, ...this.phases];
    marks.forEach((mark, i) => {
      const until = marks[i + 1]?.at ?? end;
      phaseRow.lane.append(bar(mark.phase, pct(mark.at), width(mark.at, until), "phase"));
    });
    rows.push(phaseRow.row);
    for (const task of this.tasks.values()) {
      if (task.start === null) continue;
      const { row, lane } = timelineRow(task.id);
      const until = task.end ?? end;
      lane.append(bar(task.status, pct(task.start), width(task.start, until), task.status));
      rows.push(row);
    }
    box.replaceChildren(...rows);
  }

  renderChart() {
    const box = $("usage-chart");
    if (!this.usage.length || typeof uPlot === "undefined") return;
    const models = [...new Set(this.usage.map((u) => u.model))].sort();
    // One x per response; each model's cumulative tokens and cost, carried forward.
    const xs = [];
    const tokens = models.map(() => []);
    const cost = models.map(() => []);
    const sums = models.map(() => [0, 0]);
    for (const point of [...this.usage].sort((a, b) => a.t - b.t)) {
      const m = models.indexOf(point.model);
      sums[m][0] += point.tokens;
      sums[m][1] += point.cost;
      xs.push(point.t);
      models.forEach((_, i) => {
        tokens[i].push(sums[i][0]);
        cost[i].push(sums[i][1]);
      });
    }
    const data = [xs, ...tokens, ...cost];
    if (this.plot && this.plotModels === models.join()) {
      this.plot.setData(data);
      return;
    }
    this.plot?.destroy();
    this.plotModels = models.join();
    const colors = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2"];
    const series = [
      {},
      ...models.map((m, i) => ({ label: `${m} tokens`, stroke: colors[i % 6], scale: "tokens" })),
      ...models.map((m, i) => ({
        label: `${m} $`,
        stroke: colors[i % 6],
        dash: [4, 4],
        scale: "usd",
        value: (_, v) => (v == null ? "" : `$${v.toFixed(4)}`),
      })),
    ];
    this.plot = new uPlot(
      {
        width: Math.max(box.clientWidth, 320),
        height: 240,
        series,
        scales: { x: { time: true } },
        tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"),
        axes: [
          {},
          { scale: "tokens", label: "tokens" },
          { scale: "usd", side: 1, label: "USD", grid: { show: false } },
        ],
      },
      data,
      box,
    );
  }
}

function showTime(row, dateAbove) {
  // The time of a feed row, with its date unless the row above has the same date.
  const iso = row.dataset.timestamp;
  row.cells[0].textContent = day(iso) === dateAbove ? clock(iso) : stamp(iso);
}

function timelineRow(label) {
  const row = document.createElement("div");
  row.className = "timeline-row";
  const name = document.createElement("span");
  name.className = "timeline-label";
  name.textContent = label;
  const lane = document.createElement("div");
  lane.className = "timeline-lane";
  row.append(name, lane);
  return { row, lane };
}

function bar(text, left, width, className) {
  const element = document.createElement("div");
  element.className = `bar ${className}`;
  element.style.left = left;
  element.style.width = width;
  element.title = text;
  element.textContent = text;
  return element;
}

function note(text) {
  const p = document.createElement("p");
  p.className = "muted";
  p.textContent = text;
  return p;
}

function showError(error) {
  setConnection(`error: ${error.message}`);
}

// --- routing -------------------------------------------------------------

let current = null;

function route() {
  current?.stop();
  current = null;
  sessionsSource?.close();
  sessionsSource = null;
  const match = location.hash.match(/^#\/sessions\/(.+)$/);
  if (!match) {
    showSessions();
    return;
  }
  $("sessions-view").hidden = true;
  $("session-view").hidden = false;
  for (const id of ["tasks", "events", "llm-calls", "timeline", "type-filters", "usage-chart"]) {
    $(id).replaceChildren();
  }
  $("gap-notice").hidden = true;
  current = new SessionView(decodeURIComponent(match[1]));
  current.start().catch(showError);
}

window.addEventListener("hashchange", route);
route();
