"""The site's in-memory state: users by token rule, behaviour switches, recorded calls.

The server is threaded, so every read-modify-write happens under ``STATE.lock``.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

# A token names its user: ``cliente-7`` is user 7 with role cliente.
TOKEN_RULE = re.compile(r"^(cliente|proveedor|admin)-([0-9]{1,9})$")

EVENTS_MODES = {"ok", "reject", "fail", "slow", "rooms", "empty", "receipts"}
PROFILE_MODES = {"ok", "fail", "slow", "late"}
PRESENCE_MODES = {"ok", "fail"}


def user_for_token(token: str) -> dict[str, Any] | None:
    match = TOKEN_RULE.match(token)
    if match is None:
        return None
    role, user_id = match.group(1), int(match.group(2))
    return {
        "id": user_id,
        "role": role,
        "username": f"{role}{user_id}",
        "email": f"{role}{user_id}@example.test",
    }


@dataclass
class SiteState:
    lock: threading.Lock = field(default_factory=threading.Lock)
    events_mode: str = "ok"
    profile_mode: str = "ok"
    slow_seconds: float = 1.0
    rooms: list[str] = field(default_factory=list)
    revoked: set[str] = field(default_factory=set)
    profile_calls: int = 0  # calls that carried a token
    profile_probes: int = 0  # calls without one (the gateway's reachability probe)
    profile_calls_by_token: Counter[str] = field(default_factory=Counter)
    profile_schemes: Counter[str] = field(default_factory=Counter)
    events: list[dict[str, Any]] = field(default_factory=list)
    next_ids: Counter[str] = field(default_factory=Counter)
    # Idempotency-Key -> the 2xx answer given the first time: (status, body or None).
    answered: dict[str, tuple[int, dict[str, Any] | None]] = field(default_factory=dict)

    # presence changes handled by the @presence_changed hook, in the order handled; POSTs seen
    presence_mode: str = "ok"
    presence: list[dict[str, Any]] = field(default_factory=list)
    presence_posts: int = 0

    def reset(self) -> None:
        """Back to the defaults (the caller holds the lock)."""
        fresh = SiteState()
        for name in self.__dataclass_fields__:
            if name != "lock":
                setattr(self, name, getattr(fresh, name))

    def new_id(self, kind: str) -> int:
        """The next id of ``kind`` (reservation, payment, comment): 1, 2, 3, …"""
        self.next_ids[kind] += 1
        return self.next_ids[kind]

    def calls_report(self) -> dict[str, Any]:
        return {
            "profile_calls": self.profile_calls,
            "profile_probes": self.profile_probes,
            "profile_calls_by_token": dict(self.profile_calls_by_token),
            "profile_schemes": dict(self.profile_schemes),
            "events": list(self.events),
            "events_mode": self.events_mode,
            "profile_mode": self.profile_mode,
            "presence": list(self.presence),
            "presence_posts": self.presence_posts,
            "presence_mode": self.presence_mode,
        }


STATE = SiteState()
