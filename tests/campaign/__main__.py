"""``python -m tests.campaign --minutes N --seed S [--cluster]``: a soak run from the repo root.

Starts its own Django test site, Redis, proxies, nodes and worker under ``--out`` (default: a new
directory in /tmp), prints the report, and exits 1 when the oracle found any violation.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

from tests.campaign.runner import Config, run_campaign
from tests.campaign.schedule import CLUSTER_KINDS, SINGLE_KINDS
from tests.support.django_site import DjangoSite


def parse(argv: list[str]) -> tuple[Config, Path]:
    parser = argparse.ArgumentParser(prog="python -m tests.campaign", description=__doc__)
    parser.add_argument("--minutes", type=float, default=2.0, help="length of the fault phase")
    parser.add_argument("--seed", type=int, default=1, help="fixes the fault schedule")
    parser.add_argument(
        "--cluster", action="store_true", help="Redis Cluster: 3 masters + 3 replicas"
    )
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--clients", type=int, default=30)
    parser.add_argument("--rate", type=float, default=12.0, help="publishes per second")
    parser.add_argument("--history-size", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=None, help="run directory (logs, report)")
    args = parser.parse_args(argv)
    config = Config(
        seed=args.seed,
        fault_s=args.minutes * 60,
        nodes=args.nodes,
        clients=args.clients,
        rate=args.rate,
        history_size=args.history_size,
        cluster=args.cluster,
        kinds=CLUSTER_KINDS if args.cluster else SINGLE_KINDS,
    )
    out = args.out or Path(tempfile.mkdtemp(prefix=f"campaign-{args.seed}-"))
    return config, out


def main(argv: list[str] | None = None) -> int:
    config, out = parse(sys.argv[1:] if argv is None else argv)
    site = DjangoSite(out / "django")
    site.start()
    try:
        result = asyncio.run(run_campaign(config, out, site.base_url))
    finally:
        site.stop()
    print(result.report())
    print(f"\nrun directory (logs, report.txt, result.json): {out}")
    return 1 if result.violations else 0


if __name__ == "__main__":
    sys.exit(main())
