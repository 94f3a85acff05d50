"""What one token check costs, by where it is answered: the gateway's own ``Authenticator``
against a real redis-server and the Django test site, in this process.

    python bench/auth_cost.py [--checks 2000]

For each source — this node's memory, the cluster-wide Redis cache (a token another node
verified), a JWT verified here (HS256, RS256, ES256; the revocation marks are polled, so no
Redis call), Django's ``profile/`` — it runs N checks one after the other and prints the CPU of this
process (the node's share), of redis-server and of the Django site per check, and the wall
time per check. The rest of a connect (upgrade, session, rooms, join) is the same for every
source; ``bench/run.py --scenarios connect_auth`` measures whole connects.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


async def measure(
    name: str, checks: list[Callable[[], Awaitable[Any]]], pids: dict[str, int]
) -> dict[str, Any]:
    from bench.measure import cpu_us

    before = {k: cpu_us(pid) for k, pid in pids.items()}
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for check in checks:
        await check()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    n = len(checks)
    row = {"source": name, "node_us": cpu / n * 1e6, "wall_us": wall / n * 1e6}
    for k, pid in pids.items():
        row[f"{k}_us"] = (cpu_us(pid) - before[k]) / n
    return row


async def run(checks: int) -> list[dict[str, Any]]:
    from gateway.auth.authenticator import Authenticator
    from gateway.backend.redis import RedisBackend
    from gateway.config import load_settings
    from gateway.djangoapi import DjangoClient
    from tests.support.django_site import DjangoSite
    from tests.support.redis_server import RedisServer

    work = Path(tempfile.mkdtemp(prefix="auth-cost-"))
    redis, site = RedisServer(work / "redis"), DjangoSite(work / "django")
    redis.start()
    site.start()
    try:
        keys = await site.ajwt_keys()
        settings = load_settings(
            redis_url=redis.url,
            django_base_url=site.base_url,
            jwt_secret=keys["secret"],
            jwt_jwks_url=site.jwks_url,
            django_timeout=30,
        )
        backend = RedisBackend(settings.redis_url or "")
        nodes = []
        for _ in range(2):
            django = DjangoClient(settings)
            await django.start()
            nodes.append(Authenticator.for_backend(settings, backend, django))
        a, b = nodes
        polls = [asyncio.create_task(node.follow_revocations()) for node in nodes]
        await asyncio.sleep(0.2)  # the first poll: JWT checks then read no Redis key
        pids = {"redis": redis.pid, "django": site.pid}
        users = range(100_000, 100_000 + checks)
        tokens = [f"cliente-{i}" for i in users]
        rows = [await measure("Django", [lambda t=t: a.verify(t) for t in tokens], pids)]
        rows.append(await measure("Redis cache", [lambda t=t: b.verify(t) for t in tokens], pids))
        rows.append(await measure("memory", [lambda t=t: b.verify(t) for t in tokens], pids))
        for alg in ("HS256", "RS256", "ES256"):
            jwts = [await site.ajwt(i, role="cliente", alg=alg) for i in users]
            await a.verify(jwts[0])  # the JWKS fetch, once
            rows.append(
                await measure(f"JWT {alg}", [lambda t=t: a.verify(t) for t in jwts[1:]], pids)
            )
        for task in polls:
            task.cancel()
        for node in nodes:
            await node.django.close()
        await backend.client.aclose()
        return rows
    finally:
        site.stop()
        redis.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checks", type=int, default=2000)
    args = parser.parse_args()
    rows = asyncio.run(run(args.checks))
    print(f"{args.checks} checks per source, one at a time; µs per check")
    print("| answered by | node CPU | Redis CPU | Django CPU | wall |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['source']} | {r['node_us']:.0f} | {r['redis_us']:.0f} | "
            f"{r['django_us']:.0f} | {r['wall_us']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
