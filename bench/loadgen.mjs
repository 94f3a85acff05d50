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
// Protocol "socketio" speaks Engine.IO 4 / Socket.IO 5 over a plain WebSocket
// (`/socket.io/?EIO=4&transport=websocket`): CONNECT with auth {room}, `room_joined` back, events
// as `42["event",{...}]`, Engine.IO pings ("2") answered with "3".
// Events carry payload {"seq": n, "t": <sender wall clock, µs>}; a delivery's latency is the
// receive wall clock minus t. Latencies go into a log histogram (1% buckets) so that the results
// of several load generator processes can be merged exactly by adding bucket counts.

import { createHmac } from "node:crypto";
import { performance } from "node:perf_hooks";
import { createInterface } from "node:readline";
import WebSocket from "ws";

const cfg = JSON.parse(process.argv[2] ?? "{}");
const {
  protocol, // "reference" | "gateway" | "channels" | "socketio"
  urls, // ["ws://127.0.0.1:port/ws", ...]; connection i uses urls[i % urls.length]
  connections = 100,
  concurrency = 50,
  idBase = 0, // connection i is user / personal room number idBase + i
  roomMode = "shared", // "shared": every connection joins `room`; "personal": room cliente_<id>
  room = "service_1",
  expect = 0, // events per room this run will collect, seq 0 .. expect-1
  // With eventsTotal > 0, events were published round-robin over `totalConnections` rooms from
  // id `firstId` and stopped after eventsTotal: a room gets `expect` or `expect - 1` of them.
  eventsTotal = 0,
  totalConnections = 0,
  firstId = 0,
  handshakeTimeoutS = 30,
  localAddresses = [], // source addresses (127.0.0.x), connection i uses [i % n]: more ports
  // recover (gateway): a connection the server closes reconnects to the next URL (after
  // 0..reconnectJitterMs ms, doubling per failed try) and joins its room again with `since`
  // (the last offset/epoch it processed); `missed` counts as delivered. {"cmd":"storm"} reports.
  recover = false,
  reconnectJitterMs = 1000,
  jwtSecret = null, // gateway: a HS256 JWT per user (SimpleJWT's claims) instead of cliente-<id>
} = cfg;

if (!["reference", "gateway", "channels", "socketio"].includes(protocol)) {
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
    this.urlIndex = index % urls.length;
    this.url = urls[this.urlIndex];
    this.pos = null; // {offset, epoch} of the last event processed (recover mode)
    this.room = roomMode === "personal" ? `cliente_${this.id}` : room;
    this.ownRoom = this.room;
    this.token = jwtSecret ? jwtFor(this.id) : `cliente-${this.id}`;
    this.roomMark = Buffer.from(`"room":${JSON.stringify(this.room)}`);
    this.localAddress = localAddresses.length ? localAddresses[index % localAddresses.length] : null;
    this.expect = expectOf(this.id);
    this.seen = new Uint8Array(Math.max(expect, 1)); // deliveries of each seq, saturating at 255
    this.received = 0;
    this.ws = null;
    this.closed = false;
    this.closeCode = null;
  }
}

function expectOf(id) {
  if (!eventsTotal) return expect;
  const index = id - firstId;
  return Math.floor(eventsTotal / totalConnections) + (index < eventsTotal % totalConnections ? 1 : 0);
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
const EVENT_MARK = Buffer.from(protocol === "socketio" ? '42["event",' : '"event":"event"');
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

// A Socket.IO EVENT packet `42[name, data]` as the {event, data} frame of the other protocols;
// anything else (an ack, an Engine.IO packet) as a frame that is not a delivery.
function socketioFrame(text) {
  if (!text.startsWith("42")) return { event: null };
  const [event, data] = JSON.parse(text.slice(2));
  return { event, data };
}

function slowRead(conn, buf) {
  let frame;
  try {
    frame = protocol === "socketio" ? socketioFrame(buf.toString()) : JSON.parse(buf);
  } catch {
    return undefined;
  }
  if (frame.event !== "event") return null; // replies and other frames are not deliveries
  const event = frame.data;
  if (event?.room !== conn.room) return undefined;
  return { seq: event?.payload?.seq, t: event?.payload?.t };
}

// Recover mode reads every event in full: its offset and epoch are the position to join with.
function recordFull(conn, data) {
  let frame;
  try {
    frame = JSON.parse(data);
  } catch {
    stats.unexpected += 1;
    return;
  }
  if (frame.event === "rejoin" && frame.data?.room === conn.room) {
    conn.ws.send(JSON.stringify({ event: "join_room", data: { room: conn.room, since: conn.pos }, id: 3 }));
    storm.rejoins += 1;
    return;
  }
  if (frame.event === "room_joined" && frame.data?.room === conn.room) {
    for (const event of frame.data.missed ?? []) recordEvent(conn, event);
    return;
  }
  if (frame.event !== "event") return;
  recordEvent(conn, frame.data);
}

function recordEvent(conn, event) {
  if (event?.room !== conn.room) {
    stats.unexpected += 1;
    return;
  }
  // As the shipped clients do: an offset at or below the last one processed in the same epoch
  // was had already (a live event of the automatic room before the join with `since` answered).
  if (conn.pos && conn.pos.epoch === event.epoch && event.offset <= conn.pos.offset) {
    storm.seenAgain += 1;
    return;
  }
  conn.pos = { offset: event.offset, epoch: event.epoch };
  account(conn, { seq: event.payload?.seq, t: event.payload?.t }, nowUs());
}

function record(conn, data) {
  if (recover) {
    recordFull(conn, data);
    return;
  }
  const now = nowUs();
  let got = fastRead(conn, data);
  if (got === null || ++sinceCheck >= CHECK_EVERY) {
    sinceCheck = 0;
    const full = slowRead(conn, data);
    if (got !== null && (full?.seq !== got.seq || full?.t !== got.t)) got = undefined;
    else got = full;
  }
  if (got === null) return;
  account(conn, got, now);
}

function account(conn, got, now) {
  const seq = got?.seq;
  if (got === undefined || !Number.isInteger(seq) || seq < 0 || seq >= conn.expect) {
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
  if (collecting && conn.received === conn.expect) {
    complete += 1;
    if (complete === connections) finishCollect();
  }
}

// --- the protocols: URL to open, and what makes a connection ready ---------------------------
function openUrl(conn) {
  if (protocol === "gateway") return `${conn.url}?token=${conn.token}`;
  if (protocol === "socketio") return conn.url; // the room goes in the CONNECT packet
  return `${conn.url}?room=${encodeURIComponent(conn.room)}`;
}

// --- recovery after the server closed a connection (recover mode) ---------------------------
const storm = {
  closes: 0,
  recovered: 0,
  notRecovered: 0, // room_joined with recovered: false
  retries: 0,
  rejoins: 0,
  seenAgain: 0, // events dropped by offset (had already)
  closeCodes: {},
  firstCloseUs: null,
  lastRecoveredUs: null,
  hist: new Map(), // close -> back in the room with what it missed, µs
  errors: [],
};

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function reconnect(conn, code) {
  const t0 = nowUs();
  storm.closes += 1;
  storm.closeCodes[code] = (storm.closeCodes[code] ?? 0) + 1;
  storm.firstCloseUs ??= t0;
  for (let attempt = 0; !shuttingDown; attempt++) {
    await sleep(Math.random() * reconnectJitterMs * 2 ** Math.min(attempt, 4));
    conn.urlIndex = (conn.urlIndex + 1) % urls.length;
    conn.url = urls[conn.urlIndex];
    try {
      await handshake(conn, true);
      break;
    } catch (err) {
      storm.retries += 1;
      if (storm.errors.length < 5) storm.errors.push(String(err?.message ?? err));
    }
  }
  if (shuttingDown) return;
  conn.closed = false;
  const now = nowUs();
  storm.recovered += 1;
  storm.lastRecoveredUs = now;
  const b = bucketOf(now - t0);
  storm.hist.set(b, (storm.hist.get(b) ?? 0) + 1);
}

function stormReport() {
  emit({
    type: "storm",
    ...storm,
    hist: Object.fromEntries(storm.hist),
  });
}

// Resolves when the connection is in its room; the first frame decides for the gateway.
// `rejoin`: after a reconnect, join the room again with `since` and take `missed` as delivered.
function handshake(conn, rejoin = false) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(openUrl(conn), {
      ...(conn.localAddress ? { localAddress: conn.localAddress } : {}),
      perMessageDeflate: false,
      skipUTF8Validation: true, // the sampled JSON.parse checks the frames
    });
    conn.ws = ws;
    conn.lastSeq = -1;
    // A timed-out handshake is abandoned (its socket terminated), never left to finish later.
    const timer = setTimeout(
      () => done(new Error(`handshake timed out after ${handshakeTimeoutS} s`)),
      handshakeTimeoutS * 1000,
    );
    let settled = false;
    let established = false; // in its room: a close from now on is one to recover from
    const held = []; // rejoin: live events that came before room_joined
    const done = (err) => {
      if (settled) return;
      settled = true;
      established = !err;
      clearTimeout(timer);
      ws.off("message", onHandshake);
      if (err) {
        ws.terminate();
        reject(err);
        return;
      }
      if (protocol === "socketio") {
        ws.on("message", (data) => {
          if (data.length === 1 && data[0] === 50) ws.send("3"); // Engine.IO ping -> pong
          else record(conn, data);
        });
      } else ws.on("message", (data) => record(conn, data));
      resolve();
    };
    const onHandshake = (data) => {
      if (protocol === "socketio") {
        socketioHandshake(conn, ws, String(data), done);
        return;
      }
      if (rejoin && recover && String(data).startsWith('{"event":"event"')) {
        held.push(data); // live, from the automatic join: after `missed`, as the clients do
        return;
      }
      let frame;
      try {
        frame = JSON.parse(data);
      } catch {
        done(new Error(`non-JSON frame during handshake: ${String(data).slice(0, 200)}`));
        return;
      }
      if (protocol === "gateway" && frame.event === "auth_success" && rejoin) {
        const since = conn.pos ?? { offset: 0, epoch: "0" };
        ws.send(JSON.stringify({ event: "join_room", data: { room: conn.room, since }, id: 2 }));
      } else if (protocol === "gateway" && frame.event === "auth_success") {
        if (roomMode === "personal") {
          const rooms = frame.data?.rooms ?? [];
          if (!rooms.includes(conn.room)) {
            done(new Error(`auth_success without ${conn.room}: ${JSON.stringify(rooms)}`));
          } else done();
        } else {
          ws.send(JSON.stringify({ event: "join_room", data: { room: conn.room }, id: 1 }));
        }
      } else if (frame.event === "room_joined" && frame.data?.room === conn.room) {
        if (rejoin) {
          if (frame.data.recovered === false) storm.notRecovered += 1;
          for (const event of frame.data.missed ?? []) recordEvent(conn, event);
          for (const live of held) recordFull(conn, live); // what `missed` had is dropped
        }
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
      if (!shuttingDown && !recover) closedEarly.push(code);
      if (established && recover && !shuttingDown) reconnect(conn, code);
      done(new Error(`closed with ${code} during handshake`));
    });
  });
}

// Engine.IO OPEN ("0{...}") -> CONNECT with the room; CONNECT ack ("40{...}"), then room_joined.
function socketioHandshake(conn, ws, text, done) {
  if (text.startsWith("0{")) {
    ws.send(`40${JSON.stringify({ room: conn.room })}`);
  } else if (text.startsWith("40")) {
    // connected to the namespace; room_joined follows
  } else if (text === "2") {
    ws.send("3");
  } else {
    let frame;
    try {
      frame = socketioFrame(text);
    } catch {
      frame = { event: null };
    }
    if (frame.event === "room_joined" && frame.data?.room === conn.room) done();
    else done(new Error(`unexpected frame during handshake: ${text.slice(0, 300)}`));
  }
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
  complete = conns.filter((c) => c.received >= c.expect).length;
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
    for (let s = 0; s < conn.expect; s++) {
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

// {"cmd":"expect","room":R,"expect":K}: the next collect counts events of room R (null: each
// connection's own room) with seq 0..K-1 (e.g. a fan-out to all_clientes after personal rooms).
function expectRoom(cmd) {
  for (const conn of conns) {
    conn.room = cmd.room ?? conn.ownRoom;
    conn.roomMark = Buffer.from(`"room":${JSON.stringify(conn.room)}`);
    conn.expect = cmd.expect;
    conn.seen = new Uint8Array(Math.max(cmd.expect, 1));
    conn.received = 0;
    conn.lastSeq = -1;
  }
  emit({ type: "expecting", room: cmd.room ?? null, expect: cmd.expect });
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
  else if (cmd.cmd === "expect") expectRoom(cmd);
  else if (cmd.cmd === "storm") stormReport();
  else if (cmd.cmd === "close") break;
  else emit({ type: "error", message: `unknown command ${line}` });
}
await closeAll();
process.exit(0);
