// The control panel of a session's page: pause / resume / abort, and what the
// session waits for (questions to answer, requests to approve or reject).
//
// It is fed the session's events (stored, then live) by app.js through
// event(); from them it knows whether the session has ended or is paused,
// and when to re-read GET /api/sessions/{id}/pending (a clarification,
// approval or control event). A command is POSTed as JSON to
// /api/sessions/{id}/commands with its own command_id; its outcome is read
// from /api/sessions/{id}/commands/{command_id} until it is decided (sooner
// when the stream brings its control_applied / control_rejected event).
// A read-only server (serve --read-only) says so on /pending: the panel then
// shows what is pending without buttons.

const token = new URLSearchParams(location.search).get("token");
const ENDED = new Set(["session_completed", "session_failed", "session_aborted"]);
const REFRESH_TYPES = /^(clarification_|approval_|control_|session_(paused|resumed))/;
const POLL_FIRST_MS = 250;
const POLL_MAX_MS = 2000;
const UNREAD_MS = 10000; // a command still queued after this long gets a hint

function headers(extra = {}) {
  return token ? { Authorization: `Bearer ${token}`, ...extra } : extra;
}

async function request(path, options = {}) {
  const response = await fetch(path, { ...options, headers: headers(options.headers) });
  let body = {};
  try {
    body = await response.json();
  } catch {
    body = { error: response.statusText };
  }
  if (!response.ok) throw new Error(body.error || response.statusText);
  return { body, response };
}

function element(tag, { text, testid, className, ...attributes } = {}) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (testid) node.dataset.testid = testid;
  if (className) node.className = className;
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  return node;
}

function newCommandId() {
  return globalThis.crypto?.randomUUID ? `web-${crypto.randomUUID()}` : undefined;
}

export class ControlPanel {
  constructor(sessionId, box) {
    this.id = sessionId;
    this.box = box;
    this.base = `/api/sessions/${encodeURIComponent(sessionId)}`;
    this.ended = null; // the ending event's type, once seen
    this.paused = false;
    this.readOnly = false;
    this.closed = false;
    this.refreshTimer = null;
    this.frame = null;
    this.commands = new Map(); // command id -> {kind, label, row, pendingId}
    this.rows = new Map(); // pending id -> row element
    this.build();
    this.refresh();
  }

  build() {
    this.state = element("span", { testid: "control-state", className: "control-state" });
    this.buttons = ["pause", "resume", "abort"].map((kind) => {
      const button = element("button", { text: kind, testid: `${kind}-button`, type: "button" });
      button.addEventListener("click", () => this.send({ kind }, kind));
      return button;
    });
    this.status = element("span", {
      testid: "control-status",
      className: "control-status",
      role: "status", // announced by screen readers as outcomes arrive
    });
    this.note = element("span", { className: "muted" });
    const bar = element("div", { className: "control-bar" });
    bar.append(this.state, ...this.buttons, this.status, this.note);
    this.pending = element("div", { className: "pending", testid: "pending-list" });
    this.empty = element("p", { text: "Nothing is waiting for an answer.", className: "muted" });
    this.log = element("ul", { className: "control-log", testid: "control-log" });
    this.box.replaceChildren(
      element("h3", { text: "Control" }),
      bar,
      this.pending,
      this.empty,
      this.log,
    );
    this.render();
  }

  stop() {
    this.closed = true;
    clearTimeout(this.refreshTimer);
    if (this.frame) cancelAnimationFrame(this.frame);
    for (const command of this.commands.values()) clearTimeout(command.timer);
  }

  // Fed every event of the session, stored and live, in order.
  event(event) {
    const type = event.event_type;
    if (ENDED.has(type)) this.ended = type;
    if (type === "session_paused") this.paused = true;
    if (type === "session_resumed") this.paused = false;
    const commandId = event.metadata?.command_id;
    if (commandId && this.commands.has(commandId)) this.poll(commandId, 0);
    if (ENDED.has(type) || REFRESH_TYPES.test(type)) this.scheduleRefresh();
    this.frame ??= requestAnimationFrame(() => {
      this.frame = null;
      this.render();
    });
  }

  scheduleRefresh() {
    if (this.closed || this.refreshTimer !== null) return;
    this.refreshTimer = setTimeout(() => {
      this.refreshTimer = null;
      this.refresh();
    }, 100);
  }

  async refresh() {
    if (this.closed) return;
    try {
      const { body, response } = await request(`${this.base}/pending`);
      this.readOnly = response.headers.get("X-Eventbus-Read-Only") === "true";
      this.showPending(body.pending);
    } catch (error) {
      this.note.textContent = `pending: ${error.message}`;
    }
    this.render();
  }

  showPending(items) {
    const ids = new Set(items.map((item) => item.id));
    for (const [id, row] of this.rows) {
      if (!ids.has(id)) {
        row.remove();
        this.rows.delete(id);
      }
    }
    for (const item of items) {
      if (!this.rows.has(item.id)) {
        const row = this.pendingRow(item);
        this.rows.set(item.id, row);
        this.pending.append(row);
      }
    }
    this.empty.hidden = items.length > 0;
  }

  pendingRow(item) {
    // Kept across refreshes (by id), so that an answer being typed is not lost.
    const row = element("div", { testid: "pending-row", className: `pending-row ${item.kind}` });
    row.dataset.pendingId = item.id;
    row.dataset.kind = item.kind;
    const who = [item.role, item.task_id].filter(Boolean).join(" · ");
    const what = item.kind === "clarification" ? "question" : "approval";
    row.append(
      element("span", { text: `${what}${who ? " · " + who : ""}`, className: "muted" }),
      element("p", { text: item.text, className: "pending-text" }),
    );
    const actions = element("div", { className: "pending-actions" });
    const outcome = element("span", { testid: "pending-status", className: "pending-status" });
    if (item.kind === "clarification") {
      const input = element("input", {
        testid: "answer-input",
        type: "text",
        placeholder: "your answer",
        "aria-label": `answer to ${item.id}`,
      });
      const submit = element("button", { text: "answer", testid: "answer-submit", type: "button" });
      const answer = () => {
        if (!input.value.trim()) {
          outcome.textContent = "type an answer first";
          return;
        }
        this.send({ kind: "answer", target: item.id, text: input.value }, "answer", row);
      };
      submit.addEventListener("click", answer);
      input.addEventListener("keydown", (e) => e.key === "Enter" && answer());
      actions.append(input, submit);
    } else {
      const reason = element("input", {
        testid: "reason-input",
        type: "text",
        placeholder: "reason (optional)",
        "aria-label": `reason for ${item.id}`,
      });
      const decide = (kind) => () => {
        const command = { kind, target: item.id };
        if (reason.value.trim()) command.reason = reason.value.trim();
        this.send(command, kind, row);
      };
      const approve = element("button", { text: "approve", testid: "approve-button", type: "button" });
      const reject = element("button", { text: "reject", testid: "reject-button", type: "button" });
      approve.addEventListener("click", decide("approve"));
      reject.addEventListener("click", decide("reject"));
      actions.append(reason, approve, reject);
    }
    actions.append(outcome);
    row.append(actions);
    this.renderRow(row);
    return row;
  }

  async send(command, label, row = null) {
    const commandId = newCommandId();
    const body = commandId ? { ...command, command_id: commandId } : command;
    this.setStatus(`${label}: sending…`, "sending", row);
    if (row) this.setDisabled(row, true);
    try {
      const { body: answer } = await request(`${this.base}/commands`, {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-Eventbus-Actor": "dashboard" },
        body: JSON.stringify(body),
      });
      const id = answer.command_id;
      const item = element("li", { testid: "command-row" });
      item.dataset.commandId = id;
      this.log.prepend(item);
      this.commands.set(id, { label, row, item, delay: POLL_FIRST_MS, timer: null, at: Date.now() });
      this.show(id, answer);
      if (answer.status === "queued") this.poll(id, POLL_FIRST_MS);
    } catch (error) {
      this.setStatus(`${label}: refused: ${error.message}`, "refused", row);
      if (row) this.setDisabled(row, false);
    }
  }

  poll(id, delay) {
    const command = this.commands.get(id);
    if (!command || command.done || this.closed) return;
    clearTimeout(command.timer);
    command.timer = setTimeout(async () => {
      try {
        const { body } = await request(`${this.base}/commands/${encodeURIComponent(id)}`);
        this.show(id, body);
        if (body.status === "queued" && !this.ended) {
          command.delay = Math.min(command.delay * 2, POLL_MAX_MS);
          this.poll(id, command.delay);
        }
      } catch (error) {
        this.setStatus(`${command.label}: ${error.message}`, "error", command.row);
      }
    }, delay);
  }

  show(id, outcome) {
    // Shows one command's state: on the status line, in the log, and on its pending row.
    const command = this.commands.get(id);
    const reason = outcome.status === "rejected" && outcome.reason ? `: ${outcome.reason}` : "";
    const queued = outcome.status === "queued";
    const late = queued && Date.now() - command.at > UNREAD_MS;
    const hint = queued && this.ended
      ? " (the session ended before it was applied)"
      : late
        ? " (not read yet: is a coordinator running this session?)"
        : "";
    const text = `${command.label}: ${outcome.status}${reason}${hint}`;
    command.item.textContent = text;
    command.item.dataset.status = outcome.status;
    this.setStatus(text, outcome.status, command.row);
    if (outcome.status === "applied" || outcome.status === "rejected") {
      command.done = true;
      clearTimeout(command.timer);
      if (command.row && outcome.status === "applied") {
        // Answered or decided: it waits no more (the next /pending agrees).
        command.row.remove();
        this.rows.delete(command.row.dataset.pendingId);
        this.empty.hidden = this.rows.size > 0;
      } else if (command.row) {
        this.setDisabled(command.row, false);
      }
      this.scheduleRefresh();
    }
  }

  setStatus(text, status, row) {
    this.status.textContent = text;
    this.status.dataset.status = status;
    if (row) {
      const outcome = row.querySelector('[data-testid="pending-status"]');
      outcome.textContent = text;
      outcome.dataset.status = status;
    }
  }

  setDisabled(row, disabled) {
    row.dataset.busy = disabled ? "true" : "";
    this.renderRow(row);
  }

  renderRow(row) {
    const off = Boolean(this.ended) || this.readOnly;
    for (const control of row.querySelectorAll("input, button")) {
      control.disabled = off || row.dataset.busy === "true";
      control.hidden = off;
    }
  }

  render() {
    const off = Boolean(this.ended) || this.readOnly;
    for (const button of this.buttons) {
      button.disabled = off;
      button.hidden = off;
    }
    this.state.textContent = this.ended
      ? `ended (${this.ended.replace("session_", "")})`
      : this.paused
        ? "paused"
        : "running";
    this.state.dataset.state = this.ended ? "ended" : this.paused ? "paused" : "running";
    if (this.readOnly && !this.ended) this.note.textContent = "read-only server: no commands";
    for (const row of this.rows.values()) this.renderRow(row);
  }
}
