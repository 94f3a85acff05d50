"""Socket.IO v5 / Engine.IO v4 compatibility: ``socket.io-client`` 3.x/4.x over a WebSocket.

``codec`` is the pure packet layer, ``transport`` the aiohttp endpoint, ``routes`` its wiring to
the node. See docs/socketio.md.
"""
