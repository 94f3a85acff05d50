"""gateway.logs.BufferedStreamHandler: one write per burst of lines, order kept, nothing lost."""

from __future__ import annotations

import asyncio
import io
import logging

from gateway.logs import BufferedStreamHandler


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, s: str) -> int:
        self.writes += 1
        return super().write(s)


def make_logger(name: str) -> tuple[logging.Logger, CountingStream, BufferedStreamHandler]:
    stream = CountingStream()
    handler = BufferedStreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger(name)
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger, stream, handler


async def test_lines_of_a_burst_are_written_together_and_warnings_at_once() -> None:
    logger, stream, _ = make_logger("test.buffered.burst")
    for i in range(100):
        logger.info("connection %d authenticated", i)
    # the first line after a quiet spell at once; the rest of the burst in one write after it
    assert stream.getvalue() == "INFO connection 0 authenticated\n"
    await asyncio.sleep(BufferedStreamHandler.FLUSH_S * 3)
    assert stream.writes == 2
    assert stream.getvalue().splitlines() == [
        f"INFO connection {i} authenticated" for i in range(100)
    ]

    logger.info("quiet spell over: at once")
    logger.info("before")  # within the window: held
    assert stream.getvalue().splitlines()[-1] == "INFO quiet spell over: at once"
    logger.warning("backend unreachable")  # written at once, after what came before it
    assert stream.getvalue().splitlines()[-2:] == ["INFO before", "WARNING backend unreachable"]


def test_outside_a_running_loop_lines_are_written_at_once() -> None:
    logger, stream, _ = make_logger("test.buffered.sync")
    logger.info("starting")
    assert stream.getvalue() == "INFO starting\n"


async def test_flush_writes_what_is_buffered() -> None:
    logger, stream, handler = make_logger("test.buffered.flush")
    logger.info("first")
    logger.info("last words")
    assert stream.getvalue() == "INFO first\n"
    handler.flush()  # what logging.shutdown() does at exit
    assert stream.getvalue() == "INFO first\nINFO last words\n"
