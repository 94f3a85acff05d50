"""The node's garbage-collector settings (gateway.__main__.tune_gc), in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys

from gateway.__main__ import GC_GEN0_THRESHOLD


def test_start_up_objects_are_frozen_and_young_collections_are_rarer() -> None:
    code = (
        "import gc; from gateway.__main__ import tune_gc; tune_gc();"
        "print(gc.get_threshold()[0], gc.get_freeze_count() > 1000)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    assert out == [str(GC_GEN0_THRESHOLD), "True"]
    assert GC_GEN0_THRESHOLD > 700  # Python's default
