"""The soak: one `KubernetesWorker` keeps N flow runs in flight for a while, through the fault
proxy, while random faults come and go; it prints one JSON summary line at the end.

Each run's pod is scripted (the fake kubelet) with a known outcome: it succeeds, exits 3, is
OOM-killed (137) or has an image name that can never be pulled (-1, the worker deletes the
Job). Each pod prints lines naming its run, so every line can be checked off: none lost, none
repeated. Worker RSS is sampled from /proc every few seconds. Driven as `prefect worker start`
would drive it, minus a Prefect server (no API calls are made; events and API logging are off).

    python tests/soak_driver.py --kubeconfig K --proxy-control URL --in-flight 1000 \\
        --seconds 600 --seed 7
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import copy
import io
import json
import random
import re
import sys
import time
import urllib.request
import uuid
from typing import Any

import yaml

# The outcomes a pod can be scripted to have, with their weights and the exit code the worker
# must report for them.
OUTCOMES = [
    ("succeeds", 70, {}, 0),
    ("exits 3", 10, {"exit-code": "3"}, 3),
    ("oom-killed", 10, {"oom": "true"}, 137),
    ("invalid image name", 10, {"invalid-image": "true"}, -1),
]
LINES_PER_RUN = 5

# Faults the proxy plays for a while each; every one is something the worker must ride out
# without a wrong outcome or a lost or repeated line.
FAULTS = [
    {"name": "job watch cut", "verb": "watch", "path": "/jobs$",
     "action": "cut-after-events", "events": 25, "times": 3},
    {"name": "pod watch cut", "verb": "watch", "path": "/pods$",
     "action": "cut-after-events", "events": 40, "times": 3},
    {"name": "pod watch 410", "verb": "watch", "path": "/pods$",
     "action": "gone-event", "events": 10, "times": 1},
    {"name": "job watch 410", "verb": "watch", "path": "/jobs$",
     "action": "gone-event", "events": 10, "times": 1},
    {"name": "create 503", "verb": "create", "path": "/jobs$",
     "action": "status", "code": 503, "times": 5},
    {"name": "create 429", "verb": "create", "path": "/jobs$",
     "action": "status", "code": 429, "retry_after": 1, "times": 5},
    {"name": "create reply lost", "verb": "create", "path": "/jobs$",
     "action": "reset", "after_upstream": True, "times": 3},
    {"name": "log 500", "path": "/log$", "action": "status", "code": 500, "times": 10},
    {"name": "log cut", "path": "/log$", "action": "cut-after-bytes", "bytes": 120,
     "abrupt": True, "times": 20},
    {"name": "log reset", "path": "/log$", "action": "reset", "times": 10},
    {"name": "bookmarks dropped", "verb": "watch", "action": "drop-bookmarks", "times": "all"},
    {"name": "1 s latency", "action": "delay", "ms": 1000, "times": 200},
]  # fmt: skip
LINE = re.compile(r"^soak run (\S+) line (\d+)$")


class LineCounter(io.TextIOBase):
    """Stands in for the worker's stdout: counts each run's lines (the worker prints them)."""

    def __init__(self) -> None:
        self.lines: dict[str, list[int]] = collections.defaultdict(list)
        self.other = 0
        self._partial = ""

    def write(self, text: str) -> int:
        text = self._partial + text
        *complete, self._partial = text.split("\n")
        for line in complete:
            match = LINE.match(line)
            if match:
                self.lines[match.group(1)].append(int(match.group(2)))
            else:
                self.other += 1
        return len(text)

    def flush(self) -> None:
        pass


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def proxy(control: str, method: str, path: str, body: Any = None) -> Any:
    request = urllib.request.Request(
        control + path, method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read()
    return json.loads(text) if text else None


async def play_faults(control: str, rng: random.Random, stop: asyncio.Event, log: list) -> None:
    """One fault at a time for 5-15 s, with 0-10 s of calm between them."""
    while not stop.is_set():
        fault = rng.choice(FAULTS)
        rule = {key: value for key, value in fault.items() if key != "name"}
        rule_id = (await asyncio.to_thread(proxy, control, "POST", "/rules", rule))["id"]
        log.append(fault["name"])
        try:
            await asyncio.wait_for(stop.wait(), rng.uniform(5, 15))
        except asyncio.TimeoutError:
            pass
        finally:
            await asyncio.to_thread(proxy, control, "DELETE", f"/rules/{rule_id}")
        try:
            await asyncio.wait_for(stop.wait(), rng.uniform(0, 10))
        except asyncio.TimeoutError:
            pass


async def soak(arguments: argparse.Namespace) -> dict[str, Any]:
    from prefect.client.schemas.objects import FlowRun

    from prefect_kubernetes_rs.worker import KubernetesWorker, KubernetesWorkerJobConfiguration

    rng = random.Random(arguments.seed)
    kubeconfig = yaml.safe_load(open(arguments.kubeconfig))
    cluster_config = {"config": kubeconfig, "context_name": kubeconfig["current-context"]}
    template = KubernetesWorker.get_default_base_job_template()
    worker = KubernetesWorker(work_pool_name="soak")

    started: dict[str, tuple[str, int]] = {}
    results: dict[str, Any] = {}
    in_flight: set[asyncio.Task] = set()

    async def one_run() -> None:
        name, _, script, expected = rng.choices(OUTCOMES, [w for _, w, _, _ in OUTCOMES])[0]
        flow_run = FlowRun(
            id=uuid.uuid4(), name=f"soak-{uuid.uuid4().hex[:6]}", flow_id=uuid.uuid4()
        )
        run_id = str(flow_run.id)
        seconds = rng.uniform(arguments.min_run_seconds, arguments.max_run_seconds)
        text = "\n".join(f"soak run {run_id} line {n}" for n in range(1, LINES_PER_RUN + 1))
        annotations = {"testbed.prefect.io/mode": "script",
                       "testbed.prefect.io/run-seconds": f"{seconds:.1f}",
                       "testbed.prefect.io/log-text": text} | {
            f"testbed.prefect.io/{key}": value for key, value in script.items()
        }  # fmt: skip
        configuration = await KubernetesWorkerJobConfiguration.from_template_and_values(
            copy.deepcopy(template),
            {"image": "testbed/soak:1", "namespace": arguments.namespace,
             "annotations": annotations, "cluster_config": cluster_config,
             # The testbed's controller-manager starts pods at a bounded rate: with 1000
             # runs in flight a pod may wait minutes, which is no outcome to judge.
             "finished_job_ttl": 30, "pod_watch_timeout_seconds": 900},
        )  # fmt: skip
        configuration.prepare_for_flow_run(flow_run)
        started[run_id] = (name, expected)
        try:
            result = await worker.run(flow_run, configuration)
            results[run_id] = result.status_code
        except Exception as error:  # noqa: BLE001 - a failed run is a result to report
            results[run_id] = f"{type(error).__name__}: {error}"

    samples: list[tuple[float, int, int]] = []
    fault_log: list[str] = []
    stop_faults = asyncio.Event()
    faults = asyncio.create_task(play_faults(arguments.proxy_control, rng, stop_faults, fault_log))
    begin = time.monotonic()
    next_sample = begin
    # One loop for topping up, sampling and the deadline: runs that end as fast as the ramp
    # submits them must not keep the soak topping up forever.
    while time.monotonic() - begin < arguments.seconds:
        if len(in_flight) < arguments.in_flight:
            task = asyncio.create_task(one_run())
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            # The ramp: a steady stream of submissions rather than one burst.
            await asyncio.sleep(arguments.ramp_seconds / arguments.in_flight)
        else:
            await asyncio.sleep(0.2)
        if time.monotonic() >= next_sample:
            samples.append((round(time.monotonic() - begin, 1), len(results), rss_kib()))
            next_sample += 5
    stop_faults.set()
    await faults
    await asyncio.wait_for(asyncio.gather(*in_flight), arguments.max_run_seconds + 300)
    samples.append((round(time.monotonic() - begin, 1), len(results), rss_kib()))
    await worker.close_kubernetes()

    lines = sys.stdout.lines  # type: ignore[attr-defined]
    wrong = {}
    for run_id, (name, expected) in started.items():
        got = results.get(run_id)
        want_lines = [] if expected == -1 else list(range(1, LINES_PER_RUN + 1))
        if got != expected or lines.get(run_id, []) != want_lines:
            wrong[run_id] = {"script": name, "expected": expected, "got": got,
                             "lines": lines.get(run_id, [])}  # fmt: skip
    return {
        "runs": len(started),
        "outcomes": collections.Counter(name for name, _ in started.values()),
        "wrong": wrong,
        "faults": collections.Counter(fault_log),
        "rss_samples": samples,
        "seconds": round(time.monotonic() - begin, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kubeconfig", required=True, help="kubeconfig through the proxy")
    parser.add_argument("--proxy-control", required=True)
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--in-flight", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--ramp-seconds", type=float, default=60)
    parser.add_argument("--min-run-seconds", type=float, default=60)
    parser.add_argument("--max-run-seconds", type=float, default=180)
    parser.add_argument("--seed", type=int, default=7)
    arguments = parser.parse_args()

    import prefect.events.utilities
    from prefect.settings import (
        PREFECT_LOGGING_TO_API_ENABLED,
        PREFECT_TEST_MODE,
        temporary_settings,
    )

    prefect.events.utilities.should_emit_events = lambda: False
    real_stdout = sys.stdout
    sys.stdout = LineCounter()
    try:
        with temporary_settings({PREFECT_TEST_MODE: True, PREFECT_LOGGING_TO_API_ENABLED: False}):
            summary = asyncio.run(soak(arguments))
    finally:
        sys.stdout = real_stdout
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
