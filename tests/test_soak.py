"""The soak: 1000 flow runs in flight on one worker for 10 minutes, with random faults at the
API (watch cuts, 410s, dropped bookmarks, 429/500/503, lost create replies, connection resets,
log stream cuts, added latency). Every run must end with the outcome its pod was scripted for,
its log complete and unrepeated, and the worker's memory flat once the ramp is over.

The driver (`soak_driver.py`) runs the worker in its own process, so its RSS is the worker's.
`PKR_SOAK_IN_FLIGHT`, `PKR_SOAK_SECONDS` (and the other `PKR_SOAK_*` below) shrink it for a
quick look; `make test` runs it at full size.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

IN_FLIGHT = int(os.environ.get("PKR_SOAK_IN_FLIGHT", "1000"))
SECONDS = float(os.environ.get("PKR_SOAK_SECONDS", "600"))
RAMP_SECONDS = float(os.environ.get("PKR_SOAK_RAMP_SECONDS", "60"))
MIN_RUN_SECONDS = float(os.environ.get("PKR_SOAK_MIN_RUN_SECONDS", "60"))
MAX_RUN_SECONDS = float(os.environ.get("PKR_SOAK_MAX_RUN_SECONDS", "180"))
# Memory a completed run may leave behind, on average, once the worker is warm.
MAX_KIB_PER_COMPLETED_RUN = 2.0

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.soak,
    pytest.mark.timeout(SECONDS + MAX_RUN_SECONDS + 900),
]


def test_a_thousand_runs_in_flight_for_ten_minutes_with_random_faults(testbed):
    namespace = "soak"
    testbed.kubectl("create", "namespace", namespace, check=False)
    try:
        result = run_soak(testbed, namespace)
    finally:
        # Hundreds of Jobs still wait for their TTL: remove them now, so the tests after this
        # one do not share the testbed with their garbage collection.
        testbed.kubectl("delete", "namespace", namespace, "--timeout=110s", check=False)
    assert result.returncode == 0, result.stderr[-5000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    print(
        f"soak: {summary['runs']} runs {summary['outcomes']} in {summary['seconds']} s, "
        f"faults {summary['faults']}"
    )

    assert summary["runs"] >= IN_FLIGHT
    assert summary["wrong"] == {}, dict(list(summary["wrong"].items())[:10])
    assert len(summary["faults"]) >= 3, "the soak played too few kinds of fault"

    # Flat memory: from the first sample after every run of the ramp could have ended, the
    # RSS may grow by at most MAX_KIB_PER_COMPLETED_RUN per run completed since.
    warm = [s for s in summary["rss_samples"] if s[0] >= RAMP_SECONDS + MAX_RUN_SECONDS]
    assert len(warm) >= 2, summary["rss_samples"]
    (_, done_then, rss_then), (_, done_end, rss_end) = warm[0], warm[-1]
    completed = done_end - done_then
    assert completed >= IN_FLIGHT, "too few runs completed after the ramp to judge memory"
    growth = (rss_end - rss_then) / completed
    print(f"soak: RSS {rss_then} -> {rss_end} KiB over {completed} runs: {growth:.2f} KiB/run")
    assert growth <= MAX_KIB_PER_COMPLETED_RUN, summary["rss_samples"]


def run_soak(testbed, namespace: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable, str(Path(__file__).with_name("soak_driver.py")),
            "--kubeconfig", str(testbed.proxy_kubeconfig),
            "--proxy-control", testbed.proxy_control,
            "--namespace", namespace,
            "--in-flight", str(IN_FLIGHT),
            "--seconds", str(SECONDS),
            "--ramp-seconds", str(RAMP_SECONDS),
            "--min-run-seconds", str(MIN_RUN_SECONDS),
            "--max-run-seconds", str(MAX_RUN_SECONDS),
        ],
        capture_output=True, text=True, timeout=SECONDS + MAX_RUN_SECONDS + 600,
    )  # fmt: skip
