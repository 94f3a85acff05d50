"""Real-time WebSocket gateway for Django applications."""

__version__ = "0.1.0"
