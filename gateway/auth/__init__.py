"""Authentication: who a token belongs to, answered as cheaply as possible.

``authenticator.Authenticator`` asks, in order: this node's memory (``local``), the cluster-wide
cache in Redis (``shared``), the token itself when it is a JWT we can verify (``jwt_verify``,
``jwks``), and last Django. ``revoke`` forgets a user's tokens (``disconnect(user_id)``) and is
shared with the publishers, so this package's ``__init__`` imports nothing heavy.
"""
