"""Run the real socket.io-client (``tests/js/sio_driver.mjs``) from an asyncio test.

    from tests.js.sio_driver import SioDriver     # or importlib, see load() below

    async with await SioDriver.start("http://127.0.0.1:4000", token="t") as client:
        await client.expect("connect")
        joined = await client.request("join_room", {"room": "service_1"})   # the ack's data
        event = await client.expect("event", name="event")

Every line the driver prints is a dict (``{"kind": ...}``, see the .mjs header). ``expect`` takes
the first line not yet taken that has the kind and the given fields, waiting for it if needed;
lines it skips stay available to later calls, so the order of the ``expect`` calls need not be the
order of arrival. ``close()`` (and leaving the ``async with``) always ends the node process.

Needs ``node`` on PATH; ``npm ci`` runs once in ``tests/js`` when ``node_modules`` is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import threading
from pathlib import Path
from types import TracebackType
from typing import Any, Self

JS_DIR = Path(__file__).resolve().parent
SCRIPT = JS_DIR / "sio_driver.mjs"
DEFAULT_TIMEOUT_S = 10.0
_NO_DATA: Any = object()
_install_lock = threading.Lock()


class DriverError(AssertionError):
    """The driver did not print what a test waited for; the message shows what it did print."""


def node_executable() -> str:
    node = shutil.which("node")
    if node is None:
        raise DriverError("node is not on PATH: the socket.io-client tests need Node.js")
    return node


def node_modules_complete() -> bool:
    """Whether every dependency of tests/js/package.json is in node_modules (a checkout whose
    node_modules predates a newly added package is not)."""
    deps = json.loads((JS_DIR / "package.json").read_text()).get("dependencies", {})
    return all((JS_DIR / "node_modules" / name / "package.json").is_file() for name in deps)


def ensure_node_modules() -> None:
    """Install the locked packages (``npm ci``) unless they already are."""
    with _install_lock:
        if node_modules_complete():
            return
        npm = shutil.which("npm")
        if npm is None:
            raise DriverError("npm is not on PATH and tests/js/node_modules is missing")
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=JS_DIR,
            check=True,
            timeout=300,
        )


class SioDriver:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[dict[str, Any]] = []  # everything printed, in order
        self._unread: list[dict[str, Any]] = []
        self._changed = asyncio.Condition()
        self._stderr = bytearray()
        self._eof = False
        self._seq = 0
        self._tasks = [
            asyncio.create_task(self._read_stdout()),
            asyncio.create_task(self._read_stderr()),
        ]

    @classmethod
    async def start(
        cls, url: str, token: str | None = None, options: dict[str, Any] | None = None
    ) -> SioDriver:
        """Start ``io(url, {transports: ['websocket'], auth: {token}, ...options})``."""
        ensure_node_modules()
        args = [str(SCRIPT), url]
        if token is not None:
            args += ["--token", token]
        if options:
            args += ["--options", json.dumps(options)]
        proc = await asyncio.create_subprocess_exec(
            node_executable(),
            *args,
            cwd=JS_DIR,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    # --- commands -----------------------------------------------------------------------------
    async def send(self, **command: Any) -> None:
        stdin = self.proc.stdin
        assert stdin is not None
        stdin.write(json.dumps(command).encode() + b"\n")
        await stdin.drain()

    async def emit(
        self,
        name: str,
        data: Any = _NO_DATA,
        *,
        ack: bool = False,
        timeout_ms: int | None = None,
        **extra: Any,
    ) -> int:
        """``socket.emit(name, data[, ack])``; returns the seq its ack line will carry."""
        self._seq += 1
        command: dict[str, Any] = {"op": "emit", "name": name, "ack": ack, "seq": self._seq}
        if data is not _NO_DATA:
            command["data"] = data
        if timeout_ms is not None:
            command["timeout_ms"] = timeout_ms
        command.update(extra)
        await self.send(**command)
        return self._seq

    async def request(
        self, name: str, data: Any = _NO_DATA, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> Any:
        """Emit with an acknowledgement callback and return what the callback received."""
        seq = await self.emit(name, data, ack=True)
        return (await self.expect("ack", timeout_s, seq=seq))["data"]

    # --- output -------------------------------------------------------------------------------
    async def expect(
        self, kind: str, timeout_s: float = DEFAULT_TIMEOUT_S, **fields: Any
    ) -> dict[str, Any]:
        """Take the first unread line of ``kind`` whose ``fields`` match, waiting for it."""

        def find() -> dict[str, Any] | None:
            for i, line in enumerate(self._unread):
                if line.get("kind") == kind and all(line.get(k) == v for k, v in fields.items()):
                    return self._unread.pop(i)
            return None

        async with self._changed:
            try:
                async with asyncio.timeout(timeout_s):
                    while (line := find()) is None:
                        if self._eof:
                            break
                        await self._changed.wait()
            except TimeoutError:
                line = None
        if line is None:
            what = f"{kind} {fields}" if fields else kind
            raise DriverError(f"no {what!r} from socket.io-client within {timeout_s:g} s; {self}")
        return line

    async def expect_nothing(self, kind: str, within_s: float) -> None:
        """Assert that no ``kind`` line arrives within ``within_s``."""
        try:
            line = await self.expect(kind, within_s)
        except DriverError:
            return
        raise DriverError(f"unexpected {line} from socket.io-client; {self}")

    def unread(self) -> list[dict[str, Any]]:
        return list(self._unread)

    def __str__(self) -> str:
        stderr = self._stderr.decode(errors="replace").strip()
        return f"driver printed {self.lines}" + (f"; stderr: {stderr[-2000:]}" if stderr else "")

    async def _read_stdout(self) -> None:
        stdout = self.proc.stdout
        assert stdout is not None
        while raw := await stdout.readline():
            try:
                line = json.loads(raw)
            except ValueError:
                line = {"kind": "garbage", "text": raw.decode(errors="replace")}
            async with self._changed:
                self.lines.append(line)
                self._unread.append(line)
                self._changed.notify_all()
        async with self._changed:
            self._eof = True
            self._changed.notify_all()

    async def _read_stderr(self) -> None:
        stderr = self.proc.stderr
        assert stderr is not None
        while chunk := await stderr.read(4096):
            self._stderr += chunk

    # --- lifecycle ----------------------------------------------------------------------------
    async def close(self, timeout_s: float = 5.0) -> int:
        """Disconnect the client and end the process (killed if it does not exit in time)."""
        if self.proc.returncode is None:
            stdin = self.proc.stdin
            if stdin is not None and not stdin.is_closing():
                with contextlib.suppress(ConnectionError):
                    stdin.write(b'{"op":"close"}\n')
                    await stdin.drain()
                stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), timeout_s)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        for task in self._tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 1.0)
        returncode = self.proc.returncode
        assert returncode is not None
        return returncode

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
