// The page's view of the robot and its one way to act on it: an MQTT-over-WebSocket connection as a
// client identity (the client's topic rights, nothing more), the robot's public topics read into a
// model (as orchestrator/observe.py's RobotView does), calls made as the SDK makes them
// (rpc/client.py), and a session opened with the primary and heartbeated from a Web Worker.
import mqtt from "mqtt";
import { Topics, clientId, pack, unpack } from "./wire.js";

const MAX_EVENTS = 200;
const SAMPLE_WINDOW_S = 60;
const ENDING_KINDS = ["expired", "closed", "ended", "halted", "stopped"];
const SESSION_SERVICE = "_sessions";

/** A robot error as it came from the wire (errors.py to_wire): code, message, details. */
export class RobotError extends Error {
  constructor(code, message, details = {}) {
    super(message);
    this.code = code;
    this.details = details;
  }
  /** The Python exception's name for the codes an operator meets. */
  get kind() {
    const names = {
      invalid_argument: "InvalidArgument", part_offline: "PartOffline", session_expired: "SessionExpired",
      deadline_exceeded: "DeadlineExceeded", unknown_resource: "UnknownResource", unknown_method: "UnknownMethod",
      resource_busy: "ResourceBusy", connection_lost: "ConnectionLost", unavailable: "Unavailable",
      internal: "InternalError",
    };
    return names[this.code] || this.code;
  }
}

export class Robot extends EventTarget {
  constructor({ url, robot, client, password, viewer = false }) {
    super();
    this.url = url;
    this.viewer = viewer; // a viewer identity: reads only, never calls
    this.robotName = robot;
    this.client = client;
    this.password = password;
    this.topics = new Topics(robot, client);
    this.username = password ? `${robot}/client/${client}` : undefined;
    this.mqttId = clientId(robot, client, "panel");
    this.parts = {}; // name -> {state, birth, parent, pid, reason, heartbeat_s, since}
    this.status = null; // RobotStatus of the primary
    this.liveness = null; // LivenessReport, and when it arrived
    this.livenessAt = 0;
    this.resources = {}; // part -> [ResourceInfo]
    this.sessions = {}; // part -> SessionsState
    this.telemetry = {}; // "part/resource" -> {readings, at}
    this.samples = {}; // "part/resource" -> [[t, {key: number}], ...] over the last minute
    this.timeline = null;
    this.upstream = null;
    this.events = [];
    this.session = null; // {id, publicId, windowS, worker, ended, heartbeats}
    this.pending = new Map();
    this.ids = 0;
    this.prefix = `web.${Math.random().toString(16).slice(2, 8)}.`;
    this.mqtt = null;
  }

  get primary() {
    return this.status ? this.status.primary : null;
  }

  // -- connection -------------------------------------------------------------------------------
  /** Resolves once connected and subscribed; rejects on a refused login (no retrying a bad password). */
  connect() {
    return new Promise((resolve, reject) => {
      let settled = false;
      const m = mqtt.connect(this.url, {
        clientId: this.mqttId,
        username: this.username,
        password: this.password || undefined,
        protocolVersion: 4,
        keepalive: 10,
        reconnectPeriod: 1000,
        connectTimeout: 5000,
        clean: true,
      });
      this.mqtt = m;
      m.on("connect", () => {
        m.subscribe(this.topics.subscriptions(this.viewer), { qos: 1 }, (err, granted) => {
          const refused = (granted || []).filter((g) => g.qos === 128).map((g) => g.topic);
          if (refused.length) this.emit("warning", `the broker refused subscriptions: ${refused.join(", ")}`);
          if (!settled) {
            settled = true;
            if (err) reject(err);
            else resolve();
          }
        });
        this.emit("connection", "connected");
      });
      m.on("error", (err) => {
        const text = String(err && err.message ? err.message : err);
        if (!settled && /not authori|bad user|identifier rejected|connack/i.test(text)) {
          settled = true;
          m.end(true);
          reject(new Error(`login refused by the broker: ${text}`));
          return;
        }
        this.emit("connection", `error: ${text}`);
      });
      m.on("close", () => {
        this.failAll(new RobotError("connection_lost", "connection to the broker lost during the call"));
        this.emit("connection", "disconnected");
      });
      m.on("reconnect", () => this.emit("connection", "reconnecting"));
      m.on("message", (topic, payload, packet) => this.onMessage(topic, payload, packet.retain));
    });
  }

  get connected() {
    return this.mqtt !== null && this.mqtt.connected;
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  note(kind, part, text, level = "info", at = Date.now() / 1000) {
    this.events.unshift({ at, kind, part, text: String(text).slice(0, 500), level });
    this.events.length = Math.min(this.events.length, MAX_EVENTS);
    this.emit("event", this.events[0]);
  }

  // -- what arrives -----------------------------------------------------------------------------
  onMessage(topic, payload, retain) {
    const where = this.topics.parse(topic);
    const env = where === null ? null : unpack(payload);
    if (env === null || !this.topics.authentic(topic, env.src, this.primary)) return;
    const [kind, part, rest] = where;
    const b = env.body;
    if (kind === "robot") {
      if (rest === "status") this.onStatus(b, retain);
      else if (rest === "liveness") { this.liveness = b; this.livenessAt = Date.now() / 1000; }
      else if (rest === "timeline") {
        this.timeline = b;
        if (!retain) this.note("shutdown", b.shutdown_id || "", `shutdown timeline (${b.reason || ""})`);
      } else if (rest === "notice" && !retain) this.note("notice", this.primary || "", `robot ${b.kind} ${b.reason || ""}`, "warning");
      else if (rest === "upstream") {
        if (this.upstream && this.upstream.state !== b.state && !retain) {
          this.note("upstream", this.primary || "", `upstream link ${b.state}`, b.state === "down" ? "warning" : "info");
        }
        this.upstream = b;
      }
    } else if (rest === "state") {
      const old = this.parts[part];
      if (old && env.birth < old.birth) return; // a late Will of an older connection
      if (old && old.state !== b.state && !retain) {
        this.note("state", part, b.state + (b.reason ? ` (${b.reason})` : ""), b.state === "offline" ? "warning" : "info");
      }
      this.parts[part] = { ...b, birth: env.birth, since: old && old.state === b.state ? old.since : env.ts };
    } else if (rest === "resources") {
      this.resources[part] = Array.isArray(b.resources) ? b.resources : [];
    } else if (rest === "sessions/state") {
      this.sessions[part] = b;
    } else if (rest === "sessions/events") {
      this.onSessionEvent(b);
    } else if (rest === "events") {
      this.note(String(b.kind || "event"), part, String(b.text || ""), String(b.level || "info"));
    } else if (rest.startsWith("reply/")) {
      this.onReply(part, env);
    } else if (rest.startsWith("telemetry/")) {
      this.onTelemetry(part, b, env.ts);
    }
    this.emit("change", topic);
  }

  onStatus(b, retain) {
    const old = this.status;
    this.status = b;
    if (old && !retain) {
      for (const [name, p] of Object.entries(b.parts || {})) {
        const before = (old.parts || {})[name];
        if (before && before.online && !p.online) this.note("offline", name, p.reason || "offline", "warning");
        if (before && !before.online && p.online) this.note("online", name, "online again");
        if (before && p.restarts > before.restarts) this.note("restart", name, `restarted (restart ${p.restarts})`, "warning");
      }
      if (old.state !== b.state) this.note("robot", b.primary, `robot ${b.state}`);
    }
  }

  onSessionEvent(ev) {
    if (ev.kind !== "owned") {
      let text = `session ${String(ev.session).slice(0, 8)} of ${ev.owner} ${ev.kind}`;
      if (ev.resources && ev.resources.length) text += `: ${ev.resources.join(", ")}`;
      if (ev.reason && ev.kind !== "opened") text += ` (${ev.reason})`;
      this.note("session", ev.part, text, ["expired", "halted"].includes(ev.kind) ? "warning" : "info", ev.at || undefined);
    }
    const s = this.session;
    if (s && !s.ended && ev.session === s.publicId && ENDING_KINDS.includes(ev.kind)) {
      s.ended = ev.reason || `${ev.kind} at part ${ev.part}`;
      s.worker.postMessage({ type: "stop" });
      this.emit("session", s);
      this.emit("robot-error", new RobotError("session_expired", `the robot ended this page's session: ${s.ended}`));
    }
  }

  onTelemetry(part, b, ts) {
    const key = `${part}/${b.resource}`;
    const at = ts || Date.now() / 1000;
    this.telemetry[key] = { readings: b.readings || {}, at };
    const numeric = {};
    for (const [k, v] of Object.entries(b.readings || {})) {
      if (typeof v === "number" && Number.isFinite(v)) numeric[k] = v;
    }
    const q = (this.samples[key] ||= []);
    q.push([at, numeric]);
    while (q.length && q[0][0] < at - SAMPLE_WINDOW_S) q.shift();
  }

  // -- calls ------------------------------------------------------------------------------------
  /** PART/RESOURCE.method(args) in this page's session (or ``session: null``); the result, or a RobotError. */
  call(part, resource, method, args = {}, { timeout = 10, session } = {}) {
    if (!this.connected) {
      return Promise.reject(new RobotError("connection_lost", `not connected to the broker: cannot call ${part}/${resource}`));
    }
    const st = this.parts[part];
    if (st && ["offline", "stopped"].includes(st.state)) {
      return Promise.reject(new RobotError("part_offline", `part ${part} is ${st.state}`, { part }));
    }
    const known = this.status && (this.status.parts || {})[part];
    if (known && !known.online) {
      return Promise.reject(new RobotError("part_offline", `part ${part} is offline (${known.reason || known.state})`, { part }));
    }
    const sid = session === undefined ? (this.session && !this.session.ended ? this.session.id : null) : session;
    const id = this.prefix + this.ids++;
    const body = { id, method, args, deadline: Date.now() / 1000 + timeout, session: sid, on_behalf: null };
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new RobotError("deadline_exceeded", `${part}/${resource}.${method}: no reply within ${timeout} s`));
      }, (timeout + 0.25) * 1000);
      this.pending.set(id, { part, sid, resolve, reject, timer });
      this.mqtt.publish(this.topics.call(part, resource), pack(this.topics.sender, body), { qos: 1 });
    });
  }

  onReply(part, env) {
    const b = env.body;
    const got = this.pending.get(b.id);
    if (!got || got.part !== part) return; // not ours (another connection of this identity), or not from the part called
    this.pending.delete(b.id);
    clearTimeout(got.timer);
    if (b.ok) got.resolve(b.result);
    else {
      const e = b.error || {};
      const s = this.session;
      if (e.code === "session_expired" && s && !s.ended && got.sid === s.id) {
        // the robot ended the session while this page did not hear it (a cut link): the next action opens a new one
        s.ended = "refused by the robot (expired)";
        s.worker.postMessage({ type: "stop" });
        this.emit("session", s);
      }
      got.reject(new RobotError(String(e.code || "error"), String(e.message || e.code || "error"), e.details || {}));
    }
  }

  failAll(err) {
    for (const [id, got] of this.pending) {
      clearTimeout(got.timer);
      got.reject(err);
      this.pending.delete(id);
    }
  }

  // -- the session --------------------------------------------------------------------------------
  /** Open a session with the primary and start its heartbeats in the worker. */
  async openSession() {
    if (!this.primary) throw new RobotError("unavailable", "no robot status yet: which part is the primary?");
    const hbId = clientId(this.robotName, this.client, "hb");
    const info = await this.call(this.primary, SESSION_SERVICE, "open",
      { window_s: null, connections: [this.mqttId, hbId] }, { session: null });
    const worker = new Worker("heartbeat-worker.js", { type: "module" });
    const s = {
      id: String(info.id), publicId: String(info.id).split(".")[0].slice(0, 32), windowS: Number(info.window_s),
      worker, ended: null, heartbeats: 0, hbConnected: false,
    };
    worker.onmessage = (ev) => {
      if (ev.data.type === "status") {
        s.heartbeats = ev.data.sent;
        s.hbConnected = ev.data.connected;
        if (ev.data.error) this.emit("warning", `heartbeat connection: ${ev.data.error}`);
        this.emit("session", s);
      }
    };
    worker.postMessage({
      type: "start", url: this.url, username: this.username, password: this.password, clientId: hbId,
      topic: this.topics.sessionHeartbeat(), sender: this.topics.sender, session: s.id, secret: String(info.secret),
      intervalMs: Math.max(10, (s.windowS * 1000) / 5),
    });
    if (this.session && !this.session.ended) this.session.worker.postMessage({ type: "close" });
    this.session = s;
    this.emit("session", s);
    return s;
  }

  /** A live session, opened now if there is none (the operator just acted: a new one is theirs). */
  async ensureSession() {
    if (this.session && !this.session.ended) return this.session;
    return this.openSession();
  }

  closeSession() {
    if (this.session && !this.session.ended) {
      this.session.worker.postMessage({ type: "close" });
      this.session.ended = "closed by this page";
      this.emit("session", this.session);
    }
  }

  // -- robot-wide requests ----------------------------------------------------------------------
  requestShutdown(reason) {
    this.mqtt.publish(this.topics.shutdown(), pack(this.topics.sender, { reason }), { qos: 1 });
  }

  requestReload(reason) {
    this.mqtt.publish(this.topics.reload(), pack(this.topics.sender, { reason }), { qos: 1 });
  }

  /** Every resource that has a ``stop`` method, stopped at once (in this page's session). */
  async stopAll() {
    const calls = [];
    for (const [part, list] of Object.entries(this.resources)) {
      for (const r of list) {
        if ((r.methods || []).some((m) => m.name === "stop")) {
          calls.push(this.call(part, r.name, "stop", {}, { timeout: 5 }).then(() => null, (e) => `${part}/${r.name}: ${e.message}`));
        }
      }
    }
    return (await Promise.all(calls)).filter((x) => x !== null);
  }
}
