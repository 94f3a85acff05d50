"""Integration tests: real redis-server, Django site and gateway processes."""
