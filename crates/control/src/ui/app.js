// The zest dashboard: one WebSocket to the node it is served from, speaking the
// same JSON-RPC methods as the CLI. The token is kept in sessionStorage and
// passed as the WebSocket subprotocol `bearer.<token>` (CONTRACT.md §12); it
// never goes into a URL. Everything shown is built with textContent, never
// parsed as HTML.
"use strict";

const TOKEN_KEY = "zest.token";
const MAX_EVENTS = 300;
const POLL_MS = 5000;

const $ = (selector) => document.querySelector(selector);

/** An element with attributes and children (strings become text). */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === false || value === null || value === undefined) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const badge = (text, kind) => h("span", { class: `badge ${kind || text}`, text });
const short = (sha) => (sha || "").slice(0, 12);
function when(iso) {
  if (!iso) return "";
  const at = new Date(iso);
  return Number.isNaN(at.getTime()) ? iso : at.toLocaleTimeString();
}
function whenFull(iso) {
  const at = new Date(iso);
  return Number.isNaN(at.getTime()) ? iso : at.toLocaleString();
}
function uptime(ms) {
  const s = Math.floor(ms / 1000);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

// ---------------------------------------------------------------- connection

const conn = {
  token: null,
  ws: null,
  nextId: 1,
  pending: new Map(),
  retry: 500,
  timer: null,
  live: false,
};

/** A JSON-RPC call over the WebSocket. */
function rpc(method, params) {
  return new Promise((resolve, reject) => {
    if (!conn.ws || conn.ws.readyState !== WebSocket.OPEN) {
      reject(new Error("not connected to the node"));
      return;
    }
    const id = conn.nextId++;
    conn.pending.set(id, { resolve, reject });
    conn.ws.send(JSON.stringify({ jsonrpc: "2.0", id, method, params: params || {} }));
  });
}

/** Checks a token over HTTP: "ok", "refused", or an error message. */
async function checkToken(token) {
  try {
    const response = await fetch("/", {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` },
      body: JSON.stringify({ jsonrpc: "2.0", id: 1, method: "system.status", params: {} }),
      credentials: "omit",
      cache: "no-store",
    });
    if (response.status === 401) return "refused";
    const body = await response.json();
    const code = body.error && body.error.data ? body.error.data.code : null;
    if (code === "UNAUTHORIZED") return "refused";
    if (code === "FORBIDDEN") return "This token may not read the node's status (it needs the read scope).";
    if (body.error) return body.error.message;
    return "ok";
  } catch (err) {
    return `Cannot reach the node: ${err.message}`;
  }
}

function setLink(state, text) {
  const link = $("#link");
  link.hidden = false;
  link.className = `link ${state}`;
  $("#link-text").textContent = text;
}

function connect() {
  clearTimeout(conn.timer);
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  let ws;
  try {
    ws = new WebSocket(`${scheme}//${location.host}/`, [`bearer.${conn.token}`]);
  } catch (err) {
    // A token with characters a subprotocol cannot carry.
    signOut(`This token cannot be used from a browser: ${err.message}`);
    return;
  }
  conn.ws = ws;
  setLink("", "connecting");
  ws.onopen = async () => {
    conn.retry = 500;
    conn.live = true;
    setLink("live", "live");
    try {
      await rpc("system.subscribe_events", []);
    } catch (err) {
      note(`Cannot subscribe to events: ${err.message}`);
    }
    refresh();
  };
  ws.onmessage = (message) => {
    let data;
    try {
      data = JSON.parse(message.data);
    } catch {
      return;
    }
    if (data.id !== undefined && conn.pending.has(data.id)) {
      const { resolve, reject } = conn.pending.get(data.id);
      conn.pending.delete(data.id);
      if (data.error) reject(Object.assign(new Error(data.error.message), { data: data.error.data }));
      else resolve(data.result);
    } else if (data.method === "system.event" && data.params) {
      onEvent(data.params.result);
    }
  };
  ws.onclose = async () => {
    for (const { reject } of conn.pending.values()) reject(new Error("the connection to the node closed"));
    conn.pending.clear();
    if (conn.ws !== ws || !conn.token) return;
    conn.live = false;
    // Refused, or gone? Ask over HTTP before trying again.
    const check = await checkToken(conn.token);
    if (check === "refused") {
      signOut("The node refused this token.");
      return;
    }
    setLink("down", `reconnecting in ${Math.round(conn.retry / 100) / 10}s`);
    conn.timer = setTimeout(connect, conn.retry);
    conn.retry = Math.min(conn.retry * 2, 5000);
  };
}

// ---------------------------------------------------------------- sign in/out

async function signIn(token, fromForm) {
  const check = await checkToken(token);
  if (check !== "ok") {
    signOut(check === "refused" ? "The node refused this token." : check);
    return;
  }
  if (fromForm) sessionStorage.setItem(TOKEN_KEY, token);
  conn.token = token;
  $("#login-view").hidden = true;
  $("#app-view").hidden = false;
  $("#sign-out").hidden = false;
  connect();
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  conn.token = null;
  clearTimeout(conn.timer);
  if (conn.ws) {
    const ws = conn.ws;
    conn.ws = null;
    ws.close();
  }
  // Shows nothing of the node: its data goes with the view.
  if ($("#confirm").open) $("#confirm").close();
  for (const id of ["#modules tbody", "#apps tbody", "#processes tbody", "#extensions tbody", "#members tbody", "#history tbody"]) {
    $(id).replaceChildren();
  }
  $("#events").replaceChildren();
  $("#result").replaceChildren(h("p", { class: "empty", text: "Reload, roll back or promote a module to see its result here." }));
  $("#node-info").replaceChildren();
  drawn.clear();
  $("#app-view").hidden = true;
  $("#sign-out").hidden = true;
  $("#link").hidden = true;
  $("#login-view").hidden = false;
  const error = $("#login-error");
  error.hidden = !message;
  error.textContent = message || "";
  const input = $("#login input[name=token]");
  input.value = "";
  input.focus();
}

// ---------------------------------------------------------------- data

let refreshing = null;
let refreshAgain = false;

async function refresh() {
  if (refreshing) {
    refreshAgain = true;
    return refreshing;
  }
  refreshing = (async () => {
    try {
      const [status, history] = await Promise.all([
        rpc("system.status", {}),
        rpc("system.history", { limit: 25 }).catch(() => null),
      ]);
      renderStatus(status);
      if (history) draw("history", history, renderHistory);
    } catch (err) {
      if (conn.live) note(`Cannot read the node's status: ${err.message}`);
    }
  })();
  await refreshing;
  refreshing = null;
  if (refreshAgain) {
    refreshAgain = false;
    refresh();
  }
}

let refreshTimer = null;
function refreshSoon() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(refresh, 80);
}

function note(text) {
  onEvent({ event: "dashboard", seq: "", metadata: { kind: "", target: text, request_id: "" }, measurements: {} });
}

// ---------------------------------------------------------------- rendering

const lastVsn = new Map();

/** What each section was last drawn from: a section is drawn again only when
 * its data changed, so a button is not replaced under the pointer. */
const drawn = new Map();
function draw(section, data, render) {
  const key = JSON.stringify(data);
  if (drawn.get(section) === key) return;
  drawn.set(section, key);
  render(data);
}

function renderStatus(status) {
  const node = status.node || {};
  $("#node-info").replaceChildren(
    h("b", { text: node.listen || location.host }),
    `  ·  zest ${node.version || ""}  ·  up ${uptime(node.uptime_ms || 0)}`,
  );
  draw("modules", status.modules || [], renderModules);
  draw("apps", status.apps || [], renderApps);
  draw("processes", status.processes || [], renderProcesses);
  draw("extensions", status.extensions || [], renderExtensions);
  draw("cluster", status.cluster || null, renderCluster);
}

function renderModules(modules) {
  const body = $("#modules tbody");
  $("#modules-empty").hidden = modules.length > 0;
  body.replaceChildren(
    ...modules.map((m) => {
      const current = m.current || {};
      const canary = m.canary;
      const changed = lastVsn.has(m.name) && lastVsn.get(m.name) !== current.vsn;
      lastVsn.set(m.name, current.vsn);
      const state = [];
      if (canary) {
        state.push(h("div", {}, badge(`canary ${canary.vsn} · ${canary.share}%`, "canary")));
        state.push(h("div", { class: "sub", text: `${canary.calls} calls, ${canary.failures} failed` }));
      }
      if (m.trial) state.push(h("div", {}, badge(`trial until ${when(m.trial.until)}`, "trial")));
      const old = (m.old || []).map((o) => h("div", { class: "sub", title: o.sha256 }, `${o.vsn} `, h("span", { class: "sha", text: short(o.sha256) })));
      const pinned = (m.pinned_by || []).length
        ? h("div", { class: "sub", text: `pinned by ${m.pinned_by.join(", ")}` })
        : null;
      return h(
        "tr",
        { "data-module": m.name, class: changed ? "flash" : "" },
        h("td", {}, h("div", { class: "name", text: m.name }), h("div", { class: "sub", text: m.app ? `app ${m.app}` : "loose" })),
        h(
          "td",
          {},
          h("div", { class: "vsn", "data-field": "vsn", text: current.vsn }),
          h("div", { class: "sha", title: current.sha256, text: `${short(current.sha256)} · ${current.compiler || ""}` }),
        ),
        h("td", { class: "when", title: whenFull(current.loaded_at) }, when(current.loaded_at)),
        h("td", {}, old.length ? old : h("span", { class: "sub", text: "—" }), pinned),
        h("td", {}, state.length ? state : h("span", { class: "sub", text: "—" })),
        h(
          "td",
          { class: "num" },
          h("div", { text: String(current.calls ?? 0) }),
          h("div", { class: current.failures ? "sub count-bad" : "sub", text: `${current.failures ?? 0} failed` }),
        ),
        h(
          "td",
          { class: "actions" },
          h("button", { type: "button", "data-action": "reload", title: `Reload ${m.name} from its file`, onclick: (e) => act(e, "reload", m.name) }, "Reload"),
          h("button", { type: "button", "data-action": "rollback", title: canary ? `Drop the canary of ${m.name}` : `Put back the build ${m.name} had before`, onclick: (e) => act(e, "rollback", m.name) }, "Rollback"),
          h("button", { type: "button", "data-action": "promote", disabled: !canary, title: canary ? `Make ${canary.vsn} current for everyone` : "No canary runs", onclick: (e) => act(e, "promote", m.name) }, "Promote"),
        ),
      );
    }),
  );
}

function renderProcesses(processes) {
  $("#processes-empty").hidden = processes.length > 0;
  $("#processes tbody").replaceChildren(
    ...processes.map((p) =>
      h(
        "tr",
        { "data-process": p.name },
        h("td", { class: "name", text: p.name }),
        h("td", { text: p.module }),
        h("td", { class: "vsn", text: p.vsn || "—" }),
        h("td", {}, badge(p.state)),
        h("td", { class: "num", text: String(p.queued ?? 0) }),
        h("td", { class: "num", text: String(p.handled ?? 0) }),
        h("td", { class: "num" }, h("span", { class: p.restarts ? "count-bad" : "", text: String(p.restarts ?? 0) })),
      ),
    ),
  );
}

function renderApps(apps) {
  $("#apps-empty").hidden = apps.length > 0;
  $("#apps tbody").replaceChildren(
    ...apps.map((a) =>
      h(
        "tr",
        { "data-app": a.name },
        h("td", { class: "name", text: a.name }),
        h("td", { class: "sub", title: a.dir, text: a.dir }),
        h("td", { text: (a.modules || []).join(", ") }),
        h(
          "td",
          { class: "actions" },
          h("button", {
            type: "button",
            "data-action": "unload",
            title: `Take app ${a.name} out of the node: its modules and processes`,
            onclick: (e) => unload(e, { app: a.name }, `app ${a.name}`, `Its modules (${(a.modules || []).join(", ")}) leave the node once their calls finish, and its processes stop after the message they are handling; their state is lost. A rollback of the app loads it back.`),
          }, "Unload"),
        ),
      ),
    ),
  );
}

function renderExtensions(extensions) {
  $("#extensions-empty").hidden = extensions.length > 0;
  $("#extensions tbody").replaceChildren(
    ...extensions.map((x) =>
      h(
        "tr",
        { "data-extension": x.name },
        h("td", { class: "name", text: x.name }),
        h("td", { class: "sub", title: x.path, text: x.path }),
        h("td", {}, x.loaded ? badge("loaded", "ok") : badge("not loaded", "error")),
        h(
          "td",
          { class: "actions" },
          h("button", {
            type: "button",
            "data-action": "unload",
            title: `Take extension ${x.name} out of the node`,
            onclick: (e) => unload(e, { extension: x.path }, `extension ${x.name}`, `Module ${x.name} leaves the node once its calls finish, and is no longer loaded at restart. A rollback of ${x.name} loads it back.`),
          }, "Unload"),
        ),
      ),
    ),
  );
}

function renderCluster(cluster) {
  $("#cluster-card").hidden = !cluster;
  if (!cluster) return;
  $("#cluster-name").textContent = `${cluster.name} · this member: ${cluster.node} · revision ${cluster.revision ?? "—"}`;
  const state = !cluster.available ? badge("etcd unreachable", "error") : cluster.diverged ? badge("diverged", "partial") : badge("in step", "ok");
  $("#cluster-state").replaceChildren(state);
  $("#members tbody").replaceChildren(
    ...(cluster.members || []).map((m) =>
      h("tr", {}, h("td", { class: "name", text: m.node + (m.node === cluster.node ? " (this node)" : "") }), h("td", { class: "mono", text: m.advertise }), h("td", { text: whenFull(m.since) })),
    ),
  );
}

function renderHistory(history) {
  const entries = history.entries || [];
  $("#history-empty").hidden = entries.length > 0;
  const build = (b, none) => (b ? h("span", {}, h("span", { class: "vsn", text: b.vsn }), " ", h("span", { class: "sha", text: short(b.sha256) })) : h("span", { class: "sub", text: none }));
  $("#history tbody").replaceChildren(
    ...entries.map((e) =>
      h(
        "tr",
        {},
        h("td", { class: "num", text: String(e.id) }),
        h("td", { class: "when", title: whenFull(e.at), text: when(e.at) }),
        h("td", { class: "name", text: e.module }),
        h("td", {}, badge(e.action)),
        h("td", {}, build(e.from, "new")),
        h("td", {}, build(e.to, "unloaded")),
        h("td", { class: "sha", text: e.request_id }),
      ),
    ),
  );
}

/** A reload result as a tree: status, what, swaps, skips, errors, children. */
function resultTree(result, depth) {
  const meta = result.metadata || {};
  const swaps = new Map((meta.swaps || []).map((s) => [s.module, s]));
  const items = [];
  for (const name of result.reloaded || []) {
    const swap = swaps.get(name);
    items.push(h("li", {}, badge(meta.rollback ? "rolled back" : "reloaded", "ok"), " ", h("b", { text: name }), swap ? ` ${swap.old_vsn || "new"} → ${swap.new_vsn}` : ""));
  }
  for (const name of meta.unchanged || []) items.push(h("li", {}, badge("unchanged", "info"), " ", name));
  if (depth === 0) for (const name of meta.unloaded || []) items.push(h("li", {}, badge("unloaded", "ok"), " ", h("b", { text: name })));
  for (const entry of meta.plan || []) {
    items.push(
      h(
        "li",
        {},
        badge("would reload", "info"),
        " ",
        h("b", { text: entry.module }),
        ` ${(entry.from && entry.from.vsn) || "new"} → ${entry.to.vsn}`,
        (entry.exports_added || []).length ? h("div", { class: "sub", text: `+ ${entry.exports_added.join(", ")}` }) : null,
        (entry.exports_removed || []).length ? h("div", { class: "sub", text: `− ${entry.exports_removed.join(", ")}` }) : null,
        ...(entry.processes || []).map((p) => h("div", { class: "sub", text: `process ${p.name}: ${p.code_change ? "migrates" : "cannot migrate"}` })),
      ),
    );
  }
  for (const skip of result.skipped || []) items.push(h("li", {}, badge("skipped", "partial"), ` ${skip.target}: ${skip.reason}`));
  for (const error of result.errors || []) {
    items.push(h("li", {}, badge("error"), " ", h("b", { text: error.target }), " ", h("span", { class: "reason", text: error.reason }), error.message ? h("pre", { text: error.message }) : null));
  }
  const children = (result.results || []).map((child) => h("div", { class: "child" }, resultTree(child, depth + 1)));
  return h(
    "div",
    { class: "node-result", "data-status": result.status },
    h(
      "div",
      { class: "head" },
      badge(result.status),
      h("span", { class: "what", text: `${result.kind} ${result.target}` }),
      h("span", { class: "sub", text: `${result.duration_ms} ms` }),
      meta.dry_run ? badge("dry run — nothing committed", "info") : null,
    ),
    items.length ? h("ul", {}, items) : null,
    children,
  );
}

function showResult(result, label) {
  $("#result").replaceChildren(h("div", { class: "sub", text: label }), resultTree(result, 0));
}

function showError(label, err) {
  const code = err.data && err.data.code ? ` (${err.data.code})` : "";
  $("#result").replaceChildren(
    h("div", { class: "sub", text: label }),
    h("div", { class: "node-result", "data-status": "error" }, h("div", { class: "head" }, badge("error"), h("span", { class: "what", text: `${err.message}${code}` }))),
  );
}

async function act(event, action, module) {
  const button = event.currentTarget;
  const options = {
    force: $("#opt-force").checked,
    atomic: $("#opt-atomic").checked,
  };
  let method;
  let params;
  if (action === "reload") {
    method = "system.reload";
    params = { scope: "module", module, ...options, dry_run: $("#opt-dry-run").checked };
  } else if (action === "rollback") {
    method = "system.rollback";
    params = { module, ...options };
  } else {
    method = "system.promote";
    params = { module };
  }
  const label = `${action} module ${module} · ${new Date().toLocaleTimeString()}`;
  button.disabled = true;
  button.classList.add("busy");
  try {
    showResult(await rpc(method, params), label);
  } catch (err) {
    showError(label, err);
  } finally {
    button.classList.remove("busy");
    button.disabled = false;
    refresh();
  }
}

/** Asks first (a dialog on the page), then sends `system.unload`. */
function unload(event, params, what, consequence) {
  const button = event.currentTarget;
  const dialog = $("#confirm");
  $("#confirm-title").textContent = `Unload ${what}?`;
  $("#confirm-text").textContent = consequence;
  const answer = (confirmed) => async () => {
    dialog.close();
    if (!confirmed) return;
    const label = `unload ${what} · ${new Date().toLocaleTimeString()}`;
    button.disabled = true;
    button.classList.add("busy");
    try {
      showResult(await rpc("system.unload", params), label);
    } catch (err) {
      showError(label, err);
    } finally {
      button.classList.remove("busy");
      button.disabled = false;
      refresh();
    }
  };
  dialog.querySelector('[data-action="confirm"]').onclick = answer(true);
  dialog.querySelector('[data-action="cancel"]').onclick = answer(false);
  dialog.showModal();
}

function onEvent(event) {
  if (!event) return;
  const list = $("#events");
  const meta = event.metadata || {};
  const name = event.event || "";
  const kind = name.split(".").pop();
  let detail = "";
  if (name === "zest.reload.stop") detail = `${meta.status} · ${event.measurements.duration_ms} ms`;
  else if (name === "zest.reload.exception") detail = meta.error || "";
  else if (name === "zest.build.output") detail = `${meta.stream}| ${meta.line}`;
  else if (name === "zest.reload.reverted") detail = `reverted: ${event.measurements.failures} of ${event.measurements.calls} calls failed`;
  else if (name === "zest.reload.permanent") detail = `permanent: ${event.measurements.failures} of ${event.measurements.calls} calls failed`;
  else if (name === "zest.cluster.abort") detail = `${meta.reason}: ${meta.message}`;
  else if (name === "zest.cluster.commit") detail = `revision ${event.measurements.revision}`;
  const nearBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  list.append(
    h(
      "li",
      { "data-event": name },
      h("span", { class: "time", text: new Date().toLocaleTimeString() }),
      h(
        "span",
        { class: "line" },
        h("span", { class: `ev ${kind}`, text: name }),
        " ",
        `${meta.kind || ""} ${meta.target || ""}`.trim(),
        detail ? ` — ${detail}` : "",
        meta.request_id ? h("span", { class: "req", text: ` [${meta.request_id}]` }) : null,
      ),
    ),
  );
  while (list.children.length > MAX_EVENTS) list.firstElementChild.remove();
  if (nearBottom) list.scrollTop = list.scrollHeight;
  if (/^zest\.(reload\.(stop|exception|reverted|permanent)|cluster\.commit)$/.test(name)) refreshSoon();
}

// ---------------------------------------------------------------- start

document.addEventListener("DOMContentLoaded", () => {
  $("#login").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = new FormData(event.currentTarget).get("token").trim();
    if (token) signIn(token, true);
  });
  $("#sign-out").addEventListener("click", () => signOut(""));
  $("#events-clear").addEventListener("click", () => $("#events").replaceChildren());
  setInterval(() => {
    if (conn.live && document.visibilityState === "visible") refresh();
  }, POLL_MS);
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) signIn(saved, false);
  else $("#login input[name=token]").focus();
});
