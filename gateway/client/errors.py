"""Errors of the gateway client, each saying whether reconnecting can help (``terminal``)."""

from __future__ import annotations

from typing import Any

from gateway.closecodes import AuthErrorCode, CloseCode

JsonObject = dict[str, Any]
TERMINAL_CLOSE_CODES = frozenset({CloseCode.AUTH_FAILED, CloseCode.DISCONNECTED_BY_SERVER})
TERMINAL_AUTH_CODES = frozenset({AuthErrorCode.INVALID_TOKEN, AuthErrorCode.IDENTITY_MISMATCH})


class GatewayError(Exception):
    """The gateway answered ``error`` (or the request could not be answered).

    ``terminal``: reconnecting cannot help (bad token, disconnected by the server).
    """

    def __init__(
        self,
        code: str,
        message: str = "",
        field: str | None = None,
        fields: JsonObject | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.field = field
        # Django's per-field messages of a `rejected` event: {"fecha": ["..."]}
        self.fields = fields

    @property
    def terminal(self) -> bool:
        return False

    @classmethod
    def from_data(cls, data: JsonObject) -> GatewayError:
        field_name = data.get("field")
        fields = data.get("fields")
        return cls(
            str(data.get("code", "error")),
            str(data.get("message", "")),
            field_name if isinstance(field_name, str) else None,
            fields if isinstance(fields, dict) else None,
        )


class AuthError(GatewayError):
    """``auth_error``; ``terminal`` means retrying with this token is pointless."""

    @property
    def terminal(self) -> bool:
        return self.code in TERMINAL_AUTH_CODES


class Disconnected(GatewayError):
    """Closed with 4403 by the server API (logout, deactivation): do not reconnect."""

    def __init__(self, close_code: int) -> None:
        super().__init__("disconnected", f"closed with {close_code}: disconnected by the server")

    @property
    def terminal(self) -> bool:
        return True


class ConnectionLost(GatewayError):
    """The connection closed before the reply came; the request may or may not have happened."""

    def __init__(self, close_code: int | None = None) -> None:
        super().__init__("connection_lost", f"connection closed (code {close_code})")
        self.close_code = close_code


class ClientClosed(GatewayError):
    """The client was closed, or stopped retrying (``terminal_error`` says why)."""

    def __init__(self, message: str = "the client is closed") -> None:
        super().__init__("closed", message)


class RequestTimeout(GatewayError):
    def __init__(self, event: str, timeout_s: float) -> None:
        super().__init__("timeout", f"no reply to {event} within {timeout_s:g} s")


def terminal_close_error(close_code: int) -> GatewayError:
    if close_code == CloseCode.AUTH_FAILED:
        return AuthError(AuthErrorCode.INVALID_TOKEN, "closed with 4401: do not retry this token")
    return Disconnected(close_code)
