"""The gateway's background worker: ingest stream, janitor and events-per-minute rollups.

Run it with ``gateway-worker`` (or ``python -m worker``); it needs ``GATEWAY_REDIS_URL``.
"""
