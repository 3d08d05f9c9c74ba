// The control panel: log in, show the robot live, drive it.  Plain DOM, no framework: the model is
// in robot.js; this file turns it into tables (redrawn at most every 250 ms) and controls (made
// once per resource, so a slider being dragged is never replaced under the pointer).
import uPlot from "uplot";
import { Robot } from "./robot.js";

const $ = (sel) => document.querySelector(sel);
const now = () => Date.now() / 1000;
let robot = null;
let readOnly = false; // logged in as a viewer: no session, no controls
let config = { robot: "robot", websocket_url: null, websocket_port: null };
let plot = null;
let plotKey = "";
let redrawQueued = false;

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(e.dataset, v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function stateSpan(text) {
  return el("span", { class: `st-${String(text).replace(/[^a-z]/g, "")}` }, text);
}

function age(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  return seconds < 10 ? `${(seconds * 1000).toFixed(0)} ms` : `${seconds.toFixed(1)} s`;
}

function clock(t) {
  return new Date(t * 1000).toLocaleTimeString([], { hour12: false }) + "." + String(Math.floor((t * 1000) % 1000)).padStart(3, "0");
}

// -- errors ---------------------------------------------------------------------------------------
function showError(err, what = "") {
  const kind = err && err.kind ? err.kind : "Error";
  const li = el("li", { class: "robot-error", dataset: { code: (err && err.code) || "error" } },
    el("b", {}, kind), (what ? `${what}: ` : "") + (err && err.message ? err.message : String(err)));
  const list = $("#errors");
  list.prepend(li);
  while (list.children.length > 5) list.lastChild.remove();
  setTimeout(() => li.remove(), 20000);
}

/** Run a robot action from a control: errors are shown as they come, never thrown into the void. */
async function act(what, fn) {
  try {
    return await fn();
  } catch (err) {
    showError(err, what);
    return undefined;
  }
}

/** An actuating call in this page's session (a new one is opened if the robot ended the last). */
async function drive(part, res, method, args) {
  return act(`${part}/${res}.${method}`, async () => {
    await robot.ensureSession();
    return robot.call(part, res, method, args);
  });
}

// -- controls, made once per resource ---------------------------------------------------------------
function motorControls(part, res) {
  const path = `${part}/${res}`;
  const value = el("span", { class: "num" }, "0 %");
  const slider = el("input", { type: "range", min: "-100", max: "100", step: "5", value: "0",
    "aria-label": `${path} power`, dataset: { power: path } });
  // one call in flight at a time, the latest position wins (a drag makes dozens of input events)
  let busy = false;
  let wanted = null;
  const send = async () => {
    if (busy) return;
    busy = true;
    while (wanted !== null) {
      const p = wanted;
      wanted = null;
      await drive(part, res, "set_power", { power: p / 100 });
    }
    busy = false;
  };
  slider.addEventListener("input", () => {
    value.textContent = `${slider.value} %`;
    wanted = Number(slider.value);
    send();
  });
  const stop = el("button", { dataset: { stop: path }, onclick: () => {
    slider.value = "0";
    value.textContent = "0 %";
    wanted = null;
    drive(part, res, "stop", {});
  } }, "stop");
  return [slider, value, stop];
}

function baseControls(part, res) {
  const path = `${part}/${res}`;
  const go = (linear, angular) => () => drive(part, res, "set_power", { linear, angular });
  const b = (label, title, fn) => el("button", { title, onclick: fn, dataset: { drive: `${path}:${title}` } }, label);
  const pad = el("span", { class: "pad" },
    el("span"), b("\u25b2", "forward", go(0.5, 0)), el("span"),
    b("\u25c0", "left", go(0, 0.5)), b("\u25a0", "stop", () => drive(part, res, "stop", {})), b("\u25b6", "right", go(0, -0.5)),
    el("span"), b("\u25bc", "back", go(-0.5, 0)), el("span"));
  return [pad];
}

function servoControls(part, res) {
  const angle = el("input", { type: "number", min: "0", max: "180", value: "90", size: "4", "aria-label": `${part}/${res} angle` });
  return [angle, "\u00b0", el("button", { onclick: () => drive(part, res, "move", { angle_deg: Number(angle.value) }) }, "move"),
    el("button", { onclick: () => drive(part, res, "stop", {}) }, "stop")];
}

function gripperControls(part, res) {
  return [el("button", { onclick: () => drive(part, res, "open", {}) }, "open"),
    el("button", { onclick: async () => {
      const held = await drive(part, res, "grab", {});
      if (held !== undefined) robot.note("call", part, `${res}.grab: ${held ? "holding something" : "nothing held"}`);
    } }, "grab"),
    el("button", { onclick: () => drive(part, res, "stop", {}) }, "stop")];
}

function sensorControls(part, res) {
  const out = el("code");
  return [el("button", { onclick: async () => {
    const r = await act(`${part}/${res}.get_readings`, () => robot.call(part, res, "get_readings", {}));
    if (r !== undefined) out.textContent = JSON.stringify(r);
  } }, "read"), out];
}

function controlsFor(part, info) {
  const kind = String(info.api || "").split(":")[2] || "";
  const names = new Set((info.methods || []).map((m) => m.name));
  if (kind === "motor") return motorControls(part, info.name);
  if (kind === "base") return baseControls(part, info.name);
  if (kind === "servo") return servoControls(part, info.name);
  if (kind === "gripper") return gripperControls(part, info.name);
  if (kind === "sensor") return sensorControls(part, info.name);
  if (names.has("stop")) return [el("button", { onclick: () => drive(part, info.name, "stop", {}) }, "stop")];
  return [];
}

// -- tables, redrawn ---------------------------------------------------------------------------------
function tree() {
  // parts in tree order (parents first), as RobotView.ordered_parts
  const parent = {};
  for (const [n, p] of Object.entries(robot.parts)) parent[n] = p.parent || null;
  for (const [n, p] of Object.entries((robot.status && robot.status.parts) || {})) if (!(n in parent)) parent[n] = p.parent || null;
  const out = [];
  const visit = (n, depth) => {
    if (out.some(([m]) => m === n)) return;
    out.push([n, depth]);
    for (const c of Object.keys(parent).filter((c) => parent[c] === n).sort()) visit(c, depth + 1);
  };
  for (const r of Object.keys(parent).filter((n) => !parent[n] || !(parent[n] in parent)).sort()) visit(r, 0);
  return out;
}

function heartbeatAge(name) {
  const pulse = robot.liveness && (robot.liveness.parts || {})[name];
  if (!pulse || pulse.age_s === null || pulse.age_s === undefined) return null;
  const late = now() - robot.livenessAt;
  return pulse.age_s + (late > 2.5 ? late : 0); // reports stopped coming: an upper bound that grows
}

function drawParts() {
  const body = $("#parts tbody");
  body.replaceChildren();
  const upstream = robot.upstream ? robot.upstream.state : (robot.status ? robot.status.upstream : "-");
  for (const [name, depth] of tree()) {
    const p = robot.parts[name] || {};
    const st = ((robot.status && robot.status.parts) || {})[name] || {};
    const isPrimary = robot.primary === name;
    const state = p.state || st.state || "unknown";
    const link = isPrimary ? `upstream: ${upstream}` : p.parent ? `\u2192 ${p.parent}` : "-";
    body.append(el("tr", { dataset: { part: name, state } },
      el("td", { class: `indent${Math.min(depth, 3)}` }, name, isPrimary ? " (primary)" : ""),
      el("td", { class: "state" }, stateSpan(state)),
      el("td", { class: "num" }, isPrimary ? "(it watches)" : age(heartbeatAge(name))),
      el("td", { class: "num" }, st.restarts || 0),
      el("td", { class: "num" }, p.pid || "-"),
      el("td", {}, link),
      el("td", {}, st.reason || p.reason || "")));
  }
}

function owners() {
  const out = {};
  for (const [part, s] of Object.entries(robot.sessions)) {
    for (const t of s.tracked || []) for (const r of t.resources || []) out[`${part}/${r}`] = t.owner;
  }
  return out;
}

const resourceRows = new Map(); // "part/resource" -> {row, status, owner, model}

function drawResources() {
  const body = $("#resources tbody");
  const own = owners();
  const seen = new Set();
  for (const [name] of tree()) {
    for (const info of robot.resources[name] || []) {
      const path = `${name}/${info.name}`;
      seen.add(path);
      let r = resourceRows.get(path);
      if (!r || r.api !== info.api) {
        if (r) r.row.remove();
        r = { status: el("td"), owner: el("td"), api: info.api };
        r.row = el("tr", { dataset: { resource: path } }, el("td", {}, path), el("td", {}, info.model), r.status, r.owner,
          el("td", { class: "controls" }, ...controlsFor(name, info)));
        resourceRows.set(path, r);
      }
      body.append(r.row); // keeps tree order; moving a node keeps its controls
      r.status.replaceChildren(stateSpan(info.status), info.reason ? ` ${info.reason}` : "");
      const o = own[path] || "";
      r.owner.textContent = o === robot.topics.sender ? `${o} (this page)` : o || "-";
    }
  }
  for (const [path, r] of resourceRows) if (!seen.has(path)) { r.row.remove(); resourceRows.delete(path); }
  const select = $("#call-resource");
  const paths = [...seen].sort();
  if (select.options.length !== paths.length) {
    const old = select.value;
    select.replaceChildren(...paths.map((p) => el("option", { value: p }, p)));
    if (paths.includes(old)) select.value = old;
  }
}

function drawTelemetry() {
  const body = $("#telemetry tbody");
  body.replaceChildren();
  const keys = Object.keys(robot.telemetry).sort();
  for (const key of keys) {
    const t = robot.telemetry[key];
    const text = Object.entries(t.readings).map(([k, v]) => `${k}=${typeof v === "number" ? +v.toFixed(3) : JSON.stringify(v)}`).join("  ");
    body.append(el("tr", { dataset: { sensor: key } }, el("td", {}, key), el("td", {}, el("code", {}, text)), el("td", { class: "num" }, age(now() - t.at))));
  }
  const select = $("#plot-select");
  if (select.options.length !== keys.length) {
    const old = select.value;
    select.replaceChildren(...keys.map((k) => el("option", { value: k }, k)));
    if (keys.includes(old)) select.value = old;
  }
  drawPlot(select.value);
}

function drawPlot(key) {
  const samples = robot.samples[key] || [];
  const series = [...new Set(samples.flatMap(([, r]) => Object.keys(r)))].slice(0, 8);
  const data = [samples.map(([t]) => t), ...series.map((k) => samples.map(([, r]) => (k in r ? r[k] : null)))];
  const signature = `${key}|${series.join(",")}`;
  if (!plot || plotKey !== signature) {
    if (plot) plot.destroy();
    plotKey = signature;
    const colors = ["#1565c0", "#c62828", "#2e7d32", "#ef6c00", "#6a1b9a", "#00838f", "#5d4037", "#455a64"];
    plot = new uPlot({
      width: Math.min(760, $("#plot").clientWidth || 600), height: 200,
      series: [{}, ...series.map((k, i) => ({ label: k, stroke: colors[i], width: 1.5, spanGaps: true }))],
      scales: { x: { time: true } },
    }, data, $("#plot"));
  } else {
    plot.setData(data);
  }
}

function drawSessions() {
  const merged = {};
  for (const [part, s] of Object.entries(robot.sessions)) {
    for (const t of s.tracked || []) {
      const m = (merged[t.session] ||= { owner: t.owner, window: t.window_s, parts: [], resources: [] });
      m.parts.push(part);
      for (const r of t.resources || []) m.resources.push(`${part}/${r}`);
    }
  }
  const mine = robot.session && !robot.session.ended ? robot.session.publicId : null;
  $("#sessions tbody").replaceChildren(...Object.entries(merged).map(([id, m]) => el("tr", { dataset: { session: id } },
    el("td", {}, id.slice(0, 8), id === mine ? " (this page)" : ""), el("td", {}, m.owner), el("td", {}, `${m.window} s`),
    el("td", {}, m.parts.sort().join(", ")), el("td", {}, m.resources.sort().join(", ") || "-"))));
}

function drawTimeline() {
  const t = robot.timeline;
  if (!t) return;
  const rel = (x) => (x ? `+${((x - t.started_at) * 1000).toFixed(0)} ms` : "-");
  const took = t.finished_at ? `, took ${((t.finished_at - t.started_at) * 1000).toFixed(0)} ms` : ", unfinished";
  $("#timeline-summary").textContent = `${clock(t.started_at)}: ${t.reason || "shutdown"}${took} (${t.shutdown_id})`;
  $("#timeline tbody").replaceChildren(...(t.entries || []).map((e) => el("tr", {},
    el("td", {}, e.part), el("td", {}, rel(e.asked_at)), el("td", {}, rel(e.began_at)), el("td", {}, rel(e.stopped_at)),
    el("td", {}, e.killed ? "killed" : e.forced ? "forced" : e.by ? `by ${e.by}` : "clean"),
    el("td", {}, (e.resources_stopped || []).join(", ")), el("td", {}, (e.errors || []).join("; ")))));
}

function drawEvents() {
  $("#events").replaceChildren(...robot.events.slice(0, 100).map((e) =>
    el("li", { class: e.level }, el("time", {}, clock(e.at)), `${e.part ? e.part + ": " : ""}${e.kind}: ${e.text}`)));
}

function drawHeader() {
  const st = robot.status;
  $("#robot-state").textContent = st ? st.state : "no status yet";
  $("#robot-state").className = `badge st-${st ? st.state : "unknown"}`;
  $("#connection").textContent = robot.connected ? "connected" : "disconnected";
  $("#upstream").textContent = robot.upstream ? robot.upstream.state : (st ? st.upstream : "-");
  const s = robot.session;
  const text = readOnly ? `none: watching as viewer ${robot.client} (read-only)` : !s ? "none" : s.ended ? `ended (${s.ended})` :
    `${s.publicId.slice(0, 8)}, window ${s.windowS} s, ${s.heartbeats} heartbeats${s.hbConnected ? "" : " (heartbeat link down)"}`;
  $("#session").textContent = text;
  $("#session").dataset.state = !s ? "none" : s.ended ? "ended" : "open";
}

function redraw() {
  redrawQueued = false;
  drawHeader();
  drawParts();
  drawResources();
  drawTelemetry();
  drawSessions();
  drawTimeline();
  drawEvents();
}

function queueRedraw() {
  if (!redrawQueued) {
    redrawQueued = true;
    setTimeout(redraw, 250);
  }
}

// -- login and the robot-wide buttons ------------------------------------------------------------------
function websocketUrl() {
  if (config.websocket_url) return config.websocket_url;
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${location.hostname}:${config.websocket_port}/`;
}

async function login(ev) {
  ev.preventDefault();
  const client = $("#client").value.trim();
  const password = $("#password").value;
  $("#login-error").textContent = "";
  $("#login-button").disabled = true;
  // a viewer identity may read the robot but publish nothing: the page watches, with no session and no
  // controls (the broker would drop what it sent anyway)
  const viewer = (config.viewers || []).includes(client);
  const r = new Robot({ url: websocketUrl(), robot: config.robot, client, password, viewer });
  try {
    await r.connect();
  } catch (err) {
    $("#login-error").textContent = String(err.message || err);
    $("#login-button").disabled = false;
    return;
  }
  robot = r;
  window.panel = robot; // for the console (and the tests)
  sessionStorage.setItem("panel.client", client);
  readOnly = viewer;
  document.body.classList.toggle("read-only", readOnly);
  $("#login").hidden = true;
  $("#panel").hidden = false;
  $("#robot-actions").hidden = readOnly;
  for (const t of ["change", "event", "session", "connection"]) robot.addEventListener(t, queueRedraw);
  robot.addEventListener("robot-error", (e) => showError(e.detail));
  robot.addEventListener("warning", (e) => robot.note("panel", "", e.detail, "warning"));
  setInterval(queueRedraw, 1000); // ages grow even when nothing arrives
  // the primary's name comes with its retained status, at once after subscribing
  for (let i = 0; i < 50 && !robot.primary; i++) await new Promise((res) => setTimeout(res, 100));
  if (!readOnly) await act("opening a session", () => robot.openSession());
  queueRedraw();
}

function confirmed(what) {
  return window.confirm(`${what} robot ${config.robot}?`);
}

async function main() {
  try {
    const resp = await fetch("config.json", { cache: "no-store" });
    config = { ...config, ...(await resp.json()) };
  } catch (err) {
    $("#login-error").textContent = `cannot read config.json: ${err}`;
  }
  document.title = `${config.robot}: control panel`;
  $("#robot-name").textContent = config.robot;
  $("#client").value = sessionStorage.getItem("panel.client") || config.client || "operator";
  $("#login").addEventListener("submit", login);
  $("#stop-all").addEventListener("click", async () => {
    const failed = await act("stop all", () => robot.stopAll());
    for (const f of failed || []) showError({ kind: "stop", message: f });
    for (const input of document.querySelectorAll("input[data-power]")) input.value = "0";
  });
  $("#new-session").addEventListener("click", () => act("opening a session", () => robot.openSession()));
  $("#reload").addEventListener("click", () => {
    if (confirmed("Reload the configuration of")) robot.requestReload("requested from the web panel");
  });
  $("#shutdown").addEventListener("click", () => {
    if (confirmed("Shut down")) robot.requestShutdown("requested from the web panel");
  });
  $("#plot-select").addEventListener("change", queueRedraw);
  $("#do-command").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const [part, res] = $("#call-resource").value.split("/");
    let args;
    try {
      args = JSON.parse($("#call-args").value || "{}");
    } catch (err) {
      showError({ kind: "InvalidArgument", message: `arguments are not JSON: ${err.message}` });
      return;
    }
    const result = await drive(part, res, $("#call-method").value.trim(), args);
    $("#call-result").textContent = result === undefined ? "" : JSON.stringify(result);
  });
  // leaving the page closes the session at once (the robot stops what it drove); if the tab dies
  // without this, the heartbeats stop and the session expires within its window
  window.addEventListener("pagehide", () => {
    if (robot) robot.closeSession();
  });
}

main();
