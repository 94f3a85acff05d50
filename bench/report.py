"""Sum up repetitions (medians; lost and dup are totals) and write the markdown report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bench.measure import median
from bench.scenarios import SCENARIOS, Scenario

COUNTED = ("lost", "dup", "unexpected", "closed")  # summed over repetitions, never a median

Runs = Mapping[str, Mapping[str, list[Any]]]  # target -> scenario -> one entry per repetition


def summarize(runs: Runs) -> dict[str, dict[str, dict[str, Any]]]:
    """target -> scenario -> ``{"rows": {variant: metrics}, "errors": [...], "reps": n}``."""
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for target, scenarios in runs.items():
        for name, reps in scenarios.items():
            rows: dict[str, list[dict[str, Any]]] = {}
            errors: list[str] = []
            for rep in reps:
                if isinstance(rep, dict) and "error" in rep:
                    errors.append(rep["error"])
                    continue
                for row in rep:
                    if "error" in row:
                        errors.append(f"{row.get('variant')}: {row['error']}")
                    else:
                        rows.setdefault(row.get("variant") or "", []).append(row)
            summary.setdefault(target, {})[name] = {
                "rows": {variant: _combine(samples) for variant, samples in rows.items()},
                "errors": errors,
                "reps": len(reps),
            }
    return summary


def _combine(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    keys = [k for k in samples[0] if k != "variant"]
    out: dict[str, Any] = {"samples": len(samples)}
    for key in keys:
        values = [s.get(key) for s in samples]
        if key in COUNTED:
            out[key] = sum(v or 0 for v in values)
        elif all(isinstance(v, list) for v in values):
            out[key] = sorted({item for v in values for item in v})
        elif all(isinstance(v, int | float) or v is None for v in values):
            out[key] = median(values)
        else:
            out[key] = values[0]
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value >= 1000:
            return f"{value:,.0f}"
        if value >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    return str(value)


def _ratio(value: Any, ref: Any) -> str:
    if not isinstance(value, int | float) or not isinstance(ref, int | float) or ref == 0:
        return "-"
    return f"{value / ref:.2f}x"


# Ratio rows: every other target divided by each of these (Socket.IO also by the reference).
BASELINES = ("reference", "socketio")


def _rank(target: str) -> int:
    return BASELINES.index(target) if target in BASELINES else -1


def scenario_section(scenario: Scenario, sizes: Any, summary: Mapping[str, Any]) -> list[str]:
    out = [f"### {scenario.title} (`{scenario.name}`)", "", scenario.describe(sizes), ""]
    columns = scenario.columns
    arrows = {"up": " ↑", "down": " ↓", "": ""}
    header = ["target", *(f"{title}{arrows[better]}" for _, title, better in columns)]
    out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    baselines = {
        name: next(
            iter(summary.get(name, {}).get(scenario.name, {}).get("rows", {}).values()), None
        )
        for name in BASELINES
    }
    ratio_lines = []
    errors = []
    for target, per_scenario in summary.items():
        result = per_scenario.get(scenario.name)
        if result is None:
            continue
        errors += [f"{target}: {e}" for e in result["errors"]]
        for variant, row in result["rows"].items():
            label = f"{target} ({variant})" if variant else target
            if row.get("closed") or row.get("unexpected"):
                errors.append(
                    f"{label}: {row.get('closed', 0)} connections closed by the server while "
                    f"measuring (close codes {row.get('close_codes') or '-'}), "
                    f"{row.get('unexpected', 0)} unexpected frames"
                )
            cells = [_fmt(row.get(k)) for k, _, _ in columns]
            out.append("| " + " | ".join([label, *cells]) + " |")
            for base, ref in baselines.items():
                # a baseline is divided only by the baselines before it (socketio ÷ reference)
                if ref is None or (target in BASELINES and _rank(base) >= _rank(target)):
                    continue
                cells = [_ratio(row.get(k), ref.get(k)) if b else "" for k, _, b in columns]
                ratio_lines.append("| " + " | ".join([f"{label} ÷ {base}", *cells]) + " |")
    out += ratio_lines
    out.append("")
    if errors:
        out += ["Errors and warnings:", "", *(f"- {e}" for e in errors), ""]
    return out


def markdown(meta: Mapping[str, Any], sizes: Any, summary: Mapping[str, Any]) -> str:
    reps = meta["repeat"]
    lines = [
        "# Benchmark results",
        "",
        f"Produced by `{meta['command']}` on {meta['date']} ({meta['mode']} sizes, {reps} "
        f"repetition{'s' if reps != 1 else ''}; tables show the median of the repetitions, "
        "`lost` and `dup` the total over all of them). Gateway revision: "
        f"{meta['revision']}. Took {meta['elapsed_s']:.0f} s.",
        "",
        "Every process (Redis, the servers, Django, the load generators, the publisher) shares "
        "this one machine, so absolute numbers are lower than on a real deployment; the ratios "
        "to the reference (and to Socket.IO on Node) are the point. ↑ = higher is better, ↓ = "
        "lower is better. A ratio row divides the target's median by the reference's (or "
        "Socket.IO's).",
        "",
        *(
            [
                "**Warning: the machine was busy with other work when the run started (see the "
                "load averages below): these numbers are noisy.**",
                "",
            ]
            if meta.get("busy_before")
            else []
        ),
        "## Machine",
        "",
        *(f"- {k}: {v}" for k, v in meta["machine"].items()),
        "",
        "## Versions",
        "",
        *(f"- {k}: {v}" for k, v in meta["versions"].items()),
        "",
        "## Targets",
        "",
    ]
    for target in meta["targets"]:
        lines += [f"- `{target}`: {meta['target_notes'].get(target, '')}"]
    lines.append("")
    for target, commands in meta["commands"].items():
        lines += [f"Commands for `{target}` (first repetition):", "", "```sh", *commands, "```", ""]
    if meta.get("unavailable"):
        lines += ["Targets that could not run:", ""]
        lines += [f"- `{t}`: {why}" for t, why in meta["unavailable"].items()]
        lines.append("")
    lines += [
        "## Metrics",
        "",
        "- deliveries/s: events received by all clients ÷ (last receive - first publish).",
        "- server CPU µs: utime+stime (`/proc/<pid>/stat`) of the WebSocket server processes "
        "over the measured window ÷ deliveries (or connects, or events); helpers CPU: the same "
        "for Redis, and for the gateway also the Django site and the worker.",
        "- p50/p99 ms: receive wall clock - the publisher's wall clock in the payload, over "
        "every delivery (1 % histogram buckets).",
        "- lost/dup: per connection and room, sequence numbers not received by the end of the "
        "collection (all in, or 5 s without any delivery, or 120 s) / received more than once.",
        "- RSS: `VmRSS` of `/proc/<pid>/status`, summed over the server processes.",
        "- loadgen CPU: the load generator processes' CPU over the same window, per delivery, "
        "and the busiest process's CPU % (near 100 % = it set the pace). Receiving costs the "
        "client about as much as sending costs a server, and both share the cores, so burst "
        "deliveries/s is a property of the whole machine; server CPU µs/delivery is the "
        "comparable efficiency number.",
        "",
        "## Results",
        "",
    ]
    for scenario in SCENARIOS:
        if scenario.name in meta["scenarios"]:
            lines += scenario_section(scenario, sizes, summary)
    return "\n".join(lines).rstrip() + "\n"
