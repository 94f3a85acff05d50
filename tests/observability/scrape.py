"""Reading a Prometheus exposition the way Prometheus does (``prometheus_client.parser``)."""

from __future__ import annotations

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

Sample = tuple[str, tuple[tuple[str, str], ...]]  # (sample name, sorted labels)

# the series a family of each type exposes, besides its own name (``_created`` is a gauge-like
# timestamp prometheus_client adds to counters, histograms and summaries)
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("_count", "_sum", "_created"),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "info": ("_info",),
}


async def scrape(http: aiohttp.ClientSession, base_url: str) -> str:
    async with http.get(f"{base_url}/metrics") as resp:
        assert resp.status == 200, resp.status
        return await resp.text()


def samples(text: str) -> dict[Sample, float]:
    """Every sample of the exposition, keyed by name and labels."""
    out: dict[Sample, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def all_label_values(text: str) -> set[str]:
    return {
        value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        for value in s.labels.values()
    }


def series_names(text: str) -> set[str]:
    """Every name a PromQL selector may use against this exposition, with or without samples
    (a labelled counter nobody has touched yet still has its HELP/TYPE lines)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ()))
        names.update(s.name for s in family.samples)
    return names
