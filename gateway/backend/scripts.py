"""Lua scripts: read from ``lua/*.lua`` once, called by SHA, reloaded on NOSCRIPT."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from redis.exceptions import NoScriptError


@dataclass(frozen=True, slots=True)
class LuaScript:
    name: str
    source: str
    sha: str

    async def run(self, client: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await client.eval(self.source, len(keys), *keys, *args)

    def run_sync(self, client: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return client.eval(self.source, len(keys), *keys, *args)


async def execute(pipe: Any, client: Any, *, raise_on_error: bool = True) -> list[Any]:
    """Run a pipeline that may hold EVALSHA calls; a script Redis no longer knows (it
    restarted) is re-run with its source. Other errors are raised, or left in the results."""
    calls = [(i, args) for i, (args, _) in enumerate(pipe.command_stack) if args[0] == "EVALSHA"]
    results: list[Any] = await pipe.execute(raise_on_error=False)
    for i, args in calls:
        if isinstance(results[i], NoScriptError):
            sha, numkeys = args[1], int(args[2])
            script = _by_sha[sha]
            results[i] = await script.run(
                client, list(args[3 : 3 + numkeys]), list(args[3 + numkeys :])
            )
    if raise_on_error:
        for result in results:
            if isinstance(result, Exception):
                raise result
    return results


_by_sha: dict[str, LuaScript] = {}


def by_sha(sha: str) -> LuaScript:
    """A script loaded by ``load`` (KeyError for one this process never loaded)."""
    return _by_sha[sha]


@cache
def load(name: str) -> LuaScript:
    source = resources.files("gateway.backend").joinpath("lua", f"{name}.lua").read_text("utf-8")
    script = LuaScript(name=name, source=source, sha=hashlib.sha1(source.encode()).hexdigest())
    _by_sha[script.sha] = script
    return script


PUBLISH = "publish"
EVENT_LOG = "event_log"
HISTORY = "history"
NEW_EPOCH = "new_epoch"
ROOM_COUNT = "room_count"
MEMBERSHIP = "membership"
AUTH_REVOKE = "auth_revoke"
