"""End to end, nothing mocked: a real Prefect server, `prefect worker start --type kubernetes-rs`
processes, deployments whose flow runs execute inside the testbed's pods (the fake kubelet runs
`prefect flow-run execute` as a local process) and report their states back to the server.

Scripted cluster behaviour (image pull failures, slow starts, eviction) comes from pod
annotations, which reach the pod through the work pool's `annotations` job variable.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.states import Cancelled, Cancelling
from prefect_support import PrefectServer

from prefect_kubernetes_rs.worker import KubernetesWorker

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[1]
FLOWS = Path(__file__).resolve().parent / "e2e_flows"
SCRIPT = "testbed.prefect.io/"
POOL = "e2e"
# A pending run is cancelled by the server after this long in Cancelling (Prefect 3.9's
# cancellation cleanup), which then asks the worker to kill its infrastructure.
CANCELLING_TIMEOUT_SECONDS = 15


@pytest.fixture(scope="module")
def stack(testbed, tmp_path_factory):
    """A Prefect server on PostgreSQL, as production servers run.

    On SQLite (Prefect's default), creating 20 runs at once while the worker submits the first
    ones and their flows report back made the server answer 503 ("database is locked": a
    deferred write transaction that SQLite refuses at once, without waiting) to ~60 requests
    over a minute, mostly `INSERT INTO flow_run`; one creation then failed after the Prefect
    client's six attempts (62 s of backoff). On PostgreSQL: none. `PKR_E2E_DATABASE=sqlite`
    runs the module on SQLite anyway.
    """
    server = PrefectServer(
        tmp_path_factory.mktemp("prefect"),
        database=os.environ.get("PKR_E2E_DATABASE", "postgresql"),
        server_settings={
            # A retryable database error (answered 503) is logged with its cause in server.log.
            "PREFECT_SERVER_LOG_RETRYABLE_ERRORS": "true",
            "PREFECT_SERVER_SERVICES_CANCELLATION_CLEANUP_CANCELLING_TIMEOUT_SECONDS": str(
                CANCELLING_TIMEOUT_SECONDS
            ),
            "PREFECT_SERVER_SERVICES_CANCELLATION_CLEANUP_LOOP_SECONDS": "1",
        },
    )
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def worker(stack, testbed):
    """The worker of pool `e2e`, created by the worker itself with this package's template."""
    return stack.start_worker(POOL, kubeconfig=testbed.kubeconfig)


@pytest.fixture
def namespace(testbed) -> str:
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    testbed.kubectl("create", "namespace", name)
    return name


def objects(testbed, kind: str, namespace: str, flow_run_id: Any) -> list[dict[str, Any]]:
    """The Jobs or pods of one flow run, found by the label the worker puts on them."""
    result = testbed.kubectl(
        "get", kind, "-n", namespace, "-l", f"prefect.io/flow-run-id={flow_run_id}", "-o", "json"
    )
    return json.loads(result.stdout)["items"]


async def wait_until_gone(
    testbed, kind: str, namespace: str, flow_run_id: Any, timeout: float = 90
) -> None:
    deadline = time.monotonic() + timeout
    while objects(testbed, kind, namespace, flow_run_id):
        assert time.monotonic() < deadline, f"{kind} of flow run {flow_run_id} still there"
        await asyncio.sleep(1)


def job_name(flow_run: Any) -> str:
    """The Job's name, from the infrastructure pid the worker reported for the run."""
    return flow_run.infrastructure_pid.rsplit(":", 1)[1]


def run_lines(output: str, flow_run_id: Any) -> list[str]:
    """The lines of the worker's output that the run's own container printed."""
    return [line for line in output.splitlines() if line.endswith(f"in run {flow_run_id}")]


async def deploy_and_run(
    stack: PrefectServer,
    entrypoint: str,
    pool: str = POOL,
    parameters: dict[str, Any] | None = None,
    **job_variables: Any,
) -> Any:
    deployment_id = await stack.deploy(
        FLOWS, f"flows.py:{entrypoint}", pool, {"image": "local-process"} | job_variables
    )
    return await stack.run_deployment(deployment_id, parameters)


async def final_state(stack: PrefectServer, flow_run: Any, timeout: float = 240) -> Any:
    return (await stack.wait_for_state([flow_run.id], timeout=timeout))[str(flow_run.id)]


async def test_completed_run_streams_its_log_and_carries_labels_annotations_and_environment(
    stack, worker, testbed, namespace
):
    flow_run = await deploy_and_run(
        stack,
        "report_environment",
        parameters={"lines": 3},
        namespace=namespace,
        labels={"team": "data-platform"},
        annotations={"example.com/owner": "data@example.com"},
        env={"GREETING": "hello from the pool"},
    )
    finished = await final_state(stack, flow_run)
    assert finished.state.name == "Completed", finished.state
    # The engine reports Completed before its container has ended; the worker then reads the
    # rest of the log and reports the Job's end.
    worker.wait_for_output(f"Job '{job_name(finished)}' completed")

    output = worker.output()
    run_id = str(flow_run.id)
    assert run_lines(output, run_id) == [
        f"line 1 of 3 in run {run_id}",
        f"line 2 of 3 in run {run_id}",
        f"line 3 of 3 in run {run_id}",
        f"env PREFECT__FLOW_RUN_ID={run_id} in run {run_id}",
        f"env PREFECT_API_URL={stack.api_url} in run {run_id}",
        f"env GREETING=hello from the pool in run {run_id}",
    ]

    (job,) = objects(testbed, "jobs", namespace, run_id)
    assert finished.infrastructure_pid.endswith(f":{namespace}:{job['metadata']['name']}")
    labels = job["metadata"]["labels"]
    assert labels["prefect.io/flow-run-id"] == run_id
    assert labels["prefect.io/flow-run-name"] == flow_run.name
    assert labels["prefect.io/flow-name"] == "report-environment"
    assert labels["team"] == "data-platform"
    assert job["metadata"]["annotations"]["example.com/owner"] == "data@example.com"
    pod_template = job["spec"]["template"]
    assert pod_template["metadata"]["annotations"]["example.com/owner"] == "data@example.com"
    (container,) = [c for c in pod_template["spec"]["containers"] if c["name"] == "prefect-job"]
    env = {entry["name"]: entry.get("value") for entry in container["env"]}
    assert env["PREFECT__FLOW_RUN_ID"] == run_id
    assert env["PREFECT_API_URL"] == stack.api_url
    assert job["status"]["succeeded"] == 1


async def test_flow_that_raises_is_failed_and_its_container_exits_zero(
    stack, worker, testbed, namespace
):
    flow_run = await deploy_and_run(stack, "raise_an_error", namespace=namespace)
    finished = await final_state(stack, flow_run)
    assert finished.state.name == "Failed"
    assert "this flow fails on purpose" in finished.state.message
    # The container exits 0 (the worker proposes nothing; the engine's Failed state stands).
    worker.wait_for_output(f"Job '{job_name(finished)}' completed")
    (job,) = objects(testbed, "jobs", namespace, flow_run.id)
    assert job["status"]["succeeded"] == 1
    assert (await stack.read_flow_run(flow_run.id)).state.name == "Failed"


async def test_container_that_exits_non_zero_before_reporting_is_crashed_with_its_exit_code(
    stack, worker, namespace
):
    flow_run = await deploy_and_run(
        stack, "exit_the_container", parameters={"code": 3}, namespace=namespace
    )
    finished = await final_state(stack, flow_run)
    assert finished.state.name == "Crashed"
    # Whoever saw the exit first says so: the engine's supervisor in the pod ("Process exited
    # with status code: 3") or the worker ("... non-zero status code 3").
    assert re.search(r"status code:? 3\b", finished.state.message), finished.state.message
    assert f"exiting with code 3 in run {flow_run.id}" in worker.output()


async def test_image_that_cannot_be_pulled_crashes_the_run_and_removes_its_job(
    stack, worker, testbed, namespace
):
    # The kubelet retries pulls, so the run waits up to pod_watch_timeout_seconds (5 s here).
    flow_run = await deploy_and_run(
        stack,
        "report_environment",
        namespace=namespace,
        pod_watch_timeout_seconds=5,
        annotations={SCRIPT + "image-pull": "ImagePullBackOff"},
    )
    finished = await final_state(stack, flow_run)
    assert finished.state.name == "Crashed"
    assert "non-zero status code -1" in finished.state.message
    assert objects(testbed, "jobs", namespace, flow_run.id) == []
    output = worker.output()
    assert f"Job '{job_name(finished)}'" in output
    assert re.search(
        r"container 'prefect-job' cannot start: (ErrImagePull|ImagePullBackOff)", output
    )
    # The pod's Events, as Kubernetes wrote them.
    assert "Pod event 'Failed'" in output and "pull access denied" in output


async def test_cancelling_a_running_flow_run_stops_its_pod_and_ttl_removes_the_job(
    stack, worker, testbed, namespace
):
    flow_run = await deploy_and_run(
        stack,
        "sleep_for",
        parameters={"seconds": 300},
        namespace=namespace,
        finished_job_ttl=5,
    )
    await stack.wait_until_running(flow_run.id)
    worker.wait_for_output(f"sleeping for 300.0 s in run {flow_run.id}")
    async with stack.client() as client:
        await client.set_flow_run_state(flow_run.id, Cancelling(message="cancelled by the test"))
    finished = await final_state(stack, flow_run, timeout=60)
    assert finished.state.name == "Cancelled"
    # The engine in the pod stopped the flow and exited; the finished Job is then removed by
    # its TTL, and its pod with it.
    await wait_until_gone(testbed, "jobs", namespace, flow_run.id)
    await wait_until_gone(testbed, "pods", namespace, flow_run.id)
    assert f"woke up in run {flow_run.id}" not in worker.output()


async def test_cancelling_a_run_whose_pod_never_started_kills_its_job_through_the_worker(
    stack, worker, testbed, namespace
):
    flow_run = await deploy_and_run(
        stack,
        "report_environment",
        namespace=namespace,
        annotations={SCRIPT + "start-delay-seconds": "600"},
        pod_watch_timeout_seconds=600,
    )
    started = await stack.wait_for_state(
        [flow_run.id], done=lambda run: bool(run.infrastructure_pid), timeout=120
    )
    job = job_name(started[str(flow_run.id)])
    (pod,) = objects(testbed, "pods", namespace, flow_run.id)
    assert pod["status"]["phase"] == "Pending"
    async with stack.client() as client:
        await client.set_flow_run_state(flow_run.id, Cancelling(message="cancelled by the test"))
    finished = await final_state(stack, flow_run, timeout=CANCELLING_TIMEOUT_SECONDS + 90)
    assert finished.state.name == "Cancelled"
    await wait_until_gone(testbed, "jobs", namespace, flow_run.id)
    await wait_until_gone(testbed, "pods", namespace, flow_run.id)
    worker.wait_for_output(f"Deleted Kubernetes job {job!r} in namespace {namespace!r}")


async def test_evicted_pod_with_backoff_limit_zero_reschedules_the_run_and_no_worker_crashes_it(
    stack, worker, testbed, namespace
):
    """Two workers on the pool, both watching the run's namespace: whichever follows the run
    sees the eviction and the reschedule and reports 0; the other sees a failed Job that
    nobody of its own follows and, after its patience, leaves the rescheduled run alone."""
    from prefect_kubernetes_rs.observer import RESCHEDULE_PATIENCE_SECONDS

    second = stack.start_worker(
        POOL,
        kubeconfig=testbed.kubeconfig,
        extra_env={"PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_NAMESPACES": namespace},
    )
    flow_run = None
    try:
        flow_run = await deploy_and_run(
            stack,
            "sleep_for",
            parameters={"seconds": 300},
            namespace=namespace,
            backoff_limit=0,
            annotations={SCRIPT + "evict-after-seconds": "25"},
        )
        await stack.wait_until_running(flow_run.id)

        async def history() -> list[str]:
            async with stack.client() as client:
                return [state.name for state in await client.read_flow_run_states(flow_run.id)]

        deadline = time.monotonic() + 120
        while True:
            names = await history()
            after_running = names[names.index("Running") + 1 :] if "Running" in names else []
            if any(name in ("Scheduled", "Rescheduled", "AwaitingRetry") for name in after_running):
                break
            assert time.monotonic() < deadline, names
            await asyncio.sleep(1)
        said = "The pod was evicted and the flow run rescheduled itself."
        deadline = time.monotonic() + 60
        while not any(said in each.output() for each in (worker, second)):
            assert time.monotonic() < deadline, "the following worker reported the eviction"
            await asyncio.sleep(1)
        assert any(
            "was evicted: The node was low on resource: memory." in each.output()
            for each in (worker, second)
        )
        # Past the patience of the worker that did not follow the run (and of a next attempt's
        # eviction): nobody crashed it.
        await asyncio.sleep(RESCHEDULE_PATIENCE_SECONDS + 10)
        assert "Crashed" not in await history()
        for each in (worker, second):
            assert f"Reported flow run '{flow_run.id}' as crashed" not in each.output()
    finally:
        stack.stop_worker(second)
        # Every new attempt would be evicted again: end the run and its Jobs here.
        if flow_run is not None:
            async with stack.client() as client:
                await client.set_flow_run_state(flow_run.id, Cancelled(), force=True)
        testbed.kubectl("delete", "jobs", "-n", namespace, "--all", "--wait=false")


def with_node_selector_variable(template: dict[str, Any]) -> dict[str, Any]:
    """A template whose deployments may pick a node group: many pools add such a variable."""
    template = copy.deepcopy(template)
    template["variables"]["properties"]["node_selector"] = {
        "title": "Node selector",
        "type": "object",
        "additionalProperties": {"type": "string"},
        "default": {},
    }
    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    pod["nodeSelector"] = "{{ node_selector }}"
    return template


async def test_pods_that_wait_for_a_node_or_an_image_complete_and_pods_that_cannot_start_crash(
    stack, testbed, namespace
):
    """The pod-start rules end to end, four runs at once on a pool whose deployments choose a
    node group (the rest of the variables at their defaults, so 60 s to start):
    - a node group with no node until an autoscaler adds one 90 s later: Completed;
    - an image whose pull fails twice (the kubelet retries with back-off): Completed;
    - an invalid image name: Crashed at once, although its timeout is 10 minutes;
    - a node group no node will ever join: Crashed after its 20 s, with the kube-scheduler's
      words in the worker's output."""
    template = with_node_selector_variable(KubernetesWorker.get_default_base_job_template())
    pool = f"node-groups-{uuid.uuid4().hex[:6]}"
    await stack.create_pool(pool, template)
    pool_worker = stack.start_worker(pool, kubeconfig=testbed.kubeconfig)
    try:
        node_group = {"testbed.prefect.io/pool": f"on-demand-{uuid.uuid4().hex[:8]}"}
        runs = {
            "autoscaled": await deploy_and_run(
                stack, "numbered_lines", pool=pool, namespace=namespace,
                node_selector=node_group, annotations={SCRIPT + "scale-up-seconds": "90"},
            ),
            "pulled on the third try": await deploy_and_run(
                stack, "numbered_lines", pool=pool, namespace=namespace,
                annotations={SCRIPT + "image-pull-failures": "2"},
            ),
            "invalid image": await deploy_and_run(
                stack, "numbered_lines", pool=pool, namespace=namespace,
                pod_watch_timeout_seconds=600, annotations={SCRIPT + "invalid-image": "true"},
            ),
            "no node": await deploy_and_run(
                stack, "numbered_lines", pool=pool, namespace=namespace,
                pod_watch_timeout_seconds=20,
                node_selector={"testbed.prefect.io/pool": "no-such-pool"},
            ),
        }  # fmt: skip
        finished = await stack.wait_for_state([run.id for run in runs.values()], timeout=300)
        states = {name: finished[str(run.id)].state for name, run in runs.items()}
        assert {name: state.name for name, state in states.items()} == {
            "autoscaled": "Completed",
            "pulled on the third try": "Completed",
            "invalid image": "Crashed",
            "no node": "Crashed",
        }, states
        for name in ("autoscaled", "pulled on the third try"):
            # The engine reports Completed before its container ends; then the worker reads
            # the rest of the log and reports the Job's end.
            pool_worker.wait_for_output(f"Job '{job_name(finished[str(runs[name].id)])}' completed")
        output = pool_worker.output()
        for name in ("autoscaled", "pulled on the third try"):
            assert len(run_lines(output, runs[name].id)) == 5, name
        assert "a node is being added for pod" in output
        assert "container 'prefect-job' cannot start: InvalidImageName" in output
        assert (
            "did not start within 20 s (pod_watch_timeout_seconds); no node can take it" in output
        )
        assert re.search(
            r"0/\d+ nodes are available: \d+ node\(s\) didn't match Pod's node affinity", output
        )
        for name in ("invalid image", "no node"):
            await wait_until_gone(testbed, "jobs", namespace, runs[name].id)
        # While a pod waited, Prefect showed why (as prefect-kubernetes 0.8 does), once per run.
        async with stack.client() as client:
            history = {
                name: await client.read_flow_run_states(run.id) for name, run in runs.items()
            }
        for name in ("autoscaled", "no node"):
            names = [state.name for state in history[name]]
            (waiting,) = [state for state in history[name] if state.name == "InfrastructurePending"]
            assert waiting.message.startswith("Kubernetes pod is pending: Unschedulable: "), name
            assert names.index("Pending") < names.index("InfrastructurePending"), names
        autoscaled = [state.name for state in history["autoscaled"]]
        assert autoscaled.index("InfrastructurePending") < autoscaled.index("Running")
    finally:
        stack.stop_worker(pool_worker)


async def test_a_deployments_manifest_patches_reach_its_pod(stack, testbed, namespace):
    """A pool whose template declares `job_manifest_patches` (the README's variable, pasted as
    is): Prefect's server accepts a deployment's RFC 6902 operations against its schema, they
    reach the Job and the pod the scheduler binds, and the run completes; a deployment whose
    operation cannot apply never gets a Job and its run says which operation and why."""
    from test_configuration import readme_patches_variable

    template = KubernetesWorker.get_default_base_job_template()
    template["variables"]["properties"]["job_manifest_patches"] = readme_patches_variable()
    pool = f"patched-{uuid.uuid4().hex[:6]}"
    await stack.create_pool(pool, template)
    pool_worker = stack.start_worker(pool, kubeconfig=testbed.kubeconfig)
    toleration = {"key": "example.com/dedicated", "operator": "Exists", "effect": "NoSchedule"}
    try:
        patched = await deploy_and_run(
            stack, "numbered_lines", pool=pool, namespace=namespace,
            job_manifest_patches=[
                {"op": "add", "path": "/spec/template/spec/tolerations", "value": [toleration]},
                {"op": "add", "path": "/spec/template/spec/nodeSelector",
                 "value": {"kubernetes.io/os": "linux"}},
                {"op": "add", "path": "/spec/activeDeadlineSeconds", "value": 600},
            ],
        )  # fmt: skip
        broken = await deploy_and_run(
            stack, "numbered_lines", pool=pool, namespace=namespace,
            job_manifest_patches=[{"op": "remove", "path": "/spec/template/spec/volumes"}],
        )  # fmt: skip
        finished = await stack.wait_for_state([patched.id, broken.id], timeout=240)
        assert finished[str(patched.id)].state.name == "Completed", finished[str(patched.id)]
        pool_worker.wait_for_output(f"Job '{job_name(finished[str(patched.id)])}' completed")
        (job,) = objects(testbed, "jobs", namespace, patched.id)
        assert job["spec"]["activeDeadlineSeconds"] == 600
        (pod,) = objects(testbed, "pods", namespace, patched.id)
        assert pod["spec"]["tolerations"][0] == toleration
        assert pod["spec"]["nodeSelector"] == {"kubernetes.io/os": "linux"}
        assert pod["spec"]["nodeName"]
        assert len(run_lines(pool_worker.output(), patched.id)) == 5

        state = finished[str(broken.id)].state
        assert state.name == "Crashed", state
        assert (
            "job_manifest_patches[0] (remove /spec/template/spec/volumes): the rendered Job "
            "manifest has nothing at that path" in state.message
        ), state.message
        assert objects(testbed, "jobs", namespace, broken.id) == []
    finally:
        stack.stop_worker(pool_worker)


async def test_a_worker_whose_connections_go_silent_ends_the_run_with_every_line_once(
    stack, testbed, namespace
):
    """A load balancer forgets the worker's connections to the API server while a flow is quiet:
    every packet of them is dropped, without a reset. TCP keepalive (default on) makes the
    worker's kernel give them up after 66 s; the worker reconnects, resumes its watches and the
    log stream, and reports the Job's end with each line of the flow exactly once."""
    from testbed_support import SilencedConnections, connections_to, local_ports

    pool = f"silent-{uuid.uuid4().hex[:6]}"
    await stack.create_pool(pool, KubernetesWorker.get_default_base_job_template())
    pool_worker = stack.start_worker(pool, kubeconfig=testbed.kubeconfig)
    port = int(testbed.env["PKR_APISERVER_URL"].rsplit(":", 1)[1])
    try:
        flow_run = await deploy_and_run(
            stack, "lines_around_a_pause", pool=pool, namespace=namespace,
            parameters={"pause": 20},
        )  # fmt: skip
        pool_worker.wait_for_output(f"before 3 in run {flow_run.id}", timeout=120)
        silenced = local_ports(connections_to(port, pool_worker.process.pid))
        assert silenced, "the worker's watches and log stream were seen"
        with SilencedConnections(port, silenced):
            finished = await final_state(stack, flow_run)
            assert finished.state.name == "Completed", finished.state
            pool_worker.wait_for_output(f"Job '{job_name(finished)}' completed", timeout=150)
        assert run_lines(pool_worker.output(), flow_run.id) == [
            f"{part} {n} in run {flow_run.id}" for part in ("before", "after") for n in (1, 2, 3)
        ]
    finally:
        stack.stop_worker(pool_worker)


def kubernetes_pool_template() -> dict[str, Any]:
    """prefect-kubernetes's own default template, as a user copying a `kubernetes` pool has it."""
    from prefect_kubernetes.worker import KubernetesWorker as PythonKubernetesWorker

    return PythonKubernetesWorker.get_default_base_job_template()


def with_sidecar_volume_and_resources(template: dict[str, Any]) -> dict[str, Any]:
    """A customised `kubernetes` template: a log-shipping sidecar, a shared volume, resources."""
    template = copy.deepcopy(template)
    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    (flow_container,) = pod["containers"]
    flow_container["volumeMounts"] = [{"name": "scratch", "mountPath": "/scratch"}]
    flow_container["resources"] = {
        "requests": {"cpu": "100m", "memory": "128Mi"},
        "limits": {"cpu": "1", "memory": "1Gi"},
    }
    # No command: the testbed runs it as a sidecar until the flow's container ends.
    pod["containers"].append(
        {
            "name": "log-shipper",
            "image": "example.com/shipper:1",
            "volumeMounts": [{"name": "scratch", "mountPath": "/scratch", "readOnly": True}],
        }
    )
    pod["volumes"] = [{"name": "scratch", "emptyDir": {}}]
    return template


@pytest.mark.parametrize(
    "template_name", ["prefect-kubernetes default", "sidecar, volume and resources"]
)
async def test_pool_with_a_template_copied_from_a_kubernetes_pool_runs_flows_unchanged(
    stack, testbed, namespace, template_name
):
    template = kubernetes_pool_template()
    if template_name == "sidecar, volume and resources":
        template = with_sidecar_volume_and_resources(template)
    pool = f"copied-{uuid.uuid4().hex[:6]}"
    await stack.create_pool(pool, template)
    pool_worker = stack.start_worker(pool, kubeconfig=testbed.kubeconfig)
    try:
        flow_run = await deploy_and_run(
            stack, "numbered_lines", pool=pool, parameters={"count": 3}, namespace=namespace
        )
        finished = await final_state(stack, flow_run)
        assert finished.state.name == "Completed", finished.state
        pool_worker.wait_for_output(f"Job '{job_name(finished)}' completed")
        assert len(run_lines(pool_worker.output(), flow_run.id)) == 3
        (job,) = objects(testbed, "jobs", namespace, flow_run.id)
        pod_spec = job["spec"]["template"]["spec"]
        assert pod_spec == pod_spec | (
            {"volumes": [{"name": "scratch", "emptyDir": {}}]}
            if template_name != "prefect-kubernetes default"
            else {}
        )
        names = [container["name"] for container in pod_spec["containers"]]
        expected = ["prefect-job"] + (
            ["log-shipper"] if template_name != "prefect-kubernetes default" else []
        )
        assert names == expected
    finally:
        stack.stop_worker(pool_worker)


HUGE_TIMEOUT = 10_000_000_000_000_000_000  # once panicked the core: overflow of an Instant


async def test_an_out_of_range_timeout_is_refused_by_the_server_naming_the_variable(stack):
    """Our pool's schema bounds the timeouts, so Prefect's server refuses the deployment."""
    from prefect.exceptions import PrefectHTTPStatusError

    with pytest.raises(PrefectHTTPStatusError) as refused:
        await stack.deploy(
            FLOWS, "flows.py:numbered_lines", POOL, {"pod_watch_timeout_seconds": HUGE_TIMEOUT}
        )
    assert refused.value.response.status_code == 422
    assert "pod_watch_timeout_seconds" in refused.value.response.text


async def test_an_out_of_range_timeout_in_a_copied_pool_fails_the_run_naming_it(
    stack, testbed, namespace
):
    """A pool copied from a `kubernetes` pool has no bounds: the worker refuses the run with
    the variable's name, and no panic reaches its output."""
    pool = f"unbounded-{uuid.uuid4().hex[:6]}"
    await stack.create_pool(pool, kubernetes_pool_template())
    pool_worker = stack.start_worker(pool, kubeconfig=testbed.kubeconfig)
    try:
        flow_run = await deploy_and_run(
            stack, "numbered_lines", pool=pool, namespace=namespace,
            pod_watch_timeout_seconds=HUGE_TIMEOUT,
        )  # fmt: skip
        pool_worker.wait_for_output("pod_watch_timeout_seconds")
        assert "panicked" not in pool_worker.output()
        assert objects(testbed, "jobs", namespace, flow_run.id) == [], "no Job was created"
    finally:
        stack.stop_worker(pool_worker)


async def test_cluster_config_block_reaches_the_cluster_without_any_kubeconfig_in_the_worker(
    stack, testbed, namespace
):
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect_kubernetes.credentials import KubernetesClusterConfig

    kubeconfig = testbed.kubeconfig_dict()
    with temporary_settings({PREFECT_API_URL: stack.api_url}):
        block_id = await KubernetesClusterConfig(
            config=kubeconfig, context_name=kubeconfig["current-context"]
        ).save(f"testbed-{uuid.uuid4().hex[:6]}")

    pool = f"block-{uuid.uuid4().hex[:6]}"
    await stack.create_pool(pool, KubernetesWorker.get_default_base_job_template())
    # No KUBECONFIG, no ~/.kube, not in a pod: only the block can say where the cluster is.
    pool_worker = stack.start_worker(pool, kubeconfig=None)
    try:
        flow_run = await deploy_and_run(
            stack,
            "numbered_lines",
            pool=pool,
            parameters={"count": 2},
            namespace=namespace,
            cluster_config={"$ref": {"block_document_id": str(block_id)}},
        )
        finished = await final_state(stack, flow_run)
        assert finished.state.name == "Completed", finished.state
        pool_worker.wait_for_output(f"Job '{job_name(finished)}' completed")
        assert len(run_lines(pool_worker.output(), flow_run.id)) == 2
        assert len(objects(testbed, "jobs", namespace, flow_run.id)) == 1
    finally:
        stack.stop_worker(pool_worker)


async def test_twenty_runs_at_once_all_complete_each_with_its_own_log_and_one_job(
    stack, worker, testbed, namespace
):
    deployment_id = await stack.deploy(
        FLOWS,
        "flows.py:numbered_lines",
        POOL,
        {"image": "local-process", "namespace": namespace, "finished_job_ttl": 30},
    )
    flow_runs = await asyncio.gather(
        *(stack.run_deployment(deployment_id, {"count": 4}) for _ in range(20))
    )
    finished = await stack.wait_for_state([run.id for run in flow_runs], timeout=420)
    assert sorted(run.state.name for run in finished.values()) == ["Completed"] * 20

    for run in finished.values():
        worker.wait_for_output(f"Job '{job_name(run)}' completed")
    output = worker.output()
    jobs = json.loads(testbed.kubectl("get", "jobs", "-n", namespace, "-o", "json").stdout)
    jobs_per_run: dict[str, int] = {}
    for job in jobs["items"]:
        run_id = job["metadata"]["labels"]["prefect.io/flow-run-id"]
        jobs_per_run[run_id] = jobs_per_run.get(run_id, 0) + 1
    for flow_run in flow_runs:
        assert run_lines(output, flow_run.id) == [
            f"line {n} of 4 in run {flow_run.id}" for n in range(1, 5)
        ]
        # A Job already removed by its TTL counts as 0 here; never more than one.
        assert jobs_per_run.get(str(flow_run.id), 0) <= 1
        assert finished[str(flow_run.id)].infrastructure_pid
    pids = [finished[str(run.id)].infrastructure_pid for run in flow_runs]
    assert len(set(pids)) == 20

    deadline = time.monotonic() + 120
    while json.loads(testbed.kubectl("get", "jobs", "-n", namespace, "-o", "json").stdout)["items"]:
        assert time.monotonic() < deadline, "Jobs left after their TTL"
        await asyncio.sleep(2)


async def test_worker_killed_mid_run_and_restarted_follows_the_run_again_to_its_end_in_one_job(
    stack, testbed, namespace
):
    """SIGKILL, no teardown: the Job runs on; the next worker does not start it again but
    follows it again (the lines written after its start, the end), and the API-key Secret is
    reused, not added to."""
    pool = f"restart-{uuid.uuid4().hex[:6]}"
    await stack.create_pool(pool, KubernetesWorker.get_default_base_job_template())
    with_api_key_secret = {
        "PREFECT_API_KEY": "pnu_" + uuid.uuid4().hex,
        "PREFECT_INTEGRATIONS_KUBERNETES_WORKER_CREATE_SECRET_FOR_API_KEY": "true",
    }
    first = stack.start_worker(pool, kubeconfig=testbed.kubeconfig, extra_env=with_api_key_secret)
    flow_run = await deploy_and_run(
        stack, "lines_around_a_pause", pool=pool, parameters={"pause": 30}, namespace=namespace
    )
    first.wait_for_output(f"before 3 in run {flow_run.id}", timeout=120)
    os.killpg(first.process.pid, signal.SIGKILL)
    first.process.wait()

    second = stack.start_worker(pool, kubeconfig=testbed.kubeconfig, extra_env=with_api_key_secret)
    try:
        finished = await final_state(stack, flow_run, timeout=180)
        assert finished.state.name == "Completed", finished.state
        (job,) = objects(testbed, "jobs", namespace, flow_run.id)
        name = job["metadata"]["name"]
        output = second.wait_for_any_output([f"Job '{name}' completed"])
        output = second.output()
        assert f"Following Kubernetes job {name!r} in namespace {namespace!r} again" in output
        # The lines written after the second worker started, once; none of the earlier ones.
        assert run_lines(output, flow_run.id) == [
            f"after {n} in run {flow_run.id}" for n in (1, 2, 3)
        ]
        assert f"submitting flow run '{flow_run.id}'" not in output

        # The restarted worker (another name) runs the pool's next flow with the same Secret.
        next_run = await deploy_and_run(
            stack, "numbered_lines", pool=pool, parameters={"count": 1}, namespace=namespace
        )
        assert (await final_state(stack, next_run)).state.name == "Completed"
        listed = testbed.kubectl("get", "secrets", "-n", namespace, "-o", "json").stdout
        secrets = json.loads(listed)
        api_key_secrets = [
            secret["metadata"]["name"]
            for secret in secrets["items"]
            if secret["metadata"]["name"].startswith(f"prefect-{pool}-api-key-")
        ]
        assert len(api_key_secrets) == 1, api_key_secrets
    finally:
        stack.stop_worker(second)


def scripted(**keys: Any) -> dict[str, str]:
    """Annotations that make the fake kubelet play a container instead of running it."""
    return {SCRIPT + "mode": "script"} | {
        SCRIPT + key.replace("_", "-"): str(value) for key, value in keys.items()
    }


async def flow_run_log(stack: PrefectServer, flow_run_id: Any) -> list[str]:
    """The messages of the flow run's logs in Prefect, oldest first."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async with stack.client() as client:
        logs = await client.read_logs(
            LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200
        )
    return [log.message for log in logs]


async def job_condition(testbed, namespace: str, name: str, timeout: float = 90) -> str:
    """Wait until the Job has a Complete or Failed condition; returns its type."""
    deadline = time.monotonic() + timeout
    while True:
        job = json.loads(testbed.kubectl("get", "job", name, "-n", namespace, "-o", "json").stdout)
        for condition in job.get("status", {}).get("conditions") or []:
            if condition["type"] in ("Complete", "Failed") and condition["status"] == "True":
                return condition["type"]
        assert time.monotonic() < deadline, f"Job {name} not finished: {job.get('status')}"
        await asyncio.sleep(1)


async def start_a_run_and_lose_its_worker(
    stack: PrefectServer, testbed, namespace: str, pool: str, annotations: dict[str, str]
) -> tuple[Any, str]:
    """A run on `pool` whose worker is SIGKILLed once the run's Job exists; the run and its Job."""
    await stack.create_pool(pool, KubernetesWorker.get_default_base_job_template())
    first = stack.start_worker(pool, kubeconfig=testbed.kubeconfig)
    flow_run = await deploy_and_run(
        stack, "report_environment", pool=pool, namespace=namespace, annotations=annotations
    )
    started = await stack.wait_for_state(
        [flow_run.id], done=lambda run: bool(run.infrastructure_pid), timeout=120
    )
    os.killpg(first.process.pid, signal.SIGKILL)
    first.process.wait()
    return flow_run, job_name(started[str(flow_run.id)])


async def test_a_run_oom_killed_while_no_worker_runs_is_crashed_by_the_next_worker_with_its_log(
    stack, testbed, namespace
):
    pool = f"oom-{uuid.uuid4().hex[:6]}"
    flow_run, job = await start_a_run_and_lose_its_worker(
        stack, testbed, namespace, pool, scripted(run_seconds=5, log_lines=40, oom="true")
    )
    assert await job_condition(testbed, namespace, job) == "Failed"

    second = stack.start_worker(pool, kubeconfig=testbed.kubeconfig)
    try:
        # Within a minute of the new worker's start (30 s of it are the reschedule patience).
        finished = await final_state(stack, flow_run, timeout=60)
        assert finished.state.name == "Crashed", finished.state
        message = finished.state.message
        assert "status code 137 (OOMKilled)" in message, message
        assert f"Kubernetes Job {job!r} failed (BackoffLimitExceeded)" in message, message
        log = await flow_run_log(stack, flow_run.id)
        header = f"The last 40 lines of the flow container of Kubernetes job {job!r}:"
        assert header in log, log
        assert log[log.index(header) + 1 :][:40] == [f"line {n}" for n in range(1, 41)]
        assert len(objects(testbed, "jobs", namespace, flow_run.id)) == 1
    finally:
        stack.stop_worker(second)


async def test_a_run_whose_job_was_deleted_while_no_worker_ran_is_crashed_by_the_next_worker(
    stack, testbed, namespace
):
    pool = f"deleted-{uuid.uuid4().hex[:6]}"
    flow_run, job = await start_a_run_and_lose_its_worker(
        stack, testbed, namespace, pool, scripted(run_seconds=600)
    )
    testbed.kubectl("delete", "job", job, "-n", namespace, "--wait=true")

    second = stack.start_worker(pool, kubeconfig=testbed.kubeconfig)
    try:
        finished = await final_state(stack, flow_run, timeout=60)
        assert finished.state.name == "Crashed", finished.state
        assert f"Kubernetes Job {job!r} was deleted before it succeeded (Job deleted)" in (
            finished.state.message
        )
    finally:
        stack.stop_worker(second)


async def test_a_worker_of_another_pool_that_watches_the_namespace_crashes_a_run_nobody_follows(
    stack, testbed, namespace
):
    """No restart: a worker already running sees, on the watches it has anyway, the Job of a
    run nobody follows fail (here: a worker of another pool told to watch the namespace)."""
    watcher_pool = f"watcher-{uuid.uuid4().hex[:6]}"
    await stack.create_pool(watcher_pool, KubernetesWorker.get_default_base_job_template())
    watcher = stack.start_worker(
        watcher_pool,
        kubeconfig=testbed.kubeconfig,
        extra_env={"PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_NAMESPACES": namespace},
    )
    try:
        flow_run, job = await start_a_run_and_lose_its_worker(
            stack,
            testbed,
            namespace,
            f"lost-{uuid.uuid4().hex[:6]}",
            scripted(run_seconds=10, log_lines=3, exit_code=3),
        )
        finished = await final_state(stack, flow_run, timeout=90)
        assert finished.state.name == "Crashed", finished.state
        assert "status code 3" in finished.state.message, finished.state.message
        assert f"Reported flow run '{flow_run.id}' as crashed" in watcher.output()
        log = await flow_run_log(stack, flow_run.id)
        assert [line for line in log if line.startswith("line ")] == ["line 1", "line 2", "line 3"]
    finally:
        stack.stop_worker(watcher)


async def test_prefect_answering_503_to_steps_a_run_can_do_without_crashes_no_run(
    stack, testbed, namespace, tmp_path
):
    """Under a burst Prefect's API answers 503 until the client gives up (the base worker's
    flow-run label update then crashed runs before their Job existed). Here the worker reaches
    Prefect through a proxy that answers 503 to every label update, to the first Pending
    proposals and to the first pid write: every run gets its one Job, its pid, and completes."""
    from testbed_support import fault_proxy_in_front_of

    pool = f"unavailable-{uuid.uuid4().hex[:6]}"
    await stack.create_pool(pool, KubernetesWorker.get_default_base_job_template())
    # The flows reach Prefect directly: every request at the proxy is the worker's.
    variables = {"image": "local-process", "namespace": namespace}
    variables["env"] = {"PREFECT_API_URL": stack.api_url}
    deployment_id = await stack.deploy(FLOWS, "flows.py:numbered_lines", pool, variables)
    flow_runs = [await stack.run_deployment(deployment_id, {"count": 1}) for _ in range(3)]
    origin = stack.api_url.removesuffix("/api")
    with fault_proxy_in_front_of(origin, tmp_path / "prefect-proxy.log") as proxy:
        labels, pending, pid = proxy.add_rules(
            {"path": "/flow_runs/[^/]+/labels$", "action": "status", "code": 503},
            # Two answers per proposal (the client's first try and its one retry), for the first
            # two proposals.
            {"path": "/flow_runs/[^/]+/set_state$", "action": "status", "code": 503, "times": 4},
            # The first pid write (PATCH of the flow run), tried and retried by the client.
            # The first pid writes (PATCH of the flow run): 4 answers among 3 runs' writes of two
            # tries each, so at least one write fails both of the client's tries.
            {"verb": "patch", "path": "/flow_runs/[^/]+$", "action": "status", "code": 503,
             "times": 4},
        )  # fmt: skip
        worker = stack.start_worker(
            pool,
            kubeconfig=testbed.kubeconfig,
            extra_env={"PREFECT_API_URL": proxy.url + "/api", "PREFECT_CLIENT_MAX_RETRIES": "1"},
        )
        try:
            # A pid write asked again after 5 s may land after a short run's end.
            finished = await stack.wait_for_state(
                [run.id for run in flow_runs],
                done=lambda run: run.state.is_final() and bool(run.infrastructure_pid),
                timeout=240,
            )
            assert sorted(run.state.name for run in finished.values()) == ["Completed"] * 3
            # Each label update was tried twice (the client's one retry), then given up.
            assert proxy.applied([labels, pending, pid]) == [6, 4, 4]
            for flow_run in flow_runs:
                assert len(objects(testbed, "jobs", namespace, flow_run.id)) == 1
                (job,) = objects(testbed, "jobs", namespace, flow_run.id)
                pid_of_run = finished[str(flow_run.id)].infrastructure_pid
                assert pid_of_run.split(":")[-2:] == [namespace, job["metadata"]["name"]]
            output = worker.output()
            assert output.count("goes on without the labels") == 3
            assert "proposing Pending for flow run" in output
            assert "writing infrastructure_pid of flow run" in output
            assert "Failed to submit flow run" not in output
        finally:
            stack.stop_worker(worker)


async def pod_events_since(stack: PrefectServer, since: datetime.datetime) -> list[dict[str, Any]]:
    """The `prefect.kubernetes.pod.*` events in Prefect's event feed since `since`."""
    body = {
        "filter": {
            "occurred": {"since": since.isoformat()},
            "event": {"prefix": ["prefect.kubernetes.pod."]},
        },
        "limit": 50,
    }
    async with stack.client() as client:
        response = await client._client.post("/events/filter", json=body)
        response.raise_for_status()
        page = response.json()
        events = list(page["events"])
        while page.get("next_page"):
            response = await client._client.get(page["next_page"])
            response.raise_for_status()
            page = response.json()
            events.extend(page["events"])
    return events


async def test_two_workers_on_one_pool_run_crash_and_say_each_run_and_pod_phase_once(
    stack, testbed, namespace
):
    """Both workers watch the namespace: each follows its own runs and sees the other's as runs
    nobody here follows. Still: one Job per run, one Crashed state per crashed run, one event
    per pod phase in Prefect's feed (the same deterministic id from whoever saw it)."""
    pool = f"pair-{uuid.uuid4().hex[:6]}"
    await stack.create_pool(pool, KubernetesWorker.get_default_base_job_template())
    since = datetime.datetime.now(datetime.timezone.utc)
    workers = [stack.start_worker(pool, kubeconfig=testbed.kubeconfig) for _ in range(2)]
    try:
        variables = {"image": "local-process", "namespace": namespace}
        completing = await stack.deploy(FLOWS, "flows.py:numbered_lines", pool, variables)
        crashing = await stack.deploy(FLOWS, "flows.py:exit_the_container", pool, variables)
        failing = await stack.deploy(FLOWS, "flows.py:raise_an_error", pool, variables)
        runs = [(completing, {"count": 2}, "Completed")] * 6 + [
            (crashing, {"code": 3}, "Crashed"),
            (crashing, {"code": 3}, "Crashed"),
            (failing, {}, "Failed"),
            (failing, {}, "Failed"),
        ]
        flow_runs = await asyncio.gather(
            *(stack.run_deployment(deployment, parameters) for deployment, parameters, _ in runs)
        )
        expected = {str(run.id): state for run, (_, _, state) in zip(flow_runs, runs, strict=True)}
        finished = await stack.wait_for_state(expected, timeout=300)
        assert {run_id: run.state.name for run_id, run in finished.items()} == expected
        async with stack.client() as client:
            for run_id, state in expected.items():
                names = [s.name for s in await client.read_flow_run_states(UUID(run_id))]
                assert names.count("Crashed") == (1 if state == "Crashed" else 0), names
        for run in finished.values():
            name = job_name(run)
            ran_it = [w for w in workers if f"Kubernetes job {name!r} created" in w.output()]
            assert len(ran_it) == 1, f"{name} created by {len(ran_it)} workers"
            assert len(objects(testbed, "jobs", namespace, run.id)) == 1
        outputs = "".join(worker.output() for worker in workers)
        for flow_run, (_, _, state) in zip(flow_runs, runs, strict=True):
            if state == "Completed":
                assert run_lines(outputs, flow_run.id) == [
                    f"line {n} of 2 in run {flow_run.id}" for n in (1, 2)
                ]

        # Every pod's phases, each once (the feed is written a moment after the events).
        pods = {
            pod["metadata"]["uid"]: pod
            for run_id in expected
            for pod in objects(testbed, "pods", namespace, run_id)
        }
        deadline = time.monotonic() + 60
        while True:
            events = [
                event
                for event in await pod_events_since(stack, since)
                if event["resource"]["prefect.resource.id"].removeprefix("prefect.kubernetes.pod.")
                in pods
            ]
            said = [(e["resource"]["prefect.resource.id"], e["event"]) for e in events]
            ended = {pod_id for pod_id, name in said if name.endswith(("succeeded", "failed"))}
            if len(ended) == len(pods) or time.monotonic() > deadline:
                break
            await asyncio.sleep(2)
        assert len(ended) == len(pods), said
        assert sorted(said) == sorted(set(said)), "a pod phase was said twice"
    finally:
        for worker in workers:
            stack.stop_worker(worker)


def test_demo_runs_succeed_fail_and_crash_as_they_should():
    """`make demo`, as a user runs it (its own testbed and Prefect server)."""
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


# A worker's start, counted at the fault proxy: the cluster's uid, the namespace's two watches,
# the runs in flight examined by label (a Job list and a pod list per batch of 50), and a run
# followed again. What it may not cost: anything that grows with the namespace's history.
START_REQUESTS_BOUND = 8


async def test_thousands_of_old_jobs_cost_a_worker_start_and_a_run_nothing_more(stack, testbed):
    """2,000 Prefect Jobs in the pool's namespace (a busy namespace's history): a worker that
    starts (one run in flight to follow again) and then runs a flow makes exactly the API
    requests it makes in a namespace holding only the followed Job. Nothing lists the history:
    the watches start from now, runs in flight are read by label."""
    from prefect.states import Running
    from testbed_support import api_requests, create_prefect_job_history

    async def start_and_run(history: int) -> tuple[dict, dict]:
        namespace = f"history-{history}-{uuid.uuid4().hex[:6]}"
        testbed.kubectl("create", "namespace", namespace)
        template = copy.deepcopy(KubernetesWorker.get_default_base_job_template())
        template["variables"]["properties"]["namespace"]["default"] = namespace
        pool = f"history-{history}-{uuid.uuid4().hex[:6]}"
        await stack.create_pool(pool, template)
        # A run in flight whose worker is gone, on the Job `old-0` (it never starts a pod; the
        # long pod timeout keeps the follower quiet while the counts are taken).
        deployment_id = await stack.deploy(
            FLOWS, "flows.py:numbered_lines", pool,
            {"image": "local-process", "pod_watch_timeout_seconds": 600},
        )  # fmt: skip
        async with stack.client() as client:
            in_flight = await client.create_flow_run_from_deployment(deployment_id)
            await client.set_flow_run_state(in_flight.id, Running(), force=True)
            await client.update_flow_run(in_flight.id, infrastructure_pid=f"{namespace}:old-0")
        await create_prefect_job_history(testbed, namespace, history, first_run_id=in_flight.id)

        testbed.proxy("POST", "/counts/reset")
        worker = stack.start_worker(pool, kubeconfig=testbed.proxy_kubeconfig)
        try:
            worker.wait_for_output("Following Kubernetes job 'old-0'")
            await asyncio.sleep(2)  # anything the start still had to ask
            start = api_requests(testbed)
            testbed.proxy("POST", "/counts/reset")
            flow_run = await deploy_and_run(
                stack, "numbered_lines", pool=pool, parameters={"count": 2}
            )
            assert (await final_state(stack, flow_run)).state.name == "Completed"
            worker.wait_for_output(f"Job '{job_name(await final_state(stack, flow_run))}' "
                                   "completed")  # fmt: skip
            run = api_requests(testbed)
        finally:
            stack.stop_worker(worker)
        return start, run

    quiet_start, quiet_run = await start_and_run(1)
    crowded_start, crowded_run = await start_and_run(2000)
    assert crowded_start == quiet_start
    assert crowded_run == quiet_run
    assert sum(sum(verbs.values()) for verbs in crowded_start.values()) <= START_REQUESTS_BOUND, (
        crowded_start
    )
