"""Example flows for `make demo`: they run inside the testbed's pods, as a user's would."""

import os
import time

from prefect import flow, get_run_logger


@flow(log_prints=True)
def count_sheep(sheep: int = 5) -> int:
    """Succeeds, printing a few lines while it works."""
    for n in range(1, sheep + 1):
        print(f"sheep number {n} jumps the fence")
        time.sleep(0.2)
    get_run_logger().info("All %d sheep counted", sheep)
    return sheep


@flow
def divide(numerator: float = 1, denominator: float = 0) -> float:
    """Fails: raises inside the flow, so Prefect marks the run Failed (the pod exits 0)."""
    return numerator / denominator


@flow
def crash_the_container(code: int = 3) -> None:
    """Crashes: the container exits before the flow can report, so the worker reports it."""
    print(f"exiting the container with code {code}")
    os._exit(code)
