"""Per-run configuration cost of one worker: template + validate + prepare.

`bench/run_bench.py` runs this once per worker, each with the interpreter of its own venv, all
with the same work pool template (a `kubernetes` pool's default, as a user moving a pool over
has it), the same job variables and the same flow run. Warm-up rounds are discarded; the
result is the median per-run time over the measured rounds, with the spread (min, max of the
round medians), and the Job manifest the worker prepared, so the harness can check that every
worker was given the same work.

    .venv/bin/python bench/config_path.py --worker-module prefect_kubernetes_rs.worker \
        --template template.json          # prints the result; --json-out PATH writes it
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import datetime
import importlib
import json
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

from prefect.client.schemas.objects import Flow, FlowRun, WorkPool
from prefect.client.schemas.responses import DeploymentResponse

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


def run_objects(template: dict[str, Any]) -> dict[str, Any]:
    """The same flow run for every worker: fixed ids and times, so their Jobs can be compared."""
    flow = Flow(id=uuid.UUID("11111111-1111-4111-8111-111111111111"), name="etl-pipeline")
    deployment = DeploymentResponse(
        id=uuid.UUID("22222222-2222-4222-8222-222222222222"),
        name="nightly-load",
        flow_id=flow.id,
        updated=datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
    )
    flow_run = FlowRun(
        id=uuid.UUID("33333333-3333-4333-8333-333333333333"),
        name="happy-cat",
        flow_id=flow.id,
        deployment_id=deployment.id,
    )
    work_pool = WorkPool(
        id=uuid.UUID("44444444-4444-4444-8444-444444444444"),
        name="k8s",
        type="kubernetes",
        base_job_template=template,
    )
    return {"flow": flow, "deployment": deployment, "flow_run": flow_run, "work_pool": work_pool}


async def configure_once(
    configuration_class: type, objects: dict[str, Any], job_variables: dict[str, Any]
) -> Any:
    configuration = await configuration_class.from_template_and_values(
        objects["work_pool"].base_job_template, job_variables, client=NoApiClient()
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
    # Each run gets its own job variables, as from the API; copying them is not timed.
    inputs = [copy.deepcopy(JOB_VARIABLES) for _ in range(runs)]
    started = time.perf_counter()
    for job_variables in inputs:
        await configure_once(configuration_class, objects, job_variables)
    return (time.perf_counter() - started) / runs


def cache_settings_environment(configuration_class: type) -> None:
    """Serialise Prefect's settings once per settings object, as prefect-kubernetes-rs does,
    instead of on every run (Prefect's base configuration does it in `_base_environment`)."""
    from prefect.settings import get_current_settings

    cache: dict[str, Any] = {}

    def base_environment(cls: type) -> dict[str, str]:
        settings = get_current_settings()
        if cache.get("settings") is not settings:
            cache["settings"] = settings
            cache["environment"] = settings.to_environment_variables(exclude_unset=True)
        return dict(cache["environment"])

    configuration_class._base_environment = classmethod(base_environment)  # type: ignore[attr-defined]


async def measure(
    worker_module: str,
    template: dict[str, Any],
    rounds: int,
    warmup: int,
    runs: int,
    cache_settings: bool = False,
) -> dict[str, Any]:
    configuration_class = importlib.import_module(worker_module).KubernetesWorkerJobConfiguration
    if cache_settings:
        cache_settings_environment(configuration_class)
    objects = run_objects(template)
    prepared = await configure_once(configuration_class, objects, copy.deepcopy(JOB_VARIABLES))
    samples = []
    for round_index in range(warmup + rounds):
        per_run = await time_round(configuration_class, objects, runs)
        if round_index >= warmup:
            samples.append(per_run)
    return {
        "median_ms": statistics.median(samples) * 1e3,
        "min_ms": min(samples) * 1e3,
        "max_ms": max(samples) * 1e3,
        "rounds": rounds,
        "runs_per_round": runs,
        "job_manifest": prepared.job_manifest,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker-module", required=True)
    parser.add_argument("--template", required=True, help="work pool base job template (JSON)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--runs", type=int, default=100, help="flow runs per round")
    parser.add_argument("--json-out", help="write the result here instead of printing it")
    parser.add_argument(
        "--cache-settings",
        action="store_true",
        help="serialise Prefect's settings once, as prefect-kubernetes-rs does",
    )
    args = parser.parse_args()
    template = json.loads(Path(args.template).read_text())
    result = asyncio.run(
        measure(
            args.worker_module, template, args.rounds, args.warmup, args.runs, args.cache_settings
        )
    )
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result))
    else:
        print({key: value for key, value in result.items() if key != "job_manifest"})


if __name__ == "__main__":
    main()
