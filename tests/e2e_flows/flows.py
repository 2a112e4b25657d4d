"""Flows the end-to-end tests deploy; they run inside the testbed's pods as local processes.

Every printed line carries the flow run's id, so a test can find exactly its own lines in the
worker's output.
"""

import os
import time

from prefect import flow
from prefect.runtime import flow_run


@flow
def report_environment(lines: int = 3) -> None:
    """Prints numbered lines and what the container's environment says about the run."""
    run_id = flow_run.id
    for n in range(1, lines + 1):
        print(f"line {n} of {lines} in run {run_id}", flush=True)
    for name in ("PREFECT__FLOW_RUN_ID", "PREFECT_API_URL", "GREETING"):
        print(f"env {name}={os.environ.get(name)} in run {run_id}", flush=True)


@flow
def raise_an_error() -> None:
    """The flow fails; the engine reports Failed and the container exits 0."""
    raise ValueError(f"this flow fails on purpose in run {flow_run.id}")


@flow
def exit_the_container(code: int = 3) -> None:
    """The container exits before the engine can report a final state."""
    print(f"exiting with code {code} in run {flow_run.id}", flush=True)
    os._exit(code)


@flow
def sleep_for(seconds: float = 120) -> None:
    """Runs until cancelled (or evicted); says when it starts sleeping and when it ends."""
    print(f"sleeping for {seconds} s in run {flow_run.id}", flush=True)
    time.sleep(seconds)
    print(f"woke up in run {flow_run.id}", flush=True)


@flow
def numbered_lines(count: int = 5) -> int:
    """Prints `count` numbered lines, a little apart, and returns the count."""
    for n in range(1, count + 1):
        print(f"line {n} of {count} in run {flow_run.id}", flush=True)
        time.sleep(0.1)
    return count


@flow
def lines_around_a_pause(pause: float = 20) -> None:
    """Three lines, a quiet pause, three more lines: the log stream is idle in between."""
    for n in (1, 2, 3):
        print(f"before {n} in run {flow_run.id}", flush=True)
    time.sleep(pause)
    for n in (1, 2, 3):
        print(f"after {n} in run {flow_run.id}", flush=True)
