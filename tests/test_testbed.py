"""Proof that the testbed is a real Kubernetes: kubectl and the official Python client see what
they would see on a cluster, the Job controller and garbage collector do their work, the fake
kubelet's scripted behaviours look like a real kubelet's, and the fault proxy does what it is
told. (kube-rs is exercised end to end by `test_lifecycle.py`: create, shared watches with 410
and resume, followed logs.)
"""

from __future__ import annotations

import json
import random
import subprocess
import time
import uuid

import pytest
from testbed_support import run_checked

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]


def job_manifest(name: str, command: list[str] | None = None, **spec: object) -> dict:
    container: dict = {"name": "main", "image": "testbed/none:1"}
    if command:
        container["command"] = command
    annotations = spec.pop("annotations", {})
    pod_spec: dict = {"restartPolicy": "Never", "containers": [container]}
    if "nodeSelector" in spec:
        pod_spec["nodeSelector"] = spec.pop("nodeSelector")
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": spec.pop("backoffLimit", 0),
            **spec,
            "template": {
                "metadata": {"annotations": annotations},
                "spec": pod_spec,
            },
        },
    }


def apply(testbed, manifest: dict, namespace: str = "default") -> None:
    run_checked(
        ["kubectl", "--kubeconfig", str(testbed.kubeconfig), "-n", namespace, "create", "-f", "-"],
        input=json.dumps(manifest),
    )  # fmt: skip


def get_json(testbed, *args: str) -> dict:
    return json.loads(testbed.kubectl("get", *args, "-o", "json").stdout)


def wait_until(predicate, timeout: float = 60, interval: float = 0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def test_kubectl_gets_describes_follows_and_waits_for_a_job(testbed):
    name = unique("hello")
    apply(testbed, job_manifest(name, ["sh", "-c", "echo hello from the pod; sleep 1; echo done"]))
    testbed.kubectl("wait", "--for=condition=complete", f"job/{name}", "--timeout=60s")
    assert name in testbed.kubectl("get", "jobs").stdout
    description = testbed.kubectl("describe", "job", name).stdout
    assert "Pods Statuses:" in description and "1 Succeeded" in description
    logs = testbed.kubectl("logs", "-f", f"job/{name}").stdout
    assert logs.splitlines() == ["hello from the pod", "done"]


def test_backoff_limit_ends_failed_after_three_pods(testbed):
    name = unique("exit3")
    apply(testbed, job_manifest(name, ["sh", "-c", "exit 3"], backoffLimit=2))

    def failed_condition():
        job = get_json(testbed, "job", name)
        conditions = job.get("status", {}).get("conditions", [])
        return next((c for c in conditions if c["type"] == "Failed"), None)

    condition = wait_until(failed_condition, timeout=120)
    assert condition["reason"] == "BackoffLimitExceeded"
    pods = get_json(testbed, "pods", "-l", f"job-name={name}")["items"]
    assert len(pods) == 3
    codes = {
        status["state"]["terminated"]["exitCode"]
        for pod in pods
        for status in pod["status"]["containerStatuses"]
    }
    assert codes == {3}


def test_finished_job_with_ttl_is_garbage_collected(testbed):
    name = unique("ttl")
    apply(testbed, job_manifest(name, ["true"], ttlSecondsAfterFinished=1))
    # Only the TTL controller deletes this Job, and only once it finished. (Waiting for the
    # Complete condition first raced with that deletion: the Job may be gone by the first look.)
    gone = lambda: testbed.kubectl("get", "job", name, check=False).returncode != 0  # noqa: E731
    wait_until(gone, timeout=120)
    wait_until(lambda: not get_json(testbed, "pods", "-l", f"job-name={name}")["items"], 120)


def test_foreground_deletion_removes_the_pods(testbed):
    name = unique("fg")
    # A duration no other process on the machine uses, so only this pod's process matches.
    duration = f"300.{random.randrange(10**6):06d}"
    apply(testbed, job_manifest(name, ["sleep", duration]))
    wait_until(
        lambda: any(
            p["status"].get("phase") == "Running"
            for p in get_json(testbed, "pods", "-l", f"job-name={name}")["items"]
        )
    )
    testbed.kubectl("delete", "job", name, "--cascade=foreground", "--timeout=60s")
    assert get_json(testbed, "pods", "-l", f"job-name={name}")["items"] == []

    def process_gone() -> bool:
        found = subprocess.run(
            ["pgrep", "-f", f"^sleep {duration}$"], capture_output=True, text=True
        )
        return found.stdout.strip() == ""

    # The pod's process is killed, not left running (within 60 s: after the soak the kubelet
    # may still be winding down thousands of pods).
    wait_until(process_gone, timeout=60)


@pytest.mark.parametrize(
    ("behaviour", "check"),
    [
        ({"oom": "true"}, lambda pod, events: _terminated(pod) == (137, "OOMKilled")),
        ({"exit-code": "5"}, lambda pod, events: _terminated(pod) == (5, "Error")),
        (
            {"image-pull": "ImagePullBackOff"},
            lambda pod, events: (
                _waiting(pod) in ("ErrImagePull", "ImagePullBackOff")
                and "Pulling" in events
                and "Failed" in events
            ),
        ),
        (
            {"nodeSelector": {"testbed.prefect.io/pool": "no-such-pool"}},
            lambda pod, events: (
                "FailedScheduling" in events
                and "NotTriggerScaleUp" in events
                and any(
                    c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable"
                    for c in pod["status"].get("conditions", [])
                )
            ),
        ),
        (
            {
                "scale-up-seconds": "2",
                "run-seconds": "30",
                "nodeSelector": {"testbed.prefect.io/pool": "scaled-in-testbed-test"},
            },
            lambda pod, events: (
                {"FailedScheduling", "TriggeredScaleUp", "Scheduled"} <= events
                and pod["status"].get("phase") == "Running"
                and pod["spec"]["nodeName"].startswith("fake-node-scaled-")
            ),
        ),
        (
            {"image-pull-failures": "1", "run-seconds": "30"},
            lambda pod, events: (
                "Failed" in events
                and "Pulled" in events
                and pod["status"].get("phase") == "Running"
            ),
        ),
        (
            {"evict-after-seconds": "0.5", "run-seconds": "30"},
            lambda pod, events: (
                pod["status"].get("reason") == "Evicted"
                and pod["status"]["phase"] == "Failed"
                and "Evicted" in events
            ),
        ),
        (
            {"evict-after-seconds": "0.5", "run-seconds": "30", "evict-style": "v1.27"},
            lambda pod, events: (
                pod["status"].get("reason") == "Evicted"
                and pod["status"]["phase"] == "Failed"
                and any(
                    c["type"] == "DisruptionTarget" and c.get("reason") == "TerminationByKubelet"
                    for c in pod["status"].get("conditions", [])
                )
                and _terminated(pod) == (143, "Error")
            ),
        ),
        (
            {"invalid-image": "true"},
            lambda pod, events: _waiting(pod) == "InvalidImageName",
        ),
        (
            {"node-lost-after-seconds": "0.5", "run-seconds": "30"},
            lambda pod, events: (
                pod["status"].get("reason") == "NodeLost"
                and _terminated(pod) is None
                and any(
                    c["type"] == "Ready" and c["status"] == "False"
                    for c in pod["status"].get("conditions", [])
                )
            ),
        ),
        (
            {"start-delay-seconds": "3"},
            lambda pod, events: (
                pod["status"].get("phase") == "Pending" and _waiting(pod) == "ContainerCreating"
            ),
        ),
    ],
    ids=[
        "oom",
        "exit-code",
        "image-pull",
        "unschedulable-by-the-scheduler",
        "scale-up",
        "image-pull-failures",
        "eviction",
        "eviction-1.27",
        "invalid-image",
        "node-lost",
        "slow-start",
    ],  # fmt: skip
)
def test_scripted_behaviours_look_like_a_real_kubelet(testbed, behaviour, check):
    name = unique("script")
    behaviour = dict(behaviour)
    spec = {"nodeSelector": behaviour.pop("nodeSelector")} if "nodeSelector" in behaviour else {}
    annotations = {"testbed.prefect.io/mode": "script"} | {
        f"testbed.prefect.io/{key}": value for key, value in behaviour.items()
    }
    apply(testbed, job_manifest(name, annotations=annotations, **spec))

    def observed():
        pods = get_json(testbed, "pods", "-l", f"job-name={name}")["items"]
        if not pods:
            return None
        pod = pods[0]
        events = {
            event["reason"]
            for event in get_json(
                testbed,
                "events",
                "--field-selector",
                f"involvedObject.name={pod['metadata']['name']}",
            )["items"]
        }
        return (pod, events) if check(pod, events) else None

    wait_until(observed, timeout=60)
    testbed.kubectl("delete", "job", name, "--cascade=foreground", "--wait=false")


def test_log_stamps_give_each_line_and_the_end_their_microsecond(testbed):
    """`make bench` times log lines and run ends with these stamps: each line carries the time
    of its writing, in order, and the termination message the time the script ended, after
    the last line and at least run-seconds after the first."""
    name = unique("stamps")
    annotations = {
        "testbed.prefect.io/mode": "script",
        "testbed.prefect.io/log-stamps": "true",
        "testbed.prefect.io/log-lines": "3",
        "testbed.prefect.io/run-seconds": "1.5",
    }
    before = time.time()
    apply(testbed, job_manifest(name, annotations=annotations))

    def ended():
        pods = get_json(testbed, "pods", "-l", f"job-name={name}")["items"]
        return pods[0] if pods and _terminated(pods[0]) else None

    pod = wait_until(ended, timeout=60)
    after = time.time()
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    log = testbed.kubectl("logs", pod["metadata"]["name"]).stdout.splitlines()
    stamps = [int(line.rsplit(" @", 1)[1]) / 1e6 for line in log]
    assert [line.rsplit(" @", 1)[0] for line in log] == ["line 1", "line 2", "line 3"]
    label, _, ended_at = terminated["message"].partition(" @")
    assert label == "ended"
    assert before <= stamps[0] <= stamps[1] <= stamps[2] <= int(ended_at) / 1e6 <= after
    assert int(ended_at) / 1e6 - stamps[0] >= 1.5
    testbed.kubectl("delete", "job", name, "--cascade=foreground", "--wait=false")


def _terminated(pod: dict) -> tuple[int, str] | None:
    for status in pod["status"].get("containerStatuses", []):
        terminated = status.get("state", {}).get("terminated")
        if terminated:
            return terminated["exitCode"], terminated.get("reason")
    return None


def _waiting(pod: dict) -> str | None:
    for status in pod["status"].get("containerStatuses", []):
        waiting = status.get("state", {}).get("waiting")
        if waiting:
            return waiting.get("reason")
    return None


async def test_the_official_python_client_creates_watches_resumes_and_follows(testbed):
    from kubernetes_asyncio import client, config, watch

    api_client = await config.new_client_from_config(config_file=str(testbed.kubeconfig))
    async with api_client:
        batch = client.BatchV1Api(api_client)
        core = client.CoreV1Api(api_client)
        name = unique("official")
        listing = await batch.list_namespaced_job("default", limit=1)
        start_version = listing.metadata.resource_version
        await batch.create_namespaced_job(
            "default",
            job_manifest(
                name,
                annotations={
                    "testbed.prefect.io/log-lines": "50",
                    "testbed.prefect.io/log-interval-ms": "20",
                },
            ),  # fmt: skip
        )
        seen = []
        stream = watch.Watch().stream(
            batch.list_namespaced_job, "default", resource_version=start_version,
            field_selector=f"metadata.name={name}", timeout_seconds=60,
        )  # fmt: skip
        async for event in stream:
            seen.append(event["type"])
            if event["object"].status.succeeded:
                break
        assert seen[0] == "ADDED"

        # A watch whose version is gone answers with a 410 ERROR event (here injected by the
        # fault proxy on the wire, as the API server sends it); a fresh list resumes.
        gone = {"verb": "watch", "path": "/jobs$", "action": "gone-event", "times": 1}
        rule = testbed.proxy("POST", "/rules", gone)["id"]
        proxied = await config.new_client_from_config(config_file=str(testbed.proxy_kubeconfig))
        async with proxied:
            response = await client.BatchV1Api(proxied).list_namespaced_job(
                "default", resource_version=start_version, watch=True, timeout_seconds=5,
                _preload_content=False,
            )  # fmt: skip
            first = json.loads((await response.content.readline()).decode())
            response.release()
        testbed.proxy("DELETE", f"/rules/{rule}")
        assert first["type"] == "ERROR" and first["object"]["code"] == 410, first
        fresh = await batch.list_namespaced_job("default", limit=1)
        assert int(fresh.metadata.resource_version) > int(start_version)

        pods = await core.list_namespaced_pod("default", label_selector=f"job-name={name}")
        pod_name = pods.items[0].metadata.name
        log = await core.read_namespaced_pod_log(pod_name, "default", container="main", follow=True)
        assert log.splitlines() == [f"line {n}" for n in range(1, 51)]


def test_proxy_faults_happen_as_configured(testbed):
    testbed.proxy("POST", "/reset")
    kubeconfig = testbed.proxy_kubeconfig
    rule = testbed.proxy(
        "POST", "/rules", {"verb": "list", "path": "/pods$", "action": "status", "code": 503,
                           "times": 1},
    )["id"]  # fmt: skip
    failed = testbed.kubectl("get", "pods", kubeconfig=kubeconfig, check=False)
    assert failed.returncode != 0
    assert testbed.kubectl("get", "pods", kubeconfig=kubeconfig).returncode == 0
    testbed.proxy("DELETE", f"/rules/{rule}")

    testbed.proxy("POST", "/rules", {"verb": "get", "action": "delay", "ms": 1500, "times": 1})
    started = time.monotonic()
    testbed.kubectl("get", "namespace", "default", kubeconfig=kubeconfig)
    assert time.monotonic() - started >= 1.5

    counts = testbed.proxy("GET", "/counts")
    assert counts["verbs"]["list"] >= 2
    assert counts["statuses"]["503"] == 1
    testbed.proxy("POST", "/reset")


def test_proxy_throttles_resets_and_cuts_as_told(testbed):
    import urllib.error
    import urllib.request

    testbed.proxy("POST", "/reset")
    kubeconfig = testbed.proxy_kubeconfig
    testbed.proxy("POST", "/rules", {"verb": "get", "action": "status", "code": 429,
                                     "retry_after": 2, "times": 1})  # fmt: skip
    config = testbed.kubeconfig_dict(kubeconfig)
    server = config["clusters"][0]["cluster"]["server"]
    token = config["users"][0]["user"]["token"]
    import base64
    import ssl
    import tempfile

    ca = tempfile.NamedTemporaryFile("wb", suffix=".pem", delete=False)
    ca.write(base64.b64decode(config["clusters"][0]["cluster"]["certificate-authority-data"]))
    ca.close()
    context = ssl.create_default_context(cafile=ca.name)
    request = urllib.request.Request(
        f"{server}/api/v1/namespaces/default", headers={"Authorization": f"Bearer {token}"}
    )
    with pytest.raises(urllib.error.HTTPError) as throttled:
        urllib.request.urlopen(request, context=context, timeout=10)
    assert throttled.value.code == 429
    assert throttled.value.headers["Retry-After"] == "2"
    with urllib.request.urlopen(request, context=context, timeout=10) as response:
        assert response.status == 200

    testbed.proxy("POST", "/rules", {"verb": "get", "action": "reset", "times": 1})
    with pytest.raises((ConnectionError, urllib.error.URLError)):
        urllib.request.urlopen(request, context=context, timeout=10)

    namespace = unique("cut")
    testbed.kubectl("create", "namespace", namespace)
    for n in range(3):
        testbed.kubectl("create", "configmap", f"c{n}", "-n", namespace, "--from-literal=k=v")
    testbed.proxy("POST", "/rules", {"verb": "watch", "action": "cut-after-events",
                                     "events": 2, "times": 1})  # fmt: skip
    watch = urllib.request.Request(
        f"{server}/api/v1/namespaces/{namespace}/configmaps?watch=true&timeoutSeconds=20",
        headers={"Authorization": f"Bearer {token}"},
    )
    started = time.monotonic()
    with urllib.request.urlopen(watch, context=context, timeout=30) as response:
        lines = [line for line in response.read().splitlines() if line.strip()]
    assert len(lines) == 2 and time.monotonic() - started < 15, "cut after two events"
    testbed.proxy("POST", "/reset")
