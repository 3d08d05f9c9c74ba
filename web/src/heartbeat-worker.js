// The page's session heartbeats, from a Web Worker over an MQTT connection of its own: a busy tab
// (or a tab in the background, whose timers the browser slows down) does not expire the session.
// The same scheme as orchestrator/sessions/heartbeat.py: a rising counter n and its HMAC under the
// session's heartbeat secret, on the owner's session/hb topic, every window / 5.
//
// Messages from the page:  {type: "start", url, username, password, clientId, topic, sender, session,
//                           secret, intervalMs}   {type: "close"} (closing heartbeat, then stop)
//                          {type: "stop"} (the robot ended the session: stop beating)
// Messages to the page:    {type: "status", connected, sent, error}
import mqtt from "mqtt";
import { heartbeatTag, pack } from "./wire.js";

let client = null;
let timer = null;
let job = null;
let n = 0;
let sent = 0;

function status(extra = {}) {
  postMessage({ type: "status", connected: client !== null && client.connected, sent, ...extra });
}

function beat(close = false) {
  if (client === null || job === null || !client.connected) return false;
  n += 1;
  const body = { session: job.session, n, tag: heartbeatTag(job.secret, job.session, n), close };
  client.publish(job.topic, pack(job.sender, body), { qos: close ? 1 : 0 });
  sent += 1;
  return true;
}

function stop() {
  if (timer !== null) clearInterval(timer);
  timer = null;
}

function start(msg) {
  job = msg;
  client = mqtt.connect(msg.url, {
    clientId: msg.clientId,
    username: msg.username || undefined,
    password: msg.password || undefined,
    protocolVersion: 4, // the embedded broker speaks MQTT 3.1.1 only
    keepalive: 10,
    reconnectPeriod: 1000,
    connectTimeout: 5000,
    clean: true,
  });
  client.on("connect", () => status());
  client.on("close", () => status());
  client.on("error", (err) => status({ error: String(err && err.message ? err.message : err) }));
  timer = setInterval(() => {
    beat();
    status(); // the page shows the count; one message per beat (5 per window) is nothing
  }, msg.intervalMs);
}

onmessage = (ev) => {
  const msg = ev.data;
  if (msg.type === "start" && job === null) {
    start(msg);
  } else if (msg.type === "close") {
    stop();
    if (beat(true)) {
      // the closing heartbeat is QoS 1: end the connection once it went out
      client.end(false, {}, () => status({ closed: true }));
    } else if (client !== null) {
      client.end(true);
    }
  } else if (msg.type === "stop") {
    stop();
    if (client !== null) client.end(true);
    status({ closed: true });
  }
};
