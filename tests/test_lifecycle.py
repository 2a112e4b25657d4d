"""The Job lifecycle against the real control plane: `KubernetesWorker.run()` and
`kill_infrastructure()` driven as Prefect drives them, without a Prefect server in the loop.

Pods run in the fake kubelet: exec mode runs the container's command as a local process,
scripted mode (pod annotations `testbed.prefect.io/*`) plays failures a cluster produces.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
import re
import time
import uuid
from typing import Any

import pytest
from prefect.client.schemas.objects import FlowRun
from prefect.exceptions import InfrastructureNotAvailable, InfrastructureNotFound
from testbed_support import SilencedConnections, connections_to, local_ports

from prefect_kubernetes_rs.worker import (
    KubernetesWorker,
    KubernetesWorkerJobConfiguration,
)

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

TEMPLATE = KubernetesWorker.get_default_base_job_template()
SCRIPT = "testbed.prefect.io/"


class TaskStatus:
    def __init__(self) -> None:
        self.pid: str | None = None

    def started(self, value: Any = None) -> None:
        self.pid = value


def scripted(**behaviour: Any) -> dict[str, str]:
    return {SCRIPT + "mode": "script"} | {
        SCRIPT + key.replace("_", "-"): str(value).lower()
        if isinstance(value, bool)
        else str(value)
        for key, value in behaviour.items()
    }


async def configuration_for(
    flow_run: FlowRun,
    cluster_config: dict | None = None,
    node_selector: dict[str, str] | None = None,
    **values: Any,
) -> KubernetesWorkerJobConfiguration:
    """The job configuration of the default template with these variables; `node_selector`
    edits the template as a pool admin would (the default template has no such variable)."""
    values = {"image": "testbed/none:1", "namespace": "default"} | values
    if cluster_config is not None:
        values["cluster_config"] = cluster_config
    configuration = await KubernetesWorkerJobConfiguration.from_template_and_values(
        copy.deepcopy(TEMPLATE), values
    )
    if node_selector is not None:
        pod_spec = configuration.job_manifest["spec"]["template"]["spec"]
        pod_spec["nodeSelector"] = node_selector
    configuration.prepare_for_flow_run(flow_run)
    return configuration


def node_group_added_on_demand() -> dict[str, str]:
    """A node selector no node of the testbed matches until the fake kubelet's autoscaler adds
    one (`testbed.prefect.io/scale-up-seconds`): the kube-scheduler finds the pod unschedulable
    until then. A new group each time, since nodes added earlier in the session stay."""
    return {"testbed.prefect.io/pool": f"on-demand-{uuid.uuid4().hex[:8]}"}


def new_flow_run() -> FlowRun:
    return FlowRun(id=uuid.uuid4(), name=f"run-{uuid.uuid4().hex[:6]}", flow_id=uuid.uuid4())


def block(testbed, kubeconfig=None) -> dict:
    """What a `kubernetes-cluster-config` block holds for a kubeconfig of the testbed."""
    config = testbed.kubeconfig_dict(kubeconfig)
    return {"config": config, "context_name": config["current-context"]}


@pytest.fixture
def cluster_config(testbed) -> dict:
    return block(testbed)


class Worker:
    """A worker as Prefect builds it, used without a Prefect server; closes its clients."""

    def __init__(self, name: str) -> None:
        self.worker = KubernetesWorker(work_pool_name=name)

    async def __aenter__(self) -> KubernetesWorker:
        return self.worker

    async def __aexit__(self, *exc_info: object) -> None:
        await self.worker.close_kubernetes()


@pytest.fixture(autouse=True)
def no_prefect_server(monkeypatch):
    """These tests drive the worker without a Prefect server (the end-to-end tests have one):
    no logs or events are sent anywhere unless a test captures them."""
    from prefect.settings import (
        PREFECT_LOGGING_TO_API_ENABLED,
        PREFECT_TEST_MODE,
        temporary_settings,
    )

    monkeypatch.setattr("prefect.events.utilities.should_emit_events", lambda: False)
    with temporary_settings({PREFECT_TEST_MODE: True, PREFECT_LOGGING_TO_API_ENABLED: False}):
        yield


@pytest.fixture
async def worker(testbed):
    worker = KubernetesWorker(work_pool_name="lifecycle-tests")
    yield worker
    await worker.close_kubernetes()


async def run_flow(worker, cluster_config, **values) -> tuple[Any, TaskStatus, FlowRun]:
    flow_run = new_flow_run()
    configuration = await configuration_for(flow_run, cluster_config, **values)
    status = TaskStatus()
    result = await worker.run(flow_run, configuration, task_status=status)
    return result, status, flow_run


async def start_run(worker, cluster_config, **values) -> tuple[asyncio.Task, TaskStatus, FlowRun]:
    """Start a run in the background; return once its Job exists and its pid is reported."""
    flow_run = new_flow_run()
    configuration = await configuration_for(flow_run, cluster_config, **values)
    status = TaskStatus()
    running = asyncio.create_task(worker.run(flow_run, configuration, task_status=status))
    while status.pid is None:
        if running.done():
            running.result()
        await asyncio.sleep(0.1)
    return running, status, flow_run


def jobs_of(testbed, flow_run: FlowRun) -> list[dict]:
    import json

    output = testbed.kubectl(
        "get", "jobs", "-n", "default", "-l", f"prefect.io/flow-run-id={flow_run.id}", "-o", "json"
    ).stdout
    return json.loads(output)["items"]


def pods_of(testbed, job_name: str) -> list[dict]:
    import json

    output = testbed.kubectl(
        "get", "pods", "-n", "default", "-l", f"job-name={job_name}", "-o", "json"
    )
    return json.loads(output.stdout)["items"]


async def test_a_succeeding_job_streams_its_log_and_exits_zero(
    worker, cluster_config, testbed, capsys
):
    result, status, flow_run = await run_flow(
        worker, cluster_config, command="sh -c 'echo first line; echo second line'"
    )
    assert result.status_code == 0
    assert status.pid == result.identifier
    uid, namespace, job_name = result.identifier.split(":")
    assert namespace == "default" and uid and job_name.startswith(flow_run.name)
    out = capsys.readouterr().out
    assert out.index("first line") < out.index("second line")
    (job,) = jobs_of(testbed, flow_run)
    assert job["metadata"]["name"] == job_name


async def test_the_exit_code_of_the_flow_container_is_returned(worker, cluster_config):
    result, _, _ = await run_flow(worker, cluster_config, command="sh -c 'exit 3'")
    assert result.status_code == 3


async def test_backoff_limit_retries_then_reports_the_last_exit_code(
    worker, cluster_config, testbed
):
    result, _, _ = await run_flow(
        worker, cluster_config, backoff_limit=2, annotations=scripted(exit_code=3)
    )
    assert result.status_code == 3
    job_name = result.identifier.split(":")[-1]
    assert len(pods_of(testbed, job_name)) == 3


async def test_oom_killed_is_137(worker, cluster_config):
    result, _, _ = await run_flow(worker, cluster_config, annotations=scripted(oom=True))
    assert result.status_code == 137


async def test_image_pull_failure_deletes_the_job_and_shows_events(
    worker, cluster_config, testbed, caplog
):
    """An image that never arrives: the kubelet retries, so the run waits, then gives up when
    `pod_watch_timeout_seconds` passes (3 s here), with the pull error, a hint and the Events."""
    caplog.set_level(logging.INFO)
    result, _, flow_run = await run_flow(
        worker,
        cluster_config,
        pod_watch_timeout_seconds=3,
        annotations=scripted(image_pull="ImagePullBackOff"),
    )
    assert result.status_code == -1
    text = caplog.text
    assert "cannot start: ErrImagePull" in text or "cannot start: ImagePullBackOff" in text
    assert "Pod event 'Failed'" in text and "Failed to pull image" in text
    for _ in range(50):
        if not jobs_of(testbed, flow_run):
            break
        await asyncio.sleep(0.2)
    assert jobs_of(testbed, flow_run) == [], "the Job must be deleted so it cannot start later"


async def test_a_pull_that_fails_twice_then_succeeds_runs_to_completion(
    worker, cluster_config, caplog
):
    """A registry's 429 or a tag pushed a minute late: the kubelet pulls again with back-off
    (ErrImagePull, ImagePullBackOff, 10 s then 20 s here), and the run completes. The run's
    log says once why it waits."""
    caplog.set_level(logging.INFO)
    result, _, _ = await run_flow(
        worker, cluster_config, annotations=scripted(image_pull_failures=2, log_lines=2)
    )
    assert result.status_code == 0
    waits = [r.message for r in caplog.records if "pod is Pending (ErrImagePull" in r.message]
    assert len(waits) == 1, waits
    assert "pull access denied" in waits[0]


async def test_an_invalid_image_name_ends_the_run_at_once(worker, cluster_config, caplog):
    """InvalidImageName is never retried by the kubelet: no point in waiting."""
    caplog.set_level(logging.INFO)
    started = time.monotonic()
    result, _, _ = await run_flow(worker, cluster_config, annotations=scripted(invalid_image=True))
    assert result.status_code == -1
    assert time.monotonic() - started < 30, "not the pod-start timeout (60 s)"
    assert "container 'prefect-job' cannot start: InvalidImageName" in caplog.text


async def test_a_node_an_autoscaler_adds_90_s_later_runs_with_the_default_timeout(
    worker, cluster_config, caplog
):
    """The issue's acceptance: default variables (60 s); the kube-scheduler finds no node for
    the pod's node selector until the autoscaler adds one 90 s later; its TriggeredScaleUp
    Event holds the wait, and the scheduler binds the pod to the new node."""
    caplog.set_level(logging.INFO)
    result, _, _ = await run_flow(
        worker,
        cluster_config,
        node_selector=node_group_added_on_demand(),
        annotations=scripted(scale_up_seconds=90, log_lines=1),
    )
    assert result.status_code == 0
    assert re.search(r"pod is Pending \(Unschedulable: 0/\d+ nodes are available", caplog.text)
    assert "a node is being added for pod" in caplog.text
    assert "TriggeredScaleUp: pod triggered scale-up" in caplog.text


async def test_a_pod_no_node_will_take_is_given_up_with_the_schedulers_words(
    worker, cluster_config, testbed, caplog
):
    caplog.set_level(logging.INFO)
    result, _, flow_run = await run_flow(
        worker,
        cluster_config,
        pod_watch_timeout_seconds=12,  # the autoscaler's Events are read every 10 s
        node_selector={"testbed.prefect.io/pool": "no-such-pool"},
        annotations=scripted(log_lines=1),
    )
    assert result.status_code == -1
    text = caplog.text
    assert "did not start within 12 s (pod_watch_timeout_seconds); no node can take it: " in text
    # The kube-scheduler's own words (v1.20); nodes added by earlier tests count too.
    assert re.search(
        r"0/\d+ nodes are available: \d+ node\(s\) didn't match Pod's node affinity", text
    )
    assert "no node will be added for pod" in text and "NotTriggerScaleUp" in text
    assert "Hint: compare the pod's resource requests" in text
    for _ in range(50):
        if not jobs_of(testbed, flow_run):
            break
        await asyncio.sleep(0.2)
    assert jobs_of(testbed, flow_run) == [], "the Job must be deleted so it cannot start later"


async def test_pod_that_never_starts_times_out(worker, cluster_config, testbed, caplog):
    caplog.set_level(logging.INFO)
    result, _, flow_run = await run_flow(
        worker,
        cluster_config,
        pod_watch_timeout_seconds=2,
        annotations=scripted(start_delay_seconds=30),
    )
    assert result.status_code == -1
    assert "did not start within 2 s" in caplog.text


async def test_node_lost_is_minus_one_with_a_reason(worker, testbed, caplog):
    """The pod's node goes away: no exit code will ever come. The Job's deadline ends it."""
    caplog.set_level(logging.INFO)
    template = copy.deepcopy(TEMPLATE)
    template["job_configuration"]["job_manifest"]["spec"]["activeDeadlineSeconds"] = 4
    flow_run = new_flow_run()
    configuration = await KubernetesWorkerJobConfiguration.from_template_and_values(
        template,
        {"image": "testbed/none:1", "cluster_config": block(testbed),
         "annotations": scripted(node_lost_after_seconds=1, run_seconds=60)},
    )  # fmt: skip
    configuration.prepare_for_flow_run(flow_run)
    result = await worker.run(flow_run, configuration, task_status=TaskStatus())
    assert result.status_code == -1
    assert "reported no exit code" in caplog.text


async def test_job_deleted_from_outside_ends_the_run(worker, cluster_config, testbed, caplog):
    caplog.set_level(logging.INFO)
    running, status, flow_run = await start_run(worker, cluster_config, command="sleep 60")
    await asyncio.sleep(2)
    job_name = status.pid.split(":")[-1]
    testbed.kubectl("delete", "job", job_name, "-n", "default", "--wait=false")
    result = await asyncio.wait_for(running, 60)
    assert result.status_code != 0
    assert "deleted" in caplog.text


async def test_logs_arrive_complete_and_in_order_through_cut_streams(testbed, capsys):
    rule_ids = [
        testbed.proxy("POST", "/rules", {"path": "/log$", "action": "cut-after-bytes",
                                          "bytes": 20_000, "times": 2, "abrupt": True})["id"]
    ]  # fmt: skip
    try:
        async with Worker("cut-logs") as worker:
            proxied = block(testbed, testbed.proxy_kubeconfig)
            result, _, _ = await run_flow(
                worker, proxied,
                annotations=scripted(log_lines=2000, log_interval_ms=1, run_seconds=0),
            )  # fmt: skip
        assert result.status_code == 0
        lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("line ")]
        assert lines == [f"line {n}" for n in range(1, 2001)]
    finally:
        for rule in rule_ids:
            testbed.proxy("DELETE", f"/rules/{rule}")


async def test_fifty_runs_share_one_job_watch_and_one_pod_watch(testbed):
    testbed.proxy("POST", "/counts/reset")
    proxied = block(testbed, testbed.proxy_kubeconfig)
    async with Worker("fifty") as worker:
        results = await asyncio.gather(
            *[
                run_flow(worker, proxied, annotations=scripted(run_seconds=2, log_lines=3))
                for _ in range(50)
            ]
        )
    assert [result.status_code for result, _, _ in results] == [0] * 50
    counts = testbed.proxy("GET", "/counts")
    patterns = counts["patterns"]
    job_watches = patterns["/apis/batch/v1/namespaces/{ns}/jobs"].get("watch", 0)
    pod_watches = patterns["/api/v1/namespaces/{ns}/pods"].get("watch", 0)
    assert (job_watches, pod_watches) == (1, 1), patterns
    assert counts["verbs"].get("create", 0) == 50
    log_requests = sum(patterns.get("/api/v1/namespaces/{ns}/pods/{name}/log", {}).values())
    others = counts["total"] - log_requests
    assert others <= 3 * 50, patterns
    # Per run one followed stream and one final read; a little slack for a pod watch that
    # reports a container's end more than 5 s after its stream ended (a loaded machine).
    assert log_requests <= 2 * 50 + 10, patterns


async def test_a_create_answered_503_once_makes_exactly_one_job(testbed):
    rule = testbed.proxy(
        "POST", "/rules",
        {"verb": "create", "path": "/jobs$", "action": "status", "code": 503, "times": 1},
    )["id"]  # fmt: skip
    try:
        proxied = block(testbed, testbed.proxy_kubeconfig)
        async with Worker("retry") as worker:
            result, _, flow_run = await run_flow(worker, proxied, annotations=scripted())
        assert result.status_code == 0
        assert len(jobs_of(testbed, flow_run)) == 1
    finally:
        testbed.proxy("DELETE", f"/rules/{rule}")


async def test_a_narrow_rbac_user_still_gets_a_pid(testbed, caplog):
    caplog.set_level(logging.WARNING)
    narrow = block(testbed, testbed.narrow_kubeconfig)
    async with Worker("narrow") as worker:
        result, status, _ = await run_flow(worker, narrow, annotations=scripted())
    assert result.status_code == 0
    namespace, job_name = status.pid.split(":")
    assert namespace == "default" and job_name
    assert "Cannot read the cluster's uid" in caplog.text


async def test_kill_infrastructure_accepts_both_pid_forms(worker, cluster_config, testbed):
    for strip_uid in (False, True):
        running, status, flow_run = await start_run(worker, cluster_config, command="sleep 120")
        configuration = await configuration_for(flow_run, cluster_config)
        pid = status.pid.split(":", 1)[1] if strip_uid else status.pid
        await worker.kill_infrastructure(pid, configuration, grace_seconds=1)
        result = await asyncio.wait_for(running, 60)
        assert result.status_code != 0
        assert jobs_of(testbed, flow_run) == []


async def test_kill_infrastructure_refuses_and_reports_clearly(worker, cluster_config):
    configuration = await configuration_for(new_flow_run(), cluster_config)
    with pytest.raises(InfrastructureNotAvailable, match="namespace 'elsewhere'"):
        await worker.kill_infrastructure("elsewhere:some-job", configuration)
    with pytest.raises(InfrastructureNotFound, match="not found in namespace 'default'"):
        await worker.kill_infrastructure("default:no-such-job", configuration)
    with pytest.raises(InfrastructureNotAvailable, match="another cluster"):
        await worker.kill_infrastructure("not-this-cluster:default:some-job", configuration)


@pytest.mark.parametrize(
    "fault",
    [
        {"action": "reset", "after_upstream": True},
        {"action": "status", "code": 504, "after_upstream": True},
    ],
    ids=["reply-lost", "gateway-timeout-after-create"],
)
async def test_an_ambiguous_create_adopts_the_job_instead_of_making_a_second(
    testbed, caplog, fault
):
    caplog.set_level(logging.INFO)
    rule = testbed.proxy(
        "POST", "/rules", {"verb": "create", "path": "/jobs$", "times": 1} | fault
    )["id"]
    try:
        proxied = block(testbed, testbed.proxy_kubeconfig)
        async with Worker("adopt") as worker:
            result, _, flow_run = await run_flow(worker, proxied, annotations=scripted())
        assert result.status_code == 0
        assert len(jobs_of(testbed, flow_run)) == 1
        assert "found (created by an earlier attempt)" in caplog.text
    finally:
        testbed.proxy("DELETE", f"/rules/{rule}")


async def test_a_410_mid_watch_does_not_end_the_run(testbed):
    rule = testbed.proxy(
        "POST",
        "/rules",
        {"verb": "watch", "path": "/jobs$", "action": "gone-event", "events": 2, "times": 1},
    )["id"]
    try:
        proxied = block(testbed, testbed.proxy_kubeconfig)
        async with Worker("gone") as worker:
            result, _, _ = await run_flow(
                worker, proxied, annotations=scripted(run_seconds=3, exit_code=4)
            )
            cluster = await worker._kubernetes.connect(proxied["config"], proxied["context_name"])
            assert cluster.watch_stats("default").resyncs >= 1, "the 410 forced a resync"
        assert result.status_code == 4
    finally:
        testbed.proxy("DELETE", f"/rules/{rule}")


async def test_a_job_watch_that_loses_its_place_tells_the_observer_what_it_may_have_missed(
    testbed,
):
    """A 410 Gone restarts the Job watch from "now": what ended in between was not seen. The
    runs this process follows are read again by the core; for the runs nobody follows, the
    observer hears of the gap (and the worker reads the pool's runs in flight there again)."""
    from prefect_kubernetes_rs import _core

    namespace = f"gap-{uuid.uuid4().hex[:6]}"
    testbed.kubectl("create", "namespace", namespace)
    rule = testbed.proxy("POST", "/rules", {
        "verb": "watch", "path": f"/namespaces/{namespace}/jobs$", "action": "gone-event",
        "events": 0, "times": 1,
    })["id"]  # fmt: skip
    clients = _core.KubernetesClients(tcp_keepalive=True)
    try:
        proxied = block(testbed, testbed.proxy_kubeconfig)
        cluster = await clients.connect(proxied["config"], proxied["context_name"])
        sightings = await cluster.observe(
            namespaces=[namespace], label_filters=[], pod_events=False
        )
        batch = await asyncio.wait_for(sightings.__anext__(), 30)
        assert [(type(seen).__name__, seen.namespace) for seen in batch] == [
            ("JobsMissed", namespace)
        ]
        assert cluster.watch_stats(namespace).resyncs == 1
    finally:
        await clients.close()
        testbed.proxy("DELETE", f"/rules/{rule}")


async def test_the_api_key_goes_into_a_secret_never_into_the_manifest(
    testbed, monkeypatch, capsys, caplog
):
    api_key = "pnu_" + uuid.uuid4().hex
    monkeypatch.setenv("PREFECT_INTEGRATIONS_KUBERNETES_WORKER_CREATE_SECRET_FOR_API_KEY", "true")
    caplog.set_level(logging.INFO)
    pool = f"secret-keeper-{uuid.uuid4().hex[:6]}"

    async def run_once(worker: KubernetesWorker) -> dict:
        flow_run = new_flow_run()
        configuration = await configuration_for(
            flow_run, block(testbed), env={"PREFECT_API_KEY": api_key},
            command="sh -c 'test -n \"$PREFECT_API_KEY\" && echo key-present'",
        )  # fmt: skip
        result = await worker.run(flow_run, configuration, task_status=TaskStatus())
        assert result.status_code == 0
        (job,) = jobs_of(testbed, flow_run)
        return job

    def api_key_secrets() -> list[str]:
        secrets = json.loads(testbed.kubectl("get", "secrets", "-o", "json").stdout)["items"]
        return [s["metadata"]["name"] for s in secrets if pool in s["metadata"]["name"]]

    async with Worker(pool) as worker:
        job = await run_once(worker)
        env = job["spec"]["template"]["spec"]["containers"][0]["env"]
        (entry,) = [e for e in env if e["name"] == "PREFECT_API_KEY"]
        secret_name = entry["valueFrom"]["secretKeyRef"]["name"]
        assert "value" not in entry
        assert re.fullmatch(rf"prefect-{pool}-api-key-[0-9a-f]{{10}}", secret_name)
    # The Secret outlives the worker (a pod that starts or retries later still needs the key),
    # and a restarted worker of the pool (another name, as `prefect worker start` gives by
    # default) uses the same one: restarts do not pile up Secrets.
    assert api_key_secrets() == [secret_name]
    restarted = KubernetesWorker(work_pool_name=pool, name="another-worker-name")
    try:
        second_job = await run_once(restarted)
    finally:
        await restarted.close_kubernetes()
    assert api_key_secrets() == [secret_name]
    secret = testbed.kubectl("get", "secret", secret_name, "-o", "json").stdout
    testbed.kubectl("delete", "secret", secret_name)

    output = capsys.readouterr()
    assert output.out.count("key-present") == 2, "the pods received the key through the Secret"
    everything = output.out + output.err + caplog.text + json.dumps([job, second_job])
    assert api_key not in everything
    assert api_key not in secret  # stored base64-encoded, as Kubernetes does


def env_secrets_of(testbed, flow_run: FlowRun) -> list[dict]:
    output = testbed.kubectl(
        "get", "secrets", "-n", "default", "-l", f"prefect.io/flow-run-id={flow_run.id}",
        "-o", "json",
    ).stdout  # fmt: skip
    return json.loads(output)["items"]


async def test_env_as_a_secret_keeps_values_out_of_the_job_and_goes_with_it(
    worker, testbed, monkeypatch, capsys
):
    """`..._WORKER_STORE_ENV_AS_SECRET`: the flow container's plain values move into a Secret of
    the Job's own; the process still sees them (a reference to a moved value included); the
    Secret goes with the Job (garbage collector), and a refused Job leaves no Secret."""
    monkeypatch.setenv("PREFECT_INTEGRATIONS_KUBERNETES_WORKER_STORE_ENV_AS_SECRET", "true")
    greeting = f"hello-{uuid.uuid4().hex[:8]}"
    flow_run = new_flow_run()
    configuration = await configuration_for(
        flow_run, block(testbed), env={"GREETING": greeting, "REF": "$(GREETING) world"},
        command="sh -c 'echo \"GREETING=$GREETING\"; echo \"REF=$REF\"'",
    )  # fmt: skip
    result = await worker.run(flow_run, configuration, task_status=TaskStatus())
    assert result.status_code == 0
    out = capsys.readouterr().out
    assert f"GREETING={greeting}" in out and f"REF={greeting} world" in out

    (job,) = jobs_of(testbed, flow_run)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    plain = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    assert plain == {"REF": "$(GREETING) world"}, "only what must be expanded by the kubelet stays"
    assert greeting not in json.dumps(job)
    (secret,) = env_secrets_of(testbed, flow_run)
    assert container["envFrom"] == [{"secretRef": {"name": secret["metadata"]["name"]}}]
    assert secret["metadata"]["name"].startswith(
        job["metadata"]["generateName"].rstrip("-") + "-env-"
    )
    assert {"GREETING", "PREFECT__FLOW_RUN_ID"} <= set(secret["data"])
    (owner,) = secret["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == (
        "Job", job["metadata"]["name"], job["metadata"]["uid"]
    )  # fmt: skip

    testbed.kubectl("delete", "job", job["metadata"]["name"], "-n", "default", "--wait=false")
    deadline = time.monotonic() + 60
    while env_secrets_of(testbed, flow_run):
        assert time.monotonic() < deadline, "the garbage collector deletes the Secret with its Job"
        await asyncio.sleep(0.5)

    refused_run = new_flow_run()
    refused = await configuration_for(refused_run, block(testbed), env={"GREETING": greeting})
    refused.job_manifest["spec"]["activeDeadlineSeconds"] = -5  # the API server refuses it
    with pytest.raises(Exception, match="activeDeadlineSeconds"):
        await worker.run(refused_run, refused, task_status=TaskStatus())
    assert jobs_of(testbed, refused_run) == []
    assert env_secrets_of(testbed, refused_run) == [], "a refused Job leaves no Secret"


async def test_cancelling_a_run_leaves_nothing_behind_and_keeps_the_job(
    worker, cluster_config, testbed
):
    """Worker shutdown cancels the task awaiting a run: the Job keeps running in the cluster,
    and nothing of the run stays in the worker (no follower, no subscription)."""
    from prefect_kubernetes_rs import _core

    running, status, flow_run = await start_run(worker, cluster_config, command="sleep 60")
    await asyncio.sleep(1)
    assert _core.active_followers() == 1
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    for _ in range(50):
        if _core.active_followers() == 0:
            break
        await asyncio.sleep(0.1)
    assert _core.active_followers() == 0
    config, context = cluster_config["config"], cluster_config["context_name"]
    cluster = await worker._kubernetes.connect(config, context)
    assert cluster.watch_stats("default").subscribed_runs == 0
    (job,) = jobs_of(testbed, flow_run)
    assert job["metadata"].get("deletionTimestamp") is None
    testbed.kubectl(
        "delete", "job", job["metadata"]["name"], "--cascade=foreground", "--wait=false"
    )


@pytest.fixture
def captured_events(monkeypatch):
    """The Prefect events the worker emits, recorded instead of sent."""
    from prefect.events import Event

    emitted: list[Event] = []

    def record(**kwargs):
        follows = kwargs.pop("follows", None)
        event = Event(**kwargs, follows=follows.id if follows else None)
        emitted.append(event)
        return event

    monkeypatch.setattr("prefect_kubernetes_rs.pod_events.emit_event", record)
    return emitted


async def test_pod_phases_are_replicated_as_prefect_events(worker, cluster_config, captured_events):
    result, _, flow_run = await run_flow(
        worker, cluster_config, annotations=scripted(run_seconds=1)
    )
    assert result.status_code == 0
    events = [e for e in captured_events if e.event.startswith("prefect.kubernetes.pod.")]
    names = [event.event for event in events]
    assert names[-1] == "prefect.kubernetes.pod.succeeded"
    assert "prefect.kubernetes.pod.running" in names
    resource = events[-1].resource
    assert resource["prefect.resource.id"].startswith("prefect.kubernetes.pod.")
    assert resource["kubernetes.namespace"] == "default"
    assert all(event.follows for event in events[1:]), "each event follows the previous one"
    related_roles = {related.role for related in events[-1].related}
    assert {"flow-run", "worker"} <= related_roles


async def test_pod_events_are_not_replicated_when_the_setting_says_so(
    worker, cluster_config, captured_events, monkeypatch
):
    monkeypatch.setenv("PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_REPLICATE_POD_EVENTS", "false")
    result, _, _ = await run_flow(worker, cluster_config, annotations=scripted(run_seconds=1))
    assert result.status_code == 0
    assert [e.event for e in captured_events if e.event.startswith("prefect.kubernetes.pod.")] == []


@pytest.mark.parametrize("kubelet", ["v1.20", "v1.27"])
async def test_eviction_with_no_retries_is_zero_when_the_run_rescheduled_itself(
    worker, cluster_config, monkeypatch, kubelet
):
    """With backoffLimit 0 the evicted flow reschedules itself on SIGTERM; the worker checks the
    flow run's state and reports 0 rather than a crash. A v1.20 kubelet marks the pod only
    with `reason: Evicted` and drops its container statuses; a 1.27+ kubelet adds the
    `DisruptionTarget` condition and publishes the container's own end (143) first."""
    asked: list[FlowRun] = []

    async def rescheduled(flow_run, since):
        asked.append(flow_run)
        return True

    monkeypatch.setattr(worker, "_was_rescheduled", rescheduled)
    result, _, flow_run = await run_flow(
        worker,
        cluster_config,
        annotations=scripted(evict_after_seconds=1, run_seconds=30, evict_style=kubelet),
    )
    assert result.status_code == 0
    assert [run.id for run in asked] == [flow_run.id], "the eviction rule was what decided"


async def test_job_watch_timeout_is_an_overall_deadline(worker, cluster_config, testbed, caplog):
    caplog.set_level(logging.INFO)
    result, _, flow_run = await run_flow(
        worker, cluster_config, command="sleep 60", job_watch_timeout_seconds=3
    )
    assert result.status_code == -1
    assert "did not complete within 3 s" in caplog.text
    for _ in range(50):
        if not jobs_of(testbed, flow_run):
            break
        await asyncio.sleep(0.2)
    assert jobs_of(testbed, flow_run) == []


async def test_non_utf8_bytes_and_very_long_lines_do_not_break_the_log(
    worker, cluster_config, capsys
):
    result, _, _ = await run_flow(
        worker, cluster_config,
        annotations=scripted(log_lines=40, log_non_utf8=True, log_long_line_bytes=2_000_000),
    )  # fmt: skip
    assert result.status_code == 0
    lines = capsys.readouterr().out.splitlines()
    numbered = [line for line in lines if line.startswith("line ")]
    assert [line.split()[1] for line in numbered] == [str(n) for n in range(1, 41)]
    assert any("\ufffd" in line for line in numbered), "invalid bytes are shown, not fatal"
    assert any(len(line) >= 2_000_000 - 10 for line in lines), "the long line arrives whole"


async def test_creation_errors_name_the_reason_and_hint(worker, testbed):
    from prefect.exceptions import InfrastructureError

    flow_run = new_flow_run()
    configuration = await configuration_for(flow_run, block(testbed), namespace="no-such-ns")
    with pytest.raises(InfrastructureError) as missing:
        await worker.run(flow_run, configuration, task_status=TaskStatus())
    assert str(missing.value).startswith("Unable to create Kubernetes job: NotFound: ")
    assert "Hint: Create the namespace 'no-such-ns'" in str(missing.value)

    testbed.kubectl("create", "namespace", "off-limits")
    narrow = block(testbed, testbed.narrow_kubeconfig)
    configuration = await configuration_for(flow_run, narrow, namespace="off-limits")
    with pytest.raises(InfrastructureError) as forbidden:
        await worker.run(flow_run, configuration, task_status=TaskStatus())
    assert "Forbidden: " in str(forbidden.value)
    assert "the worker needs get, list and watch on jobs and pods" in str(forbidden.value)


async def test_an_unreachable_cluster_or_broken_kubeconfig_is_named(worker, testbed):
    import socket

    from prefect.exceptions import InfrastructureNotAvailable

    broken = block(testbed)
    broken["context_name"] = "no-such-context"
    configuration = await configuration_for(new_flow_run(), broken)
    with pytest.raises(InfrastructureNotAvailable, match="cluster_config block.*no-such-context"):
        await worker.run(new_flow_run(), configuration, task_status=TaskStatus())

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    unreachable = block(testbed)
    unreachable["config"]["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{closed_port}"
    configuration = await configuration_for(new_flow_run(), unreachable)
    status = TaskStatus()
    with pytest.raises(Exception, match=f"127.0.0.1:{closed_port}") as caught:
        await asyncio.wait_for(worker.run(new_flow_run(), configuration, task_status=status), 60)
    assert status.pid is None
    assert "cluster_config block" in str(caught.value) or "refused" in str(caught.value).lower()


@pytest.mark.parametrize("keepalive", [True, False], ids=["keepalive-on", "keepalive-off"])
async def test_api_connections_probe_idle_peers_as_the_setting_says(
    testbed, cluster_config, monkeypatch, keepalive
):
    """`add_tcp_keepalive` (default on, as in prefect-kubernetes): every connection of the
    worker to the API server carries the kernel's keepalive timer (30 s idle, then probes), so
    a load balancer that drops idle flows cannot leave a quiet log stream or watch hanging."""
    monkeypatch.setenv(
        "PREFECT_INTEGRATIONS_KUBERNETES_WORKER_ADD_TCP_KEEPALIVE", str(keepalive).lower()
    )
    port = int(testbed.env["PKR_APISERVER_URL"].rsplit(":", 1)[1])
    # Only this worker's connections count: the test process may hold others (an earlier test's
    # client not yet collected, with the other setting).
    earlier = set(local_ports(connections_to(port, os.getpid())))
    async with Worker("keepalive") as worker:
        running, _, _ = await start_run(worker, cluster_config, command="sleep 4")
        await asyncio.sleep(1.5)  # the watches and the log stream are open
        connections = [
            line
            for line in connections_to(port, os.getpid())
            if local_ports([line])[0] not in earlier
        ]
        result = await asyncio.wait_for(running, 60)
    assert result.status_code == 0
    assert connections, "the worker's connections to the API server were seen"
    probing = [line for line in connections if "timer:(keepalive," in line]
    assert len(probing) == (len(connections) if keepalive else 0), connections


async def test_a_connection_that_goes_silent_is_given_up_and_the_run_ends_with_every_line_once(
    testbed, cluster_config, capsys
):
    """The issue's dead idle connection: once the flow has printed its first lines, every
    connection of the worker to the API server goes silent (packets dropped, no reset), the
    watches and the log stream alike. The flow then prints three more lines and ends. Keepalive
    (default on) makes the kernel give the connections up after 66 s without an answer; the
    worker opens new ones, resumes the watches and the log from where they were, and reports
    the run's end with every line exactly once. Without keepalive the run would never end."""
    port = int(testbed.env["PKR_APISERVER_URL"].rsplit(":", 1)[1])
    printed: list[str] = []

    def lines_so_far() -> list[str]:
        printed.extend(capsys.readouterr().out.splitlines())
        return [line for line in printed if line.startswith("line ")]

    script = (
        "echo line 1; echo line 2; echo line 3; sleep 20; echo line 4; echo line 5; echo line 6"
    )
    earlier = set(local_ports(connections_to(port, os.getpid())))  # not this worker's
    async with Worker("silent-connection") as worker:
        running, _, _ = await start_run(worker, cluster_config, command=f"sh -c '{script}'")
        deadline = time.monotonic() + 60
        while len(lines_so_far()) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert lines_so_far() == ["line 1", "line 2", "line 3"]
        silenced_ports = [
            port_ for port_ in local_ports(connections_to(port, os.getpid()))
            if port_ not in earlier
        ]  # fmt: skip
        assert silenced_ports, "the worker's watches and log stream were seen"
        with SilencedConnections(port, silenced_ports):
            # The kernel gives a connection up 66 s after the last packet it received.
            result = await asyncio.wait_for(running, 180)
            still_open = set(silenced_ports) & set(local_ports(connections_to(port, os.getpid())))
    assert result.status_code == 0
    assert lines_so_far() == [f"line {n}" for n in range(1, 7)]
    assert not still_open, "the silent connections were given up"
