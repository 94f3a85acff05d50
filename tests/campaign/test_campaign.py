"""The fault campaign in the test command: fixed seeds; about two minutes on a single Redis, and
a shorter run on Redis Cluster (3 masters + 3 replicas).

Three nodes, the worker, the Django test site, Redis with AOF ``always`` behind one fault proxy
per process, 30 clients that follow the protocol exactly, and publishers at a steady rate on all
four ways in. At least three injections of every fault kind. Any violation of the delivery
guarantee fails the test with the seed and a trace of each (first of each kind first).
Another seed: ``CAMPAIGN_SEED=7 python3 -m pytest tests/campaign/test_campaign.py`` (and
``CAMPAIGN_CLUSTER_SEED`` for the cluster run).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.campaign.report import Result
from tests.campaign.runner import Config, run_campaign
from tests.campaign.schedule import CLUSTER_KINDS, SINGLE_KINDS, Kind

SEED = int(os.environ.get("CAMPAIGN_SEED", "1604"))
CLUSTER_SEED = int(os.environ.get("CAMPAIGN_CLUSTER_SEED", "21"))


def check(result: Result, config: Config, kinds: tuple[Kind, ...]) -> None:
    print(result.summary())
    assert all(result.injected.get(str(kind), 0) >= 3 for kind in kinds), result.summary()
    # the run did real work: most publishes were acknowledged and reached the clients
    assert sum(result.acked.values()) >= 0.8 * config.rate * config.fault_s, result.summary()
    assert result.counters["delivered"] >= sum(result.acked.values()), result.summary()
    assert result.violations == [], result.report()


@pytest.mark.slow
@pytest.mark.timeout(480)
async def test_fault_campaign_keeps_the_delivery_guarantee(
    django_site: Any, tmp_path: Path
) -> None:
    config = Config(seed=SEED, fault_s=100.0, kinds=SINGLE_KINDS)
    result = await run_campaign(config, tmp_path / "campaign", django_site.base_url)
    check(result, config, SINGLE_KINDS)


@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.timeout(480)
async def test_fault_campaign_on_redis_cluster_keeps_the_delivery_guarantee(
    django_site: Any, tmp_path: Path
) -> None:
    """Failovers (manual, and a crash of a caught-up master), slot migrations, per-master
    stalls and pub/sub kills, with node, worker and reconnect-storm faults."""
    config = Config(seed=CLUSTER_SEED, fault_s=60.0, clients=20, cluster=True, kinds=CLUSTER_KINDS)
    result = await run_campaign(config, tmp_path / "campaign", django_site.base_url)
    check(result, config, CLUSTER_KINDS)
