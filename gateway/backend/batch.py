"""Group commit for Redis: commands queued by many coroutines in one event-loop turn share one
pipeline, so a connect storm costs a few round trips, not one per connection."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from gateway.backend import scripts


class PipelineBatcher:
    def __init__(self, client: Any) -> None:
        self.client = client
        self._pipe: Any = None
        self._waiters: list[tuple[int, int, asyncio.Future[list[Any]]]] = []
        self.flushes = 0

    async def run(self, queue: Callable[[Any], None]) -> list[Any]:
        """``queue(pipe)`` adds commands; returns their results once the shared pipeline ran.
        An error in one's own commands is raised; others' errors are theirs."""
        loop = asyncio.get_running_loop()
        if self._pipe is None:
            self._pipe = self.client.pipeline(transaction=False)
            self._waiters = []
            loop.call_soon(self._flush_soon)
        start = len(self._pipe.command_stack)
        queue(self._pipe)
        fut: asyncio.Future[list[Any]] = loop.create_future()
        self._waiters.append((start, len(self._pipe.command_stack), fut))
        return await fut

    def _flush_soon(self) -> None:
        pipe, waiters = self._pipe, self._waiters
        self._pipe, self._waiters = None, []
        asyncio.get_running_loop().create_task(self._flush(pipe, waiters))

    async def _flush(
        self, pipe: Any, waiters: list[tuple[int, int, asyncio.Future[list[Any]]]]
    ) -> None:
        self.flushes += 1
        try:
            results = await scripts.execute(pipe, self.client, raise_on_error=False)
        except BaseException as exc:  # the whole round trip failed: everyone hears of it
            for _, _, fut in waiters:
                if not fut.done():
                    fut.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for start, end, fut in waiters:
            if fut.done():
                continue
            part = results[start:end]
            error = next((r for r in part if isinstance(r, Exception)), None)
            if error is not None:
                fut.set_exception(error)
            else:
                fut.set_result(part)
