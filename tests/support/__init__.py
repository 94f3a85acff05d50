"""Real-process helpers for the test suite: free ports, redis-server, the Django test site,
gateway and worker subprocesses. Nothing here imports the ``gateway`` package, so the helpers
work while the code under test is broken or half written.
"""

from tests.support.django_site import DjangoSite
from tests.support.ports import REPO_ROOT, free_port, http_get, wait_until
from tests.support.processes import (
    GatewayProcess,
    ManagedProcess,
    ProcessFactory,
    ProcessStartError,
    WorkerProcess,
)
from tests.support.redis_server import RedisCluster, RedisSentinels, RedisServer

__all__ = [
    "REPO_ROOT",
    "DjangoSite",
    "GatewayProcess",
    "ManagedProcess",
    "ProcessFactory",
    "ProcessStartError",
    "RedisCluster",
    "RedisSentinels",
    "RedisServer",
    "WorkerProcess",
    "free_port",
    "http_get",
    "wait_until",
]
