"""End to end, as `make demo` runs it: a real Prefect server, `prefect worker start --type
kubernetes-rs`, deployments whose flow runs execute inside the testbed's pods and report back.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[1]


def test_demo_runs_succeed_fail_and_crash_as_they_should():
    environment = os.environ | {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "demo" / "run_demo.py")],
        env=environment, capture_output=True, text=True, timeout=540,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    summary = output[output.index("Summary") :]
    assert "count_sheep            Completed" in summary
    assert "divide                 Failed" in summary
    assert "crash_the_container    Crashed" in summary
    # The worker streamed the flow container's log to its own output.
    for n in range(1, 6):
        assert f"sheep number {n} jumps the fence" in output
    assert "Process exited with status code: 3" in output
