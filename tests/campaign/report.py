"""A run's outcome: counts, the faults injected by kind, the violations with their traces."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.campaign.oracle import ClientOracle, Counters, Violation
from tests.campaign.schedule import Fault, counts

if TYPE_CHECKING:
    from tests.campaign.client import CampaignClient
    from tests.campaign.faults import FaultLog
    from tests.campaign.ledger import Ledger
    from tests.campaign.runner import Config

MAX_TRACES = 12  # violations printed in full; the rest are counted by kind


@dataclass
class Result:
    seed: int
    config: dict[str, Any]
    planned: dict[str, int]  # faults in the schedule, by kind
    injected: dict[str, int]  # faults that ran to their end, by kind
    fault_lines: list[str]
    published: dict[str, int]  # by source
    acked: dict[str, int]
    unacked_samples: list[str]
    counters: dict[str, int]  # summed over clients
    closes: dict[str, int]
    violations: list[Violation]
    phases: dict[str, float]
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    log_errors: dict[str, int] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        *,
        config: Config,
        schedule: Sequence[Fault],
        applied: FaultLog,
        ledger: Ledger,
        oracles: Sequence[ClientOracle],
        clients: Sequence[CampaignClient],
        violations: list[Violation],
        phases: dict[str, float],
        notes: list[str],
    ) -> Result:
        sent, acked = ledger.counts()
        total = Counters()
        for oracle in oracles:
            for name, value in asdict(oracle.count).items():
                merged = max if name.startswith("max_") else int.__add__
                setattr(total, name, merged(getattr(total, name), value))
        closes: Counter[str] = Counter()
        for client in clients:
            closes.update(client.closes)
        unacked = [
            f"{p.tag} {p.source} {p.rooms} attempts={p.attempts} error={p.error}"
            for p in ledger.records
            if not p.acked
        ]
        config_dict = asdict(config)
        config_dict["kinds"] = [str(k) for k in config.kinds]
        return cls(
            seed=config.seed,
            config=config_dict,
            planned=dict(counts(list(schedule))),
            injected=dict(applied.counts()),
            fault_lines=[a.describe() for a in applied.applied],
            published=dict(sent),
            acked=dict(acked),
            unacked_samples=unacked[:20],
            counters=asdict(total),
            closes=dict(closes),
            violations=violations,
            phases=phases,
            notes=notes,
        )

    @property
    def by_kind(self) -> Counter[str]:
        return Counter(v.kind for v in self.violations)

    def summary(self) -> str:
        c = self.counters
        lines = [
            f"campaign seed={self.seed} nodes={self.config['nodes']} "
            f"clients={self.config['clients']} fault phase={self.config['fault_s']:g}s "
            f"wall={self.wall_s:.0f}s",
            f"published {sum(self.published.values())} (acknowledged "
            f"{sum(self.acked.values())}) by source: "
            + ", ".join(
                f"{k} {self.acked.get(k, 0)}/{v}" for k, v in sorted(self.published.items())
            ),
            f"delivered {c['delivered']} events to clients ({c['live']} live, "
            f"{c['recovered_events']} recovered in missed); {c['recoveries']} recoveries "
            f"(longest missed: {c['max_missed']} events), "
            f"{c['rejoin_frames']} rejoin frames, {c['overlaps']} overlaps, "
            f"{c['connections']} connections, {c['early_events']} events before auth_success",
            "faults injected by kind: "
            + ", ".join(
                f"{k} {self.injected.get(k, 0)}/{v}" for k, v in sorted(self.planned.items())
            ),
            "closes seen by clients: "
            + ", ".join(f"{k}: {v}" for k, v in sorted(self.closes.items())),
            f"violations: {len(self.violations)}"
            + (f" ({dict(sorted(self.by_kind.items()))})" if self.violations else ""),
        ]
        if self.log_errors:
            lines.append(f"tracebacks in process logs: {self.log_errors}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def report(self, max_traces: int = MAX_TRACES, context: int = 20) -> str:
        parts = [self.summary()]
        if self.violations:
            parts.append(
                f"\nre-run: python -m tests.campaign --seed {self.seed} "
                f"--minutes {self.config['fault_s'] / 60:g}"
            )
            shown = _spread(self.violations, max_traces)
            parts.append(f"\n{len(shown)} of {len(self.violations)} violations in full:")
            parts += [v.render(context) for v in shown]
            parts.append("\nfaults applied:")
            parts += [f"  {line}" for line in self.fault_lines]
        return "\n".join(parts)

    def save(self, run_dir: Path) -> None:
        (run_dir / "report.txt").write_text(self.report(max_traces=200, context=48) + "\n")
        data = asdict(self)
        (run_dir / "result.json").write_text(json.dumps(data, indent=1, default=str))


def _spread(violations: Sequence[Violation], limit: int) -> list[Violation]:
    """Up to ``limit`` violations, the first of each kind before the second of any."""
    by_kind: dict[str, list[Violation]] = {}
    for violation in violations:
        by_kind.setdefault(violation.kind, []).append(violation)
    picked: list[Violation] = []
    depth = 0
    while len(picked) < limit and any(len(v) > depth for v in by_kind.values()):
        for items in by_kind.values():
            if len(items) > depth and len(picked) < limit:
                picked.append(items[depth])
        depth += 1
    return sorted(picked, key=lambda v: v.at_s)
