// The publishing side for the Socket.IO target: @socket.io/redis-emitter, the way a Node (or any)
// backend publishes to a socket.io + redis-adapter cluster. Same interface as bench/publisher.py:
//
//   node bench/sio_publisher.mjs '<json config>'
//
// config: redis_url, rooms | personal {first, count}, rounds, events (stop after that many),
// rate (rounds/s, 0 = as fast as possible), concurrency (emits whose PUBLISH is not yet answered by Redis; default 1, i.e.
// sequential like publisher.py's sync methods). Each event is
// io.to(room).emit("event", {room, type: "bench", payload: {seq, t, pad}}).
// Prints "ready" once connected, waits for a line on stdin, publishes, prints one JSON line
// {published, start_us, end_us, errors, first_error}.

import { createInterface } from "node:readline";
import { Emitter } from "@socket.io/redis-emitter";
import { createClient } from "redis";

const cfg = JSON.parse(process.argv[2] ?? "{}");
const PAD = "x".repeat(90);
const nowUs = () => Math.round((performance.timeOrigin + performance.now()) * 1000);

function roomsOf() {
  if (cfg.personal) {
    const { first, count } = cfg.personal;
    return Array.from({ length: count }, (_, i) => `cliente_${first + i}`);
  }
  return cfg.rooms;
}

const client = createClient({ url: cfg.redis_url });
client.on("error", (err) => console.error("redis:", err.message));
await client.connect();

// The emitter calls client.publish() and drops the promise; keep it to bound what is in flight.
let lastPublish = null;
const tracked = {
  publish: (channel, message) => {
    lastPublish = client.publish(channel, message);
    return lastPublish;
  },
};
const emitter = new Emitter(tracked);

const lines = createInterface({ input: process.stdin });
process.stdout.write("ready\n");
for await (const _ of lines) break; // the go-ahead
const cpu0 = process.cpuUsage();

const rooms = roomsOf();
let left = cfg.events || rooms.length * cfg.rounds; // `events`: stop after that many
const rate = cfg.rate ?? 0;
const limit = Math.max(1, cfg.concurrency ?? 1);
const pending = new Set();
let published = 0;
let errors = 0;
let firstError = null;
const startUs = nowUs();
const t0 = performance.now();
for (let seq = 0; seq < cfg.rounds; seq++) {
  if (rate > 0) {
    const delay = t0 + (seq * 1000) / rate - performance.now();
    if (delay > 0) await new Promise((r) => setTimeout(r, delay));
  }
  for (const room of rooms) {
    if (left-- <= 0) break;
    emitter.to(room).emit("event", { room, type: "bench", payload: { seq, t: nowUs(), pad: PAD } });
    const p = lastPublish.then(
      () => {
        published += 1;
      },
      (err) => {
        errors += 1;
        firstError ??= String(err?.message ?? err);
      },
    );
    pending.add(p);
    p.finally(() => pending.delete(p));
    if (pending.size >= limit) await Promise.race(pending);
  }
}
await Promise.all(pending);
const endUs = nowUs();
process.stdout.write(
  JSON.stringify({
    published,
    start_us: startUs,
    end_us: endUs,
    errors,
    first_error: firstError,
    cpu_us: ((c) => c.user + c.system)(process.cpuUsage(cpu0)),
  }) + "\n",
);
await client.quit();
process.exit(0);
