"""Integrations with frameworks (imported only by applications that use them)."""
