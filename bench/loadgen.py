"""Drives ``loadgen.mjs`` processes: split the connections among them, wait until all are in
their rooms, collect, merge their results, close. Also runs ``publisher.py``."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.measure import merge_hists, percentile_us
from bench.procs import BENCH_DIR, preexec

LOADGEN = BENCH_DIR / "loadgen.mjs"


class LoadgenError(RuntimeError):
    pass


class _Child:
    """One ``node loadgen.mjs`` with its stdout read line by line on a thread."""

    def __init__(self, config: Mapping[str, Any], log: Path) -> None:
        self.argv = ["node", str(LOADGEN), json.dumps(config)]
        self.log = log
        with log.open("ab") as err:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=BENCH_DIR,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                preexec_fn=preexec,
            )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def next(self, kind: str, timeout_s: float) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=timeout_s)
        except queue.Empty:
            raise LoadgenError(f"loadgen sent no {kind!r} within {timeout_s:g} s") from None
        if line is None:
            raise LoadgenError(f"loadgen exited ({self.proc.wait()}): {self._stderr()}")
        message: dict[str, Any] = json.loads(line)
        if message.get("type") != kind:
            raise LoadgenError(f"loadgen: expected {kind!r}, got {line.strip()[:500]}")
        return message

    def send(self, command: Mapping[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send({"cmd": "close"})
                self.proc.stdin.close()  # type: ignore[union-attr]
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()

    def _stderr(self) -> str:
        return self.log.read_text(errors="replace")[-2000:]


class Loadgen:
    """``connections`` WebSockets over ``processes`` load generator processes.

    Connection ``i`` (0-based, over all processes) is user ``id_base + i`` and connects to
    ``urls[i % len(urls)]``. ``start()`` returns the merged connect report.
    """

    def __init__(
        self,
        protocol: str,
        urls: Sequence[str],
        connections: int,
        log_dir: Path,
        *,
        processes: int = 1,
        concurrency: int = 50,
        id_base: int = 0,
        room_mode: str = "shared",
        room: str = "service_1",
        expect: int = 0,
        events_total: int = 0,
        local_addresses: Sequence[str] = (),
        recover: bool = False,
        jwt_secret: str | None = None,
    ) -> None:
        self.children: list[_Child] = []
        self.configs: list[dict[str, Any]] = []
        processes = max(1, min(processes, connections))
        offset = 0
        for k in range(processes):
            count = connections // processes + (1 if k < connections % processes else 0)
            # Rotate the URL list so that connection i still lands on urls[i % len(urls)].
            shift = offset % len(urls)
            self.configs.append(
                {
                    "protocol": protocol,
                    "urls": list(urls[shift:]) + list(urls[:shift]),
                    "connections": count,
                    "concurrency": max(1, concurrency // processes),
                    "idBase": id_base + offset,
                    "roomMode": room_mode,
                    "room": room,
                    "expect": expect,
                    "eventsTotal": events_total,
                    "totalConnections": connections,
                    "firstId": id_base,
                    "localAddresses": list(local_addresses),
                    "recover": recover,
                    "jwtSecret": jwt_secret,
                }
            )
            offset += count
        self.log_dir = log_dir

    @property
    def pids(self) -> list[int]:
        return [child.proc.pid for child in self.children]

    @property
    def command(self) -> str:
        """The command line of the first process (for the report)."""
        config = dict(self.configs[0])
        if config.get("jwtSecret"):
            config["jwtSecret"] = "<secret>"  # the gateway's GATEWAY_JWT_SECRET
        return f"node bench/loadgen.mjs '{json.dumps(config)}'"

    def start(self, timeout_s: float = 120.0) -> dict[str, Any]:
        for k, config in enumerate(self.configs):
            log = self.log_dir / f"loadgen-{k}.stderr.log"
            self.children.append(_Child(config, log))
        readies = [child.next("ready", timeout_s) for child in self.children]
        hist = merge_hists(r["connectHist"] for r in readies)
        start = min(r["startUs"] for r in readies)
        end = max(r["endUs"] for r in readies)
        connected = sum(r["connected"] for r in readies)
        return {
            "connected": connected,
            "failed": sum(r["failed"] for r in readies),
            "errors": [e for r in readies for e in r["errors"]][:5],
            "seconds": (end - start) / 1e6,
            "per_s": connected / max(1e-9, (end - start) / 1e6),
            "p50_ms": _ms(percentile_us(hist, 0.50)),
            "p99_ms": _ms(percentile_us(hist, 0.99)),
            # the load generators' own CPU over their connect phase: total, and the busiest
            # one's share of a core (near 100 %: it set the pace, not the server)
            "loadgen_cpu_us": sum(r["cpuUs"] for r in readies),
            "loadgen_cpu_pct": max(
                100 * r["cpuUs"] / max(1, r["endUs"] - r["startUs"]) for r in readies
            ),
        }

    def collect(self, timeout_s: float = 120.0, quiet_s: float = 5.0) -> dict[str, Any]:
        """Wait until every connection has all its events, or nothing arrived for ``quiet_s``
        (from the later of now and the last delivery), or ``timeout_s``; missing = lost."""
        for child in self.children:
            child.send({"cmd": "collect", "timeout_s": timeout_s, "quiet_s": quiet_s})
        results = [child.next("result", timeout_s + 30) for child in self.children]
        hist = merge_hists(r["latencyHist"] for r in results)
        firsts = [r["firstRecvUs"] for r in results if r["firstRecvUs"] is not None]
        lasts = [r["lastRecvUs"] for r in results if r["lastRecvUs"] is not None]
        return {
            "deliveries": sum(r["deliveries"] for r in results),
            "lost": sum(r["lost"] for r in results),
            "dup": sum(r["dup"] for r in results),
            "unexpected": sum(r["unexpected"] for r in results),
            "out_of_order": sum(r["outOfOrder"] for r in results),
            "closed": sum(r["closed"] for r in results),
            "close_codes": sorted({c for r in results for c in r["closeCodes"]}),
            "first_recv_us": min(firsts) if firsts else None,
            "last_recv_us": max(lasts) if lasts else None,
            "p50_ms": _ms(percentile_us(hist, 0.50)),
            "p99_ms": _ms(percentile_us(hist, 0.99)),
        }

    def storm(self) -> dict[str, Any]:
        """Recover mode: closes seen, reconnections done, their time (close -> back in the room
        with what it missed), merged over the processes."""
        for child in self.children:
            child.send({"cmd": "storm"})
        reports = [child.next("storm", 180) for child in self.children]
        hist = merge_hists(r["hist"] for r in reports)
        firsts = [r["firstCloseUs"] for r in reports if r["firstCloseUs"] is not None]
        lasts = [r["lastRecoveredUs"] for r in reports if r["lastRecoveredUs"] is not None]
        codes: dict[str, int] = {}
        for r in reports:
            for code, count in r["closeCodes"].items():
                codes[code] = codes.get(code, 0) + count
        return {
            "closes": sum(r["closes"] for r in reports),
            "recovered": sum(r["recovered"] for r in reports),
            "not_recovered": sum(r["notRecovered"] for r in reports),
            "retries": sum(r["retries"] for r in reports),
            "rejoins": sum(r["rejoins"] for r in reports),
            "seen_again": sum(r["seenAgain"] for r in reports),
            "close_codes": codes,
            "first_close_us": min(firsts) if firsts else None,
            "last_recovered_us": max(lasts) if lasts else None,
            "p50_ms": _ms(percentile_us(hist, 0.50)),
            "p99_ms": _ms(percentile_us(hist, 0.99)),
            "max_ms": _ms(percentile_us(hist, 1.0)),
            "errors": [e for r in reports for e in r["errors"]][:5],
        }

    def expect(self, room: str | None, expect: int) -> None:
        """The next ``collect`` counts events of ``room`` (None: each connection's own room)."""
        for child in self.children:
            child.send({"cmd": "expect", "room": room, "expect": expect})
        for child in self.children:
            child.next("expecting", 30)

    def close(self) -> None:
        for child in self.children:
            child.close()

    def __enter__(self) -> Loadgen:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _relative(word: str) -> str:
    root = str(BENCH_DIR.parent) + "/"
    return word[len(root) :] if word.startswith(root) else word


def _ms(us: float | None) -> float | None:
    return None if us is None else us / 1000


def publish(
    config: Mapping[str, Any],
    log_dir: Path,
    python: str,
    env: Mapping[str, str],
    on_ready: Callable[[], None] = lambda: None,
    timeout_s: float = 300.0,
    program: Sequence[str] = (),
) -> dict[str, Any]:
    """Run ``publisher.py`` (or ``program``, e.g. the Socket.IO emitter): once it is connected
    call ``on_ready`` (start the meters), let it publish, and return its JSON line."""
    program = list(program) or [python, str(BENCH_DIR / "publisher.py")]
    argv = [*program, json.dumps(config)]
    err_log = log_dir / "publisher.stderr.log"
    with err_log.open("ab") as err:
        proc = subprocess.Popen(
            argv,
            env=dict(env),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            preexec_fn=preexec,
        )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        if proc.stdout.readline().strip() != "ready":
            proc.wait(10)
            tail = err_log.read_text(errors="replace")[-2000:]
            raise LoadgenError(f"publisher exited {proc.returncode} before it was ready: {tail}")
        on_ready()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise LoadgenError(f"publisher still running after {timeout_s:g} s") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0 or not out.strip():
        tail = err_log.read_text(errors="replace")[-2000:]
        raise LoadgenError(f"publisher exited {proc.returncode}: {tail}")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    shown = " ".join(
        Path(word).name if k == 0 else _relative(word) for k, word in enumerate(program)
    )
    result["command"] = f"{shown} '{json.dumps(config)}'"
    return result
