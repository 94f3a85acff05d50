"""WebSocket close codes and error codes, each with what it means for a reconnecting client."""

from __future__ import annotations

from enum import IntEnum, StrEnum


class CloseCode(IntEnum):
    """Close codes the gateway sends. ``retry`` tells a client whether reconnecting can help."""

    GOING_AWAY = 1001  # server process ends; reconnect
    MESSAGE_TOO_BIG = 1009  # a frame over GATEWAY_MAX_MESSAGE_BYTES; reconnect, send smaller frames
    INTERNAL_ERROR = 1011  # unexpected server fault; reconnect with backoff
    SERVICE_RESTART = 1012  # node draining (SIGTERM); reconnect elsewhere and recover
    TRY_AGAIN_LATER = 1013  # Django unavailable for auth; reconnect with backoff
    AUTH_FAILED = 4401  # invalid token or identity mismatch; do NOT retry with this token
    DISCONNECTED_BY_SERVER = 4403  # server API disconnect (logout, deactivation); do NOT retry
    AUTH_TIMEOUT = 4408  # no authenticate within the deadline; reconnect and authenticate at once
    RATE_LIMITED = 4429  # kept exceeding the frame rate; reconnect slower
    SLOW_CONSUMER = 4503  # send queue overflow; reconnect and recover from history

    @property
    def retry(self) -> bool:
        return self not in (CloseCode.AUTH_FAILED, CloseCode.DISCONNECTED_BY_SERVER)


class ErrorCode(StrEnum):
    BAD_REQUEST = "bad_request"
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"
    INVALID_ROOM = "invalid_room"
    VALIDATION_ERROR = "validation_error"
    RATE_LIMITED = "rate_limited"
    UNKNOWN_EVENT = "unknown_event"
    REJECTED = "rejected"
    DJANGO_UNAVAILABLE = "django_unavailable"
    ALREADY_AUTHENTICATED = "already_authenticated"
    TOO_MANY_ROOMS = "too_many_rooms"
    NOT_JOINED = "not_joined"
    UNAVAILABLE = "unavailable"  # the backend (Redis) could not serve the request


class AuthErrorCode(StrEnum):
    INVALID_TOKEN = "invalid_token"  # close 4401
    IDENTITY_MISMATCH = "identity_mismatch"  # close 4401
    AUTH_UNAVAILABLE = "auth_unavailable"  # close 1013
    TOO_MANY_CONNECTIONS = "too_many_connections"  # close 4429

    @property
    def close_code(self) -> CloseCode:
        return {
            AuthErrorCode.INVALID_TOKEN: CloseCode.AUTH_FAILED,
            AuthErrorCode.IDENTITY_MISMATCH: CloseCode.AUTH_FAILED,
            AuthErrorCode.AUTH_UNAVAILABLE: CloseCode.TRY_AGAIN_LATER,
            AuthErrorCode.TOO_MANY_CONNECTIONS: CloseCode.RATE_LIMITED,
        }[self]


# Close codes counted under their own number in metrics; any other (a client may send any of
# 3000-4999) is counted as "other", so clients cannot create label values at will.
_LABELLED = frozenset(
    (1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014)
) | frozenset(CloseCode)


def close_code_label(code: int) -> str:
    """The ``code`` label of ``gateway_disconnects_total``: bounded whatever the client sends."""
    return str(code) if code in _LABELLED else "other"
