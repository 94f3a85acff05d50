// The Socket.IO target of bench/run.py: socket.io 4 with @socket.io/redis-adapter, as a Node
// shop would run it behind a load balancer (several processes sharing one Redis).
//
//   node bench/sio_server.mjs --port 4100 --redis-url redis://127.0.0.1:6379/0
//
// WebSocket transport only (no long-polling upgrade dance), no per-message deflate, default
// heartbeats (pingInterval 25 s). A client names its room in the CONNECT packet's auth payload
// (`40{"room":"service_1"}`) or later with `join_room` {room}; either way it is answered with
// `room_joined` {room} once it is in the room. Events are published with
// @socket.io/redis-emitter (bench/sio_publisher.mjs): `io.to(room).emit("event", {...})`.
// GET /healthz answers 200 (the harness waits for it). No auth, no history: like the reference,
// the bare framework.

import { createServer } from "node:http";
import { parseArgs } from "node:util";
import { createAdapter } from "@socket.io/redis-adapter";
import { createClient } from "redis";
import { Server } from "socket.io";

const { values } = parseArgs({
  options: {
    port: { type: "string" },
    "redis-url": { type: "string", default: "redis://127.0.0.1:6379/0" },
  },
});

const pub = createClient({ url: values["redis-url"] });
const sub = pub.duplicate();
for (const client of [pub, sub]) client.on("error", (err) => console.error("redis:", err.message));
await Promise.all([pub.connect(), sub.connect()]);

const http = createServer((req, res) => {
  res.writeHead(req.url === "/healthz" ? 200 : 404, { "content-type": "text/plain" });
  res.end(req.url === "/healthz" ? "ok" : "not found");
});

const io = new Server(http, {
  transports: ["websocket"],
  serveClient: false,
  perMessageDeflate: false,
  cors: { origin: true },
  adapter: createAdapter(pub, sub),
});

const VALID = /^[A-Za-z0-9_-]{1,80}$/;

function join(socket, room) {
  if (typeof room !== "string" || !VALID.test(room)) {
    socket.emit("error_reply", { message: "invalid room" });
    return;
  }
  socket.join(room);
  socket.emit("room_joined", { room });
}

io.on("connection", (socket) => {
  const room = socket.handshake.auth?.room;
  if (room !== undefined) join(socket, room);
  socket.on("join_room", (data) => join(socket, data?.room));
});

http.listen(Number(values.port), "127.0.0.1", () => {
  console.error(`socket.io on 127.0.0.1:${values.port}`);
});

for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => {
    io.close();
    Promise.allSettled([pub.quit(), sub.quit()]).finally(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  });
}
