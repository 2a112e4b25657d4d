"""Per-run configuration cost: template + validate + prepare, this package vs prefect-kubernetes.

Both workers get the same work pool template (prefect-kubernetes's default, as a user copying
a `kubernetes` pool would have), the same job variables and the same flow run, in the same
process, one after the other, alternating rounds so machine noise hits both alike. Warm-up
rounds are discarded; the result is the median per-run time over the measured rounds, with
the spread (min, max of the round medians).

    .venv/bin/python bench/config_path.py            # writes bench/results/
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import datetime
import json
import os
import platform
import statistics
import time
import uuid
from importlib.metadata import version
from pathlib import Path
from typing import Any

from prefect.client.schemas.objects import Flow, FlowRun, WorkPool
from prefect.client.schemas.responses import DeploymentResponse
from prefect_kubernetes import worker as python_worker

from prefect_kubernetes_rs import worker as rust_worker

RESULTS = Path(__file__).resolve().parent / "results"

JOB_VARIABLES = {
    "image": "registry.example/flows:1.4.2",
    "namespace": "data",
    "env": {"LOG_LEVEL": "INFO", "DB_HOST": "db.internal", "RETRIES": "3"},
    "labels": {"team": "Data Platform", "cost-center": "cc-42"},
    "annotations": {"owner": "data-platform@example.com"},
    "cpu_request": "500m",
    "memory_limit": "2Gi",
    "finished_job_ttl": 3600,
    "service_account_name": "flows",
}


class NoApiClient:
    """No API call is expected on this path; fail loudly if one happens."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"unexpected Prefect API call: client.{name}")


def run_objects() -> dict[str, Any]:
    flow = Flow(id=uuid.uuid4(), name="etl-pipeline")
    deployment = DeploymentResponse(
        id=uuid.uuid4(),
        name="nightly-load",
        flow_id=flow.id,
        updated=datetime.datetime.now(datetime.timezone.utc),
    )
    flow_run = FlowRun(
        id=uuid.uuid4(), name="happy-cat", flow_id=flow.id, deployment_id=deployment.id
    )
    template = python_worker.KubernetesWorker.get_default_base_job_template()
    work_pool = WorkPool(id=uuid.uuid4(), name="k8s", type="kubernetes", base_job_template=template)
    return {"flow": flow, "deployment": deployment, "flow_run": flow_run, "work_pool": work_pool}


async def configure_once(
    configuration_class: type,
    objects: dict[str, Any],
    client: Any,
    job_variables: dict | None = None,
) -> Any:
    configuration = await configuration_class.from_template_and_values(
        objects["work_pool"].base_job_template,
        job_variables if job_variables is not None else copy.deepcopy(JOB_VARIABLES),
        client=client,
    )
    configuration.prepare_for_flow_run(
        objects["flow_run"],
        objects["deployment"],
        objects["flow"],
        objects["work_pool"],
        "worker-1",
    )
    return configuration


async def time_round(configuration_class: type, objects: dict[str, Any], runs: int) -> float:
    client = NoApiClient()
    # Each run gets its own job variables, as from the API; copying them is not timed.
    inputs = [copy.deepcopy(JOB_VARIABLES) for _ in range(runs)]
    started = time.perf_counter()
    for job_variables in inputs:
        await configure_once(configuration_class, objects, client, job_variables)
    return (time.perf_counter() - started) / runs


async def measure(rounds: int, warmup: int, runs_rust: int, runs_python: int) -> dict[str, Any]:
    objects = run_objects()
    contenders = {
        "prefect-kubernetes-rs": (rust_worker.KubernetesWorkerJobConfiguration, runs_rust),
        "prefect-kubernetes": (python_worker.KubernetesWorkerJobConfiguration, runs_python),
    }
    # Same inputs must give the same Job, or the comparison means nothing.
    ours = await configure_once(
        rust_worker.KubernetesWorkerJobConfiguration, objects, NoApiClient()
    )
    theirs = await configure_once(
        python_worker.KubernetesWorkerJobConfiguration, objects, NoApiClient()
    )
    assert ours.job_manifest == theirs.job_manifest, "the two workers prepared different Jobs"

    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for round_index in range(warmup + rounds):
        for name, (configuration_class, runs) in contenders.items():
            per_run = await time_round(configuration_class, objects, runs)
            if round_index >= warmup:
                samples[name].append(per_run)
    summary = {
        name: {
            "median_ms": statistics.median(values) * 1e3,
            "min_ms": min(values) * 1e3,
            "max_ms": max(values) * 1e3,
            "rounds": len(values),
            "runs_per_round": contenders[name][1],
        }
        for name, values in samples.items()
    }
    ratio = (
        summary["prefect-kubernetes"]["median_ms"] / summary["prefect-kubernetes-rs"]["median_ms"]
    )
    return {"per_run": summary, "speedup": ratio}


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "prefect": version("prefect"),
        "prefect-kubernetes": version("prefect-kubernetes"),
        "prefect-kubernetes-rs": version("prefect-kubernetes-rs"),
    }


def write_results(result: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    latest_path = RESULTS / "latest.json"
    latest = json.loads(latest_path.read_text()) if latest_path.exists() else {}
    latest["configuration_path"] = result
    latest["machine"] = machine()
    latest["measured_at"] = datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds"
    )
    latest_path.write_text(json.dumps(latest, indent=2) + "\n")

    ours = result["per_run"]["prefect-kubernetes-rs"]
    theirs = result["per_run"]["prefect-kubernetes"]
    target = 50
    verdict = "met" if result["speedup"] >= target else "MISSED"
    info = latest["machine"]
    lines = [
        "# Benchmark results",
        "",
        f"Measured {latest['measured_at']} on {info['cpu']} ({info['cores']} cores), Python "
        f"{info['python']}, prefect {info['prefect']}, prefect-kubernetes "
        f"{info['prefect-kubernetes']}. Regenerate with `make bench`.",
        "",
        "## Configuration path per flow run (template + validate + prepare)",
        "",
        "Same template, job variables and flow run for both; same process; median of "
        f"{ours['rounds']} rounds after warm-up, spread = min..max of the round medians.",
        "",
        "| worker | median per run | spread |",
        "|---|---|---|",
        f"| prefect-kubernetes-rs | {ours['median_ms']:.3f} ms | "
        f"{ours['min_ms']:.3f}..{ours['max_ms']:.3f} ms |",
        f"| prefect-kubernetes {info['prefect-kubernetes']} | {theirs['median_ms']:.3f} ms | "
        f"{theirs['min_ms']:.3f}..{theirs['max_ms']:.3f} ms |",
        "",
        f"**{result['speedup']:.0f}x less time per run** (target: at least {target}x, {verdict}).",
        "",
    ]
    (RESULTS / "README.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--runs-rust", type=int, default=2000)
    parser.add_argument("--runs-python", type=int, default=100)
    args = parser.parse_args()
    result = asyncio.run(measure(args.rounds, args.warmup, args.runs_rust, args.runs_python))
    write_results(result)
    print((RESULTS / "README.md").read_text())


if __name__ == "__main__":
    main()
