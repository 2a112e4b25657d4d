"""One measured worker process: drives a worker's `run()` against the testbed, reports JSON.

`bench/run_bench.py` starts this script once per measurement with the interpreter of the venv
under test (ours: `.venv`; prefect-kubernetes: `bench/.venvs/pk-<version>`), so the CPU time and
memory it reports belong to that worker alone. By hand:

    bench/.venvs/pk-0.5.10/bin/python bench/worker_driver.py --worker-module \
        prefect_kubernetes.worker --scenario follow --runs 10 --template template.json \
        --variables variables.json --pod-behaviour '{"run-seconds": "5"}' --out result.json

The worker is built as Prefect builds it and `run()` is called the way Prefect calls it, with a
configuration rendered from the work pool template and job variables, but without a Prefect
server: flow runs are built locally, logs go to the console only and event emission is turned
off (for every worker alike). The cluster comes from `KUBECONFIG`. The worker's stdout (the flow
runs' logs) is left alone: the harness counts the lines.

Scenarios:
- `follow`: `--runs` flow runs at once, each to its end.
- `submit`: `--rounds` rounds of `--runs` flow runs at once; each run is stopped as soon as it
  reports its infrastructure pid (the Job exists), only the time to that point matters.
- `logs`: the same as `follow`; the harness gives the pod a large log.

Before measuring, `--warmup-runs` short runs open the worker's connections (and watches), so the
one-off start cost is not counted per run.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import importlib
import json
import os
import resource
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

SCRIPTED = "testbed.prefect.io/"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_seconds_by_thread() -> dict[str, float]:
    """CPU time (user + system) of each live thread of this process, summed per thread name.

    Where a worker's CPU goes: the Python main thread (the event loop) vs the threads of a
    native core. A thread that ended before the reading is not in it (the process total is).
    """
    ticks = os.sysconf("SC_CLK_TCK")
    totals: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue  # the thread ended while we looked
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        # Fields 14 and 15 of proc(5) (utime, stime); the slice starts at field 3.
        seconds = (int(fields[11]) + int(fields[12])) / ticks
        totals[name] = totals.get(name, 0.0) + seconds
    return totals


def memory_kib() -> dict[str, int]:
    """Resident memory now (`VmRSS`) and its peak so far (`VmHWM`), in KiB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


class Sampler:
    """Samples this process's RSS, CPU time and runs in flight a few times a second.

    A thread, so the samples keep coming while the event loop is busy; reading two /proc
    files costs microseconds, negligible next to what is measured.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.samples: list[list[float]] = []
        self.in_flight = 0
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.samples.append(
                [
                    round(time.monotonic() - self._started, 3),
                    memory_kib()["VmRSS"],
                    round(cpu_seconds(), 3),
                    self.in_flight,
                ]
            )


class TaskStatus:
    """What Prefect passes to `run()`: records when the worker reports the pid."""

    def __init__(self, on_report: Any) -> None:
        self.started_at: float | None = None
        self.reported = asyncio.Event()
        self.on_report = on_report

    def started(self, value: Any = None) -> None:
        self.started_at = time.monotonic()
        self.reported.set()
        self.on_report()


def template_with_pod_behaviour(template: dict[str, Any], behaviour: dict[str, str]) -> dict:
    """The work pool template with the fake kubelet's script on the pod template."""
    template = copy.deepcopy(template)
    pod_template = template["job_configuration"]["job_manifest"]["spec"]["template"]
    annotations = pod_template.setdefault("metadata", {}).setdefault("annotations", {})
    annotations.update({SCRIPTED + "mode": "script"})
    annotations.update({SCRIPTED + key: str(value) for key, value in behaviour.items()})
    return template


def turn_off_prefect_server_use() -> None:
    """No Prefect server is in the loop: nothing may reach for one, for any worker."""
    import prefect.events.utilities

    prefect.events.utilities.should_emit_events = lambda: False


class NoApiClient:
    """Rendering a template needs no Prefect API when it has no block or variable references."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"unexpected Prefect API call: client.{name}")


class Driver:
    def __init__(self, args: argparse.Namespace) -> None:
        from prefect.client.schemas.objects import FlowRun

        self.args = args
        self.flow_run_class = FlowRun
        self.worker_module = importlib.import_module(args.worker_module)
        self.template = json.loads(Path(args.template).read_text())
        self.variables = json.loads(Path(args.variables).read_text())
        self.worker = self.worker_module.KubernetesWorker(work_pool_name="bench")
        self.in_flight = 0
        self.sampler: Sampler | None = None
        self.reported = 0
        self.expected_reports = 0
        self.cpu_when_all_submitted: float | None = None

    async def configurations(self, behaviour: dict[str, str], count: int) -> list[tuple]:
        """Flow runs and their prepared configurations; built before the clock starts."""
        template = template_with_pod_behaviour(self.template, behaviour)
        configuration_class = self.worker_module.KubernetesWorkerJobConfiguration
        prepared = []
        for index in range(count):
            flow_run = self.flow_run_class(
                id=uuid.uuid4(), name=f"bench-{index}-{uuid.uuid4().hex[:6]}", flow_id=uuid.uuid4()
            )
            configuration = await configuration_class.from_template_and_values(
                copy.deepcopy(template), copy.deepcopy(self.variables), client=NoApiClient()
            )
            configuration.prepare_for_flow_run(flow_run)
            prepared.append((flow_run, configuration))
        return prepared

    async def run_one(self, flow_run: Any, configuration: Any, stop_when_reported: bool) -> dict:
        status = TaskStatus(on_report=self._count_report)
        called_at = time.monotonic()
        self._track(+1)
        running = asyncio.ensure_future(
            self.worker.run(flow_run, configuration, task_status=status)
        )
        outcome: dict[str, Any] = {}
        try:
            if stop_when_reported:
                reported = asyncio.ensure_future(status.reported.wait())
                await asyncio.wait({running, reported}, return_when=asyncio.FIRST_COMPLETED)
                reported.cancel()
                if not running.done():
                    running.cancel()
                    outcome["stopped_after_report"] = True
            result = await running
            outcome["status_code"] = result.status_code
        except asyncio.CancelledError:
            if not outcome.get("stopped_after_report"):
                raise
        except Exception as error:  # noqa: BLE001 - a failed run is a result to report
            outcome["error"] = f"{type(error).__name__}: {error}"[:300]
        finally:
            self._track(-1)
        outcome["seconds"] = time.monotonic() - called_at
        if status.started_at is not None:
            outcome["submitted_seconds"] = status.started_at - called_at
        return outcome

    def _count_report(self) -> None:
        """The CPU time when every measured run has its Job: submitting vs following."""
        self.reported += 1
        if self.reported == self.expected_reports:
            self.cpu_when_all_submitted = cpu_seconds()

    def _track(self, change: int) -> None:
        self.in_flight += change
        if self.sampler is not None:
            self.sampler.in_flight = self.in_flight

    async def run_batch(self, prepared: list[tuple], stop_when_reported: bool) -> list[dict]:
        return await asyncio.gather(
            *(self.run_one(run, config, stop_when_reported) for run, config in prepared)
        )

    async def measure(self) -> dict[str, Any]:
        args = self.args
        behaviour = json.loads(args.pod_behaviour)
        warmup_behaviour = json.loads(args.warmup_pod_behaviour)
        submit_only = args.scenario == "submit"
        rounds = args.rounds if submit_only else 1

        warmup = await self.configurations(warmup_behaviour, args.warmup_runs)
        warmup_outcomes = await self.run_batch(warmup, stop_when_reported=submit_only)
        measured = [await self.configurations(behaviour, args.runs) for _ in range(rounds)]
        reset_proxy_counts(args.proxy_control)
        self.reported = 0
        self.expected_reports = args.runs * rounds

        memory_before = memory_kib()
        threads_before = cpu_seconds_by_thread()
        cpu_before = cpu_seconds()
        started = time.monotonic()
        outcomes: list[dict] = []
        with Sampler(args.sample_seconds) as sampler:
            self.sampler = sampler
            for prepared in measured:
                outcomes.extend(await self.run_batch(prepared, stop_when_reported=submit_only))
            wall_seconds = time.monotonic() - started
            cpu = cpu_seconds() - cpu_before
            threads_after = cpu_seconds_by_thread()
            self.sampler = None
        memory_after = memory_kib()
        peak_sampled = max([memory_after["VmRSS"], *(s[1] for s in sampler.samples)])
        return {
            "scenario": args.scenario,
            "runs": args.runs * rounds,
            "wall_seconds": wall_seconds,
            "cpu_seconds": cpu,
            "cpu_seconds_to_all_submitted": (
                None
                if self.cpu_when_all_submitted is None
                else self.cpu_when_all_submitted - cpu_before
            ),
            "cpu_seconds_by_thread": {
                name: round(seconds - threads_before.get(name, 0.0), 3)
                for name, seconds in sorted(threads_after.items())
                if seconds - threads_before.get(name, 0.0) > 0
            },
            "rss_before_kib": memory_before["VmRSS"],
            "rss_peak_kib": peak_sampled,
            "vm_hwm_kib": memory_after["VmHWM"],
            "outcomes": outcomes,
            "warmup_errors": [o["error"] for o in warmup_outcomes if "error" in o],
            "samples": sampler.samples,
        }

    async def close(self) -> None:
        # Ours keeps its clients and watches for the worker's lifetime; prefect-kubernetes
        # opens a client per run and has nothing to close.
        close_kubernetes = getattr(self.worker, "close_kubernetes", None)
        if close_kubernetes is not None:
            await close_kubernetes()


def reset_proxy_counts(control_url: str | None) -> None:
    """Zero the fault proxy's request counts: what follows is the measured part alone."""
    if control_url:
        request = urllib.request.Request(control_url + "/counts/reset", method="POST", data=b"")
        urllib.request.urlopen(request, timeout=10).read()


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    turn_off_prefect_server_use()
    driver = Driver(args)
    try:
        result = await driver.measure()
    finally:
        await driver.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker-module", required=True)
    parser.add_argument("--scenario", choices=["follow", "submit", "logs"], required=True)
    parser.add_argument("--runs", type=int, required=True, help="flow runs at once")
    parser.add_argument("--rounds", type=int, default=1, help="submit: rounds one after another")
    parser.add_argument("--template", required=True, help="work pool base job template (JSON)")
    parser.add_argument("--variables", required=True, help="job variables (JSON)")
    parser.add_argument("--pod-behaviour", default="{}", help="fake kubelet script (JSON)")
    parser.add_argument("--warmup-runs", type=int, default=1)
    parser.add_argument("--warmup-pod-behaviour", default='{"run-seconds": "1"}')
    parser.add_argument("--proxy-control", help="fault proxy control URL, to reset its counts")
    parser.add_argument("--sample-seconds", type=float, default=0.5)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    result["python"] = sys.version.split()[0]
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
