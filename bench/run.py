"""Benchmark the gateway against a bare aiohttp + Redis reference (and Django Channels).

    python bench/run.py [--quick | --smoke] [--repeat 3] [--out docs/benchmarks-latest.md]

Starts its own redis-server, servers and load generators on free ports in a temp directory,
runs every scenario against every target, and writes a markdown report (plus the same data as
JSON next to it). Exits 1 when a target or a scenario could not be measured. See
bench/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.scenarios import Sizes

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

BUSY_LOAD = 0.5  # a 1-minute load average above this before the run: the report warns

TARGET_NOTES = {
    "reference": "bench/reference_server.py — aiohttp + uvloop, one Redis SUBSCRIBE per room, "
    "each message decoded once and `send_str` to every local socket; no auth, no history.",
    "gateway": "`python -m gateway` (Redis backend) with the Django test site "
    "(tests/django_site) for token checks and `python -m worker` for the ingest stream.",
    "socketio": "bench/sio_server.mjs — socket.io 4 on Node with @socket.io/redis-adapter (one "
    "pattern subscription per process), WebSocket transport only, no auth, no history; "
    "published with @socket.io/redis-emitter (bench/sio_publisher.mjs).",
    "channels": "Django Channels 4 + channels_redis under uvicorn (uvloop); "
    "bench/channels_app: a JSON consumer that joins a group and forwards group messages; "
    "published with `channel_layer.group_send` from a separate process.",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from bench.scenarios import SCENARIO_NAMES
    from bench.targets import DEFAULT_CHANNELS_ENV, TARGETS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller sizes (about 1/2)")
    size.add_argument("--smoke", action="store_true", help="tiny sizes, 1 repetition, seconds")
    p.add_argument("--repeat", type=int, help="repetitions (default 3; 1 with --smoke)")
    p.add_argument(
        "--out",
        type=Path,
        help="report path (default docs/benchmarks-latest.md; bench/results/smoke.md with --smoke)",
    )
    p.add_argument(
        "--targets",
        help=f"comma-separated, from {','.join(TARGETS)} "
        "(default reference,gateway,socketio; plus channels with --with-channels)",
    )
    p.add_argument(
        "--with-channels",
        action="store_true",
        help="add the Channels target (installs its packages on first use)",
    )
    p.add_argument(
        "--channels-env",
        type=Path,
        default=DEFAULT_CHANNELS_ENV,
        help="venv for Channels (default %(default)s)",
    )
    p.add_argument(
        "--channels-layer",
        choices=("core", "pubsub"),
        default="core",
        help="channels_redis layer (default core: RedisChannelLayer)",
    )
    p.add_argument("--scenarios", help=f"comma-separated, from {','.join(SCENARIO_NAMES)}")
    p.add_argument("--nodes", type=int, default=2, help="server processes per target (2)")
    p.add_argument("--connections", type=int, help="override the connection count")
    p.add_argument(
        "--loadgens",
        type=int,
        default=2,
        help="load generator processes for runs of 500+ connections (2: one per core here; "
        "one alone saturates its core in the connect and fan-out scenarios)",
    )
    p.add_argument(
        "--gateway-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the gateway nodes and worker (repeatable)",
    )
    p.add_argument("--keep-logs", action="store_true", help="keep the temp dir with all logs")
    args = p.parse_args(argv)
    args.mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    if args.repeat is None:
        args.repeat = 1 if args.smoke else 3
    for name in ("repeat", "nodes", "loadgens", "connections"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name} must be at least 1")
    default_out = "bench/results/smoke.md" if args.smoke else "docs/benchmarks-latest.md"
    args.out = args.out or REPO_ROOT / default_out
    targets = (args.targets or "reference,gateway,socketio").split(",")
    if args.with_channels and "channels" not in targets:
        targets.append("channels")
    args.targets = [t.strip() for t in targets if t.strip()]
    for target in args.targets:
        if target not in TARGETS:
            p.error(f"unknown target {target!r}; choose from {', '.join(TARGETS)}")
    args.scenarios = [s.strip() for s in (args.scenarios or ",".join(SCENARIO_NAMES)).split(",")]
    for name in args.scenarios:
        if name not in SCENARIO_NAMES:
            p.error(f"unknown scenario {name!r}; choose from {', '.join(SCENARIO_NAMES)}")
    try:
        args.gateway_env = dict(item.split("=", 1) for item in args.gateway_env)
    except ValueError:
        p.error("--gateway-env takes KEY=VALUE")
    return args


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def ensure_node_modules() -> None:
    from bench.procs import BENCH_DIR

    wanted = ("ws", "socket.io", "@socket.io/redis-adapter", "@socket.io/redis-emitter", "redis")
    if not all((BENCH_DIR / "node_modules" / p / "package.json").exists() for p in wanted):
        log("installing the load generator's packages: npm ci (bench/)")
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=BENCH_DIR, check=True)


def versions(channels_python: str | None) -> dict[str, str]:
    from bench.targets import python_versions, tool_version, ws_version

    packages = ("aiohttp", "redis", "hiredis", "uvloop", "orjson", "Django")
    out = {"python": sys.version.split()[0]}
    out.update(python_versions(sys.executable, packages))
    out["redis-py"] = out.pop("redis")
    out["redis-server"] = tool_version(["redis-server", "--version"])
    out["node"] = tool_version(["node", "--version"])
    out["ws (npm)"] = ws_version()
    for package in ("socket.io", "@socket.io/redis-adapter", "@socket.io/redis-emitter", "redis"):
        out[f"{package} (npm)"] = ws_version(package)
    if channels_python:
        extra = ("channels", "channels_redis", "uvicorn", "websockets", "msgpack")
        out.update(
            {f"{k} (Channels venv)": v for k, v in python_versions(channels_python, extra).items()}
        )
    return out


def run_target(
    args: argparse.Namespace,
    sizes: Sizes,
    target: str,
    rep: int,
    workdir: Path,
    channels_python: str | None,
) -> tuple[dict[str, Any], list[str]]:
    """Start ``target``, run every scenario on it, stop it. Returns (results, commands)."""
    from bench.loadgen import LoadgenError
    from bench.scenarios import SCENARIOS, Context, ScenarioError
    from bench.targets import start_target

    log_dir = workdir / f"rep{rep}" / target
    stack = start_target(
        target,
        log_dir,
        args.nodes,
        gateway_env=args.gateway_env,
        channels_python=channels_python,
        channels_layer=args.channels_layer,
    )
    results: dict[str, Any] = {}
    ctx = Context(stack, sizes, log_dir, args.loadgens, id_base=1_000_000 * (rep + 1))
    try:
        for scenario in SCENARIOS:
            if scenario.name not in args.scenarios:
                continue
            started = time.monotonic()
            try:
                rows = scenario.run(ctx)
                results[scenario.name] = rows
                log(
                    f"rep {rep + 1} {target} {scenario.name}: {short(rows)} "
                    f"({time.monotonic() - started:.1f} s)"
                )
            except (ScenarioError, LoadgenError, OSError, subprocess.SubprocessError) as exc:
                results[scenario.name] = {"error": f"{type(exc).__name__}: {exc}"}
                log(f"rep {rep + 1} {target} {scenario.name}: FAILED {exc}")
            time.sleep(0.3)  # let the servers drop the closed connections
            dead = [proc for proc in stack.processes if not proc.alive]
            if dead:
                why = "; ".join(
                    f"{p.name} exited with {p.returncode}: {p.stderr()[-500:]}" for p in dead
                )
                log(f"rep {rep + 1} {target}: {why}")
                for name in args.scenarios:
                    results.setdefault(name, {"error": f"not run: {why}"})
                if not isinstance(results[scenario.name], dict):
                    results[scenario.name] = {"error": f"a process died during the run: {why}"}
                break
    finally:
        stack.stop()
    return results, stack.commands + ctx.commands


def short(rows: list[dict[str, Any]]) -> str:
    keys = (
        "deliveries_per_s",
        "connects_per_s",
        "rss_kib_per_conn",
        "delivered_per_s",
        "cpu_us_per_delivery",
        "p99_ms",
        "lost",
        "dup",
    )
    parts = []
    for row in rows:
        shown = [f"{k}={row[k]:.4g}" for k in keys if isinstance(row.get(k), int | float)]
        parts.append((f"{row['variant']}: " if row.get("variant") else "") + " ".join(shown))
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from bench import report
    from bench.scenarios import SIZES
    from bench.targets import TargetUnavailable, ensure_channels, git_revision, machine_info
    from tests.support.processes import ProcessStartError

    began = time.monotonic()
    load_before = os.getloadavg()
    sizes = SIZES[args.mode]
    if args.connections:
        sizes = dataclasses.replace(sizes, connections=args.connections)
    ensure_node_modules()
    workdir = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    if load_before[0] > BUSY_LOAD:
        log(
            f"warning: the machine is busy (load average {load_before[0]:.2f}); numbers will "
            "be noisy"
        )
    log(f"mode {args.mode}, {args.repeat} repetition(s), targets {args.targets}; logs in {workdir}")
    unavailable: dict[str, str] = {}
    channels_python = None
    if "channels" in args.targets:
        try:
            log(f"preparing Channels in {args.channels_env}")
            channels_python = ensure_channels(args.channels_env, workdir / "channels-install.log")
        except (TargetUnavailable, OSError, subprocess.SubprocessError) as exc:
            unavailable["channels"] = f"installing Channels failed: {exc}"
            log(unavailable["channels"])
    runs: dict[str, dict[str, list[Any]]] = {t: {} for t in args.targets if t not in unavailable}
    commands: dict[str, list[str]] = {}
    failed = False
    for rep in range(args.repeat):
        for target in runs:
            used: list[str] = []
            try:
                results, used = run_target(args, sizes, target, rep, workdir, channels_python)
            except (TargetUnavailable, ProcessStartError, OSError, TimeoutError) as exc:
                why = f"{type(exc).__name__}: {str(exc)[:3000]}"
                log(f"rep {rep + 1} {target}: could not start: {why}")
                results = {name: {"error": f"could not start: {why}"} for name in args.scenarios}
            if used:
                commands.setdefault(target, used)
            for name, result in results.items():
                runs[target].setdefault(name, []).append(result)
                failed = failed or _has_error(result)
    summary = report.summarize(runs)
    meta = {
        "command": "python bench/run.py " + shlex.join(sys.argv[1:] if argv is None else argv),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": args.mode,
        "repeat": args.repeat,
        "revision": git_revision(),
        "elapsed_s": time.monotonic() - began,
        "machine": {
            **machine_info(),
            "load average before the run (1/5/15 min)": _load(load_before),
            "load average after the run": _load(os.getloadavg()),
        },
        "busy_before": load_before[0] > BUSY_LOAD,
        "versions": versions(channels_python),
        "targets": args.targets,
        "target_notes": {
            **TARGET_NOTES,
            "channels": TARGET_NOTES["channels"] + f" Layer: `{args.channels_layer}`.",
        },
        "scenarios": args.scenarios,
        "commands": commands,
        "unavailable": unavailable,
        "nodes": args.nodes,
        "sizes": dataclasses.asdict(sizes),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report.markdown(meta, sizes, summary))
    raw = {"meta": meta, "summary": summary, "runs": runs}
    args.out.with_suffix(".json").write_text(json.dumps(raw, indent=2, default=str) + "\n")
    log(f"report: {args.out} (+ {args.out.with_suffix('.json').name})")
    if failed or args.keep_logs:
        log(f"logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


def _load(load: tuple[float, float, float]) -> str:
    return " / ".join(f"{x:.2f}" for x in load)


def _has_error(result: Any) -> bool:
    if isinstance(result, dict):
        return "error" in result
    return any("error" in row for row in result)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception:
        traceback.print_exc()
        sys.exit(2)
