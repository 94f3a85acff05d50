"""The Python (asyncio) client of the gateway: ``from gateway.client import GatewayClient``.

After a lost connection it reconnects with exponential backoff and full jitter (next URL),
authenticates again, rejoins its rooms with ``since`` and hands each missed event to the handlers
once, in order; it stops retrying after close 4401 or 4403. See docs/clients.md.

- ``connection``: ``GatewayClient``, the only part that touches a socket;
- ``recovery``: backoff, URL rotation and per-room offsets (duplicates, gaps, merges), no I/O;
- ``errors``: what requests raise, and which errors end the client for good.
"""

from gateway.client.connection import (
    LIFECYCLE_EVENTS,
    ClientState,
    ClientStats,
    GatewayClient,
    Handler,
    JsonObject,
)
from gateway.client.errors import (
    AuthError,
    ClientClosed,
    ConnectionLost,
    Disconnected,
    GatewayError,
    RequestTimeout,
)
from gateway.client.recovery import (
    Backoff,
    JoinOutcome,
    RoomCursor,
    RoomTracker,
    UrlRotation,
    Verdict,
)

__all__ = [
    "LIFECYCLE_EVENTS",
    "AuthError",
    "Backoff",
    "ClientClosed",
    "ClientState",
    "ClientStats",
    "ConnectionLost",
    "Disconnected",
    "GatewayClient",
    "GatewayError",
    "Handler",
    "JoinOutcome",
    "JsonObject",
    "RequestTimeout",
    "RoomCursor",
    "RoomTracker",
    "UrlRotation",
    "Verdict",
]
