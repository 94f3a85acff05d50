"""The token cache across a rolling upgrade: the previous release's cache code (commit 65e8475's
``gateway/auth/shared.py``, taken from this repository's history) and this tree's on one real
redis-server.

The previous release names each entry in a per-user set that ``disconnect`` reads to delete
them, and its nodes trust an entry on their local marks alone. This release writes no set
(the mark voids its entries), so its entries must never be accepted by a previous-release node:
they are a miss to it. Its entries stay readable here, and a ``disconnect`` of this release
still deletes the entries the previous release's set names.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.auth.local import Verified
from gateway.auth.shared import SharedTokens, voided
from gateway.backend.keys import Keys
from gateway.rooms import Identity
from tests.support.ports import REPO_ROOT

PREVIOUS_RELEASE = "65e8475"


@pytest.fixture(scope="module")
def previous_shared(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    """The previous release's ``gateway.auth.shared``, importable beside this tree's."""
    try:
        source = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "show", f"{PREVIOUS_RELEASE}:gateway/auth/shared.py"],
            check=True,
            capture_output=True,
        ).stdout
    except subprocess.CalledProcessError as exc:
        pytest.fail(
            f"commit {PREVIOUS_RELEASE} is not in this clone ({exc.stderr.decode().strip()}): "
            "the test needs the repository's history (not a shallow clone)"
        )
    path = Path(tmp_path_factory.mktemp("previous-release")) / "previous_shared.py"
    path.write_bytes(source)
    spec = importlib.util.spec_from_file_location("previous_shared", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["previous_shared"] = module
    spec.loader.exec_module(module)
    assert hasattr(module.SharedTokens, "put") and "SADD" in source.decode()  # the old design
    return module


async def test_old_and_new_cache_entries_on_one_redis(
    redis_server: Any, previous_shared: ModuleType
) -> None:
    client = aioredis.from_url(redis_server.url)
    keys = Keys("gateway")
    new = SharedTokens(lambda: client, keys, cache_s=30, revocation_ttl_s=3600)
    old = previous_shared.SharedTokens(lambda: client, keys, cache_s=30, revocation_ttl_s=3600)
    now = time.time()
    identity = Identity("31", "proveedor")
    verified = Verified(identity, now, now + 30)
    try:
        await old.put("0" * 64, verified)  # a previous-release node caches a token...
        await new.put("1" * 64, verified)  # ...and a node of this release another
        assert await client.smembers(keys.auth_user_tokens("31")) == {b"0" * 64}
        # this release reads both; the previous release reads its own only: to its nodes an
        # entry of this release is a miss (Django answers), never a hit on local marks alone
        for digest in ("0", "1"):
            entry = await new.get(digest * 64)
            assert entry is not None and entry.identity == identity
        assert await old.get("0" * 64) is not None
        assert await client.exists(keys.auth_token("1" * 64)) == 1
        assert await old.get("1" * 64) is None
        # disconnect(31) by this release: the previous release's entry is deleted through its
        # set, this release's is void by the mark (for either release's nodes: see above)
        await new.revoke("31", int(time.time() * 1000))
        assert await client.exists(keys.auth_token("0" * 64), keys.auth_user_tokens("31")) == 0
        mark = await new.revoked_at("31")
        entry = await new.get("1" * 64)
        assert entry is not None and voided(mark, entry)
    finally:
        await client.aclose()
