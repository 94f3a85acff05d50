"""Unit tests: no processes, no network."""
