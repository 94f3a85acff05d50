/**
 * TypeScript declarations of the gateway's browser client (`client.js`), served by every node
 * at `GET /client.d.ts` and shipped beside it in the npm package of this folder.
 *
 *     import { GatewayClient, GatewayError } from "django-ws-gateway-client";
 *
 * The wire protocol itself is described, as data, by the AsyncAPI document at
 * `GET /asyncapi.json`; these types follow the same models (gateway/asyncapi/models.py).
 */

/* --- what the gateway sends ------------------------------------------------------------------ */

export type Role = "cliente" | "proveedor" | "admin";

/** `auth_success`: the token was verified; the connection is in its automatic rooms. */
export interface AuthSuccess {
  userId: string;
  role: Role;
  /** automatic rooms joined: `cliente_{id}` + `all_clientes`, … */
  rooms: string[];
  connectionId: string;
  /** `GATEWAY_NODE_ID` of the node serving this connection */
  node: string;
  [extra: string]: unknown;
}

/** One event delivered to one room (the data of an `event` frame). */
export interface GatewayEvent<P = unknown> {
  room: string;
  /** the event type, e.g. `reservation_created` */
  type: string;
  /** Django's answer, or what the publisher sent */
  payload: P;
  /** the event id: one per publish, the same in every room */
  id: string;
  /** grows by exactly 1 per event in the room */
  offset: number;
  /** changes only when the room's history was lost */
  epoch: string;
  /** epoch milliseconds of the publish */
  ts: number;
  source: "client" | "publisher" | "api" | "ingest";
  /** true when the publisher asked for receipts: the client acknowledges it by itself */
  receipts?: boolean;
  [extra: string]: unknown;
}

export interface RoomJoined {
  room: string;
  epoch: string;
  /** the room's latest offset (0 when it has none) */
  offset: number;
  /** only when the join had `since` */
  recovered?: boolean;
  missed?: GatewayEvent[];
  [extra: string]: unknown;
}

export interface RoomLeft {
  room: string;
}

export interface PresenceMember {
  userId: string;
  role: Role;
  connections: number;
}

/** Cluster-wide members; broadcast rooms (`all_*`) answer a `count` instead. */
export interface Presence {
  room: string;
  members?: PresenceMember[];
  count?: number;
}

/** `ack`: Django accepted the business event; deliveries carry `eventId` as their `id`. */
export interface Ack {
  event: BusinessEventName;
  eventId: string;
}

/** The recovery position of a room. */
export interface Since {
  offset: number;
  epoch: string;
}

/** The data of an `error` / `auth_error` frame. */
export interface ErrorData {
  code?: string;
  message?: string;
  field?: string | null;
  /** Django's per-field errors of a `rejected` event (DRF style) */
  fields?: Record<string, unknown> | null;
}

/* --- what the client sends --------------------------------------------------------------------- */

/** Ids match `[A-Za-z0-9_-]{1,64}`. Other fields go to Django untouched. */
export interface ReservationCreated {
  clienteId: string;
  proveedorId: string;
  servicioId: string;
  /** an ISO 8601 date or date-time */
  fecha: string;
  estado?: string;
  [extra: string]: unknown;
}

export interface ReservationAccepted {
  reservationId?: string;
  clienteId: string;
  proveedorId: string;
  servicioId?: string;
  [extra: string]: unknown;
}

export interface PaymentCreated {
  paymentId?: string;
  reservationId?: string;
  clienteId: string;
  proveedorId: string;
  /** a decimal string such as "25.00" (a number is a validation_error) */
  amount: string;
  /** three capital letters, e.g. "EUR" */
  currency?: string;
  [extra: string]: unknown;
}

export interface CommentCreated {
  servicioId: string;
  text: string;
  clienteId?: string;
  /** 1 to 5 */
  rating?: number;
  [extra: string]: unknown;
}

export interface BusinessEvents {
  reservation_created: ReservationCreated;
  reservation_accepted: ReservationAccepted;
  payment_created: PaymentCreated;
  comment_created: CommentCreated;
}
export type BusinessEventName = keyof BusinessEvents;

/* --- errors ------------------------------------------------------------------------------------ */

/** Close codes after which reconnecting cannot help. */
export const TERMINAL_CLOSE_CODES: readonly number[];
/** `auth_error` codes after which retrying with the same token is pointless. */
export const TERMINAL_AUTH_CODES: readonly string[];

/** The gateway answered `error`, or the request could not be answered. */
export class GatewayError extends Error {
  constructor(
    code: string,
    message?: string,
    field?: string | null,
    fields?: Record<string, unknown> | null,
  );
  /** e.g. `validation_error`, `forbidden`, `rejected`, `timeout`, `connection_lost`, `closed` */
  code: string;
  /** the payload field a `validation_error` is about */
  field: string | null;
  /** Django's per-field messages of a `rejected` event, e.g. `{fecha: ["…"]}` */
  fields: Record<string, unknown> | null;
  /** reconnecting cannot help (bad token, disconnected by the server) */
  terminal: boolean;
  /** set on `connection_lost` errors: the close code, when known */
  closeCode?: number | null;
  static fromData<T extends typeof GatewayError>(this: T, data: ErrorData): InstanceType<T>;
}

/** `auth_error`; `terminal` means retrying with this token is pointless. */
export class AuthError extends GatewayError {}

/* --- pure parts -------------------------------------------------------------------------------- */

export function backoffCeiling(attempt: number, baseMs: number, maxMs: number): number;
export function backoffDelay(
  attempt: number,
  baseMs: number,
  maxMs: number,
  random?: () => number,
): number;

export class UrlRotation {
  constructor(urls: string | string[]);
  readonly urls: string[];
  index: number;
  readonly current: string;
  advance(): string;
}

export const Verdict: Readonly<{
  DELIVER: "deliver";
  DUPLICATE: "duplicate";
  BUFFERED: "buffered";
  RESYNC: "resync";
}>;
export type VerdictValue = (typeof Verdict)[keyof typeof Verdict];

export interface JoinOutcome {
  deliver: GatewayEvent[];
  recovered: boolean | null;
  missed: number;
  resync: boolean;
}

export class RoomTracker {
  has(room: string): boolean;
  rooms(): string[];
  since(room: string): Since | null;
  beginJoin(room: string): Since | null;
  isJoining(room: string): boolean;
  forget(room: string): void;
  offer(event: GatewayEvent): VerdictValue;
  applyJoined(room: string, data: RoomJoined, since: Since | null): JoinOutcome;
  abandonJoin(room: string, forget: boolean): GatewayEvent[];
}

/* --- the client -------------------------------------------------------------------------------- */

export type ClientState =
  | "idle"
  | "connecting"
  | "connected"
  | "reconnecting"
  | "closed"
  | "failed";

export interface ClientOptions {
  /** the user's Django token (sent in `authenticate`, never in the URL) */
  token: string;
  /** claimed identity; the gateway checks it against Django's answer */
  userId?: string | number;
  role?: Role;
  /** first reconnect window (250) */
  backoffBaseMs?: number;
  /** largest reconnect window (10000) */
  backoffMaxMs?: number;
  /** longest wait for an answer (10000) */
  requestTimeoutMs?: number;
  /** send `ping` this often; no `pong` within `requestTimeoutMs` reconnects; 0 = off (25000) */
  pingIntervalMs?: number;
  /** give up after this many failed reconnects (null: never) */
  maxReconnectAttempts?: number | null;
  /** tries `connect()` makes (default: each URL once) */
  connectAttempts?: number;
  /** the WebSocket class (default: the global one) */
  WebSocket?: typeof WebSocket;
  /** jitter source (default `Math.random`) */
  random?: () => number;
}

export interface ClientStats {
  connects: number;
  reconnects: number;
  connectFailures: number;
  eventsDelivered: number;
  missedDelivered: number;
  duplicatesDropped: number;
  gapsDetected: number;
  recoveries: number;
  recoveryFailures: number;
  rejoinRequests: number;
}

/** What each lifecycle handler is given. */
export interface LifecycleEvents {
  connected: { node: string | null; url: string };
  disconnected: { code: number };
  reconnected: { node: string | null; url: string };
  /** history no longer covers what was missed in `room`: refetch its state from Django */
  recovery_failed: { room: string };
  join_failed: { room: string; code: string };
  terminated: { code: string; reason: string };
}
export type LifecycleEvent = keyof LifecycleEvents;
export const LIFECYCLE_EVENTS: readonly LifecycleEvent[];

export type Handler<T> = (data: T) => void | Promise<void>;

/** One user's connection to the gateway; see docs/clients.md. */
export class GatewayClient {
  /** @param urls one `ws://…/ws` URL or a list to rotate through */
  constructor(urls: string | string[], options: ClientOptions);

  state: ClientState;
  readonly stats: ClientStats;
  node: string | null;
  userId: string | null;
  role: Role | null;
  connectionId: string | null;
  /** close code of the last connection that closed */
  closeCode: number | null;
  /** why the client stopped retrying */
  terminalError: GatewayError | null;
  readonly connected: boolean;
  readonly url: string;
  readonly rooms: string[];

  since(room: string): Since | null;
  /** Call `handler` for each event of `type` (`"*"`: all); returns a function removing it. */
  on<P = unknown>(type: string, handler: Handler<GatewayEvent<P>>): () => void;
  onLifecycle<K extends LifecycleEvent>(name: K, handler: Handler<LifecycleEvents[K]>): () => void;

  /** Connect and authenticate; rejects with `AuthError` on `auth_error`. */
  connect(): Promise<AuthSuccess>;
  join(room: string): Promise<RoomJoined>;
  leave(room: string): Promise<RoomLeft>;
  presence(room: string): Promise<Presence>;
  ping(): Promise<Record<string, never>>;
  createReservation(fields: ReservationCreated): Promise<Ack>;
  acceptReservation(fields: ReservationAccepted): Promise<Ack>;
  createPayment(fields: PaymentCreated): Promise<Ack>;
  createComment(fields: CommentCreated): Promise<Ack>;
  sendBusiness<K extends BusinessEventName>(event: K, payload: BusinessEvents[K]): Promise<Ack>;
  /** Close for good: no reconnect; pending requests reject with code `closed`. */
  close(): void;
}
