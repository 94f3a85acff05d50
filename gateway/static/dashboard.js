// Gateway dashboard: a plain ES module, no dependencies, no build step.
//
// Data arrives over the /dashboard/feed WebSocket ("stats" every 2 s, one "event" per published
// event); when the feed cannot be opened the page polls /dashboard/stats and /dashboard/events every
// 3 s and keeps retrying the feed with backoff. GET requests ride on the browser's HTTP Basic login
// (credentials: "same-origin"); POST /dashboard/cleanup needs a Bearer token the operator types in.
//
// Every piece of server data reaches the DOM through textContent or setAttribute, never innerHTML.

const POLL_MS = 3000;
const API_STATUS_MS = 10000;
const TABLE_REFRESH_MS = 15000;
const FEED_STALE_MS = 10000; // stats come every 2 s: this much silence means the feed is dead
const FEED_RETRY_MIN_MS = 2000;
const FEED_RETRY_MAX_MS = 30000;
const FETCH_TIMEOUT_MS = 8000;
const EVENT_LOG_CAP = 500;
const EVENTS_FETCH_LIMIT = 100;
const SEEN_EVENTS_CAP = 5000;
const PAGE_SIZE = 50;
const NODE_LEASE_MS = 15000; // a node whose heartbeat is older than its lease is dead
const SERIES_LENGTH = 60;
const KNOWN_ROLES = ["cliente", "proveedor", "admin"];
const TOKEN_STORAGE_KEY = "gateway-dashboard-cleanup-token";

const $ = (id) => document.getElementById(id);

// ---- small helpers --------------------------------------------------------------------------

/** Build an element. Children that are not Nodes become text nodes, so data is never parsed. */
function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function setText(id, text) {
  const node = $(id);
  if (node && node.textContent !== text) node.textContent = text;
}

const intFormat = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
const timeFormat = new Intl.DateTimeFormat(undefined, {
  hour: "2-digit",
  minute: "2-digit",
  second: "2-digit",
  hour12: false,
});
const clockFormat = new Intl.DateTimeFormat(undefined, {
  hour: "2-digit",
  minute: "2-digit",
  hour12: false,
});
const dateTimeFormat = new Intl.DateTimeFormat(undefined, {
  dateStyle: "medium",
  timeStyle: "medium",
});

function num(value) {
  const n = typeof value === "string" && value.trim() !== "" ? Number(value) : value;
  return typeof n === "number" && Number.isFinite(n) ? n : null;
}

function fmtInt(value) {
  const n = num(value);
  return n === null ? "—" : intFormat.format(n);
}

function fmtDuration(seconds) {
  const n = num(seconds);
  if (n === null || n < 0) return "—";
  const s = Math.floor(n);
  const d = Math.floor(s / 86400);
  const hr = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  if (d) return `${d}d ${hr}h`;
  if (hr) return `${hr}h ${m}m`;
  if (m) return `${m}m ${s % 60}s`;
  return `${s}s`;
}

function fmtMegabytes(bytes) {
  const n = num(bytes);
  return n === null ? "—" : `${(n / 1048576).toFixed(1)} MB`;
}

/** Epoch milliseconds from epoch ms, epoch seconds or an ISO 8601 string; null when unknown. */
function toEpochMs(value) {
  const n = num(value);
  if (n !== null) return n < 1e11 ? n * 1000 : n; // 1e11 ms is 1973, 1e11 s is year 5138
  if (typeof value === "string") {
    const parsed = Date.parse(value);
    return Number.isNaN(parsed) ? null : parsed;
  }
  return null;
}

function fmtAgo(epochMs) {
  if (epochMs === null) return "never";
  const s = Math.round((Date.now() - epochMs) / 1000);
  if (s < 2) return "just now";
  if (s < 60) return `${s} s ago`;
  return `${fmtDuration(s)} ago`;
}

/** Mark an element as "N s ago"; tick() keeps its text current. */
function setAgo(node, epochMs, prefix = "") {
  if (epochMs === null) {
    delete node.dataset.ago;
    node.textContent = `${prefix}never`;
    node.removeAttribute("title");
    return;
  }
  node.dataset.ago = String(epochMs);
  node.dataset.agoPrefix = prefix;
  node.textContent = prefix + fmtAgo(epochMs);
  node.title = dateTimeFormat.format(new Date(epochMs));
}

function tick() {
  for (const node of document.querySelectorAll("[data-ago]")) {
    const text = (node.dataset.agoPrefix || "") + fmtAgo(Number(node.dataset.ago));
    if (node.textContent !== text) node.textContent = text;
  }
  if (state.stats) renderHealth();
}

// ---- HTTP -----------------------------------------------------------------------------------

class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function errorMessage(response) {
  let detail = "";
  try {
    const body = await response.json();
    const candidate = body?.message ?? body?.detail ?? body?.error?.message ?? body?.error;
    if (typeof candidate === "string") detail = candidate;
  } catch {
    // not JSON: the status line says enough
  }
  const base = `HTTP ${response.status}${response.statusText ? ` ${response.statusText}` : ""}`;
  return detail ? `${base}: ${detail}` : base;
}

async function fetchJSON(path, init = {}) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), FETCH_TIMEOUT_MS);
  try {
    const response = await fetch(path, {
      credentials: "same-origin",
      cache: "no-store",
      ...init,
      headers: { Accept: "application/json", ...(init.headers || {}) },
      signal: controller.signal,
    });
    if (!response.ok) throw new HttpError(response.status, await errorMessage(response));
    return await response.json();
  } catch (err) {
    if (err instanceof HttpError) throw err;
    const timedOut = err?.name === "AbortError";
    throw new HttpError(0, timedOut ? "request timed out" : "network error");
  } finally {
    clearTimeout(timer);
  }
}

/** A GET that updates the page-wide auth alert: 401 means the Basic login no longer holds. */
async function getJSON(path) {
  try {
    const data = await fetchJSON(path);
    if (state.authFailed) clearAuthAlert();
    return data;
  } catch (err) {
    if (err.status === 401 || err.status === 403) showAuthAlert();
    throw err;
  }
}

function showAuthAlert() {
  state.authFailed = true;
  const alert = $("alert");
  const reload = h("button", { type: "button", class: "btn btn-small" }, "Reload");
  reload.addEventListener("click", () => window.location.reload());
  alert.replaceChildren(
    "The dashboard refused this session (the token may have changed). Reload to log in again.",
    reload,
  );
  alert.hidden = false;
}

function clearAuthAlert() {
  state.authFailed = false;
  $("alert").hidden = true;
}

// ---- state ----------------------------------------------------------------------------------

const state = {
  mode: "connecting",
  stats: null,
  statsAt: null,
  apiStatus: null,
  authFailed: false,
  ws: null,
  feedOpen: false,
  feedRetryMs: FEED_RETRY_MIN_MS,
  feedRetryTimer: 0,
  feedStaleTimer: 0,
  polling: false,
  pollTimer: 0,
  seen: new Set(),
  paused: false,
  pending: [],
  filterTokens: [],
  cleanupToken: null,
};

// ---- live status ----------------------------------------------------------------------------

const MODE_TEXT = {
  connecting: ["connecting", "Opening the live feed…"],
  live: ["live", "Receiving live updates over the /dashboard/feed WebSocket"],
  polling: ["polling", "Live feed unavailable: polling every 3 s and retrying the feed"],
  offline: ["offline", "The gateway cannot be reached: showing the last data received"],
};

function setMode(mode) {
  if (state.mode === mode) return;
  state.mode = mode;
  const node = $("live-status");
  const [label, title] = MODE_TEXT[mode];
  node.dataset.state = mode;
  node.title = title;
  setText("live-status-label", label);
  renderHealth();
}

// ---- stats: cards, roles, nodes, health -----------------------------------------------------

function onStats(stats) {
  if (!stats || typeof stats !== "object") return;
  state.stats = stats;
  state.statsAt = Date.now();
  const connections = stats.connections || {};
  const nodes = Array.isArray(stats.nodes) ? stats.nodes : [];

  setText("total-connections", fmtInt(connections.total));
  setText(
    "total-connections-sub",
    `open WebSockets on ${nodes.length} node${nodes.length === 1 ? "" : "s"}`,
  );
  renderRoles(connections.byRole || {}, num(connections.total));
  setText("rooms-count", fmtInt(stats.rooms));
  setText("online-users", fmtInt(stats.onlineUsers));
  const series = normaliseSeries(stats.eventsPerMinuteSeries);
  setText("events-per-minute", fmtInt(stats.eventsPerMinute));
  setText(
    "events-per-minute-sub",
    `over the last 60 s · ${fmtInt(series.at(-1))} so far this minute`,
  );
  setText("avg-connection", fmtDuration(stats.avgConnectionSeconds));
  renderNodes(nodes);
  chart.setSeries(series);
  setAgo($("last-updated"), state.statsAt, "updated ");
  renderHealth();
}

function normaliseSeries(series) {
  const values = Array.isArray(series) ? series.map((v) => Math.max(0, num(v) ?? 0)) : [];
  const tail = values.slice(-SERIES_LENGTH);
  return [...new Array(SERIES_LENGTH - tail.length).fill(0), ...tail];
}

function renderRoles(byRole, total) {
  const roles = [
    ...KNOWN_ROLES,
    ...Object.keys(byRole)
      .filter((r) => !KNOWN_ROLES.includes(r))
      .sort(),
  ];
  const counts = roles.map((role) => num(byRole[role]) ?? 0);
  const denominator = Math.max(total ?? 0, ...counts, 1);
  const items = roles.map((role, i) => {
    const bar = h("span");
    bar.style.width = `${((counts[i] / denominator) * 100).toFixed(1)}%`;
    return h(
      "li",
      { class: "role-row", "data-role": role },
      h("span", {}, role),
      h("span", { class: "role-bar", "aria-hidden": "true" }, bar),
      h("span", { class: "role-count" }, fmtInt(counts[i])),
    );
  });
  $("role-connections").replaceChildren(...items);
}

/** "ok", "stale" or "down" for a node; the server's `healthy` flag wins when present. */
function nodeHealth(node) {
  if (node.healthy === false) return "down";
  if (node.healthy === true) return "ok";
  const seen = toEpochMs(node.lastSeenMs);
  if (seen !== null && Date.now() - seen > NODE_LEASE_MS) return "stale";
  return "ok";
}

const HEALTH_LABEL = { ok: "healthy", stale: "heartbeat late", down: "unhealthy" };

function renderNodes(nodes) {
  const tbody = $("nodes").tBodies[0];
  const sorted = [...nodes].sort((a, b) => String(a.node).localeCompare(String(b.node)));
  if (!sorted.length) {
    tbody.replaceChildren(emptyRow(9, "No nodes have reported yet."));
    setText("nodes-summary", "");
    return;
  }
  const probes = state.apiStatus?.nodes || {};
  const rows = sorted.map((node) => nodeRow(node, probes[node.node]));
  tbody.replaceChildren(...rows);
  const healthy = sorted.filter((n) => nodeHealth(n) === "ok").length;
  setText("nodes-summary", `${healthy} of ${sorted.length} healthy`);
}

function nodeRow(node, probe) {
  const health = nodeHealth(node);
  const dot = h("span", {
    class: "dot",
    "data-state": health,
    role: "img",
    "aria-label": HEALTH_LABEL[health],
    title: HEALTH_LABEL[health],
  });
  const framesIn = num(node.framesIn);
  const framesOut = num(node.framesOut);
  const frames =
    framesIn === null && framesOut === null ? "—" : `${fmtInt(framesIn)} / ${fmtInt(framesOut)}`;
  const lastSeen = h("td", { class: "muted" });
  const seenMs = toEpochMs(node.lastSeenMs);
  if (seenMs === null) lastSeen.textContent = "—";
  else setAgo(lastSeen, seenMs);
  return h(
    "tr",
    {
      "data-node": String(node.node ?? ""),
      "data-health": health,
      class: health === "ok" ? null : "node-down",
    },
    h("td", {}, dot),
    h("td", { class: "node-id" }, String(node.node ?? "?")),
    h("td", { class: "num" }, fmtInt(node.connections)),
    h("td", { class: "num" }, fmtInt(node.rooms)),
    h("td", { class: "num" }, fmtMegabytes(node.rssBytes)),
    h(
      "td",
      { class: "num", title: `${fmtInt(node.uptimeSeconds)} s` },
      fmtDuration(node.uptimeSeconds),
    ),
    h("td", { class: "num" }, frames),
    probeCell(probe),
    lastSeen,
  );
}

function probeCell(probe) {
  if (!probe) return h("td", { class: "muted" }, "—");
  const up = probe.reachable === true;
  const latency = num(probe.latencyMs);
  const checked = toEpochMs(probe.checkedAt);
  const text = up ? (latency === null ? "reachable" : `${Math.round(latency)} ms`) : "unreachable";
  return h(
    "td",
    { title: checked === null ? null : `checked ${dateTimeFormat.format(new Date(checked))}` },
    h("span", { class: "dot", "data-state": up ? "ok" : "down", "aria-hidden": "true" }),
    " ",
    text,
  );
}

function emptyRow(columns, text) {
  return h("tr", { class: "empty-row" }, h("td", { colspan: columns }, text));
}

function renderHealth() {
  const summary = $("cluster-health");
  const nodes = Array.isArray(state.stats?.nodes) ? state.stats.nodes : null;
  let level = "unknown";
  const parts = [];
  if (nodes) {
    const healthy = nodes.filter((n) => nodeHealth(n) === "ok").length;
    parts.push(
      nodes.length === 0
        ? "No nodes reporting"
        : healthy === nodes.length
          ? `All ${nodes.length} node${nodes.length === 1 ? "" : "s"} healthy`
          : `${healthy} of ${nodes.length} nodes healthy`,
    );
    level = healthy === 0 ? "down" : healthy < nodes.length ? "degraded" : "ok";
  }
  const django = state.apiStatus?.django;
  if (django) {
    const up = django.reachable === true;
    parts.push(up ? "Django reachable" : "Django unreachable");
    if (!up && level === "ok") level = "degraded";
  }
  if (state.mode === "offline") {
    parts.unshift("Gateway unreachable");
    level = "down";
  }
  summary.dataset.state = level;
  setText("cluster-health-text", parts.length ? parts.join(" · ") : "Loading cluster state…");
  const flag = level === "ok" || level === "unknown" ? "" : "⚠ ";
  const title = `${flag}Gateway dashboard`;
  if (document.title !== title) document.title = title;
}

// ---- Django API status ----------------------------------------------------------------------

async function loadApiStatus() {
  try {
    state.apiStatus = await getJSON("/dashboard/api-status");
  } catch {
    return; // the live-status indicator already says when the gateway is unreachable
  }
  renderDjango(state.apiStatus?.django);
  if (state.stats) renderNodes(Array.isArray(state.stats.nodes) ? state.stats.nodes : []);
  renderHealth();
}

function renderDjango(django) {
  const status = $("django-status");
  const latency = $("django-latency");
  if (!django) {
    status.dataset.state = "unknown";
    setText("django-status-text", "unknown");
    latency.textContent = "—";
    return;
  }
  const up = django.reachable === true;
  status.dataset.state = up ? "up" : "down";
  setText("django-status-text", up ? "Reachable" : "Unreachable");
  const ms = num(django.latencyMs);
  if (ms !== null) latency.textContent = `latency ${intFormat.format(Math.round(ms))} ms`;
  else latency.textContent = up ? "latency unknown" : "no answer";
  setAgo($("django-checked"), toEpochMs(django.checkedAt), "checked ");
}

// ---- events-per-minute chart ----------------------------------------------------------------

/** Round step sizes (1, 2, 2.5, 5 × 10^k) so axis labels read well. */
function niceScale(max, ticks) {
  if (max <= 0) return { top: ticks, step: 1 };
  const raw = max / ticks;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((s) => s >= raw);
  const rounded = step < 1 ? 1 : step;
  return { top: Math.ceil(max / rounded) * rounded, step: rounded };
}

class EpmChart {
  constructor(canvas, tooltip) {
    this.canvas = canvas;
    this.tooltip = tooltip;
    this.series = new Array(SERIES_LENGTH).fill(0);
    this.seriesAt = Date.now();
    this.hover = null;
    this.geometry = null;
    new ResizeObserver(() => this.draw()).observe(canvas);
    window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => this.draw());
    canvas.addEventListener("mousemove", (e) => this.hoverAt(e.clientX));
    canvas.addEventListener("mouseleave", () => this.setHover(null));
    canvas.addEventListener("keydown", (e) => this.onKey(e));
    canvas.addEventListener("blur", () => this.setHover(null));
  }

  setSeries(series) {
    this.series = series;
    this.seriesAt = Date.now();
    const peak = Math.max(...series);
    const total = series.reduce((a, b) => a + b, 0);
    this.canvas.setAttribute(
      "aria-label",
      `Events per minute over the last 60 minutes: ${fmtInt(series.at(-1))} this minute so far, ` +
        `${fmtInt(series.at(-2))} in the last full minute, peak ${fmtInt(peak)}.`,
    );
    setText("epm-legend", `peak ${fmtInt(peak)} / min · ${fmtInt(total)} events in the hour`);
    this.draw();
  }

  colors() {
    const css = getComputedStyle(document.documentElement);
    const get = (name) => css.getPropertyValue(name).trim();
    return {
      line: get("--chart-line"),
      fill: get("--chart-fill"),
      grid: get("--chart-grid"),
      axis: get("--chart-axis"),
      surface: get("--surface"),
      font: get("--font"),
    };
  }

  draw() {
    const { canvas } = this;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (!width || !height) return;
    const ratio = window.devicePixelRatio || 1;
    const pixelWidth = Math.round(width * ratio);
    const pixelHeight = Math.round(height * ratio);
    if (canvas.width !== pixelWidth || canvas.height !== pixelHeight) {
      canvas.width = pixelWidth;
      canvas.height = pixelHeight;
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const c = this.colors();
    const pad = { left: 52, right: 18, top: 22, bottom: 28 };
    const plotW = Math.max(1, width - pad.left - pad.right);
    const plotH = Math.max(1, height - pad.top - pad.bottom);
    const { top, step } = niceScale(Math.max(...this.series), 4);
    const x = (i) => pad.left + (plotW * i) / (SERIES_LENGTH - 1);
    const y = (v) => pad.top + plotH - (plotH * v) / top;
    this.geometry = { pad, plotW, x, y };

    ctx.font = `11px ${c.font}`;
    ctx.lineWidth = 1;
    // horizontal grid and y labels
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (let v = 0; v <= top + step / 2; v += step) {
      const yy = Math.round(y(v)) + 0.5;
      ctx.strokeStyle = c.grid;
      ctx.beginPath();
      ctx.moveTo(pad.left, yy);
      ctx.lineTo(pad.left + plotW, yy);
      ctx.stroke();
      ctx.fillStyle = c.axis;
      ctx.fillText(intFormat.format(v), pad.left - 8, yy);
    }
    ctx.textAlign = "left";
    ctx.textBaseline = "alphabetic";
    ctx.fillText("events / min", 4, 12);
    // x labels, counted back from the current minute: every 10 minutes, or 20 when narrow
    const narrow = plotW < 420;
    ctx.textBaseline = "top";
    for (let ago = 0; ago < SERIES_LENGTH; ago += narrow ? 20 : 10) {
      const i = SERIES_LENGTH - 1 - ago;
      const label = ago === 0 ? "now" : narrow ? `−${ago}m` : `−${ago} min`;
      ctx.textAlign = ago === 0 ? "right" : "center";
      ctx.fillText(label, x(i) + (ago === 0 ? 4 : 0), pad.top + plotH + 8);
      ctx.strokeStyle = c.grid;
      ctx.beginPath();
      ctx.moveTo(Math.round(x(i)) + 0.5, pad.top + plotH);
      ctx.lineTo(Math.round(x(i)) + 0.5, pad.top + plotH + 4);
      ctx.stroke();
    }

    // area under the completed minutes, then the line; the current minute is partial: dashed
    const last = SERIES_LENGTH - 1;
    const gradient = ctx.createLinearGradient(0, pad.top, 0, pad.top + plotH);
    gradient.addColorStop(0, c.fill);
    gradient.addColorStop(1, "rgba(0, 0, 0, 0)");
    ctx.beginPath();
    ctx.moveTo(x(0), y(0));
    for (let i = 0; i <= last; i++) ctx.lineTo(x(i), y(this.series[i]));
    ctx.lineTo(x(last), y(0));
    ctx.closePath();
    ctx.fillStyle = gradient;
    ctx.fill();

    ctx.strokeStyle = c.line;
    ctx.lineWidth = 2;
    ctx.lineJoin = "round";
    ctx.beginPath();
    for (let i = 0; i < last; i++) {
      if (i === 0) ctx.moveTo(x(i), y(this.series[i]));
      else ctx.lineTo(x(i), y(this.series[i]));
    }
    ctx.stroke();
    ctx.setLineDash([4, 4]);
    ctx.beginPath();
    ctx.moveTo(x(last - 1), y(this.series[last - 1]));
    ctx.lineTo(x(last), y(this.series[last]));
    ctx.stroke();
    ctx.setLineDash([]);
    this.marker(ctx, x(last), y(this.series[last]), c, false);

    if (this.hover !== null) {
      const hx = Math.round(x(this.hover)) + 0.5;
      ctx.strokeStyle = c.axis;
      ctx.lineWidth = 1;
      ctx.setLineDash([2, 3]);
      ctx.beginPath();
      ctx.moveTo(hx, pad.top);
      ctx.lineTo(hx, pad.top + plotH);
      ctx.stroke();
      ctx.setLineDash([]);
      this.marker(ctx, x(this.hover), y(this.series[this.hover]), c, true);
    }
  }

  marker(ctx, cx, cy, c, filled) {
    ctx.beginPath();
    ctx.arc(cx, cy, 4, 0, Math.PI * 2);
    ctx.fillStyle = filled ? c.line : c.surface;
    ctx.fill();
    ctx.lineWidth = 2;
    ctx.strokeStyle = c.line;
    ctx.stroke();
  }

  hoverAt(clientX) {
    if (!this.geometry) return;
    const rect = this.canvas.getBoundingClientRect();
    const { pad, plotW } = this.geometry;
    const fraction = (clientX - rect.left - pad.left) / plotW;
    const index = Math.round(fraction * (SERIES_LENGTH - 1));
    this.setHover(Math.min(SERIES_LENGTH - 1, Math.max(0, index)));
  }

  onKey(event) {
    const moves = { ArrowLeft: -1, ArrowRight: 1, Home: -SERIES_LENGTH, End: SERIES_LENGTH };
    if (!(event.key in moves)) return;
    event.preventDefault();
    const start = this.hover ?? SERIES_LENGTH - 1;
    this.setHover(Math.min(SERIES_LENGTH - 1, Math.max(0, start + moves[event.key])));
  }

  setHover(index) {
    if (this.hover === index) return;
    this.hover = index;
    this.draw();
    const tip = this.tooltip;
    if (index === null || !this.geometry) {
      tip.hidden = true;
      return;
    }
    const ago = SERIES_LENGTH - 1 - index;
    const minuteStart = new Date(Math.floor(this.seriesAt / 60000) * 60000 - ago * 60000);
    const when =
      ago === 0 ? "this minute, so far" : `${ago} min ago · ${clockFormat.format(minuteStart)}`;
    tip.replaceChildren(h("strong", {}, `${fmtInt(this.series[index])} events`), when);
    tip.hidden = false;
    const wrap = tip.parentElement;
    const left = this.canvas.offsetLeft + this.geometry.x(index);
    const max = wrap.clientWidth - tip.offsetWidth - 4;
    const placed =
      left + 12 + tip.offsetWidth > wrap.clientWidth ? left - tip.offsetWidth - 12 : left + 12;
    tip.style.left = `${Math.max(4, Math.min(max, placed))}px`;
  }
}

// ---- event log ------------------------------------------------------------------------------

const SOURCES = new Set(["client", "publisher", "api", "ingest"]);

function eventKey(event) {
  return `${event.room}\u0000${event.id}`;
}

function remember(key) {
  state.seen.add(key);
  if (state.seen.size > SEEN_EVENTS_CAP) {
    // Sets iterate in insertion order: drop the oldest keys
    const excess = state.seen.size - SEEN_EVENTS_CAP;
    let dropped = 0;
    for (const old of state.seen) {
      if (dropped++ >= excess) break;
      state.seen.delete(old);
    }
  }
}

/** Accept one event from the feed or a poll; duplicates (same room and id) are ignored. */
function ingestEvent(event) {
  if (!event || typeof event !== "object") return;
  const key = eventKey(event);
  if (state.seen.has(key)) {
    if (event.receipts) updateReceipts(event); // polling: the same event, newer counts
    return;
  }
  remember(key);
  if (state.paused) {
    state.pending.push(event);
    if (state.pending.length > EVENT_LOG_CAP) state.pending.shift();
  } else {
    insertEventRow(event, true);
    trimLog();
  }
  updateEventCount();
}

/** /dashboard/events lists newest first: feed them oldest first so the newest ends on top. */
function ingestEvents(list) {
  if (!Array.isArray(list)) return;
  for (let i = list.length - 1; i >= 0; i--) ingestEvent(list[i]);
}

function eventRow(event, fresh) {
  const ts = toEpochMs(event.ts) ?? Date.now();
  const room = String(event.room ?? "");
  const type = String(event.type ?? "");
  const source = String(event.source ?? "");
  const row = h(
    "tr",
    {
      "data-event-id": String(event.id ?? ""),
      "data-ts": String(ts),
      class: fresh ? "fresh" : null,
    },
    h("td", { title: dateTimeFormat.format(new Date(ts)) }, timeFormat.format(new Date(ts))),
    h("td", { class: "mono" }, room),
    h("td", {}, type),
    h(
      "td",
      {},
      h("span", { class: "tag", "data-kind": SOURCES.has(source) ? source : null }, source),
    ),
    h("td", { class: "mono muted" }, String(event.id ?? "")),
    h("td", { class: "receipts", "data-testid": "receipts" }, receiptsText(event.receipts)),
  );
  row.dataset.room = room;
  row.dataset.search = `${room} ${type} ${source}`.toLowerCase();
  row.hidden = !matchesFilter(row);
  return row;
}

/** "n of m" for an event that asked for receipts; empty for the others. */
function receiptsText(receipts) {
  if (!receipts || typeof receipts !== "object") return "";
  return `${fmtInt(receipts.connections)} of ${fmtInt(receipts.members)}`;
}

/** The feed's update of an event already in the log: its receipts grew. */
function updateReceipts(update) {
  if (!update || typeof update !== "object") return;
  for (const row of $("event-log").rows) {
    if (row.dataset.eventId === String(update.id) && row.dataset.room === String(update.room)) {
      const cell = row.querySelector("td.receipts");
      if (cell) cell.textContent = receiptsText(update.receipts);
    }
  }
}

/** Newest on top: events are placed by timestamp, so a late backfill lands where it belongs. */
function insertEventRow(event, fresh) {
  const tbody = $("event-log");
  const row = eventRow(event, fresh);
  const ts = Number(row.dataset.ts);
  let before = tbody.firstElementChild;
  while (before && Number(before.dataset.ts) > ts) before = before.nextElementSibling;
  tbody.insertBefore(row, before);
}

function trimLog() {
  const tbody = $("event-log");
  while (tbody.childElementCount > EVENT_LOG_CAP) tbody.lastElementChild.remove();
}

function matchesFilter(row) {
  return state.filterTokens.every((token) => row.dataset.search.includes(token));
}

function applyFilter(text) {
  state.filterTokens = text.toLowerCase().split(/\s+/).filter(Boolean);
  for (const row of $("event-log").rows) row.hidden = !matchesFilter(row);
  updateEventCount();
}

function setPaused(paused) {
  state.paused = paused;
  const button = $("event-pause");
  button.setAttribute("aria-pressed", String(paused));
  if (!paused) {
    const pending = state.pending;
    state.pending = [];
    for (const event of pending) insertEventRow(event, true);
    trimLog();
  }
  updateEventCount();
}

function plural(n, word) {
  return `${fmtInt(n)} ${word}${n === 1 ? "" : "s"}`;
}

function updateEventCount() {
  const rows = $("event-log").rows;
  let visible = 0;
  for (const row of rows) if (!row.hidden) visible++;
  let text = `${plural(rows.length, "event")} (newest first, last ${EVENT_LOG_CAP} kept).`;
  if (rows.length === 0) text = "No events yet.";
  else if (state.filterTokens.length) {
    text = `Showing ${fmtInt(visible)} of ${plural(rows.length, "event")} matching the filter.`;
  }
  if (state.paused) text += ` Paused: ${plural(state.pending.length, "new event")} waiting.`;
  setText("event-count", text);
  setText("event-pause", state.paused ? `Resume (${state.pending.length})` : "Pause");
}

async function loadEvents() {
  const data = await getJSON(`/dashboard/events?limit=${EVENTS_FETCH_LIMIT}`);
  ingestEvents(data?.events);
}

// ---- paginated tables: rooms and clients ----------------------------------------------------

class PagedTable {
  constructor({ path, listKey, table, more, summary, refresh, columns, noun, keyOf, rowOf }) {
    Object.assign(this, { path, listKey, columns, noun, keyOf, rowOf });
    this.tbody = $(table).tBodies[0];
    this.more = $(more);
    this.summary = summary;
    this.cursor = null;
    this.pages = 0;
    this.keys = new Set();
    this.loading = false;
    this.more.addEventListener("click", () => this.load(false));
    $(refresh).addEventListener("click", () => this.load(true));
  }

  /** Reload the first page, unless the operator has paged further (do not yank their place). */
  refresh() {
    if (this.pages <= 1) this.load(true);
  }

  async load(reset) {
    if (this.loading) return;
    this.loading = true;
    this.more.disabled = true;
    const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (!reset && this.cursor) params.set("cursor", this.cursor);
    try {
      const data = await getJSON(`${this.path}?${params}`);
      const items = Array.isArray(data?.[this.listKey]) ? data[this.listKey] : [];
      const rows = [];
      if (reset) {
        this.keys = new Set();
        this.pages = 0;
      }
      for (const item of items) {
        const key = this.keyOf(item);
        if (this.keys.has(key)) continue; // a cursor never repeats, but be safe across refreshes
        this.keys.add(key);
        rows.push(this.rowOf(item));
      }
      if (reset) this.tbody.replaceChildren(...rows);
      else this.tbody.append(...rows);
      if (!this.keys.size)
        this.tbody.replaceChildren(emptyRow(this.columns, `No ${this.noun} right now.`));
      this.pages += 1;
      this.cursor =
        typeof data?.nextCursor === "string" || typeof data?.nextCursor === "number"
          ? String(data.nextCursor)
          : null;
      this.more.hidden = !this.cursor;
      const total = num(data?.total);
      setText(
        this.summary,
        total === null
          ? `${fmtInt(this.keys.size)} shown`
          : `${fmtInt(this.keys.size)} of ${fmtInt(total)} shown`,
      );
    } catch (err) {
      setText(this.summary, `Could not load ${this.noun}: ${err.message}`);
      if (reset || !this.keys.size) {
        this.tbody.replaceChildren(emptyRow(this.columns, `Could not load ${this.noun}.`));
      }
    } finally {
      this.loading = false;
      this.more.disabled = false;
    }
  }
}

function roomRow(room) {
  return h(
    "tr",
    { "data-room": String(room.room ?? "") },
    h("td", { class: "mono" }, String(room.room ?? "")),
    h("td", { class: "num" }, fmtInt(room.members)),
  );
}

function clientRow(client) {
  const rooms = Array.isArray(client.rooms) ? client.rooms.map(String) : [];
  const shown = rooms.slice(0, 2).join(", ");
  const roomsText = rooms.length > 2 ? `${shown} +${rooms.length - 2}` : shown || "—";
  const role = String(client.role ?? "");
  const connected = h("td", { class: "muted" });
  const connectedAt = toEpochMs(client.connectedAt);
  if (connectedAt === null) connected.textContent = "—";
  else setAgo(connected, connectedAt);
  return h(
    "tr",
    { "data-connection-id": String(client.connectionId ?? "") },
    h(
      "td",
      { class: "mono", title: `connection ${client.connectionId ?? "?"}` },
      String(client.userId ?? ""),
    ),
    h(
      "td",
      {},
      h("span", { class: "tag", "data-kind": KNOWN_ROLES.includes(role) ? role : null }, role),
    ),
    h("td", { class: "mono" }, String(client.node ?? "")),
    h("td", { class: "mono", title: rooms.join("\n") || null }, roomsText),
    connected,
  );
}

// ---- feed and polling -----------------------------------------------------------------------

function feedUrl() {
  const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${window.location.host}/dashboard/feed`;
}

function connectFeed() {
  clearTimeout(state.feedRetryTimer);
  let ws;
  try {
    ws = new WebSocket(feedUrl());
  } catch {
    feedDown();
    return;
  }
  state.ws = ws;
  ws.addEventListener("open", () => {
    if (state.ws !== ws) return;
    state.feedOpen = true;
    state.feedRetryMs = FEED_RETRY_MIN_MS;
    stopPolling();
    setMode("live");
    armStaleTimer();
    loadEvents().catch(() => {}); // backfill anything published while the feed was down
  });
  ws.addEventListener("message", (message) => {
    if (state.ws !== ws) return;
    armStaleTimer();
    let frame;
    try {
      frame = JSON.parse(message.data);
    } catch {
      return;
    }
    if (frame?.type === "stats") onStats(frame.data);
    else if (frame?.type === "event") ingestEvent(frame.data);
    else if (frame?.type === "receipts") updateReceipts(frame.data);
  });
  ws.addEventListener("close", () => {
    if (state.ws === ws) feedDown();
  });
}

function armStaleTimer() {
  clearTimeout(state.feedStaleTimer);
  state.feedStaleTimer = setTimeout(() => {
    const ws = state.ws;
    feedDown(); // detach first, so the late close event of this socket is ignored
    ws?.close();
  }, FEED_STALE_MS);
}

/** The feed is gone: poll meanwhile, and retry the feed with exponential backoff and jitter. */
function feedDown() {
  state.ws = null;
  state.feedOpen = false;
  clearTimeout(state.feedStaleTimer);
  startPolling();
  const delay = state.feedRetryMs * (0.75 + Math.random() * 0.5);
  state.feedRetryMs = Math.min(state.feedRetryMs * 2, FEED_RETRY_MAX_MS);
  state.feedRetryTimer = setTimeout(connectFeed, delay);
}

function startPolling() {
  if (state.polling) return;
  state.polling = true;
  pollLoop();
}

function stopPolling() {
  state.polling = false;
  clearTimeout(state.pollTimer);
}

async function pollLoop() {
  if (!state.polling) return;
  await pollOnce();
  if (state.polling) state.pollTimer = setTimeout(pollLoop, POLL_MS);
}

async function pollOnce() {
  try {
    const [stats, events] = await Promise.all([
      getJSON("/dashboard/stats"),
      getJSON(`/dashboard/events?limit=${EVENTS_FETCH_LIMIT}`),
    ]);
    onStats(stats);
    ingestEvents(events?.events);
    if (!state.feedOpen) setMode("polling");
  } catch {
    if (!state.feedOpen) setMode("offline");
  }
}

// ---- cleanup --------------------------------------------------------------------------------

const REMOVED_LABELS = {
  nodes: "Dead nodes",
  connections: "Connections",
  memberships: "Room memberships",
  presence: "Presence entries",
};

function savedToken() {
  if (state.cleanupToken) return state.cleanupToken;
  try {
    return window.sessionStorage.getItem(TOKEN_STORAGE_KEY);
  } catch {
    return null; // storage disabled: memory only
  }
}

function forgetToken() {
  state.cleanupToken = null;
  try {
    window.sessionStorage.removeItem(TOKEN_STORAGE_KEY);
  } catch {
    // storage disabled
  }
}

function keepToken(token) {
  state.cleanupToken = token;
  try {
    window.sessionStorage.setItem(TOKEN_STORAGE_KEY, token);
  } catch {
    // storage disabled: the token stays in this page's memory only
  }
}

function resetCleanupDialog() {
  const hasToken = Boolean(savedToken());
  $("cleanup-token-group").hidden = hasToken;
  $("cleanup-saved").hidden = !hasToken;
  $("cleanup-token").value = "";
  $("cleanup-remember").checked = false;
  $("cleanup-error").hidden = true;
  $("cleanup-result").hidden = true;
  const confirm = $("cleanup-confirm");
  confirm.hidden = false;
  confirm.disabled = false;
  confirm.textContent = "Run cleanup";
  $("cleanup-cancel").textContent = "Cancel";
}

function openCleanup() {
  resetCleanupDialog();
  const dialog = $("cleanup-dialog");
  dialog.showModal();
  (savedToken() ? $("cleanup-confirm") : $("cleanup-token")).focus();
}

function cleanupError(text) {
  const node = $("cleanup-error");
  node.textContent = text;
  node.hidden = false;
}

async function runCleanup(event) {
  event.preventDefault();
  const stored = savedToken();
  const token = stored || $("cleanup-token").value.trim();
  if (!token) {
    cleanupError("Enter the dashboard token to run a cleanup.");
    $("cleanup-token").focus();
    return;
  }
  const confirm = $("cleanup-confirm");
  confirm.disabled = true;
  confirm.textContent = "Cleaning up…";
  $("cleanup-error").hidden = true;
  try {
    // credentials "omit": only the Bearer header authorises this POST, never the Basic login
    const data = await fetchJSON("/dashboard/cleanup", {
      method: "POST",
      credentials: "omit",
      headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
      body: "{}",
    });
    if (!stored && $("cleanup-remember").checked) keepToken(token);
    $("cleanup-token").value = "";
    showCleanupResult(data?.removed);
    refreshAfterCleanup();
  } catch (err) {
    if (err.status === 401 || err.status === 403) {
      forgetToken();
      $("cleanup-token-group").hidden = false;
      $("cleanup-saved").hidden = true;
      cleanupError("The token was refused. Check it and try again.");
      $("cleanup-token").focus();
    } else {
      cleanupError(`Cleanup failed: ${err.message}`);
    }
    confirm.disabled = false;
    confirm.textContent = "Run cleanup";
  }
}

function showCleanupResult(removed) {
  const counts = removed && typeof removed === "object" ? removed : {};
  const keys = [
    ...Object.keys(REMOVED_LABELS),
    ...Object.keys(counts).filter((k) => !(k in REMOVED_LABELS)),
  ];
  const total = keys.reduce((sum, k) => sum + (num(counts[k]) ?? 0), 0);
  const list = h("dl");
  for (const key of keys) {
    list.append(
      h("dt", {}, REMOVED_LABELS[key] ?? key),
      h("dd", { "data-removed": key }, fmtInt(counts[key] ?? 0)),
    );
  }
  const heading = total ? "Cleanup finished. Removed:" : "Cleanup finished: nothing was stale.";
  const result = $("cleanup-result");
  result.replaceChildren(h("strong", {}, heading), list);
  result.hidden = false;
  $("cleanup-token-group").hidden = true;
  $("cleanup-saved").hidden = true;
  $("cleanup-confirm").hidden = true;
  $("cleanup-cancel").textContent = "Close";
  $("cleanup-cancel").focus();
}

function refreshAfterCleanup() {
  getJSON("/dashboard/stats").then(onStats, () => {});
  rooms.load(true);
  clients.load(true);
}

// ---- wiring ---------------------------------------------------------------------------------

const chart = new EpmChart($("epm-chart"), $("epm-tooltip"));

const rooms = new PagedTable({
  path: "/dashboard/rooms",
  listKey: "rooms",
  table: "rooms-table",
  more: "rooms-more",
  summary: "rooms-summary",
  refresh: "rooms-refresh",
  columns: 2,
  noun: "rooms",
  keyOf: (room) => String(room.room),
  rowOf: roomRow,
});

const clients = new PagedTable({
  path: "/dashboard/clients",
  listKey: "clients",
  table: "clients-table",
  more: "clients-more",
  summary: "clients-summary",
  refresh: "clients-refresh",
  columns: 5,
  noun: "clients",
  keyOf: (client) => String(client.connectionId),
  rowOf: clientRow,
});

function wireControls() {
  $("event-filter").addEventListener("input", (e) => applyFilter(e.target.value));
  $("event-pause").addEventListener("click", () => setPaused(!state.paused));
  $("event-clear").addEventListener("click", () => {
    $("event-log").replaceChildren();
    state.pending = [];
    updateEventCount();
  });
  $("cleanup-button").addEventListener("click", openCleanup);
  $("cleanup-form").addEventListener("submit", runCleanup);
  $("cleanup-cancel").addEventListener("click", () => $("cleanup-dialog").close());
  $("cleanup-forget").addEventListener("click", () => {
    forgetToken();
    resetCleanupDialog();
    $("cleanup-token").focus();
  });
  $("cleanup-dialog").addEventListener("close", () => {
    $("cleanup-token").value = "";
  });
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState !== "visible") return;
    loadApiStatus();
    rooms.refresh();
    clients.refresh();
  });
}

// ---- narrow screens: each row of a table becomes a card of "label: value" lines ------------

/** Give each cell of `table` its column's header as `data-label` (shown by the CSS under
 * 600 px, where the header row is hidden), for the rows there now and every row added later. */
function labelColumns(table) {
  const labels = [...table.tHead.rows[0].cells].map((th) => th.textContent.trim());
  const label = (row) => {
    if (row.classList.contains("empty-row")) return;
    [...row.cells].forEach((cell, i) => {
      if (labels[i]) cell.setAttribute("data-label", labels[i]);
    });
  };
  for (const body of table.tBodies) {
    [...body.rows].forEach(label);
    new MutationObserver((changes) => {
      for (const change of changes) {
        for (const node of change.addedNodes) if (node instanceof HTMLTableRowElement) label(node);
      }
    }).observe(body, { childList: true });
  }
}

function start() {
  document.querySelectorAll("table.cards-narrow").forEach(labelColumns);
  wireControls();
  updateEventCount();
  connectFeed();
  getJSON("/dashboard/stats").then(onStats, () => {});
  loadEvents().catch(() => {});
  loadApiStatus();
  rooms.load(true);
  clients.load(true);
  setInterval(tick, 1000);
  setInterval(loadApiStatus, API_STATUS_MS);
  setInterval(() => {
    rooms.refresh();
    clients.refresh();
    // the feed is rate limited server side: fill in whatever it dropped (duplicates are ignored)
    if (state.feedOpen) loadEvents().catch(() => {});
  }, TABLE_REFRESH_MS);
}

start();
