// The robot's wire, as the Python side speaks it (orchestrator/protocol): msgpack envelopes, the
// topic layout of Topics, the session heartbeat tag of sessions/tokens.py.  Shared by the page and
// its heartbeat worker.
import { encode, decode } from "@msgpack/msgpack";
import { hmac } from "@noble/hashes/hmac";
import { sha256 } from "@noble/hashes/sha2";
import { bytesToHex, utf8ToBytes } from "@noble/hashes/utils";

export const PROTOCOL_VERSION = 1;
const TAG_LEN = 24;

/** One envelope (codec.encode): version, sender, birth, sequence, wall-clock seconds, body. */
export function pack(src, body) {
  return encode({ v: PROTOCOL_VERSION, src, birth: 0, seq: 0, ts: Date.now() / 1000, body });
}

/** The envelope of a payload, or null when it is not one of ours (codec.decode, without pydantic). */
export function unpack(payload) {
  let raw;
  try {
    raw = decode(payload);
  } catch {
    return null;
  }
  if (raw === null || typeof raw !== "object" || raw.v !== PROTOCOL_VERSION || typeof raw.src !== "string") {
    return null;
  }
  if (raw.body === null || typeof raw.body !== "object") raw.body = {};
  return raw;
}

/** sessions/tokens.heartbeat_tag: HMAC-SHA256(secret, "<session id>|<n>"), hex, first 24 characters. */
export function heartbeatTag(secret, sessionId, n) {
  const mac = hmac(sha256, utf8ToBytes(secret), utf8ToBytes(`${sessionId}|${n}`));
  return bytesToHex(mac).slice(0, TAG_LEN);
}

/** The topics of one robot (protocol/topics.py), for one client identity. */
export class Topics {
  constructor(robot, client) {
    this.robot = robot;
    this.client = client;
    this.root = `orc/v${PROTOCOL_VERSION}/${robot}`;
    this.sender = `client/${client}`;
  }
  call(part, resource) { return `${this.root}/${this.sender}/call/${part}/${resource}`; }
  replies() { return `${this.root}/part/+/reply/${this.sender}`; }
  sessionHeartbeat() { return `${this.root}/${this.sender}/session/hb`; }
  shutdown() { return `${this.root}/${this.sender}/shutdown`; }
  reload() { return `${this.root}/${this.sender}/reload`; }
  // what the page reads: every one is in the client's read rights (security/acl.py, _public_reads), and
  // the replies to its calls for an operator (a viewer makes no call and may not read any reply)
  subscriptions(viewer = false) {
    const r = this.root;
    return [
      `${r}/part/+/state`, `${r}/part/+/resources`, `${r}/part/+/telemetry/+`, `${r}/part/+/sessions/events`,
      `${r}/part/+/sessions/state`, `${r}/part/+/events`, `${r}/robot/status`, `${r}/robot/liveness`,
      `${r}/robot/timeline`, `${r}/robot/notice`, `${r}/robot/upstream`, ...(viewer ? [] : [this.replies()]),
    ];
  }
  /** [kind, part, rest] of a topic of this robot: kind "part" or "robot"; null otherwise. */
  parse(topic) {
    if (!topic.startsWith(this.root + "/")) return null;
    const bits = topic.slice(this.root.length + 1).split("/");
    if (bits[0] === "robot") return ["robot", null, bits.slice(1).join("/")];
    if (bits[0] === "part" && bits.length >= 3) return ["part", bits[1], bits.slice(2).join("/")];
    return null;
  }
  /** Topics.authentic: a part topic belongs to that part; robot/... to the primary (any part if unknown). */
  authentic(topic, src, primary) {
    const p = this.parse(topic);
    if (p === null) return false;
    if (p[0] === "robot") return primary ? src === `part/${primary}` : src.startsWith("part/");
    return src === `part/${p[1]}`;
  }
}

/** An MQTT client id for this browser: unique per connection, as the SDK's. */
export function clientId(robot, client, what) {
  const rand = Math.random().toString(16).slice(2, 8);
  return `${robot}.client.${client}.web-${what}.${rand}`;
}
