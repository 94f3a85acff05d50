// Drive the real socket.io-client from a test, one JSON line at a time.
//
//   node sio_driver.mjs URL [--token T] [--options JSON]
//
// Connects with io(URL, {transports: ["websocket"], auth: {token: T}, ...options}) (no auth
// without --token; --options overrides anything, e.g. '{"reconnection": false}',
// '{"transports": ["polling"]}', or '{"transports": null}' for the library's default: long-polling
// first, then the upgrade). Commands are read from stdin, one JSON object per line:
//
//   {"op":"emit","name":"join_room","data":{...},"ack":true,"seq":1,"timeout_ms":5000}
//       "data" omitted: emit(name) with no argument; "args": [...] sends several arguments;
//       "binary": true sends a Buffer as the data; "seq" defaults to a counter from 1.
//   {"op":"stop_pong"}   stop answering Engine.IO pings (a client that has silently died); the
//                        current connection only: a reconnection answers them again
//   {"op":"connect"}     socket.connect() again after a disconnect
//   {"op":"disconnect"}  socket.disconnect(), stay alive for more commands
//   {"op":"drop"}        close the Engine.IO connection under the socket (as a lost network
//                        would): the socket reconnects by itself, with recovery if offered
//   {"op":"close"}       socket.disconnect(), then exit
//
// Output, one JSON object per line on stdout:
//   {"kind":"connect","id":socket.id,"recovered":socket.recovered,"transport":"polling"|"websocket"}
//   {"kind":"disconnect","reason":...,"description":...}
//   {"kind":"upgrade","transport":"websocket"}  (the engine moved from long-polling)
//   {"kind":"reconnect_attempt","attempt":n,"at":ms}  (the manager's backoff, attempt n)
//   {"kind":"connect_error","message":...,"data":...,"description":...,"context":...}
//   {"kind":"event","name":...,"data":...}  (data: the first argument; "args" when not one)
//   {"kind":"ack","seq":...,"data":...}     {"kind":"ack_timeout","seq":...}
//   {"kind":"sent","seq":...}  (an emit without ack went out)   {"kind":"pong_stopped"}
//   {"kind":"bad_command","error":...}      {"kind":"closed"} (last line before exiting)
// stdin reaching EOF closes the socket and exits, so the driver never outlives its test.

import { createInterface } from "node:readline";
import { io } from "socket.io-client";

function parseArgs(argv) {
  const out = { url: null, token: null, options: {} };
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i];
    if (arg === "--token") out.token = argv[(i += 1)];
    else if (arg === "--options") out.options = JSON.parse(argv[(i += 1)]);
    else if (out.url === null) out.url = arg;
    else throw new Error(`unexpected argument ${arg}`);
  }
  if (!out.url) throw new Error("usage: node sio_driver.mjs URL [--token T] [--options JSON]");
  return out;
}

function print(obj) {
  process.stdout.write(`${JSON.stringify(obj)}\n`);
}

// err.description / details.description: a status code, an Error or an ErrorEvent.
function describe(value) {
  if (value === null || value === undefined || typeof value !== "object") return value;
  if (typeof value.message === "string" && value.message) return value.message;
  if (value.error && typeof value.error.message === "string") return value.error.message;
  return value.type || String(value);
}

// The body of a refused HTTP request (long-polling), when the transport exposes it.
function errorContext(err) {
  const ctx = err && err.context;
  if (!ctx) return undefined;
  if (typeof ctx.responseText === "string") return ctx.responseText;
  return undefined;
}

const { url, token, options } = parseArgs(process.argv.slice(2));
const socket = io(url, {
  transports: ["websocket"],
  ...(token !== null ? { auth: { token } } : {}),
  ...options,
});

socket.on("connect", () =>
  print({
    kind: "connect",
    id: socket.id,
    recovered: socket.recovered,
    transport: socket.io.engine.transport.name,
  }),
);
socket.io.on("open", () => {
  socket.io.engine.on("upgrade", (transport) => print({ kind: "upgrade", transport: transport.name }));
});
socket.io.on("reconnect_attempt", (attempt) =>
  print({ kind: "reconnect_attempt", attempt, at: Date.now() }),
);
socket.on("disconnect", (reason, details) => {
  print({ kind: "disconnect", reason, description: describe(details && details.description) });
});
socket.on("connect_error", (err) => {
  print({
    kind: "connect_error",
    message: err.message,
    data: err.data,
    description: describe(err.description),
    context: errorContext(err),
  });
});
socket.onAny((name, ...args) => {
  const line = { kind: "event", name, data: args[0] };
  if (args.length !== 1) line.args = args;
  print(line);
});

let counter = 0;
let exiting = false;

function stopPong() {
  // engine.io-client answers a ping with _sendPacket("pong") (named sendPacket before 6.6):
  // drop the pongs and nothing else, so the server's ping timeout is what ends the connection.
  const engine = socket.io.engine;
  const name = typeof engine._sendPacket === "function" ? "_sendPacket" : "sendPacket";
  const original = engine[name].bind(engine);
  engine[name] = (type, ...rest) => (type === "pong" ? undefined : original(type, ...rest));
  print({ kind: "pong_stopped" });
}

function emit(cmd) {
  counter += 1;
  const seq = cmd.seq ?? counter;
  let args;
  if (cmd.binary) args = [Buffer.from(cmd.data === undefined ? "binary" : String(cmd.data))];
  else if (Array.isArray(cmd.args)) args = cmd.args;
  else if ("data" in cmd) args = [cmd.data];
  else args = [];
  if (!cmd.ack) {
    socket.emit(cmd.name, ...args);
    print({ kind: "sent", seq });
    return;
  }
  const target = cmd.timeout_ms ? socket.timeout(cmd.timeout_ms) : socket;
  target.emit(cmd.name, ...args, (...reply) => {
    if (cmd.timeout_ms) {
      const [err, ...rest] = reply;
      if (err) {
        print({ kind: "ack_timeout", seq });
        return;
      }
      reply = rest;
    }
    const line = { kind: "ack", seq, data: reply[0] };
    if (reply.length !== 1) line.args = reply;
    print(line);
  });
}

function exit() {
  if (exiting) return;
  exiting = true;
  socket.disconnect();
  print({ kind: "closed" });
  // let stdout drain, then leave even if a timer of the client is still pending
  process.stdout.write("", () => process.exit(0));
}

const commands = {
  emit,
  stop_pong: stopPong,
  connect: () => socket.connect(),
  disconnect: () => socket.disconnect(),
  drop: () => socket.io.engine.close(),
  close: exit,
};

const rl = createInterface({ input: process.stdin });
rl.on("line", (line) => {
  if (!line.trim()) return;
  try {
    const cmd = JSON.parse(line);
    const run = commands[cmd.op];
    if (!run) throw new Error(`unknown op ${JSON.stringify(cmd.op)}`);
    run(cmd);
  } catch (err) {
    print({ kind: "bad_command", error: String(err && err.message ? err.message : err) });
  }
});
rl.on("close", exit);
