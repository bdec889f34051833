// The eventbus dashboard: plain DOM and EventSource, no build step.
//
// Every view is made from the API. The sessions list from /api/sessions (a
// page at a time; reloaded when /api/stream says something changed); the
// usage page from /api/usage; one session from its summary, its stored events
// (/api/sessions/{id}/events, page by page) and then its live stream, resumed
// after the last stored event (last_event_id), so that no event is missed or
// shown twice. A session of up to FULL_LOAD events is read whole: its trace
// has every node. A longer one is read in parts: the task events (grid,
// timeline, trace of tasks; a task's own events when its node is opened), the
// LLM responses (charts) in the background, and the feed a page at a time as
// it is scrolled. The feed's filters are queries to the server. The URL's
// ?token= is sent to the API. Times are UTC, as in the logs and the CLI, to
// the millisecond, with the date wherever it changes.

import { ControlPanel } from "./control.js";

const token = new URLSearchParams(location.search).get("token");
const $ = (id) => document.getElementById(id);

// --- API -----------------------------------------------------------------

function apiUrl(path, query = {}, withToken = false) {
  const url = new URL(path, location.origin);
  for (const [key, value] of Object.entries(query)) {
    if (value !== null && value !== undefined && value !== "") url.searchParams.set(key, value);
  }
  if (withToken && token) url.searchParams.set("token", token);
  return url;
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function fetchApi(path, query) {
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const response = await fetch(apiUrl(path, query), { headers });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new ApiError(response.status, body.error || response.statusText);
  }
  return response;
}

const getJson = async (path, query) => (await fetchApi(path, query)).json();

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
const seconds = (s) =>
  s == null || Number.isNaN(s)
    ? ""
    : s < 0.001
      ? "<1 ms"
      : s < 1
        ? `${(s * 1000).toFixed(0)} ms`
        : s < 10
          ? `${s.toFixed(2)} s`
          : `${s.toFixed(0)} s`;
const usd = (x) => (x ?? 0).toFixed(6);
const int = (n) => (n == null ? "" : Number(n).toLocaleString("en-US"));
const isCount = (v) => Number.isInteger(v) && v >= 0;
const tokensOf = (meta) =>
  isCount(meta.total_tokens)
    ? meta.total_tokens
    : (isCount(meta.prompt_tokens) ? meta.prompt_tokens : 0) +
      (isCount(meta.completion_tokens) ? meta.completion_tokens : 0);
const costOf = (meta) =>
  typeof meta.cost_usd === "number" && Number.isFinite(meta.cost_usd) && meta.cost_usd >= 0
    ? meta.cost_usd
    : null;

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text ?? "";
  if (className) td.className = className;
  return td;
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text != null) node.textContent = text;
  return node;
}

function note(text) {
  return element("p", "muted", text);
}

function showError(error) {
  setConnection(`error: ${error.message}`);
}

function showOnly(id) {
  for (const view of ["sessions-view", "usage-view", "session-view", "not-found"]) {
    $(view).hidden = view !== id;
  }
}

// --- the sessions list ------------------------------------------------------

const SESSIONS_PAGE = 100;
let sessionsSource = null;
let sessionsTimer = null;
let sessionsShown = SESSIONS_PAGE;

async function loadSessions() {
  const { sessions, next } = await getJson("/api/sessions", { limit: sessionsShown });
  const body = $("sessions");
  body.replaceChildren();
  for (const s of sessions) {
    const id = pick(s, "session_id", "id");
    const row = body.insertRow();
    row.dataset.testid = "session-row";
    row.dataset.sessionId = id;
    const link = element("a", null, id);
    link.href = `#/sessions/${encodeURIComponent(id)}`;
    row.insertCell().append(link);
    cell(row, pick(s, "status"), `status ${pick(s, "status") ?? ""}`);
    cell(row, pick(s, "phase"));
    cell(row, pick(s, "tasks_completed", "tasks_done"), "num");
    cell(row, pick(s, "tasks_failed"), "num");
    cell(row, int(pick(s, "total_tokens", "tokens")), "num");
    cell(row, usd(pick(s, "cost_usd", "cost")), "num");
    cell(row, stamp(pick(s, "started_at", "started")), "time");
    cell(row, seconds(pick(s, "duration_s", "duration")), "num");
  }
  $("no-sessions").hidden = sessions.length > 0;
  $("sessions-more").hidden = next === null;
}

$("sessions-more").addEventListener("click", () => {
  sessionsShown += SESSIONS_PAGE;
  loadSessions().catch(showError);
});

function showSessions() {
  showOnly("sessions-view");
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

// --- usage across sessions --------------------------------------------------

let usagePlot = null;

async function showUsage() {
  showOnly("usage-view");
  setConnection("");
  const by = $("usage-by").value;
  const usage = await getJson("/api/usage", { by });
  $("usage-key").textContent = { session_id: "session", agent_role: "role", task_id: "task" }[by] ?? by;
  const body = $("usage-rows");
  body.replaceChildren();
  for (const row of usage.rows) body.append(usageRow(row, "usage-row"));
  $("usage-total").replaceChildren(usageRow({ key: "total", ...usage.total }, "usage-total"));
  usagePlot?.destroy();
  usagePlot = null;
  const box = $("usage-day-chart");
  box.replaceChildren();
  if (by === "day" && usage.rows.length && typeof uPlot !== "undefined") {
    const xs = usage.rows.map((row) => Date.parse(`${row.key}T00:00:00Z`) / 1000);
    usagePlot = new uPlot(
      {
        width: Math.max(box.clientWidth, 320),
        height: 180,
        // A day either side, so that one day is a bar, not the whole width.
        scales: { x: { time: true, auto: false, range: [xs[0] - 86400, xs[xs.length - 1] + 86400] } },
        tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"),
        series: [
          {},
          {
            label: "cost per day (USD)",
            stroke: "#dc2626",
            fill: "rgba(220,38,38,0.1)",
            paths: uPlot.paths.bars({ size: [0.6, 40] }),
            value: (_, v) => (v == null ? "" : `$${v.toFixed(4)}`),
          },
        ],
        axes: [{}, { label: "USD", size: 70, values: (_, ticks) => ticks.map((t) => `$${t}`) }],
      },
      [xs, usage.rows.map((row) => row.cost_usd)],
      box,
    );
  }
}

function usageRow(row, testid) {
  const tr = document.createElement("tr");
  tr.dataset.testid = testid;
  tr.dataset.key = row.key ?? "";
  cell(tr, row.key ?? "(none)");
  for (const field of ["calls", "prompt_tokens", "completion_tokens", "cached_tokens", "total_tokens"]) {
    cell(tr, int(row[field]), "num").dataset.field = field;
  }
  cell(tr, usd(row.cost_usd), "num").dataset.field = "cost_usd";
  cell(tr, row.cost_source ?? "no cost known", "muted").dataset.field = "cost_source";
  return tr;
}

$("usage-by").addEventListener("change", () => showUsage().catch(showError));

// --- one session: the trace ------------------------------------------------

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
const GATE_STATUS = { gate_evaluated: "passed", gate_warned: "warned", gate_blocked: "failed" };
const TASK_TYPES = Object.keys(TASK_STATUS);
const FULL_LOAD = 5000; // a session of up to this many events is read whole
const PAGE = 10000;
const FEED_PAGE = 500;
const MAX_CALLS = 200; // LLM calls in their panel: the latest

// A node of the trace: one span (session, task, agent, model call, command,
// verification) or one point (gate, diff, error, retry).
function makeNode(kind, id, event, parent) {
  return {
    kind,
    id, // the id of the event that opened it (the one shown when it is selected)
    events: [event.id],
    label: "",
    start: Date.parse(event.timestamp),
    end: null,
    duration: null,
    status: "running",
    tokens: null,
    cost: null,
    taskId: event.task_id ?? null,
    parent,
    children: [],
  };
}

class Trace {
  constructor() {
    this.root = null;
    this.nodes = new Map(); // opening event id -> node
    this.byEvent = new Map(); // any event id -> its node
    this.tasks = new Map(); // task id -> node
    this.openAgents = new Map(); // task id ("" for none) -> agent node
    this.orphans = []; // nodes before the session's start arrived
  }

  ensureRoot(event) {
    if (!this.root) {
      this.root = makeNode("session", event.id, event, null);
      this.root.label = `session ${event.session_id}`;
      this.nodes.set(event.id, this.root);
    }
    return this.root;
  }

  attach(node, parent) {
    node.parent = parent;
    parent.children.push(node);
    this.nodes.set(node.id, node);
    for (const id of node.events) this.byEvent.set(id, node);
  }

  // The node an event belongs under: its parent event's node when that is a
  // span that holds it, else the agent running in its task, else the task.
  container(event) {
    const byParent = this.nodes.get(event.parent_id);
    if (byParent && ["verification", "llm"].includes(byParent.kind)) return byParent;
    const agent = this.openAgents.get(event.task_id ?? "");
    if (agent) return agent;
    if (event.task_id && this.tasks.has(event.task_id)) return this.tasks.get(event.task_id);
    return this.ensureRoot(event);
  }

  add(event) {
    const type = event.event_type;
    const meta = event.metadata ?? {};
    const at = Date.parse(event.timestamp);
    if (type in SESSION_STATUS) {
      const root = this.ensureRoot(event);
      if (type === "session_started") {
        root.start = Math.min(root.start, at);
      } else {
        root.end = at;
        root.status = SESSION_STATUS[type];
        root.events.push(event.id);
        this.byEvent.set(event.id, root);
      }
      if (root.end !== null) root.duration = (root.end - root.start) / 1000;
      return;
    }
    if (type in TASK_STATUS && event.task_id) {
      let task = this.tasks.get(event.task_id);
      if (!task) {
        task = makeNode("task", event.id, event, null);
        task.label = event.task_id;
        task.status = TASK_STATUS[type];
        task.start = type === "task_scheduled" ? null : at;
        this.tasks.set(event.task_id, task);
        this.attach(task, this.ensureRoot(event));
      }
      this.byEvent.set(event.id, task);
      this.nodes.set(event.id, task); // later events name a task_started as their parent
      if (!task.events.includes(event.id)) task.events.push(event.id);
      if (meta.attempts) task.attempts = Math.max(task.attempts ?? 0, meta.attempts);
      if (type === "task_started") {
        task.attempts = Math.max(task.attempts ?? 0, (task.started = (task.started ?? 0) + 1));
        if (task.start === null) {
          task.start = at;
          task.id = event.id;
        }
        task.status = "running";
        task.end = null;
      } else if (type === "task_retrying") {
        const retry = makeNode("retry", event.id, event, null);
        retry.label = `retry: ${meta.error ?? event.message ?? ""}`;
        retry.status = "retrying";
        this.attach(retry, task);
        task.status = "retrying";
      } else if (type !== "task_scheduled") {
        task.status = TASK_STATUS[type];
        task.end = at;
        task.duration = meta.duration_s ?? (task.start !== null ? (at - task.start) / 1000 : null);
        if (type === "task_failed" && meta.error) task.error = meta.error;
      }
      if (event.agent_role) task.role = event.agent_role;
      return;
    }
    switch (type) {
      case "agent_invoked": {
        const agent = makeNode("agent", event.id, event, null);
        agent.label = `invoke_agent ${event.agent_role ?? ""}${meta.attempt > 1 ? ` (attempt ${meta.attempt})` : ""}`;
        this.attach(agent, this.container(event));
        this.openAgents.set(event.task_id ?? "", agent);
        return;
      }
      case "agent_response":
      case "agent_completed": {
        const agent = this.nodes.get(meta.invocation_id) ?? this.openAgents.get(event.task_id ?? "");
        if (agent) this.close(agent, event, at, "completed", meta.duration_s);
        return;
      }
      case "llm_request_sent": {
        const call = makeNode("llm", event.id, event, null);
        call.label = `chat ${event.model ?? ""}`;
        call.tokens = isCount(meta.prompt_tokens) ? meta.prompt_tokens : null;
        this.attach(call, this.container(event));
        return;
      }
      case "llm_response_received": {
        let call = this.nodes.get(event.parent_id);
        if (!call || call.kind !== "llm") {
          call = makeNode("llm", event.id, event, null);
          call.label = `chat ${event.model ?? ""}`;
          this.attach(call, this.container(event));
        }
        call.tokens = tokensOf(meta);
        call.cost = costOf(meta);
        this.close(call, event, at, "completed", meta.duration_s);
        return;
      }
      case "command_executed": {
        const command = makeNode("command", event.id, event, null);
        command.label = `command ${meta.command ?? ""}`;
        command.duration = meta.duration_s ?? null;
        command.end = at;
        if (command.duration != null) command.start = at - command.duration * 1000;
        command.status = meta.exit_code === 0 ? "completed" : "failed";
        this.attach(command, this.container(event));
        return;
      }
      case "verification_started": {
        const check = makeNode("verification", event.id, event, null);
        check.label = `verification ${meta.name ?? meta.verifier ?? ""}`.trim();
        this.attach(check, this.container(event));
        return;
      }
      case "verification_passed":
      case "verification_failed": {
        const check = this.nodes.get(event.parent_id);
        if (check?.kind === "verification") {
          this.close(check, event, at, type === "verification_passed" ? "passed" : "failed", meta.duration_s);
        } else {
          this.point("verification", event, type === "verification_passed" ? "passed" : "failed", event.message);
        }
        return;
      }
      case "gate_evaluated":
      case "gate_warned":
      case "gate_blocked":
        this.point("gate", event, GATE_STATUS[type], `gate ${meta.gate ?? ""}: ${meta.decision ?? ""}${meta.reason ? ` (${meta.reason})` : ""}`);
        return;
      case "diff_applied":
      case "diff_failed":
        this.point("diff", event, type === "diff_applied" ? "completed" : "failed", event.message);
        return;
      case "error": {
        const call = this.nodes.get(event.parent_id);
        if (call?.kind === "llm") {
          this.close(call, event, at, "failed", meta.duration_s);
          call.error = meta.error;
          return;
        }
        const agent = meta.operation === "agent" ? this.nodes.get(meta.invocation_id) : null;
        this.point("error", event, "failed", `${meta.error_type ?? "error"}: ${meta.error ?? event.message}`);
        if (agent) this.close(agent, event, at, "failed", meta.duration_s);
        return;
      }
      default:
    }
  }

  point(kind, event, status, label) {
    const node = makeNode(kind, event.id, event, null);
    node.label = label;
    node.status = status;
    node.end = node.start;
    node.duration = event.metadata?.duration_s ?? null;
    this.attach(node, this.container(event));
  }

  close(node, event, at, status, duration) {
    node.end = at;
    node.status = status;
    node.duration = duration ?? (at - node.start) / 1000;
    node.events.push(event.id);
    this.byEvent.set(event.id, node);
    if (node.kind === "agent" && this.openAgents.get(node.taskId ?? "") === node) {
      this.openAgents.delete(node.taskId ?? "");
    }
  }

  failures() {
    const found = [];
    const walk = (node) => {
      if (node.status === "failed") found.push(node);
      node.children.forEach(walk);
    };
    if (this.root) walk(this.root);
    return found;
  }
}

// --- one session: the view ---------------------------------------------------

class SessionView {
  constructor(sessionId) {
    this.id = sessionId;
    this.api = `/api/sessions/${encodeURIComponent(sessionId)}`;
    this.events = new Map(); // id -> event, every event read
    this.lastId = null; // the stream resumes after it
    this.trace = new Trace();
    this.taskRows = new Map();
    this.phases = []; // [{phase, at}]
    this.usage = []; // [{t, model, tokens, cost}]
    this.counted = new Set(); // ids of the responses in usage
    this.calls = new Map(); // request id -> element
    this.totals = { tokens: 0, cost: 0, calls: 0 };
    this.apiTotals = null; // /api/usage's totals, once read
    this.modelRates = new Map(); // model -> computed USD per token (genai-prices)
    this.status = "";
    this.phase = "";
    this.first = null;
    this.firstPhase = null;
    this.last = null;
    this.full = false; // every event of the session is read
    this.loadedTasks = new Set(); // tasks whose events are read (a long session)
    this.expanded = new Set();
    this.revealed = new Set(); // failed nodes whose parents were opened once
    this.selected = null;
    this.artifacts = new Set();
    this.options = { type: new Set(), task: new Set(), role: new Set(), model: new Set() };
    this.feed = { after: null, done: false, loading: null, filters: {}, count: 0, above: null };
    this.dirty = new Set(["header", "tasks", "trace", "timeline", "chart"]);
    this.frame = null;
    this.traceTimer = null;
    this.usageTimer = null;
    this.plots = {};
    this.source = null;
    this.closed = false;
  }

  async start() {
    $("session-id").textContent = this.id;
    const view = $("session-view");
    view.dataset.state = "loading";
    // Asked at once: the summary, the last event (where the stream starts) and
    // the feed's first page; then, by the summary's count, the rest.
    const last = getJson(`${this.api}/events`, { tail: 1 }).catch(() => null);
    const feed = this.loadFeed(true).catch((error) => error);
    const types = [...Object.keys(SESSION_STATUS), "phase_transition", ...TASK_TYPES];
    const parts = this.readPart({ type: types.join(",") }).catch((error) => error);
    let summary;
    try {
      summary = await getJson(this.api);
    } catch (error) {
      if (error.status === 404 || error.status === 400) {
        showNotFound(`No session "${this.id}" in this workspace: ${error.message}`);
        return;
      }
      throw error;
    }
    showOnly("session-view");
    this.control = new ControlPanel(this.id, $("control")); // control.js
    this.count = summary.event_count ?? 0;
    for (const key of summary.artifacts ?? []) this.addArtifact(key);
    this.full = this.count <= FULL_LOAD;
    const read = await parts;
    if (read instanceof Error) throw read;
    if (this.full) {
      await this.readAll();
    } else {
      const tail = await last;
      if (tail?.ids.length) this.lastId = tail.ids[0];
    }
    const failed = await feed;
    if (failed instanceof Error) throw failed;
    this.renderNow();
    this.refreshUsage();
    view.dataset.state = "loaded";
    this.listen();
    if (!this.full) this.readResponses().catch(showError);
  }

  // Every stored event after the last one read, page by page.
  async readAll() {
    let after = this.lastId;
    do {
      const page = await getJson(`${this.api}/events`, { after, limit: PAGE });
      page.events.forEach((event, i) => this.apply({ id: page.ids[i], ...event }));
      after = page.next;
    } while (after && !this.closed);
  }

  // The stored events matching ``query`` (a long session's parts).
  async readPart(query) {
    let after = null;
    do {
      const page = await getJson(`${this.api}/events`, { ...query, after, limit: PAGE });
      page.events.forEach((event, i) => this.apply({ id: page.ids[i], ...event }, false));
      after = page.next;
    } while (after && !this.closed);
  }

  // A long session's responses, for the charts only (the trace reads a task's
  // events when its node is opened).
  async readResponses() {
    let after = null;
    do {
      const page = await getJson(`${this.api}/events`, { type: "llm_response_received", after, limit: PAGE });
      page.events.forEach((event, i) => this.countResponse({ id: page.ids[i], ...event }));
      this.schedule("chart");
      after = page.next;
    } while (after && !this.closed);
    $("session-view").dataset.responses = "read";
  }

  // Count a response once in the live totals and the charts.
  countResponse(event) {
    if (this.counted.has(event.id)) return;
    this.counted.add(event.id);
    const meta = event.metadata ?? {};
    const tokens = tokensOf(meta);
    const cost = costOf(meta);
    this.totals.tokens += tokens;
    this.totals.cost += cost ?? 0;
    this.totals.calls += 1;
    this.usage.push({ t: Date.parse(event.timestamp) / 1000, model: event.model ?? "?", tokens, cost });
    this.dirty.add("chart");
  }

  listen() {
    if (this.closed) return;
    this.source = openStream(`${this.api}/stream`, { last_event_id: this.lastId }, {
      event: (event) => this.apply(event, true, true),
      gap: (missed) => this.resync(missed),
    });
  }

  async resync(missed) {
    // The live stream dropped events for us: read them from the log, then resume.
    this.source?.close();
    const notice = $("gap-notice");
    notice.hidden = false;
    notice.textContent = `(${missed} live events were late: read from the log)`;
    if (this.full) await this.readAll();
    this.listen();
  }

  stop() {
    this.closed = true;
    this.control?.stop();
    this.source?.close();
    if (this.frame) cancelAnimationFrame(this.frame);
    clearTimeout(this.traceTimer);
    clearTimeout(this.usageTimer);
    for (const plot of Object.values(this.plots)) plot?.destroy();
  }

  // Apply one event to the views' state. ``live``: it came from the stream.
  apply(event, inOrder = true, live = false) {
    // Read in log order (or live), an event moves the stream's start even if a
    // partial read (inOrder false) applied it already: else the stream would
    // start from the live edge and miss what came between.
    if (inOrder || live) this.lastId = event.id;
    if (this.events.has(event.id)) return;
    this.events.set(event.id, event);
    this.control?.event(event);
    const at = Date.parse(event.timestamp);
    if (this.first === null || at < this.first) {
      this.first = at;
      this.firstPhase = event.phase;
    }
    this.last = Math.max(this.last ?? at, at);
    const type = event.event_type;
    const meta = event.metadata ?? {};
    if (event.phase) this.phase = event.phase;
    if (type in SESSION_STATUS) this.status = SESSION_STATUS[type];
    if (type === "phase_transition") this.phases.push({ phase: meta.new_phase, at });
    if (type === "artifact_created" || type === "artifact_updated") this.addArtifact(meta.key);
    this.trace.add(event);
    if (type in TASK_STATUS && event.task_id) this.dirty.add("tasks");
    if (type === "llm_request_sent") this.addCall(event, meta);
    if (type === "llm_response_received") {
      this.countResponse(event);
      this.addResponse(event, meta);
      if (live) this.refreshUsageSoon();
    }
    this.addOptions(event);
    if (live) this.count += 1;
    // The feed has read the whole log: a later event (live, or read by another
    // part) goes at its end.
    if (this.feed.done && this.feedEvents && this.matchesFeed(event)) this.showRows([event]);
    this.dirty.add("header").add("trace").add("timeline");
    this.schedule();
  }

  addOptions(event) {
    const add = (kind, value) => {
      if (value == null || this.options[kind].has(value)) return;
      this.options[kind].add(value);
      const select = $(`filter-${kind}`);
      const option = element("option", null, value);
      option.value = value;
      // Kept sorted: find the first option that sorts after it.
      const later = [...select.options].slice(1).find((o) => o.value > value);
      select.insertBefore(option, later ?? null);
    };
    add("type", event.event_type);
    add("task", event.task_id);
    add("role", event.agent_role);
    add("model", event.model);
  }

  addArtifact(key) {
    if (!key || this.artifacts.has(key)) return;
    this.artifacts.add(key);
    const body = $("artifacts");
    const row = document.createElement("tr");
    row.dataset.testid = "artifact-row";
    row.dataset.key = key;
    cell(row, key);
    row.addEventListener("click", () => this.showArtifact(key, row));
    const later = [...body.rows].find((r) => r.dataset.key > key);
    body.insertBefore(row, later ?? null);
    $("no-artifacts").hidden = true;
  }

  async showArtifact(key, row) {
    this.select(row);
    const box = $("event-detail");
    box.replaceChildren(element("h4", null, `artifact ${key}`));
    try {
      const response = await fetchApi(`${this.api}/artifacts/${encodeURIComponent(key)}`);
      const type = response.headers.get("content-type") ?? "";
      const text = type.startsWith("application/json")
        ? JSON.stringify(await response.json(), null, 2)
        : await response.text();
      box.append(preOf(text, key.startsWith("diff-") ? "diff" : ""));
    } catch (error) {
      box.append(note(error.message));
    }
  }

  addCall(event, meta) {
    const details = element("details", "llm-call");
    const summary = element(
      "summary",
      null,
      `${clock(event.timestamp)} ${event.model ?? ""} · ${event.agent_role ?? ""}` +
        `${event.task_id ? " · " + event.task_id : ""} · waiting for the response…`,
    );
    details.append(summary);
    for (const message of meta.messages ?? []) {
      details.append(element("pre", `message ${message.role}`, `${message.role}: ${message.content}`));
    }
    if (!meta.messages) details.append(note("no prompt recorded"));
    this.calls.set(event.id, { details, summary });
    const box = $("llm-calls");
    box.prepend(details);
    // The panel keeps the latest calls (every call is in the trace and the feed).
    while (box.children.length > MAX_CALLS) {
      const old = box.lastElementChild;
      old.remove();
      for (const [id, call] of this.calls) if (call.details === old) this.calls.delete(id);
    }
  }

  addResponse(event, meta) {
    let call = this.calls.get(event.parent_id);
    if (!call) {
      this.addCall({ ...event, id: `response-${event.id}` }, {});
      call = this.calls.get(`response-${event.id}`);
    }
    call.summary.textContent = call.summary.textContent.replace(
      "waiting for the response…",
      `${tokensOf(meta)} tokens · ${costOf(meta) == null ? "no cost given" : `$${usd(costOf(meta))}`}`,
    );
    call.details.append(
      element("pre", "message response", meta.response ?? "(no response text recorded)"),
    );
  }

  // --- usage: the per-model table, and the totals -----------------------------

  refreshUsageSoon() {
    this.usageTimer ??= setTimeout(() => {
      this.usageTimer = null;
      this.refreshUsage();
    }, 300);
  }

  async refreshUsage() {
    let usage;
    try {
      usage = await getJson("/api/usage", { by: "model", session_id: this.id });
    } catch (error) {
      showError(error);
      return;
    }
    if (this.closed) return;
    this.apiTotals = usage.total;
    const body = $("models");
    body.replaceChildren();
    this.modelRates.clear();
    for (const row of usage.rows) {
      const tr = usageRow(row, "model-row");
      tr.dataset.model = row.key ?? "";
      body.append(tr);
      if (row.cost_source === "genai-prices" && row.total_tokens) {
        this.modelRates.set(row.key, row.cost_usd / row.total_tokens);
      }
    }
    $("models-total").replaceChildren(usageRow({ key: "total", ...usage.total }, "model-total"));
    this.schedule("header", "chart");
  }

  // --- rendering ---------------------------------------------------------

  schedule(...parts) {
    for (const part of parts) this.dirty.add(part);
    this.frame ??= requestAnimationFrame(() => {
      this.frame = null;
      this.render();
    });
  }

  renderNow() {
    this.dirty = new Set(["header", "tasks", "trace", "timeline", "chart"]);
    this.render(true);
  }

  render(now = false) {
    const dirty = this.dirty;
    if (dirty.has("header")) this.renderHeader();
    if (dirty.has("tasks")) this.renderTasks();
    if (dirty.has("timeline")) this.renderTimeline();
    if (dirty.has("chart")) this.renderCharts();
    // The trace is rebuilt whole: at most every half second while events flow.
    if (dirty.has("trace")) {
      if (now) this.renderTrace();
      else this.traceTimer ??= setTimeout(() => {
        this.traceTimer = null;
        this.renderTrace();
      }, 250);
    }
    this.dirty = new Set();
  }

  renderHeader() {
    $("session-status").textContent = this.status;
    $("session-status").className = `status ${this.status}`;
    $("session-phase").textContent = this.phase;
    // The server's totals (with costs computed for responses that had none) once
    // read; the live sums until then.
    const apiCalls = this.apiTotals?.calls ?? -1;
    const totals = apiCalls >= this.totals.calls ? this.apiTotals : null;
    $("total-tokens").textContent = String(totals?.total_tokens ?? this.totals.tokens);
    $("total-cost").textContent = usd(totals?.cost_usd ?? this.totals.cost);
    $("total-calls").textContent = String(totals?.calls ?? this.totals.calls);
    $("total-events").textContent = int(Math.max(this.count ?? 0, this.events.size));
    const root = this.trace.root;
    $("total-duration").textContent = root ? seconds(root.duration ?? (this.last - root.start) / 1000) : "";
    const failures = this.trace.failures().length;
    const button = $("next-failure");
    button.hidden = failures === 0;
    button.textContent = `${failures} failed ▸ show next`;
  }

  renderTasks() {
    const body = $("tasks");
    for (const task of this.trace.tasks.values()) {
      let row = this.taskRows.get(task.label);
      if (!row) {
        row = body.insertRow();
        row.dataset.testid = "task-row";
        row.dataset.taskId = task.label;
        for (let i = 0; i < 5; i++) row.insertCell();
        row.cells[3].className = row.cells[4].className = "num";
        row.addEventListener("click", () => this.showNode(this.trace.tasks.get(row.dataset.taskId)));
        this.taskRows.set(task.label, row);
      }
      const seen = `${task.status} ${task.duration} ${task.attempts}`;
      if (row.dataset.seen === seen) continue;
      row.dataset.seen = seen;
      row.dataset.status = task.status;
      const attempts = task.attempts ?? 0;
      const values = [task.label, task.role ?? "", task.status, attempts, seconds(task.duration)];
      values.forEach((value, i) => (row.cells[i].textContent = value ?? ""));
      row.cells[2].className = `status ${task.status}`;
    }
    $("task-count").textContent = `(${this.trace.tasks.size})`;
  }

  span() {
    const start = this.first ?? Date.now();
    const end = Math.max(this.last ?? start, this.status === "running" ? Date.now() : 0);
    return { start, end, span: Math.max(end - start, 1) };
  }

  renderTimeline() {
    const box = $("timeline");
    if (this.first === null) return;
    const { start, end, span } = this.span();
    const laneWidth = Math.max(box.clientWidth - 230, 100);
    const pct = (t) => `${(((t - start) / span) * 100).toFixed(3)}%`;
    const width = (a, b) => `${Math.max(((b - a) / span) * 100, 0.2).toFixed(3)}%`;
    // A bar's text is written only where it fits; every bar has it as a tooltip.
    const fits = (a, b, text) => ((b - a) / span) * laneWidth > text.length * 6.5 + 6;
    const rows = [];
    const phaseRow = timelineRow("phases");
    const marks = [{ phase: this.firstPhase ?? "", at: start }, ...this.phases];
    marks.forEach((mark, i) => {
      const until = marks[i + 1]?.at ?? end;
      phaseRow.lane.append(
        bar(mark.phase, pct(mark.at), width(mark.at, until), "phase", fits(mark.at, until, mark.phase ?? "")),
      );
    });
    rows.push(phaseRow.row);
    for (const task of this.trace.tasks.values()) {
      if (task.start === null) continue;
      const { row, lane } = timelineRow(task.label);
      const until = task.end ?? end;
      const text = `${task.label}: ${task.status} ${seconds(task.duration)}`;
      const b = bar(task.status, pct(task.start), width(task.start, until), task.status, fits(task.start, until, task.status));
      b.title = text;
      lane.append(b);
      row.dataset.task = task.label;
      row.addEventListener("click", () => this.showNode(task));
      rows.push(row);
    }
    box.replaceChildren(...rows);
  }

  renderCharts() {
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
      // A response without cost: the table's average price of its model, if any.
      sums[m][1] += point.cost ?? (this.modelRates.get(point.model) ?? 0) * point.tokens;
      xs.push(point.t);
      models.forEach((_, i) => {
        tokens[i].push(sums[i][0]);
        cost[i].push(sums[i][1]);
      });
    }
    const key = models.join();
    this.plot("tokens", $("usage-chart"), key, models, [xs, ...tokens], "tokens", (v) => int(Math.round(v)));
    this.plot("cost", $("cost-chart"), key, models, [xs, ...cost], "USD", (v) => `$${v.toFixed(4)}`);
  }

  plot(name, box, key, models, data, unit, format) {
    const plot = this.plots[name];
    if (plot && plot.key === key) {
      plot.setData(data);
      return;
    }
    plot?.destroy();
    const colors = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2"];
    const made = new uPlot(
      {
        width: Math.max(box.clientWidth, 300),
        height: 160,
        series: [
          {},
          ...models.map((m, i) => ({
            label: m,
            stroke: colors[i % 6],
            width: 2,
            value: (_, v) => (v == null ? "" : format(v)),
          })),
        ],
        scales: { x: { time: true } },
        tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"),
        axes: [{}, { label: unit, size: 70, values: (_, ticks) => ticks.map(format) }],
      },
      data,
      box,
    );
    made.key = key;
    this.plots[name] = made;
  }

  // --- the trace tree ----------------------------------------------------

  renderTrace() {
    const box = $("trace");
    const root = this.trace.root;
    if (!root) return;
    const { start, end, span } = this.span();
    const scroll = box.scrollTop;
    const failing = new Set();
    const mark = (node) => {
      let bad = node.status === "failed";
      for (const child of node.children) bad = mark(child) || bad;
      if (bad) failing.add(node);
      return bad;
    };
    mark(root);
    // A failure is shown opened the first time it is drawn: easy to find.
    for (const node of failing) {
      if (node.status !== "failed" || this.revealed.has(node.id)) continue;
      this.revealed.add(node.id);
      for (let up = node.parent; up; up = up.parent) this.expanded.add(up.id);
    }
    // A search keeps the nodes whose label holds the text, and their ancestors.
    const query = $("trace-search").value.trim().toLowerCase();
    const keep = new Set();
    if (query) {
      const find = (node) => {
        let hit = node.label.toLowerCase().includes(query);
        for (const child of node.children) hit = find(child) || hit;
        if (hit) keep.add(node);
        return hit;
      };
      find(root);
    }
    // Built as one string (a long session's trace has thousands of rows).
    const html = [];
    const draw = (node, depth) => {
      const lazy = node.kind === "task" && !this.full && !this.loadedTasks.has(node.label);
      const open = this.expanded.has(node.id) || node === root || (query && keep.has(node));
      const classes = ["trace-row"];
      if (query && node.label.toLowerCase().includes(query)) classes.push("match");
      if (failing.has(node) && node.status !== "failed") classes.push("has-failure");
      if (this.selected === node.id) classes.push("selected");
      const twisty = node.children.length || lazy ? (open ? "▾" : "▸") : "";
      let waterfall = "";
      if (node.start !== null) {
        const left = ((node.start - start) / span) * 100;
        const ms = node.duration != null ? node.duration * 1000 : (node.end ?? end) - node.start;
        const width = Math.max((ms / span) * 100, 0.3);
        waterfall = `<div class="bar ${esc(node.status)}" style="left:${left.toFixed(3)}%;width:${width.toFixed(3)}%" title="${esc(`${node.label}: ${seconds(ms / 1000)}`)}"></div>`;
      }
      html.push(
        `<div class="${classes.join(" ")}" data-testid="trace-node" data-event-id="${esc(node.id)}"`,
        ` data-kind="${node.kind}" data-status="${esc(node.status)}"`,
        ` data-event-ids="${esc(node.events.join(" "))}"`,
        node.taskId ? ` data-task="${esc(node.taskId)}"` : "",
        ` title="${esc(`${node.label} · ${node.status}`)}"${query && !keep.has(node) ? " hidden" : ""}>`,
        `<span class="trace-name" style="padding-left:${depth * 0.9}rem"><span class="twisty">${twisty}</span>`,
        `<span class="kind ${node.kind}">${KIND_LABEL[node.kind] ?? node.kind}</span>`,
        `<span class="label">${esc(node.label)}</span></span>`,
        `<span class="time">${node.start !== null ? clock(new Date(node.start).toISOString()) : ""}</span>`,
        `<span class="num">${seconds(node.duration)}</span>`,
        `<span class="num">${node.tokens == null ? "" : int(node.tokens)}</span>`,
        `<span class="num">${node.cost == null ? "" : `$${node.cost.toFixed(5)}`}</span>`,
        `<span class="waterfall">${waterfall}</span></div>`,
      );
      if (node.children.length) {
        html.push(`<div class="children"${open ? "" : " hidden"}>`);
        // In time order (parts of a session are read in any order); not started last.
        const children = [...node.children].sort((a, b) => (a.start ?? Infinity) - (b.start ?? Infinity));
        for (const child of children) draw(child, depth + 1);
        html.push("</div>");
      }
    };
    draw(root, 0);
    box.innerHTML = html.join("");
    box.scrollTop = scroll;
  }

  traceClick(e) {
    const row = e.target.closest(".trace-row");
    const node = row && this.trace.nodes.get(row.dataset.eventId);
    if (!node) return;
    if (e.target.closest(".twisty")) this.toggle(node);
    else this.showNode(node);
  }

  async toggle(node) {
    if (this.expanded.has(node.id)) this.expanded.delete(node.id);
    else {
      this.expanded.add(node.id);
      if (node.kind === "task" && !this.full && !this.loadedTasks.has(node.label)) {
        this.loadedTasks.add(node.label);
        await this.readPart({ task_id: node.label });
      }
    }
    this.renderTrace();
  }

  reveal(node) {
    for (let up = node.parent; up; up = up.parent) this.expanded.add(up.id);
    this.renderTrace();
    const row = $("trace").querySelector(`[data-event-id="${CSS.escape(node.id)}"]`);
    row?.scrollIntoView({ block: "center" });
  }

  nextFailure() {
    const failures = this.trace.failures();
    if (!failures.length) return;
    const at = failures.findIndex((n) => n.id === this.selected);
    const node = failures[(at + 1) % failures.length];
    this.showNode(node);
    this.reveal(node);
  }

  // --- the event detail ------------------------------------------------------

  select(row) {
    for (const old of document.querySelectorAll(".selected")) old.classList.remove("selected");
    row?.classList.add("selected");
  }

  showNode(node) {
    if (!node) return;
    this.selected = node.id;
    this.select($("trace").querySelector(`[data-event-id="${CSS.escape(node.id)}"]`));
    const events = node.events.map((id) => this.events.get(id)).filter(Boolean);
    showDetail(events, this.id, node);
  }

  showEvent(id, row) {
    this.selected = id;
    this.select(row);
    const event = this.events.get(id) ?? this.feedEvents?.get(id);
    const node = this.trace.byEvent.get(id);
    // A model call's request and response are one node: shown together.
    const events = node?.kind === "llm" ? node.events.map((e) => this.events.get(e)).filter(Boolean) : [event];
    showDetail(events, this.id, node?.kind === "llm" ? node : null);
  }

  // --- the feed: a page at a time, filtered by the server ---------------------

  feedFilters() {
    return {
      type: $("filter-type").value,
      task_id: $("filter-task").value,
      agent_role: $("filter-role").value,
      model: $("filter-model").value,
      q: $("filter-text").value.trim(),
    };
  }

  matchesFeed(event) {
    const f = this.feed.filters;
    return (
      (!f.type || event.event_type === f.type) &&
      (!f.task_id || event.task_id === f.task_id) &&
      (!f.agent_role || event.agent_role === f.agent_role) &&
      (!f.model || event.model === f.model) &&
      (!f.q || (event.message ?? "").toLowerCase().includes(f.q.toLowerCase()))
    );
  }

  async loadFeed(reset = false) {
    if (reset) {
      const filters = this.feedFilters();
      this.feed = { after: null, done: false, loading: null, filters, count: 0, above: null, generation: (this.feed.generation ?? 0) + 1 };
      $("events").replaceChildren();
      this.feedEvents = new Map();
    }
    const feed = this.feed;
    if (feed.done || feed.loading) return feed.loading;
    feed.loading = (async () => {
      const page = await getJson(`${this.api}/events`, { ...feed.filters, after: feed.after, limit: FEED_PAGE });
      if (feed !== this.feed || this.closed) return; // the filters changed meanwhile
      const events = page.events.map((event, i) => ({ id: page.ids[i], ...event }));
      for (const event of events) {
        this.feedEvents.set(event.id, event);
        this.addOptions(event);
      }
      feed.after = page.next ?? (events.length ? events[events.length - 1].id : feed.after);
      feed.done = page.next === null;
      this.showRows(events);
      feed.loading = null;
    })();
    try {
      await feed.loading;
    } finally {
      feed.loading = null;
    }
    // Fill the region: load on while it does not scroll yet.
    const box = $("feed");
    if (!feed.done && feed === this.feed && box.scrollHeight <= box.clientHeight + 50) {
      await this.loadFeed();
    }
  }

  showRows(events) {
    // Oldest first, as the log; a row shows the date when it is the first or
    // its date differs from the row above; other rows show the time only.
    const feed = this.feed;
    const rows = document.createDocumentFragment();
    for (const event of events) {
      if (feed.shown?.has(event.id)) continue;
      (feed.shown ??= new Set()).add(event.id);
      this.feedEvents.set(event.id, event);
      const row = document.createElement("tr");
      row.dataset.testid = "event-row";
      row.dataset.eventId = event.id;
      row.dataset.type = event.event_type;
      row.dataset.timestamp = event.timestamp;
      if (event.task_id) row.dataset.task = event.task_id;
      cell(row, "", "time").title = `${stamp(event.timestamp)} UTC`;
      row.cells[0].textContent = day(event.timestamp) === feed.above ? clock(event.timestamp) : stamp(event.timestamp);
      feed.above = day(event.timestamp);
      cell(row, event.event_type, `type ${event.event_type}`);
      cell(row, event.phase);
      cell(row, event.task_id);
      cell(row, event.agent_role);
      cell(row, event.message, "message");
      rows.append(row);
      feed.count += 1;
    }
    const box = $("feed");
    const atBottom = box.scrollTop + box.clientHeight >= box.scrollHeight - 4;
    $("events").append(rows);
    if (atBottom && feed.done && box.scrollTop > 0) box.scrollTop = box.scrollHeight;
    $("feed-count").textContent = `(${int(feed.count)}${feed.done ? "" : "+"} shown)`;
    $("feed-end").textContent = feed.done ? "end of the log: new events appear here live" : "scroll for more…";
  }
}

function timelineRow(label) {
  const row = element("div", "timeline-row");
  const name = element("span", "timeline-label", label);
  name.title = label;
  const lane = element("div", "timeline-lane");
  row.append(name, lane);
  return { row, lane };
}

function bar(text, left, width, className, withText = true) {
  const node = element("div", `bar ${className}`);
  node.style.left = left;
  node.style.width = width;
  node.title = text;
  if (withText) node.textContent = text;
  return node;
}

const KIND_LABEL = {
  llm: "llm", command: "cmd", agent: "agent", task: "task", session: "session", gate: "gate",
  diff: "diff", error: "error", retry: "retry", verification: "verify",
};
const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
const esc = (text) => String(text ?? "").replace(/[&<>"']/g, (c) => ESCAPES[c]);

function preOf(text, className = "") {
  const pre = element("pre", className);
  if (className.includes("diff")) {
    for (const line of String(text).split("\n")) {
      const span = element("span", line.startsWith("+") && !line.startsWith("+++") ? "add" : line.startsWith("-") && !line.startsWith("---") ? "del" : "", `${line}\n`);
      pre.append(span);
    }
  } else {
    pre.textContent = text;
  }
  return pre;
}

// The whole stored event(s): what matters first (error, command output, gate,
// prompt and response, diff), then the metadata pretty-printed, then the JSON.
function showDetail(events, sessionId, node) {
  const box = $("event-detail");
  box.replaceChildren();
  if (!events.length) {
    box.append(note(node ? `${node.label}: its events are not read yet` : "event not read"));
    return;
  }
  if (node) {
    box.append(element("h4", null, node.label));
    const facts = element("dl");
    const fact = (k, v) => v != null && v !== "" && facts.append(element("dt", null, k), element("dd", null, String(v)));
    fact("status", node.status);
    fact("start", node.start !== null ? stamp(new Date(node.start).toISOString()) : null);
    fact("duration", seconds(node.duration));
    fact("tokens", node.tokens);
    fact("cost", node.cost != null ? `$${usd(node.cost)}` : null);
    box.append(facts);
  }
  for (const event of events) {
    const meta = event.metadata ?? {};
    const head = element("h4", event.event_type.includes("fail") || event.event_type === "error" ? "bad" : "", event.event_type);
    box.append(head);
    const facts = element("dl");
    const fact = (k, v) => v != null && v !== "" && facts.append(element("dt", null, k), element("dd", null, String(v)));
    fact("time", `${stamp(event.timestamp)} UTC`);
    fact("message", event.message);
    fact("phase", event.phase);
    fact("task", event.task_id);
    fact("role", event.agent_role);
    fact("model", event.model);
    fact("id", event.id);
    fact("parent", event.parent_id);
    fact("duration", meta.duration_s != null ? seconds(meta.duration_s) : null);
    box.append(facts);
    const section = (title, text, className = "") => {
      if (text == null || text === "") return;
      box.append(element("h4", null, title), preOf(typeof text === "string" ? text : JSON.stringify(text, null, 2), className));
    };
    if (meta.error || meta.error_type) section("error", `${meta.error_type ?? "error"}: ${meta.error ?? ""}`, "error");
    if (meta.command != null) {
      section("command", `$ ${meta.command}\n(exit code ${meta.exit_code}${meta.cwd ? `, in ${meta.cwd}` : ""})`);
      section("output", meta.output || "(no output)", `output ${meta.exit_code === 0 ? "" : "failed"}`);
    }
    if (meta.gate != null) section("gate decision", `${meta.gate}: ${meta.decision}\nreason: ${meta.reason ?? ""}`);
    if (Array.isArray(meta.messages)) {
      section("prompt", meta.messages.map((m) => `${m.role}: ${m.content}`).join("\n\n"));
    }
    if (meta.response != null) section("response", meta.response);
    if (meta.diff != null) section("diff", meta.diff, "diff");
    for (const [field, cut] of Object.entries(meta.truncated ?? {})) {
      const link = element("a", null, `full ${field} (artifact ${cut.artifact}, ${int(cut.total_chars)} chars)`);
      link.href = apiUrl(`/api/sessions/${encodeURIComponent(sessionId)}/artifacts/${encodeURIComponent(cut.artifact)}`, {}, true);
      link.target = "_blank";
      const p = element("p");
      p.append(link);
      box.append(p);
    }
    section("metadata", meta);
    const raw = element("details");
    raw.append(element("summary", "muted", "the stored event (JSON)"), preOf(JSON.stringify(event, null, 2)));
    box.append(raw);
  }
  box.scrollTop = 0;
}

function showNotFound(text) {
  showOnly("not-found");
  $("not-found-text").textContent = text;
  document.title = "not found · eventbus";
  setConnection("");
}

// --- routing -------------------------------------------------------------

let current = null;

function route() {
  current?.stop();
  current = null;
  sessionsSource?.close();
  sessionsSource = null;
  usagePlot?.destroy();
  usagePlot = null;
  document.title = "eventbus";
  if (location.hash === "#/usage") {
    showUsage().catch(showError);
    return;
  }
  const match = location.hash.match(/^#\/sessions\/(.+)$/);
  if (!match) {
    if (location.hash && location.hash !== "#/") {
      showNotFound(`No page ${location.hash.slice(1)}: see the sessions or the usage.`);
      return;
    }
    showSessions();
    return;
  }
  for (const id of ["tasks", "events", "llm-calls", "timeline", "usage-chart", "cost-chart", "trace", "artifacts", "models", "models-total"]) {
    $(id).replaceChildren();
  }
  for (const kind of ["type", "task", "role", "model"]) {
    const select = $(`filter-${kind}`);
    select.value = "";
    while (select.options.length > 1) select.remove(1);
  }
  $("filter-text").value = "";
  $("trace-search").value = "";
  $("event-detail").replaceChildren(note("Select an event in the trace, the timeline or the feed."));
  $("gap-notice").hidden = true;
  $("no-artifacts").hidden = false;
  const id = decodeURIComponent(match[1]);
  document.title = `${id} · eventbus`;
  current = new SessionView(id);
  current.start().catch(showError);
}

// Handlers on the session page's fixed elements act on the session shown.
for (const kind of ["type", "task", "role", "model"]) {
  $(`filter-${kind}`).addEventListener("change", () => current?.loadFeed(true).catch(showError));
}
let textTimer = null;
$("filter-text").addEventListener("input", () => {
  clearTimeout(textTimer);
  textTimer = setTimeout(() => current?.loadFeed(true).catch(showError), 250);
});
$("feed").addEventListener("scroll", () => {
  const box = $("feed");
  if (current && box.scrollTop + box.clientHeight >= box.scrollHeight - 200) {
    current.loadFeed().catch(showError);
  }
});
$("events").addEventListener("click", (e) => {
  const row = e.target.closest("tr[data-event-id]");
  if (row && current) current.showEvent(row.dataset.eventId, row);
});
$("next-failure").addEventListener("click", () => current?.nextFailure());
$("trace").addEventListener("click", (e) => current?.traceClick(e));
$("trace-search").addEventListener("input", () => current?.renderTrace());

window.addEventListener("hashchange", route);
route();
