"""docs/django.md's quick start, run literally (issue 19, item 11).

The code blocks of the section are extracted and run in order (tests/quickstart/doc_steps.py):
shell blocks in one bash process (the reader's first terminal), ``# terminal N`` blocks as
background processes, file blocks written where they say. The only changes: the checkout path
(a copy of this checkout, so pip builds outside it) and the port numbers (free ports, since the
machine is shared). So a fresh virtualenv gets Django, DRF and the gateway from pip, a new
project is made with django-admin, and real redis-server, gateway and Django processes run.
Then, as the doc says, Alice's page is opened (headless Chromium), **Book** is clicked and the
reservation arrives through the gateway's events endpoint; Bob's ``curl`` accepts it and the
``publish_on_commit`` event arrives too.
"""

from __future__ import annotations

import asyncio
import os
import queue
import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.quickstart.doc_steps import Step, steps, substitute
from tests.support.chromium import CHROMIUM, CHROMIUM_ARGS
from tests.support.ports import REPO_ROOT, free_port, http_status_or_none
from tests.support.venv import copy_distribution

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.timeout(900)]

DOC = REPO_ROOT / "docs" / "django.md"
STEP_TIMEOUT_S = 600  # pip install of Django, DRF and the gateway's server dependencies
READY_TIMEOUT_S = 60
WAIT_MS = 20_000
PAGE_URL = re.compile(r"^http://127\.0\.0\.1:\d+/live/#\w+$", re.M)


def clean_env() -> dict[str, str]:
    """A user's shell: nothing of this test run's Python or gateway settings."""
    drop = ("GATEWAY_", "PYTHON", "VIRTUAL_ENV", "DJANGO_")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


class Terminal:
    """One bash process fed block after block (the reader's first terminal)."""

    def __init__(self, cwd: Path) -> None:
        self.proc = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            cwd=cwd,
            env=clean_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.transcript: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.run("set -eo pipefail")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def run(self, script: str, timeout_s: float = STEP_TIMEOUT_S) -> list[str]:
        """Run ``script``; its output lines. Fails with the transcript when a command fails."""
        marker = f"__done_{uuid.uuid4().hex}__"
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{script}\necho {marker}\n")
        self.proc.stdin.flush()
        out: list[str] = []
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(self._failure(script, out, "timed out")) from None
            if line is None:
                raise AssertionError(self._failure(script, out, f"exit {self.proc.wait()}"))
            before, found, _ = line.partition(marker)
            if before:  # the step's last line may lack its newline (curl's answer)
                out.append(before)
                self.transcript.append(before)
            if found:
                return out

    def _failure(self, script: str, out: list[str], why: str) -> str:
        return f"step failed ({why}):\n{script}\n--- output ---\n" + "\n".join(out[-60:])

    def cwd(self) -> Path:
        return Path(self.run("pwd")[-1])

    def close(self) -> None:
        stop_group(self.proc)


def stop_group(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM the process group this test started (then SIGKILL), and reap it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        except ProcessLookupError:
            pass
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            stream.close()


def redis_pings(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture
def background(tmp_path: Path) -> Iterator[Any]:
    """``start(step, cwd)``: run a ``# terminal N`` block; everything is stopped at the end."""
    started: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(step: Step, cwd: Path) -> Path:
        log = tmp_path / f"terminal-{len(started) + 2}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step.text],
                cwd=cwd,
                env=clean_env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started.append((proc, log))
        return log

    yield start
    for proc, _ in started:
        stop_group(proc)


def wait_ready(what: str, ready: Any, logs: list[Path]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not ready():
        if time.monotonic() > deadline:
            text = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in logs)
            raise AssertionError(f"{what} not ready within {READY_TIMEOUT_S} s\n{text}")
        time.sleep(0.2)


async def test_the_quick_start_delivers_events_to_a_browser(
    tmp_path: Path, background: Any
) -> None:
    from playwright.async_api import async_playwright

    doc_steps = steps(DOC.read_text())
    assert [s.kind for s in doc_steps].count("background") == 3
    redis_port, gateway_port, django_port = free_port(), free_port(), free_port()
    ports = {6379: redis_port, 4000: gateway_port, 8000: django_port}
    checkout = copy_distribution(tmp_path / "checkout")
    home = tmp_path / "reader"  # where the reader starts: quickstart/ is made here
    home.mkdir()

    terminal = Terminal(home)
    logs: list[Path] = []
    services_checked = False
    pages: list[str] = []
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = await browser.new_page()
            for step in doc_steps:
                text = substitute(step.text, checkout, ports)
                if step.kind == "background":
                    logs.append(background(Step(step.kind, text), home))
                    continue
                if step.kind in ("write", "append"):
                    assert step.path is not None
                    target = await asyncio.to_thread(terminal.cwd) / step.path
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with target.open("a" if step.kind == "append" else "w") as f:
                        f.write(("\n" if step.kind == "append" else "") + text)
                    continue
                if logs and not services_checked:  # the first command after the terminals
                    wait_ready("redis-server", lambda: redis_pings(redis_port), logs)
                    wait_ready(
                        "the gateway",
                        lambda: (
                            http_status_or_none(f"http://127.0.0.1:{gateway_port}/readyz") == 200
                        ),
                        logs,
                    )
                    wait_ready(
                        "Django",
                        lambda: http_status_or_none(f"http://127.0.0.1:{django_port}/live/") == 200,
                        logs,
                    )
                    services_checked = True
                output = "\n".join(await asyncio.to_thread(terminal.run, text))
                if (found := PAGE_URL.search(output)) is not None:
                    pages.append(found.group(0))
                    await open_and_book(page, found.group(0))
            # after Bob's curl: the publish_on_commit event reaches Alice's page
            accepted = await wait_for_item(page, "reservation_accepted")
            assert accepted.startswith("cliente_1 reservation_accepted ")
            assert '"estado":"aceptada"' in accepted and '"id":1' in accepted
            await browser.close()
    finally:
        terminal.close()
    assert len(pages) == 1  # the page was opened once, after the terminals were up


async def open_and_book(page: Any, url: str) -> None:
    """Step 10 as a person does it: open the printed address, wait, click Book."""
    await page.goto(url)
    await page.wait_for_function(
        "() => document.querySelector('#status').textContent === 'connected as user 1'",
        timeout=WAIT_MS,
    )
    await page.click("#book")
    created = await wait_for_item(page, "reservation_created")
    assert created.startswith("cliente_1 reservation_created ")
    assert '"estado":"pendiente"' in created and '"proveedorId":"2"' in created


async def wait_for_item(page: Any, event_type: str) -> str:
    expression = (
        "(type) => [...document.querySelectorAll('#events li')]"
        ".map((li) => li.textContent).find((text) => text.split(' ')[1] === type)"
    )
    handle = await page.wait_for_function(expression, arg=event_type, timeout=WAIT_MS)
    return str(await handle.json_value())
