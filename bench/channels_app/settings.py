"""Django settings of the Channels comparison app: no database, no middleware, one channel layer.

``BENCH_REDIS_URL`` is the Redis of the run; ``BENCH_CHANNEL_LAYER`` is ``core`` (the default
``channels_redis.core.RedisChannelLayer``, what most deployments use) or ``pubsub``
(``channels_redis.pubsub.RedisPubSubChannelLayer``). The core layer's per-channel capacity is
raised from 100 to 100,000 messages so that a burst is measured, not dropped by configuration.
"""

import os

SECRET_KEY = "bench-channels-not-a-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["channels"]
MIDDLEWARE: list[str] = []
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True
ROOT_URLCONF = "bench.channels_app.asgi"
ASGI_APPLICATION = "bench.channels_app.asgi.application"

_REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
_LAYER = os.environ.get("BENCH_CHANNEL_LAYER", "core")

if _LAYER == "pubsub":
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [_REDIS_URL]},
        }
    }
else:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [_REDIS_URL], "capacity": 100_000},
        }
    }
