// WebSocket load generator for bench/run.py.
//
//   node bench/loadgen.mjs '<json config>'
//
// Opens `connections` WebSockets (at most `concurrency` handshakes in flight), each speaking one
// target's protocol (reference | gateway | channels) until it is in its room, then prints one
// JSON line {"type":"ready", ...} on stdout. It then reads commands, one JSON line each, on stdin:
//   {"cmd":"collect","timeout_s":T,"quiet_s":Q}  wait until every connection has seq 0..K-1 of
//        its room (K = config `expect`), or nothing came for Q s, or T s passed; then print
//        {"type":"result", ...} and reset the counters
//   {"cmd":"close"}                              close every socket and exit 0
// Events carry payload {"seq": n, "t": <sender wall clock, µs>}; a delivery's latency is the
// receive wall clock minus t. Latencies go into a log histogram (1% buckets) so that the results
// of several load generator processes can be merged exactly by adding bucket counts.

import { createHmac } from "node:crypto";
import { performance } from "node:perf_hooks";
import { createInterface } from "node:readline";
import WebSocket from "ws";

const cfg = JSON.parse(process.argv[2] ?? "{}");
const {
  protocol, // "reference" | "gateway" | "channels"
  urls, // ["ws://127.0.0.1:port/ws", ...]; connection i uses urls[i % urls.length]
  connections = 100,
  concurrency = 50,
  idBase = 0, // connection i is user / personal room number idBase + i
  roomMode = "shared", // "shared": every connection joins `room`; "personal": room cliente_<id>
  room = "service_1",
  expect = 0, // events per room this run will collect, seq 0 .. expect-1
  handshakeTimeoutS = 30,
  jwtSecret = null, // gateway: a HS256 JWT per user (SimpleJWT's claims) instead of cliente-<id>
} = cfg;

if (!["reference", "gateway", "channels"].includes(protocol)) {
  fail(`unknown protocol ${JSON.stringify(protocol)}`);
}
if (!Array.isArray(urls) || urls.length === 0) fail("urls must be a non-empty list");

const nowUs = () => (performance.timeOrigin + performance.now()) * 1000;
const LOG_STEP = Math.log(1.01);
const bucketOf = (us) => Math.max(0, Math.ceil(Math.log1p(Math.max(0, us)) / LOG_STEP));
const HIST_SIZE = bucketOf(600e6) + 1; // up to 10 minutes

function sparse(hist) {
  const out = {};
  hist.forEach((count, bucket) => {
    if (count) out[bucket] = count;
  });
  return out;
}

function fail(message) {
  process.stdout.write(JSON.stringify({ type: "error", message }) + "\n");
  process.exit(2);
}

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

// A SimpleJWT-shaped access token for user `id`, made before the connect phase (a client has
// its token before it connects), so its cost is not in the connect figures.
const b64url = (obj) => Buffer.from(JSON.stringify(obj)).toString("base64url");
function jwtFor(id) {
  const now = Math.floor(Date.now() / 1000);
  const head = b64url({ alg: "HS256", typ: "JWT" });
  const claims = { token_type: "access", exp: now + 3600, iat: now, jti: `bench-${id}` };
  const body = b64url({ ...claims, user_id: String(id), role: "cliente" });
  const sig = createHmac("sha256", jwtSecret).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

// --- per-connection state ------------------------------------------------------------------
class Conn {
  constructor(index) {
    this.id = idBase + index;
    this.url = urls[index % urls.length];
    this.room = roomMode === "personal" ? `cliente_${this.id}` : room;
    this.token = jwtSecret ? jwtFor(this.id) : `cliente-${this.id}`;
    this.roomMark = Buffer.from(`"room":${JSON.stringify(this.room)}`);
    this.seen = new Uint8Array(Math.max(expect, 1)); // deliveries of each seq, saturating at 255
    this.received = 0;
    this.ws = null;
    this.closed = false;
    this.closeCode = null;
  }
}

const conns = Array.from({ length: connections }, (_, i) => new Conn(i));
const stats = newStats();

function newStats() {
  return {
    deliveries: 0,
    unexpected: 0, // events of another room or a seq outside 0..expect-1
    outOfOrder: 0,
    firstRecvUs: null,
    lastRecvUs: null,
    hist: new Uint32Array(HIST_SIZE),
  };
}

// The hot path reads seq, t and room straight from the bytes (JSON.parse costs more than the
// servers' own work per message); every CHECK_EVERY-th event is parsed in full and compared, and a
// frame the fast path cannot read falls back to JSON.parse.
const EVENT_MARK = Buffer.from('"event":"event"');
const SEQ_MARK = Buffer.from('"seq":');
const T_MARK = Buffer.from('"t":');
const CHECK_EVERY = 64;
let sinceCheck = 0;

function readInt(buf, at) {
  let n = 0;
  let i = at;
  for (; i < buf.length; i++) {
    const c = buf[i];
    if (c < 48 || c > 57) break;
    n = n * 10 + (c - 48);
  }
  return i === at ? -1 : n;
}

function fastRead(conn, buf) {
  if (buf.indexOf(EVENT_MARK) < 0) return null;
  const seqAt = buf.indexOf(SEQ_MARK);
  const tAt = buf.indexOf(T_MARK);
  if (seqAt < 0 || tAt < 0 || buf.indexOf(conn.roomMark) < 0) return null;
  return { seq: readInt(buf, seqAt + SEQ_MARK.length), t: readInt(buf, tAt + T_MARK.length) };
}

function slowRead(conn, buf) {
  let frame;
  try {
    frame = JSON.parse(buf);
  } catch {
    return undefined;
  }
  if (frame.event !== "event") return null; // replies and other frames are not deliveries
  const event = frame.data;
  if (event?.room !== conn.room) return undefined;
  return { seq: event?.payload?.seq, t: event?.payload?.t };
}

function record(conn, data) {
  const now = nowUs();
  let got = fastRead(conn, data);
  if (got === null || ++sinceCheck >= CHECK_EVERY) {
    sinceCheck = 0;
    const full = slowRead(conn, data);
    if (got !== null && (full?.seq !== got.seq || full?.t !== got.t)) got = undefined;
    else got = full;
  }
  if (got === null) return;
  const seq = got?.seq;
  if (got === undefined || !Number.isInteger(seq) || seq < 0 || seq >= expect) {
    stats.unexpected += 1;
    return;
  }
  if (seq < conn.lastSeq) stats.outOfOrder += 1;
  conn.lastSeq = seq;
  if (conn.seen[seq] < 255) conn.seen[seq] += 1;
  conn.received += 1;
  stats.deliveries += 1;
  stats.firstRecvUs ??= now;
  stats.lastRecvUs = now;
  stats.hist[Math.min(HIST_SIZE - 1, bucketOf(now - got.t))] += 1;
  if (collecting && conn.received === expect) {
    complete += 1;
    if (complete === connections) finishCollect();
  }
}

// --- the protocols: URL to open, and what makes a connection ready ---------------------------
function openUrl(conn) {
  if (protocol === "gateway") return `${conn.url}?token=${conn.token}`;
  return `${conn.url}?room=${encodeURIComponent(conn.room)}`;
}

// Resolves when the connection is in its room; the first frame decides for the gateway.
function handshake(conn) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(openUrl(conn), {
      perMessageDeflate: false,
      skipUTF8Validation: true, // the sampled JSON.parse checks the frames
    });
    conn.ws = ws;
    conn.lastSeq = -1;
    const timer = setTimeout(
      () => reject(new Error(`handshake timed out after ${handshakeTimeoutS} s`)),
      handshakeTimeoutS * 1000,
    );
    let settled = false;
    const done = (err) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      ws.off("message", onHandshake);
      if (err) {
        ws.terminate();
        reject(err);
        return;
      }
      ws.on("message", (data) => record(conn, data));
      resolve();
    };
    const onHandshake = (data) => {
      let frame;
      try {
        frame = JSON.parse(data);
      } catch {
        done(new Error(`non-JSON frame during handshake: ${String(data).slice(0, 200)}`));
        return;
      }
      if (protocol === "gateway" && frame.event === "auth_success") {
        if (roomMode === "personal") {
          const rooms = frame.data?.rooms ?? [];
          if (!rooms.includes(conn.room)) {
            done(new Error(`auth_success without ${conn.room}: ${JSON.stringify(rooms)}`));
          } else done();
        } else {
          ws.send(JSON.stringify({ event: "join_room", data: { room: conn.room }, id: 1 }));
        }
      } else if (frame.event === "room_joined" && frame.data?.room === conn.room) {
        done();
      } else {
        done(new Error(`unexpected frame during handshake: ${String(data).slice(0, 300)}`));
      }
    };
    ws.on("message", onHandshake);
    ws.on("error", (err) => done(err));
    ws.on("close", (code) => {
      conn.closed = true;
      conn.closeCode = code;
      if (!shuttingDown) closedEarly.push(code);
      done(new Error(`closed with ${code} during handshake`));
    });
  });
}

// --- connect phase ---------------------------------------------------------------------------
let shuttingDown = false;
const closedEarly = [];

async function connectAll() {
  const connectHist = new Map();
  const errors = [];
  let next = 0;
  const startUs = nowUs();
  const cpu0 = process.cpuUsage();
  async function worker() {
    while (next < conns.length) {
      const conn = conns[next++];
      const t0 = nowUs();
      try {
        await handshake(conn);
        const b = bucketOf(nowUs() - t0);
        connectHist.set(b, (connectHist.get(b) ?? 0) + 1);
      } catch (err) {
        errors.push(String(err?.message ?? err));
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, conns.length) }, worker));
  const endUs = nowUs();
  return {
    type: "ready",
    connections,
    connected: connections - errors.length,
    failed: errors.length,
    errors: errors.slice(0, 5),
    startUs,
    endUs,
    connectHist: Object.fromEntries(connectHist),
    cpuUs: ((c) => c.user + c.system)(process.cpuUsage(cpu0)), // this phase only
  };
}

// --- collect phase ---------------------------------------------------------------------------
let collecting = false;
let complete = 0;
let collectResolve = null;

function finishCollect() {
  if (collectResolve) {
    const resolve = collectResolve;
    collectResolve = null;
    resolve();
  }
}

async function collect(cmd) {
  const cpu0 = process.cpuUsage();
  const wall0 = nowUs();
  complete = conns.filter((c) => c.received >= expect).length;
  collecting = true;
  // Done when every connection has all its events, when nothing arrived for quiet_s seconds
  // (counted from the later of this command and the last delivery; what is missing by then is
  // lost), or at timeout_s.
  const quietUs = (cmd.quiet_s ?? 5) * 1e6;
  let quietTimer = null;
  let hardTimer = null;
  await new Promise((resolve) => {
    collectResolve = resolve;
    if (complete === connections) finishCollect();
    hardTimer = setTimeout(finishCollect, (cmd.timeout_s ?? 120) * 1000);
    quietTimer = setInterval(() => {
      if (nowUs() - Math.max(stats.lastRecvUs ?? 0, wall0) > quietUs) finishCollect();
    }, 100);
  });
  clearInterval(quietTimer);
  clearTimeout(hardTimer);
  collecting = false;
  let lost = 0;
  let dup = 0;
  for (const conn of conns) {
    for (let s = 0; s < expect; s++) {
      const n = conn.seen[s];
      if (n === 0) lost += 1;
      else if (n > 1) dup += n - 1;
    }
    conn.seen.fill(0);
    conn.received = 0;
    conn.lastSeq = -1;
  }
  const cpu = process.cpuUsage(cpu0);
  const result = {
    type: "result",
    connections,
    expect,
    deliveries: stats.deliveries,
    lost,
    dup,
    unexpected: stats.unexpected,
    outOfOrder: stats.outOfOrder,
    closed: conns.filter((c) => c.closed).length,
    closeCodes: [...new Set(closedEarly)],
    firstRecvUs: stats.firstRecvUs,
    lastRecvUs: stats.lastRecvUs,
    latencyHist: sparse(stats.hist),
    cpuUs: cpu.user + cpu.system,
    wallUs: nowUs() - wall0,
  };
  Object.assign(stats, newStats());
  emit(result);
}

async function closeAll() {
  shuttingDown = true;
  await Promise.all(
    conns.map(
      (conn) =>
        new Promise((resolve) => {
          const ws = conn.ws;
          if (!ws || ws.readyState === WebSocket.CLOSED) {
            resolve();
            return;
          }
          ws.once("close", resolve);
          ws.close(1000);
          setTimeout(() => {
            ws.terminate();
            resolve();
          }, 2000);
        }),
    ),
  );
}

// --- main ------------------------------------------------------------------------------------
emit(await connectAll());
const commands = createInterface({ input: process.stdin });
for await (const line of commands) {
  if (!line.trim()) continue;
  const cmd = JSON.parse(line);
  if (cmd.cmd === "collect") await collect(cmd);
  else if (cmd.cmd === "close") break;
  else emit({ type: "error", message: `unknown command ${line}` });
}
await closeAll();
process.exit(0);
