"""Backends: where rooms, presence, history and fan-out live (memory or Redis)."""

from gateway.backend.base import Backend

__all__ = ["Backend"]
