"""Every Redis key and channel name, in one place.

Room keys carry the room in a ``{hash tag}`` so that all of a room's keys (and its shard channel)
share one Redis Cluster slot; the atomic publish script touches only those. Global indexes
written rarely (nodes, events) share the ``{g}`` tag; the indexes a connect writes (rooms and
their member counts, online users) are sharded over ``INDEX_SHARDS`` tags, and what only the
dashboard reads about connections stays in the nodes themselves (answered on request over
``dashboard_channel``). The keys marked *legacy* are what releases before the sharding wrote;
they are read and swept, never written, so a rolling upgrade's old nodes are cleaned up exactly.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

# Indexes that every connect or join would otherwise write in one slot are spread over this many
# hash tags (by CRC32 of the room or user id): on a Redis Cluster each tag lands on some master,
# so connect load spreads with the masters instead of piling on one.
INDEX_SHARDS = 16


def shard_of(name: str) -> int:
    """The index shard of a room or user id (stable across processes and releases)."""
    return zlib.crc32(name.encode()) % INDEX_SHARDS


def _spread_tags(kind: str) -> tuple[str, ...]:
    """One hash tag per shard, shard ``i``'s in the ``i``-th sixteenth of the slot space, so
    the shards split evenly between the masters of a cluster whose slots are split evenly (the
    default); plain ``kind:i`` tags can put ten of sixteen on one master of three."""
    width = REDIS_CLUSTER_HASH_SLOTS // INDEX_SHARDS
    tags = []
    for shard in range(INDEX_SHARDS):
        n = 0
        while key_slot(f"{kind}{shard}.{n}".encode()) // width != shard:
            n += 1
        tags.append(f"{kind}{shard}.{n}")
    return tuple(tags)


ROOM_TAGS = _spread_tags("rooms")
ONLINE_TAGS = _spread_tags("online")


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "gateway"

    # --- per room (same slot) -------------------------------------------------------------
    def room_meta(self, room: str) -> str:
        """hash {epoch, offset}; TTL history_meta_ttl_s, refreshed on publish."""
        return f"{self.prefix}:room:{{{room}}}:meta"

    def room_history(self, room: str) -> str:
        """stream, entry id ``0-<offset>``, field ``d`` = event body; capped, TTL history_ttl."""
        return f"{self.prefix}:room:{{{room}}}:hist"

    def room_idempotency(self, room: str, key: str) -> str:
        """string ``offset:epoch:eventId``; TTL 300 s."""
        return f"{self.prefix}:room:{{{room}}}:idem:{key}"

    def room_event(self, room: str, event_id: str) -> str:
        """string ``offset:epoch:eventId`` of the event published with that id (dedupe of
        retries: one event, one offset); TTL as idempotency keys."""
        return f"{self.prefix}:room:{{{room}}}:eid:{event_id}"

    def room_presence(self, room: str) -> str:
        """hash connectionId -> ``userId\\x1frole\\x1fnode``."""
        return f"{self.prefix}:room:{{{room}}}:presence"

    def room_channel(self, room: str) -> str:
        """pub/sub (sharded in cluster mode) channel of the room's live events."""
        return f"{self.prefix}:room:{{{room}}}:ch"

    def is_room_channel(self, channel: str) -> bool:
        return channel.startswith(f"{self.prefix}:room:{{") and channel.endswith("}:ch")

    def room_from_channel(self, channel: str) -> str:
        start = len(self.prefix) + 7  # len(":room:{")
        return channel[start:-4]  # strip "}:ch"

    # --- cluster-wide -----------------------------------------------------------------------
    @property
    def control_channel(self) -> str:
        return f"{self.prefix}:control"

    def node_channel(self, node: str) -> str:
        """the node's own channel, used by the pub/sub liveness probe."""
        return f"{self.prefix}:node:{{{node}}}:probe"

    @property
    def nodes(self) -> str:
        """zset node -> last heartbeat (epoch ms): the index of nodes, alive or not."""
        return f"{self.prefix}:{{g}}:nodes"

    def node_lease(self, node: str) -> str:
        """string: the node's stats snapshot (JSON); PX lease, refreshed by heartbeats."""
        return f"{self.prefix}:node:{{{node}}}:lease"

    def node_memberships(self, node: str) -> str:
        """set of ``room\\x1fconnectionId`` held by the node's connections."""
        return f"{self.prefix}:node:{{{node}}}:memberships"

    def node_connections(self, node: str) -> str:
        """*legacy* set of the node's connection ids (releases before ``node_clients``)."""
        return f"{self.prefix}:node:{{{node}}}:connections"

    def node_clients(self, node: str) -> str:
        """*legacy* hash connectionId -> userId of the node's connections (releases before
        connection counts came from ``user_online`` only): drained by the janitor."""
        return f"{self.prefix}:node:{{{node}}}:clients"

    def node_dashboard(self, node: str) -> str:
        """pub/sub channel of the answers to the node's dashboard requests."""
        return f"{self.prefix}:node:{{{node}}}:dashboard"

    @property
    def dashboard_channel(self) -> str:
        """pub/sub channel of dashboard requests (``/dashboard/clients``): every node answers
        from its own connections; the receiver count of the publish says how many answers."""
        return f"{self.prefix}:{{dashboard}}:requests"

    # --- sharded indexes (INDEX_SHARDS tags) --------------------------------------------------
    def rooms_index(self, shard: int) -> str:
        """zset (all scores 0) of the shard's rooms with members, for lexicographic paging."""
        return f"{self.prefix}:{{{ROOM_TAGS[shard]}}}:index"

    def rooms_members(self, shard: int) -> str:
        """hash room -> member count (connections, cluster-wide) of the shard's rooms."""
        return f"{self.prefix}:{{{ROOM_TAGS[shard]}}}:members"

    def room_index_of(self, room: str) -> str:
        return self.rooms_index(shard_of(room))

    def room_members_of(self, room: str) -> str:
        return self.rooms_members(shard_of(room))

    def online_index(self, shard: int) -> str:
        """zset (all scores 0) of the shard's users announced online, for counting and paging."""
        return f"{self.prefix}:{{{ONLINE_TAGS[shard]}}}:users"

    def online_index_of(self, user_id: str) -> str:
        return self.online_index(shard_of(user_id))

    def user_connections(self, user_id: str) -> str:
        """*legacy* set of a user's connection ids, cluster-wide (releases before ``disconnect``
        counted the ``n:<node>`` fields of ``user_online``): swept by the janitor."""
        return f"{self.prefix}:user:{{{user_id}}}:connections"

    @property
    def clients(self) -> str:
        """*legacy* zset (all scores 0) of connection ids, for lexicographic cursor paging."""
        return f"{self.prefix}:{{g}}:clients"

    @property
    def client_info(self) -> str:
        """*legacy* hash connectionId -> JSON {userId, role, node, connectedAt}."""
        return f"{self.prefix}:{{g}}:clients:info"

    @property
    def rooms(self) -> str:
        """*legacy* zset (all scores 0) of rooms with members (now ``rooms_index``)."""
        return f"{self.prefix}:{{g}}:rooms"

    @property
    def room_members(self) -> str:
        """*legacy* hash room -> member count (now ``rooms_members``)."""
        return f"{self.prefix}:{{g}}:rooms:members"

    @property
    def events(self) -> str:
        """stream of event summaries for the dashboard, capped: written by the publish script
        of releases before the event log (read by their dashboards only; see ``events_log``)."""
        return f"{self.prefix}:{{g}}:events"

    @property
    def events_log(self) -> str:
        """sorted set (all scores 0) of the recent events' summaries, ordered by publish time,
        capped; written once per interval by each publishing process (backend/event_log.py)."""
        return f"{self.prefix}:{{g}}:events:log"

    def events_flush(self, mark: str) -> str:
        """string: one event-log flush was applied (a retried flush is applied once); short TTL."""
        return f"{self.prefix}:{{g}}:events:flush:{mark}"

    def events_minute(self, minute: int) -> str:
        """hash type -> count for one minute (epoch minutes); TTL 2 h."""
        return f"{self.prefix}:{{g}}:epm:{minute}"

    @property
    def events_series(self) -> str:
        """hash minute -> total, rolled up by the worker (last 60 minutes)."""
        return f"{self.prefix}:{{g}}:epm:series"

    @property
    def ingest(self) -> str:
        return f"{self.prefix}:ingest"

    @property
    def ingest_dead(self) -> str:
        return f"{self.prefix}:ingest:dead"

    @property
    def ingest_group(self) -> str:
        return "gateway-workers"

    def lease(self, job: str) -> str:
        """string lock for once-only jobs (janitor sweep, rollup); PX lease."""
        return f"{self.prefix}:lease:{job}"

    @property
    def auth_cache_prefix(self) -> str:
        return f"{self.prefix}:auth:"

    # --- worker (appended) ------------------------------------------------------------------
    @property
    def events_series_by_type(self) -> str:
        """hash type -> events of that type over the last 60 minutes, rolled up by the worker."""
        return f"{self.prefix}:{{g}}:epm:series:types"

    # --- connection accounting and online status (appended) ----------------------------------
    def user_online(self, user_id: str) -> str:
        """hash of one user's cluster-wide connections and online state: ``n:<node>`` -> that
        node's connections of the user, ``role``, ``on`` (``1``/``0``: the state last announced
        on the presence stream), ``seen`` (ms of the last open or close), ``off`` (ms when the
        user goes offline unless a connection opens first). TTL 30 days once offline."""
        return f"{self.prefix}:user:{{{user_id}}}:online"

    def ip_connections(self, ip: str) -> str:
        """hash ``n:<node>`` -> that node's connections from one client address."""
        return f"{self.prefix}:ip:{{{ip}}}:connections"

    def node_held(self, node: str) -> str:
        """hash of what the node counts in ``user_online`` / ``ip_connections``: ``u:<userId>``
        and ``i:<ip>`` -> count, and ``_`` (always present while the node is registered), so a
        dead node's counts are swept in O(its own users and addresses)."""
        return f"{self.prefix}:node:{{{node}}}:held"

    @property
    def held_nodes(self) -> str:
        """set of nodes that have a ``node_held`` record (the sweep's index)."""
        return f"{self.prefix}:{{g}}:held:nodes"

    @property
    def presence_due(self) -> str:
        """*legacy* zset userId -> ms when the user's grace period ends (now ``due_index``);
        still settled, so users an old node released go offline after an upgrade."""
        return f"{self.prefix}:{{g}}:presence:due"

    def due_index(self, shard: int) -> str:
        """zset userId -> ms when the user's grace period ends (last connection closed), of the
        users of one index shard."""
        return f"{self.prefix}:{{{ONLINE_TAGS[shard]}}}:due"

    def due_index_of(self, user_id: str) -> str:
        return self.due_index(shard_of(user_id))

    @property
    def online_users(self) -> str:
        """*legacy* zset of the users announced online (now ``online_index``)."""
        return f"{self.prefix}:{{g}}:online"

    @property
    def presence_stream(self) -> str:
        """stream of online/offline changes: ``userId``, ``role``, ``online`` (1/0), ``ts``."""
        return f"{self.prefix}:presence"

    @property
    def presence_group(self) -> str:
        return "gateway-presence"

    def receipts(self, room: str, event_id: str) -> str:
        """hash of one event's receipts in one room: ``o`` offset, ``e`` epoch, ``m`` members at
        publish, ``c`` connections that acknowledged, ``u:<userId>`` -> first ms (broadcast rooms:
        ``n`` distinct users instead); TTL the history TTL."""
        return f"{self.prefix}:room:{{{room}}}:rcpt:{event_id}"

    def receipts_users(self, room: str, event_id: str) -> str:
        """HyperLogLog of the users of a broadcast room (``all_*``) who acknowledged."""
        return f"{self.prefix}:room:{{{room}}}:rcpt:{event_id}:u"

    def receipts_event(self, event_id: str) -> str:
        """hash room -> offset: the rooms of an event published with receipts; TTL history."""
        return f"{self.prefix}:rcpt:{{{event_id}}}"

    # --- janitor (appended) -------------------------------------------------------------------
    def job_period(self, job: str) -> str:
        """string: set (PX, most of a period) by the worker that ran ``job`` this period; the
        other workers skip their tick while it lives. The job's lease is released at once, so
        ``POST /dashboard/cleanup`` waits only while a sweep actually runs."""
        return f"{self.prefix}:lease:{job}:period"

    # --- authentication (appended): shared token cache and revocation ----------------------
    def auth_token(self, token_hash: str) -> str:
        """string: JSON ``[userId, role, verifiedAtMs]`` of a token Django verified, by the
        token's sha256 (never the token); void while the user's ``auth_user_revoked`` mark is
        not older than ``verifiedAtMs``. PX ``GATEWAY_AUTH_CACHE_S``. (The previous release
        wrote ``{"u", "r", "t"}``, and named the entry in ``auth_user_tokens``.)"""
        return f"{self.auth_cache_prefix}tok:{token_hash}"

    def auth_user_tokens(self, user_id: str) -> str:
        """set of the user's cached token hashes, written by the previous release only (this
        one voids entries by the mark instead); ``disconnect`` still deletes the entries it
        names, during a rolling upgrade. PX ``GATEWAY_AUTH_CACHE_S``."""
        return f"{self.auth_cache_prefix}user:{{{user_id}}}:tokens"

    def auth_user_revoked(self, user_id: str) -> str:
        """string: epoch ms of the user's last ``disconnect``; JWTs issued before it are
        refused, and cached tokens verified before it. EX ``GATEWAY_AUTH_REVOCATION_TTL_S``."""
        return f"{self.auth_cache_prefix}user:{{{user_id}}}:revoked"

    @property
    def auth_revocations(self) -> str:
        """zset userId -> epoch ms of the user's last ``disconnect``, trimmed to
        ``GATEWAY_AUTH_REVOCATION_TTL_S``: nodes poll it, so a JWT check needs no Redis call.
        Its own slot: written only on disconnect, read every few seconds by each node."""
        return f"{self.auth_cache_prefix}{{revocations}}"

    def auth_user_role(self, user_id: str) -> str:
        """string: the user's role as Django's profile answered it, for JWTs without a role
        claim; PX ``GATEWAY_AUTH_CACHE_S``."""
        return f"{self.auth_cache_prefix}user:{{{user_id}}}:role"

    # --- Socket.IO (appended) ---------------------------------------------------------------
    def sio_record(self, pid: str) -> str:
        """string: a Socket.IO session's recovery record (JSON: user, rooms with their index
        and join position); PX the history TTL, refreshed while the session lives."""
        return f"{self.prefix}:sio:{{{pid}}}:record"

    def sio_channel(self, node: str) -> str:
        """pub/sub channel of a node's Socket.IO sessions: requests for them that reached
        another node (long-polls, posts, a WebSocket upgrade), and the replies."""
        return f"{self.prefix}:node:{{{node}}}:sio"
