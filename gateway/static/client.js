/**
 * Browser client of the gateway, served as an ES module at `GET /client.js`.
 * No build step, no dependencies: `import { GatewayClient } from "/client.js";`
 *
 * It connects, authenticates, joins rooms, hands `event` frames to handlers and sends the four
 * business events. When the connection drops (not after `close()`) it reconnects with
 * exponential backoff and full jitter to the next URL, authenticates again, rejoins every room
 * with `since`, and hands each missed event to the handlers once, in order. Close 4401 or 4403
 * ends it for good. It mirrors the Python client (`gateway/client/`); see docs/clients.md.
 *
 * @module gateway-client
 */

/** Close codes after which reconnecting cannot help. */
export const TERMINAL_CLOSE_CODES = Object.freeze([4401, 4403]);
/** `auth_error` codes after which retrying with the same token is pointless. */
export const TERMINAL_AUTH_CODES = Object.freeze(["invalid_token", "identity_mismatch"]);
/** A rejoin refused with one of these will not succeed by retrying: the room is dropped. */
const PERMANENT_JOIN_ERRORS = new Set(["forbidden", "invalid_room"]);
/** Names accepted by {@link GatewayClient#onLifecycle}. */
export const LIFECYCLE_EVENTS = Object.freeze([
  "connected",
  "disconnected",
  "reconnected",
  "recovery_failed",
  "join_failed",
  "terminated",
]);

/* ---------------------------------------------------------------------------------------------
 * Errors
 * ------------------------------------------------------------------------------------------- */

/** The gateway answered `error`, or the request could not be answered. */
export class GatewayError extends Error {
  /**
   * @param {string} code e.g. `validation_error`, `forbidden`, `timeout`, `connection_lost`
   * @param {string} [message]
   * @param {string|null} [field] the payload field a `validation_error` is about
   * @param {object|null} [fields] Django's per-field messages of a `rejected` event
   */
  constructor(code, message = "", field = null, fields = null) {
    super(message ? `${code}: ${message}` : code);
    this.name = "GatewayError";
    this.code = code;
    this.field = field;
    /** e.g. `{fecha: ["La fecha no puede estar en el pasado."]}` (DRF field errors) */
    this.fields = fields;
    /** Reconnecting cannot help (bad token, disconnected by the server). */
    this.terminal = false;
  }

  /** @param {{code?: string, message?: string, field?: string, fields?: object}} data */
  static fromData(data) {
    const fields = data.fields && typeof data.fields === "object" ? data.fields : null;
    const field = typeof data.field === "string" ? data.field : null;
    return new this(String(data.code ?? "error"), String(data.message ?? ""), field, fields);
  }
}

/** `auth_error`; `terminal` means retrying with this token is pointless. */
export class AuthError extends GatewayError {
  constructor(code, message = "", field = null, fields = null) {
    super(code, message, field, fields);
    this.name = "AuthError";
    this.terminal = TERMINAL_AUTH_CODES.includes(code);
  }
}

/* ---------------------------------------------------------------------------------------------
 * Pure parts: backoff, URL rotation, room offsets (no I/O; unit-tested)
 * ------------------------------------------------------------------------------------------- */

/**
 * The longest wait before reconnect attempt `attempt` (0-based): `min(maxMs, baseMs * 2^attempt)`.
 * @param {number} attempt
 * @param {number} baseMs
 * @param {number} maxMs
 */
export function backoffCeiling(attempt, baseMs, maxMs) {
  if (!(attempt >= 0)) throw new RangeError("attempt must be >= 0");
  return Math.min(maxMs, baseMs * 2 ** Math.min(attempt, 64));
}

/**
 * Full jitter: a uniform wait in `[0, backoffCeiling(...)]`. Spreading a reconnect storm (every
 * client of a drained node at once) over the whole window, not just a little later.
 * @param {number} attempt
 * @param {number} baseMs
 * @param {number} maxMs
 * @param {() => number} [random] a function like `Math.random`
 */
export function backoffDelay(attempt, baseMs, maxMs, random = Math.random) {
  return random() * backoffCeiling(attempt, baseMs, maxMs);
}

/** The URLs to try in order: `current` is in use, `advance()` moves to the next. */
export class UrlRotation {
  /** @param {string|string[]} urls one `ws://…/ws` URL or several */
  constructor(urls) {
    this.urls = typeof urls === "string" ? [urls] : [...urls];
    if (this.urls.length === 0) throw new TypeError("at least one gateway URL is needed");
    for (const url of this.urls) {
      let parsed = null;
      try {
        parsed = new URL(url);
      } catch {
        parsed = null;
      }
      if (!parsed || !["ws:", "wss:"].includes(parsed.protocol)) {
        throw new TypeError(`not a ws:// or wss:// URL: ${url}`);
      }
    }
    this.index = 0;
  }

  get current() {
    return this.urls[this.index];
  }

  advance() {
    this.index = (this.index + 1) % this.urls.length;
    return this.current;
  }
}

/** Verdicts of {@link RoomTracker#offer}. */
export const Verdict = Object.freeze({
  DELIVER: "deliver",
  DUPLICATE: "duplicate",
  BUFFERED: "buffered",
  RESYNC: "resync",
});

function position(event) {
  const { epoch, offset } = event ?? {};
  return typeof epoch === "string" && Number.isInteger(offset) ? { epoch, offset } : null;
}

/**
 * Offsets per room: de-duplicates live events, detects gaps, merges recovered events.
 *
 * A live event at or below the last delivered offset (same epoch) is a duplicate. One that skips
 * an offset, or comes with another epoch, means something was missed: the room is joined again
 * with `since` and events wait in a buffer until the answer, so handlers see every event once
 * and in order.
 */
export class RoomTracker {
  constructor() {
    /**
     * room -> `{epoch, offset, floor, joining, buffer}`: `offset` is the `since` position (the
     * join's baseline or the last delivered event), `floor` the last delivered offset (at or
     * below it is a duplicate), `joining` a join in flight (live events wait in `buffer`).
     * @type {Map<string, {epoch: string|null, offset: number, floor: number|null,
     *   joining: boolean, buffer: object[]}>}
     */
    this.cursors = new Map();
  }

  has(room) {
    return this.cursors.has(room);
  }

  rooms() {
    return [...this.cursors.keys()];
  }

  /** The position to recover `room` from, or null when unknown. */
  since(room) {
    const c = this.cursors.get(room);
    return c && c.epoch !== null ? { offset: c.offset, epoch: c.epoch } : null;
  }

  /** Start buffering the room's live events; returns the `since` to join with. */
  beginJoin(room) {
    if (!this.cursors.has(room)) {
      this.cursors.set(room, { epoch: null, offset: 0, floor: null, joining: false, buffer: [] });
    }
    this.cursors.get(room).joining = true;
    return this.since(room);
  }

  isJoining(room) {
    return Boolean(this.cursors.get(room)?.joining);
  }

  forget(room) {
    this.cursors.delete(room);
  }

  /** Judge one live `event` frame's data; returns a {@link Verdict}. */
  offer(event) {
    const c = this.cursors.get(String(event.room));
    if (!c) return Verdict.DELIVER;
    if (c.joining) {
      c.buffer.push(event);
      return Verdict.BUFFERED;
    }
    const verdict = this._step(c, event, true);
    if (verdict === Verdict.RESYNC) {
      c.joining = true;
      c.buffer.push(event);
    }
    return verdict;
  }

  /**
   * Merge a `room_joined` answer with what was buffered while the join was in flight.
   * @returns {{deliver: object[], recovered: boolean|null, missed: number, resync: boolean}}
   */
  applyJoined(room, data, since) {
    if (!this.cursors.has(room)) this.beginJoin(room);
    const c = this.cursors.get(room);
    const buffered = c.buffer;
    c.buffer = [];
    c.joining = false;
    const recovered = since ? data.recovered === true : null;
    let missed = [];
    if (recovered) {
      let offset = since.offset;
      if (c.epoch === since.epoch && c.floor !== null) offset = Math.max(offset, c.floor);
      c.epoch = since.epoch;
      c.offset = offset;
      c.floor = offset;
      missed = (data.missed ?? []).filter((e) => e && typeof e === "object");
    } else {
      // A fresh start: whatever came live was published after the subscription, so it is new
      // to us even if its offset is not above the baseline; only duplicates are dropped.
      c.epoch = typeof data.epoch === "string" ? data.epoch : null;
      c.offset = Number.isInteger(data.offset) ? data.offset : 0;
      c.floor = null;
    }
    const deliver = [];
    let fromMissed = 0;
    const queue = [...missed, ...buffered];
    for (let i = 0; i < queue.length; i += 1) {
      const verdict = this._step(c, queue[i], Boolean(recovered));
      if (verdict === Verdict.DELIVER) {
        deliver.push(queue[i]);
        if (i < missed.length) fromMissed += 1;
      } else if (verdict === Verdict.RESYNC) {
        c.joining = true;
        c.buffer = queue.slice(i);
        return { deliver, recovered, missed: fromMissed, resync: true };
      }
    }
    return { deliver, recovered, missed: fromMissed, resync: false };
  }

  /** The join failed: stop buffering; returns the buffered events to hand over as they are. */
  abandonJoin(room, forget) {
    const c = this.cursors.get(room);
    if (!c) return [];
    const buffered = c.buffer;
    c.buffer = [];
    c.joining = false;
    if (forget) {
      this.cursors.delete(room);
      return [];
    }
    for (const event of buffered) this._advance(c, event);
    return buffered;
  }

  _step(c, event, strict) {
    const pos = position(event);
    if (!pos) return Verdict.DELIVER;
    if (c.floor !== null && pos.epoch === c.epoch && pos.offset <= c.floor) {
      return Verdict.DUPLICATE;
    }
    if (strict && c.epoch !== null) {
      const last = c.floor !== null ? c.floor : c.offset;
      // At offset 0 nothing was seen: a room's first event (offset 1) is next in any epoch.
      const first = last === 0 && pos.offset === 1;
      if (!first && (pos.epoch !== c.epoch || pos.offset > last + 1)) return Verdict.RESYNC;
    }
    this._advance(c, event);
    return Verdict.DELIVER;
  }

  _advance(c, event) {
    const pos = position(event);
    if (!pos) return;
    if (pos.epoch !== c.epoch) {
      c.epoch = pos.epoch;
      c.offset = pos.offset;
      c.floor = pos.offset;
    } else {
      c.floor = pos.offset;
      c.offset = Math.max(c.offset, pos.offset);
    }
  }
}

/* ---------------------------------------------------------------------------------------------
 * The client
 * ------------------------------------------------------------------------------------------- */

/**
 * @typedef {object} ClientOptions
 * @property {string} token the user's Django token (sent in `authenticate`, never in the URL)
 * @property {string} [userId] claimed identity; the gateway checks it against Django's answer
 * @property {"cliente"|"proveedor"|"admin"} [role]
 * @property {number} [backoffBaseMs=250] first reconnect window
 * @property {number} [backoffMaxMs=10000] largest reconnect window
 * @property {number} [requestTimeoutMs=10000] longest wait for an answer
 * @property {number} [pingIntervalMs=25000] send `ping` this often; no `pong` within
 *   `requestTimeoutMs` closes the connection (browsers cannot see WebSocket pings); 0 = off
 * @property {number|null} [maxReconnectAttempts=null] give up after this many (null: never)
 * @property {number} [connectAttempts] tries `connect()` makes (default: each URL once)
 * @property {typeof WebSocket} [WebSocket] the WebSocket class (default: the global one)
 * @property {() => number} [random] jitter source (default `Math.random`)
 */

/**
 * One user's connection to the gateway.
 *
 * Handlers registered with `on(type, handler)` get the data of every `event` whose `type`
 * matches (`"*"`: all). `onLifecycle(name, handler)` takes `connected`, `disconnected`,
 * `reconnected`, `recovery_failed` (`{room}`: refetch that room's state from Django),
 * `join_failed` (`{room, code}`) and `terminated` (`{code, reason}`). Handlers may be async;
 * they run one at a time, in delivery order.
 *
 * @example
 * const client = new GatewayClient("wss://example.com/ws", { token });
 * client.on("reservation_created", (event) => console.log(event.payload));
 * await client.connect();
 * await client.join("service_12");
 * const ack = await client.createComment({ servicioId: "12", text: "¡Muy bien!" });
 */
export class GatewayClient {
  /**
   * @param {string|string[]} urls one `ws://…/ws` URL or a list to rotate through
   * @param {ClientOptions} options
   */
  constructor(urls, options) {
    const o = options ?? {};
    if (!o.token) throw new TypeError("a token is needed");
    this._urls = new UrlRotation(urls);
    this._token = o.token;
    this._claims = {};
    if (o.userId != null) this._claims.userId = String(o.userId);
    if (o.role != null) this._claims.role = o.role;
    this._baseMs = o.backoffBaseMs ?? 250;
    this._maxMs = o.backoffMaxMs ?? 10000;
    this._timeoutMs = o.requestTimeoutMs ?? 10000;
    this._pingMs = o.pingIntervalMs ?? 25000;
    this._maxAttempts = o.maxReconnectAttempts ?? null;
    this._connectAttempts = o.connectAttempts || this._urls.urls.length;
    this._WebSocket = o.WebSocket ?? globalThis.WebSocket;
    this._random = o.random ?? Math.random;
    if (typeof this._WebSocket !== "function") throw new TypeError("no WebSocket class");

    /** `idle`, `connecting`, `connected`, `reconnecting`, `closed` or `failed`. */
    this.state = "idle";
    /** Counters, as in the Python client's `ClientStats`. */
    this.stats = {
      connects: 0,
      reconnects: 0,
      connectFailures: 0,
      eventsDelivered: 0,
      missedDelivered: 0,
      duplicatesDropped: 0,
      gapsDetected: 0,
      recoveries: 0,
      recoveryFailures: 0,
      rejoinRequests: 0,
    };
    /** @type {string|null} `node` of `auth_success` */
    this.node = null;
    this.userId = null;
    this.role = null;
    this.connectionId = null;
    /** @type {number|null} close code of the last connection that closed */
    this.closeCode = null;
    /** @type {GatewayError|null} why the client stopped retrying */
    this.terminalError = null;

    this._ws = null;
    this._nextId = 1;
    this._pending = new Map();
    this._tracker = new RoomTracker();
    this._handlers = new Map();
    this._lifecycle = new Map();
    this._dispatch = Promise.resolve();
    this._pingTimer = null;
    this._readyWaiters = new Set();
    this._reconnectTimer = null;
  }

  /* --- public API ---------------------------------------------------------------------------- */

  /** Whether the client is connected, authenticated and in its rooms. */
  get connected() {
    return this.state === "connected";
  }

  /** The URL of the current (or last) connection. */
  get url() {
    return this._urls.current;
  }

  /** Rooms this client is in and will rejoin after a reconnect. */
  get rooms() {
    return this._tracker.rooms();
  }

  /** The position this client would recover `room` from: `{offset, epoch}` or null. */
  since(room) {
    return this._tracker.since(room);
  }

  /**
   * Call `handler(eventData)` for each event of `type` (`"*"`: all).
   * @param {string} type
   * @param {(event: object) => (void|Promise<void>)} handler
   * @returns {() => void} removes the handler
   */
  on(type, handler) {
    return register(this._handlers, type, handler);
  }

  /**
   * @param {string} name one of {@link LIFECYCLE_EVENTS}
   * @param {(info: object) => (void|Promise<void>)} handler
   * @returns {() => void} removes the handler
   */
  onLifecycle(name, handler) {
    if (!LIFECYCLE_EVENTS.includes(name)) throw new TypeError(`unknown lifecycle event ${name}`);
    return register(this._lifecycle, name, handler);
  }

  /**
   * Connect and authenticate; resolves to the `auth_success` data. Makes `connectAttempts`
   * tries (default: each URL once), with backoff between them and the next URL each time.
   * Rejects with `AuthError` on `auth_error` (at once when the token is refused). After a
   * failure the client is `failed`: make a new one to try again.
   * @returns {Promise<object>}
   */
  async connect() {
    if (this.state !== "idle") throw new Error(`connect() called in state ${this.state}`);
    this.state = "connecting";
    const attempts = this._connectAttempts;
    for (let attempt = 0; attempt < attempts; attempt += 1) {
      const url = attempt === 0 ? this._urls.current : this._urls.advance();
      try {
        const auth = await this._open(url);
        await this._joinAutomaticRooms(auth.rooms ?? []);
        this._setConnected(true);
        return auth;
      } catch (error) {
        this._dropCurrent();
        if (error?.terminal || attempt === attempts - 1) {
          this._giveUp(asGatewayError(error));
          throw error;
        }
      }
      await sleep(backoffDelay(attempt, this._baseMs, this._maxMs, this._random));
    }
    throw new GatewayError("closed", "unreachable"); // not reached
  }

  /**
   * Join `room`; resolves to the `room_joined` data. Rejects with `GatewayError` on `error`.
   * A connection lost before the answer is not an error: the join is tried again once the
   * client has reconnected (joining twice is harmless).
   */
  async join(room) {
    return replyData(
      await this._retryLost(async () => {
        await this._waitConnected();
        return this._join(room, this._tracker.has(room));
      }),
    );
  }

  /** Leave `room`; it is forgotten at once, so a reconnect does not rejoin it. */
  async leave(room) {
    this._tracker.forget(room);
    try {
      return replyData(await this._request("leave_room", { room }));
    } catch (error) {
      if (error?.code === "connection_lost") return { room }; // the next connection is not in it
      throw error;
    }
  }

  /** Members of `room`, cluster-wide: `{room, members: [{userId, role, connections}]}`. */
  async presence(room) {
    return replyData(await this._retryLost(() => this._request("presence", { room })));
  }

  async ping() {
    return replyData(await this._request("ping", {}));
  }

  /** @returns {Promise<{event: string, eventId: string}>} the `ack` data */
  createReservation(fields) {
    return this.sendBusiness("reservation_created", fields);
  }

  acceptReservation(fields) {
    return this.sendBusiness("reservation_accepted", fields);
  }

  /** `amount` must be a decimal string such as `"25.00"`. */
  createPayment(fields) {
    return this.sendBusiness("payment_created", fields);
  }

  createComment(fields) {
    return this.sendBusiness("comment_created", fields);
  }

  /** Send a business event; resolves to the `ack` data (`{event, eventId}`). */
  async sendBusiness(event, payload) {
    return replyData(await this._request(event, payload ?? {}));
  }

  /** Close for good: no reconnect; pending requests reject with code `closed`. */
  close() {
    if (this.state === "closed" || this.state === "failed") return;
    this.state = "closed";
    this._stop(new GatewayError("closed", "the client is closed"));
  }

  /* --- connection lifecycle ------------------------------------------------------------------ */

  _open(url) {
    return new Promise((resolve, reject) => {
      let ws;
      try {
        ws = new this._WebSocket(url);
      } catch (error) {
        reject(error);
        return;
      }
      this._ws = ws;
      let opened = false;
      const failOpen = (why) => {
        clearTimeout(openTimer);
        if (!opened) reject(new GatewayError("connection_lost", `could not connect: ${why}`));
      };
      const openTimer = setTimeout(() => {
        failOpen("timed out");
        try {
          ws.close();
        } catch {
          // not open yet
        }
      }, this._timeoutMs);
      ws.onmessage = (message) => this._onFrame(message.data);
      ws.onclose = (closeEvent) => {
        this._onClose(ws, closeEvent.code);
        failOpen(`closed (${closeEvent.code})`);
      };
      // Before the open, some implementations report a refused connection only as an error.
      ws.onerror = () => failOpen("error");
      ws.onopen = () => {
        opened = true;
        clearTimeout(openTimer);
        this._request("authenticate", { token: this._token, ...this._claims }, { wait: false })
          .then((frame) => {
            if (frame.event === "auth_error") {
              ws.close(1000);
              reject(AuthError.fromData(frame.data ?? {}));
              return;
            }
            const auth = replyData(frame);
            this.node = auth.node ?? null;
            this.userId = auth.userId ?? null;
            this.role = auth.role ?? null;
            this.connectionId = auth.connectionId ?? null;
            this._startPing(ws);
            resolve(auth);
          })
          .catch((error) => {
            const code = error.closeCode;
            if (error.code === "connection_lost" && TERMINAL_CLOSE_CODES.includes(code)) {
              reject(terminalCloseError(code));
            } else {
              reject(error);
            }
          });
      };
    });
  }

  _dropCurrent() {
    const ws = this._ws;
    if (ws) {
      this._ws = null;
      ws.onclose = null;
      ws.onmessage = null;
      try {
        ws.close(1000);
      } catch {
        // already closing
      }
      this._failPending(connectionLost(null));
      this._stopPing();
    }
  }

  _onClose(ws, code) {
    if (ws !== this._ws) return;
    this._ws = null;
    this._stopPing();
    this.closeCode = code;
    this._failPending(connectionLost(code));
    if (this.state !== "connected") return; // connect()/reconnect loops handle their own
    this.state = "reconnecting";
    this._emit("disconnected", { code });
    if (TERMINAL_CLOSE_CODES.includes(code)) {
      this._giveUp(terminalCloseError(code));
      return;
    }
    this._reconnect();
  }

  async _reconnect() {
    let attempt = 0;
    while (this.state === "reconnecting") {
      if (this._maxAttempts !== null && attempt >= this._maxAttempts) {
        this._giveUp(new GatewayError("closed", `gave up after ${attempt} reconnect attempts`));
        return;
      }
      await sleep(backoffDelay(attempt, this._baseMs, this._maxMs, this._random));
      if (this.state !== "reconnecting") return;
      const url = this._urls.advance();
      for (const room of this._tracker.rooms()) this._tracker.beginJoin(room);
      try {
        const auth = await this._open(url);
        await this._rejoinAll(auth.rooms ?? []);
        this.stats.reconnects += 1;
        this._setConnected(false);
        return;
      } catch (error) {
        this._dropCurrent();
        if (error?.terminal) {
          this._giveUp(asGatewayError(error));
          return;
        }
      }
      this.stats.connectFailures += 1;
      attempt += 1;
    }
  }

  /** Join the automatic rooms once more, to learn their epoch and offset for recovery. */
  async _joinAutomaticRooms(rooms) {
    const fresh = rooms.filter((r) => typeof r === "string" && !this._tracker.has(r));
    const results = await Promise.allSettled(fresh.map((r) => this._join(r, true)));
    for (const result of results) {
      if (result.status === "rejected" && result.reason?.code === "connection_lost") {
        throw result.reason;
      }
    }
  }

  async _rejoinAll(automatic) {
    const rooms = this._tracker.rooms();
    const results = await Promise.allSettled(rooms.map((r) => this._join(r, true)));
    for (const result of results) {
      if (result.status === "rejected") throw result.reason; // lost or timed out: retry
    }
    await this._joinAutomaticRooms(automatic);
  }

  /** Join `room` again with `since` after a gap or a `rejoin` frame. */
  async _rejoin(room) {
    let ws = null;
    try {
      await this._waitConnected();
      ws = this._ws;
      await this._join(room, true);
    } catch (error) {
      // The room's events wait in the buffer for this answer: a node that cannot answer a join
      // is not worth waiting for. Reconnecting rejoins every room with `since`. Otherwise the
      // connection was lost or closed, and the reconnect (if any) rejoins the room.
      if (error?.code === "timeout" && ws !== null && ws === this._ws) ws.close(4000);
    }
  }

  _setConnected(first) {
    this.stats.connects += 1;
    this.state = "connected";
    for (const wake of this._readyWaiters) wake();
    this._readyWaiters.clear();
    this._emit(first ? "connected" : "reconnected", { node: this.node, url: this.url });
  }

  _giveUp(error) {
    this.state = "failed";
    this.terminalError = error;
    this._emit("terminated", { code: error.code, reason: error.message });
    this._stop(error);
  }

  _stop(error) {
    this._failPending(error); // before the close, which would fail them as connection_lost
    this._dropCurrent();
    for (const wake of this._readyWaiters) wake();
    this._readyWaiters.clear();
  }

  _startPing(ws) {
    this._stopPing();
    if (!this._pingMs) return;
    this._pingTimer = setInterval(() => {
      if (this._ws !== ws || this.state !== "connected") return;
      this._request("ping", {}, { wait: false }).catch((error) => {
        if (error.code === "timeout" && this._ws === ws) ws.close(4000); // dead: reconnect
      });
    }, this._pingMs);
  }

  _stopPing() {
    if (this._pingTimer !== null) clearInterval(this._pingTimer);
    this._pingTimer = null;
  }

  /* --- requests ------------------------------------------------------------------------------ */

  async _join(room, keepOnError) {
    const since = this._tracker.beginJoin(room);
    const data = since ? { room, since } : { room };
    try {
      return await this._request("join_room", data, { wait: false, room, since, keepOnError });
    } catch (error) {
      // No answer: keep buffering; the next connection rejoins with the same `since`.
      if (!keepOnError) this._tracker.forget(room);
      throw error;
    }
  }

  _waitConnected() {
    if (this.state === "connected") return Promise.resolve();
    if (this.state === "closed" || this.state === "failed") {
      return Promise.reject(this._closedError());
    }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._readyWaiters.delete(wake);
        reject(new GatewayError("timeout", `not connected within ${this._timeoutMs} ms`));
      }, this._timeoutMs);
      const wake = () => {
        clearTimeout(timer);
        if (this.state === "connected") resolve();
        else reject(this._closedError());
      };
      this._readyWaiters.add(wake);
    });
  }

  /** Run an idempotent request again (up to 3 times) when the connection drops under it. */
  async _retryLost(call) {
    for (let tries = 3; ; tries -= 1) {
      try {
        return await call();
      } catch (error) {
        const stopped = this.state === "closed" || this.state === "failed";
        if (error?.code !== "connection_lost" || tries === 1 || stopped) throw error;
      }
    }
  }

  /**
   * Send one frame with a fresh id and wait for the frame that answers it. `wait`: first wait
   * for the client to be connected (requests made while it reconnects go out once it is back).
   */
  async _request(event, data, options = {}) {
    const { wait = true, room = null, since = null, keepOnError = false } = options;
    if (this.state === "closed" || this.state === "failed") throw this._closedError();
    if (wait) await this._waitConnected();
    const ws = this._ws;
    if (!ws || ws.readyState !== 1) throw connectionLost(this.closeCode);
    const id = this._nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(id);
        reject(new GatewayError("timeout", `no reply to ${event} within ${this._timeoutMs} ms`));
      }, this._timeoutMs);
      this._pending.set(id, { resolve, reject, timer, room, since, keepOnError });
      ws.send(JSON.stringify({ event, data, id }));
    });
  }

  _closedError() {
    return this.terminalError ?? new GatewayError("closed", "the client is closed");
  }

  _failPending(error) {
    const pending = this._pending;
    this._pending = new Map();
    for (const item of pending.values()) {
      clearTimeout(item.timer);
      item.reject(error);
    }
  }

  /* --- reading ------------------------------------------------------------------------------- */

  _onFrame(raw) {
    let frame;
    try {
      frame = JSON.parse(raw);
    } catch {
      return;
    }
    if (!frame || typeof frame !== "object") return;
    const data = frame.data && typeof frame.data === "object" ? frame.data : {};
    const pending = this._pending.get(frame.id);
    if (pending !== undefined) {
      this._pending.delete(frame.id);
      clearTimeout(pending.timer);
      if (pending.room !== null) this._onJoinReply(pending, frame.event, data);
      pending.resolve(frame);
    } else if (frame.event === "event") {
      this._onEvent(data);
    } else if (frame.event === "rejoin") {
      this._onRejoin(data);
    }
  }

  _onEvent(data) {
    const verdict = this._tracker.offer(data);
    if (verdict === Verdict.DELIVER) this._deliver(data);
    else if (verdict === Verdict.DUPLICATE) this.stats.duplicatesDropped += 1;
    else if (verdict === Verdict.RESYNC) {
      this.stats.gapsDetected += 1;
      this._rejoin(String(data.room));
    }
  }

  _onRejoin(data) {
    this.stats.rejoinRequests += 1;
    const room = data.room;
    if (typeof room === "string" && this._tracker.has(room) && !this._tracker.isJoining(room)) {
      this._rejoin(room);
    }
  }

  /** Merge a join's answer before any later frame is looked at. */
  _onJoinReply(pending, event, data) {
    const room = pending.room;
    if (event !== "room_joined") {
      const code = String(data.code ?? event);
      const forget = !pending.keepOnError || PERMANENT_JOIN_ERRORS.has(code);
      for (const buffered of this._tracker.abandonJoin(room, forget)) this._deliver(buffered);
      if (pending.keepOnError) {
        this._emit("join_failed", { room, code });
        if (pending.since && !forget) {
          this.stats.recoveryFailures += 1; // what it missed is not coming
          this._emit("recovery_failed", { room });
        }
      }
      return;
    }
    const outcome = this._tracker.applyJoined(room, data, pending.since);
    if (outcome.recovered === true) this.stats.recoveries += 1;
    else if (outcome.recovered === false) {
      this.stats.recoveryFailures += 1;
      this._emit("recovery_failed", { room });
    }
    this.stats.missedDelivered += outcome.missed;
    for (const event of outcome.deliver) this._deliver(event);
    if (outcome.resync) {
      this.stats.gapsDetected += 1;
      this._rejoin(room);
    }
  }

  /* --- dispatching to handlers ---------------------------------------------------------------- */

  _deliver(data) {
    this.stats.eventsDelivered += 1;
    if (data.receipts === true) this._acknowledge(data);
    const type = String(data.type);
    const handlers = [...(this._handlers.get(type) ?? []), ...(this._handlers.get("*") ?? [])];
    this._enqueue(handlers, data, type);
  }

  /** An event that asks for receipts: tell the gateway it arrived (contract section 8). */
  _acknowledge(data) {
    const ws = this._ws;
    if (ws === null || ws.readyState !== 1) return; // recovery hands it over again, acked then
    const receipt = { room: data.room, offset: data.offset, epoch: data.epoch };
    ws.send(JSON.stringify({ event: "received", data: receipt }));
  }

  _emit(name, info) {
    this._enqueue([...(this._lifecycle.get(name) ?? [])], info, name);
  }

  /** Handlers run one at a time, in order; a failing handler is reported, not fatal. */
  _enqueue(handlers, data, label) {
    if (handlers.length === 0) return;
    this._dispatch = this._dispatch.then(async () => {
      for (const handler of handlers) {
        try {
          await handler(data);
        } catch (error) {
          console.error(`gateway client: handler for ${label} failed`, error);
        }
      }
    });
  }
}

/* ---------------------------------------------------------------------------------------------
 * Helpers
 * ------------------------------------------------------------------------------------------- */

function register(table, key, handler) {
  if (typeof handler !== "function") throw new TypeError("handler must be a function");
  if (!table.has(key)) table.set(key, []);
  table.get(key).push(handler);
  return () => {
    const list = table.get(key) ?? [];
    const index = list.indexOf(handler);
    if (index >= 0) list.splice(index, 1);
  };
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function connectionLost(closeCode) {
  const error = new GatewayError("connection_lost", `connection closed (code ${closeCode})`);
  error.closeCode = closeCode;
  return error;
}

function terminalCloseError(code) {
  if (code === 4401) {
    return new AuthError("invalid_token", "closed with 4401: do not retry this token");
  }
  const error = new GatewayError("disconnected", `closed with ${code}: disconnected by the server`);
  error.terminal = true;
  return error;
}

function asGatewayError(error) {
  return error instanceof GatewayError
    ? error
    : new GatewayError("closed", `no gateway URL could be reached: ${error}`);
}

/** The data of a reply frame; `error`/`auth_error` become rejections. */
function replyData(frame) {
  const data = frame.data && typeof frame.data === "object" ? frame.data : {};
  if (frame.event === "error") throw GatewayError.fromData(data);
  if (frame.event === "auth_error") throw AuthError.fromData(data);
  return data;
}
