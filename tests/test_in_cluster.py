"""In the cluster, as most users run a worker (Prefect's `prefect-worker` Helm chart): the
worker's pod has a service account's token, `KUBERNETES_SERVICE_HOST`/`PORT` and no kubeconfig.

A real `prefect worker start --type kubernetes-rs` runs the way a pod would: in a private mount
namespace whose /var/run/secrets/kubernetes.io/serviceaccount holds `token`, `ca.crt` and
`namespace`, laid out as the kubelet writes a projected volume (`..data` swapped atomically on
each rotation), with the identity `deploy/worker-rbac.yaml` gives it and nothing else: no
KUBECONFIG, a HOME without `~/.kube`. Its flows run in the testbed's pods and report to a real
Prefect server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect_support import PrefectServer, WorkerProcess

from prefect_kubernetes_rs.worker import KubernetesWorker

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.skipif(os.geteuid() != 0, reason="a private mount namespace needs root"),
]

ROOT = Path(__file__).resolve().parents[1]
FLOWS = Path(__file__).resolve().parent / "e2e_flows"
RBAC = ROOT / "deploy" / "worker-rbac.yaml"
SERVICE_ACCOUNT = "prefect-worker"
# Where in-cluster clients read the service account (/var/run is a link to /run).
SERVICE_ACCOUNT_MOUNT = "/run/secrets/kubernetes.io/serviceaccount"
# kube-rs reads its token file again on the first request once the token it holds is 50 s old
# (kube-client's TokenFile: reloaded 10 s before its 60 s are up).
TOKEN_REREAD_SECONDS = 50


def worker_rbac(namespace: str) -> list[dict[str, Any]]:
    """`deploy/worker-rbac.yaml` for the namespace `namespace`, as a user edits it; the
    cluster-scoped objects get the namespace in their names, so runs of this test do not share
    them."""
    documents = [doc for doc in yaml.safe_load_all(RBAC.read_text()) if doc]
    for document in documents:
        metadata = document["metadata"]
        if document["kind"] in ("ClusterRole", "ClusterRoleBinding"):
            metadata["name"] += f"-{namespace}"
        else:
            assert metadata["namespace"] == "prefect", document
            metadata["namespace"] = namespace
        if "roleRef" in document and document["roleRef"]["kind"] == "ClusterRole":
            document["roleRef"]["name"] += f"-{namespace}"
        for subject in document.get("subjects", []):
            subject["namespace"] = namespace
    return documents


def answer_to(testbed: Any, token: str, namespace: str) -> int:
    """The API server's HTTP status for a pod list in `namespace` with `token`."""
    request = urllib.request.Request(
        f"{testbed.env['PKR_APISERVER_URL']}/api/v1/namespaces/{namespace}/pods",
        headers={"Authorization": f"Bearer {token}"},
    )
    context = ssl.create_default_context(cafile=testbed.env["PKR_CA_FILE"])
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


class ServiceAccountVolume:
    """A pod's service-account volume as the kubelet writes it (its AtomicWriter): the files
    live in a timestamped directory that `..data` points at, `token` is a link to
    `..data/token`, and an update writes a new directory and renames a new `..data` link over
    the old one, so a reader sees the old files or the new ones, never a mix."""

    def __init__(self, path: Path, ca_file: Path, namespace: str, token: str) -> None:
        self.path = path
        self.path.mkdir()
        self.ca = ca_file.read_text()
        self.namespace = namespace
        self.write(token)
        for name in ("token", "ca.crt", "namespace"):
            (self.path / name).symlink_to(f"..data/{name}")

    def write(self, token: str) -> None:
        data = self.path / "..data"
        previous = data.resolve() if data.is_symlink() else None
        version = self.path / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{time.monotonic_ns()}"
        version.mkdir()
        for name, text in (("token", token), ("ca.crt", self.ca), ("namespace", self.namespace)):
            (version / name).write_text(text)
        (self.path / "..data_tmp").symlink_to(version.name)
        os.replace(self.path / "..data_tmp", data)
        if previous is not None:
            for file in previous.iterdir():
                file.unlink()
            previous.rmdir()


def start_worker_in_a_pod(
    stack: PrefectServer, pool: str, volume: Path, api_port: str, extra_env: dict[str, str]
) -> WorkerProcess:
    """`prefect worker start` as a pod runs it: the service account mounted at its place in a
    mount namespace of its own (a tmpfs over /run, so nothing of the host's /run shows), the
    API server in KUBERNETES_SERVICE_HOST/PORT, no kubeconfig anywhere."""
    # `mount -n`: no /run/mount/utab written onto the host's /run before the tmpfs hides it.
    mount_and_run = (
        "mount -n -t tmpfs -o mode=0755,size=1m tmpfs /run"
        f" && mkdir -p {SERVICE_ACCOUNT_MOUNT}"
        f' && mount -n --bind -o ro "$0" {SERVICE_ACCOUNT_MOUNT}'
        ' && exec "$@"'
    )
    return stack.start_worker(
        pool,
        kubeconfig=None,
        extra_env=extra_env
        | {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": api_port},
        # unshare and sh exec the worker: the process (and its session) is the worker's.
        wrapper=["unshare", "--mount", "--propagation", "private", "sh", "-c", mount_and_run,
                 str(volume)],
    )  # fmt: skip


def job_name(flow_run: Any) -> str:
    return flow_run.infrastructure_pid.rsplit(":", 1)[1]


def run_lines(output: str, flow_run_id: Any) -> list[str]:
    return [line for line in output.splitlines() if line.endswith(f"in run {flow_run_id}")]


def secrets_of(testbed: Any, namespace: str, flow_run_id: Any) -> list[dict[str, Any]]:
    listed = testbed.kubectl(
        "get", "secrets", "-n", namespace, "-l", f"prefect.io/flow-run-id={flow_run_id}",
        "-o", "json",
    )  # fmt: skip
    return json.loads(listed.stdout)["items"]


async def test_a_worker_in_a_pod_runs_flows_as_its_service_account_across_a_token_rotation(
    testbed, tmp_path
):
    """The worker's identity is the service account of `deploy/worker-rbac.yaml`, whose Secret
    rule is used (the API key and each Job's environment in Secrets). Mid-run the kubelet
    rotates the token; once kube-rs has had time to read the file again the old token is
    invalidated: the run in flight completes, and a run submitted after the invalidation gets
    its Job (a new request, which only the new token can make) and completes."""
    namespace = f"in-cluster-{uuid.uuid4().hex[:8]}"
    testbed.kubectl("create", "namespace", namespace)
    rbac = tmp_path / "worker-rbac.yaml"
    rbac.write_text(yaml.safe_dump_all(worker_rbac(namespace)))
    testbed.kubectl("apply", "-f", str(rbac))
    # Two objects the worker's tokens are bound to, as a pod's tokens are bound to the pod.
    first_holder, second_holder = "token-holder-1", "token-holder-2"
    for holder in (first_holder, second_holder):
        testbed.kubectl("create", "secret", "generic", holder, "-n", namespace)
    old_token = testbed.bound_token(namespace, SERVICE_ACCOUNT, first_holder)
    volume = ServiceAccountVolume(
        tmp_path / "serviceaccount", Path(testbed.env["PKR_CA_FILE"]), namespace, old_token
    )
    cluster_uid = testbed.kubectl(
        "get", "namespace", "kube-system", "-o", "jsonpath={.metadata.uid}"
    ).stdout.strip()

    stack = PrefectServer(tmp_path / "prefect")
    try:
        stack.start()
        template = KubernetesWorker.get_default_base_job_template()
        template["variables"]["properties"]["namespace"]["default"] = namespace
        pool = f"in-cluster-{uuid.uuid4().hex[:6]}"
        await stack.create_pool(pool, template)
        local = {"image": "local-process"}
        slow = await stack.deploy(FLOWS, "flows.py:lines_around_a_pause", pool, local)
        quick = await stack.deploy(FLOWS, "flows.py:numbered_lines", pool, local)
        # A Job the API server refuses (not a quantity): its environment's Secret is deleted.
        refused = await stack.deploy(
            FLOWS, "flows.py:numbered_lines", pool, local | {"cpu_limit": "x"}
        )
        # The run in flight across the rotation: its pause ends after the old token is gone.
        first = await stack.run_deployment(slow, {"pause": TOKEN_REREAD_SECONDS + 12})
        worker = start_worker_in_a_pod(
            stack, pool, volume.path, testbed.env["PKR_APISERVER_PORT"],
            {
                "PREFECT_API_KEY": "pnu_" + uuid.uuid4().hex,
                "PREFECT_INTEGRATIONS_KUBERNETES_WORKER_CREATE_SECRET_FOR_API_KEY": "true",
                "PREFECT_INTEGRATIONS_KUBERNETES_WORKER_STORE_ENV_AS_SECRET": "true",
            },
        )  # fmt: skip
        await stack.wait_for_state(
            [first.id], done=lambda run: bool(run.infrastructure_pid), timeout=120
        )

        # The kubelet rotates the token mid-run.
        volume.write(testbed.bound_token(namespace, SERVICE_ACCOUNT, second_holder))
        rotated = time.monotonic()
        refused_run = await stack.run_deployment(refused)
        refused_end = (await stack.wait_for_state([refused_run.id], timeout=120))[
            str(refused_run.id)
        ]
        assert refused_end.state.name == "Crashed", refused_end.state
        worker.wait_for_output(f"before 3 in run {first.id}", timeout=120)
        await asyncio.sleep(max(0.0, rotated + TOKEN_REREAD_SECONDS + 2 - time.monotonic()))

        # Invalidate the old token: the API server refuses it within its token cache's 10 s.
        testbed.kubectl("delete", "secret", first_holder, "-n", namespace)
        deadline = time.monotonic() + 30
        while answer_to(testbed, old_token, namespace) != 401:
            assert time.monotonic() < deadline, "the old token is still accepted"
            await asyncio.sleep(0.5)
        assert (await stack.read_flow_run(first.id)).state.name == "Running"
        # Its Job's requests can only carry the new token: a worker that kept the old one gets
        # 401 on them and this run crashes (`Unauthorized`).
        second = await stack.run_deployment(quick, {"count": 2})

        finished = await stack.wait_for_state([first.id, second.id], timeout=120)
        for flow_run in (first, second):
            assert finished[str(flow_run.id)].state.name == "Completed", finished
            worker.wait_for_output(f"Job '{job_name(finished[str(flow_run.id)])}' completed")
        output = worker.output()
        assert run_lines(output, first.id) == [
            f"{part} {n} in run {first.id}" for part in ("before", "after") for n in (1, 2, 3)
        ]
        assert run_lines(output, second.id) == [f"line {n} of 2 in run {second.id}" for n in (1, 2)]
        for flow_run in (first, second):
            name = job_name(finished[str(flow_run.id)])
            # The cluster's uid, which only the optional ClusterRole lets the worker read.
            assert finished[str(flow_run.id)].infrastructure_pid == (
                f"{cluster_uid}:{namespace}:{name}"
            )
            testbed.kubectl("get", "job", name, "-n", namespace)
            # The Job's environment in a Secret (create) that the Job owns (patch).
            (env_secret,) = secrets_of(testbed, namespace, flow_run.id)
            assert [owner["name"] for owner in env_secret["metadata"]["ownerReferences"]] == [name]
        assert secrets_of(testbed, namespace, refused_run.id) == [], "deleted with its refusal"
        listed = testbed.kubectl("get", "secrets", "-n", namespace, "-o", "name").stdout.split()
        assert [s for s in listed if s.startswith(f"secret/prefect-{pool}-api-key-")], listed
        for unexpected in (
            "could not be deleted",
            "could not be given",
            "forbidden",
            "Unauthorized",
        ):
            assert unexpected not in output, output[-3000:]
    finally:
        stack.stop()


def test_the_readme_shows_the_role_this_test_applies():
    """The README's RBAC block is `deploy/worker-rbac.yaml`, object for object."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("**RBAC**, as the worker needs it") :]
    start = section.index("```yaml\n") + len("```yaml\n")
    block = section[start : section.index("\n```", start)]
    documented = [doc for doc in yaml.safe_load_all(block) if doc]
    assert documented == [doc for doc in yaml.safe_load_all(RBAC.read_text()) if doc]


@pytest.mark.parametrize(
    ("missing", "warning"),
    [
        (("", "pods/log", "get"), "the API server refuses to give the log of pod"),
        (("", "pods", "watch"), "the API server refuses to watch pods"),
    ],
    ids=["no get on pods/log", "no watch on pods"],
)
async def test_a_role_missing_a_rule_is_said_at_warning_level(testbed, tmp_path, caplog, missing,
                                                             warning, monkeypatch):  # fmt: skip
    """A Role copied without one of its rules: the worker says which permission it lacks, in
    its output, instead of retrying quietly (before: a debug line per retry, no log lines and,
    for pods/log, the run's end held back for two minutes)."""
    from prefect.settings import (
        PREFECT_LOGGING_TO_API_ENABLED,
        PREFECT_TEST_MODE,
        temporary_settings,
    )
    from test_lifecycle import Worker, run_flow, scripted

    # The worker is driven without a Prefect server here (as in test_lifecycle.py): no events,
    # no logs to the API.
    monkeypatch.setattr("prefect.events.utilities.should_emit_events", lambda: False)
    caplog.set_level(logging.WARNING)
    api_group, resource, verb = missing
    namespace = f"rbac-{uuid.uuid4().hex[:8]}"
    testbed.kubectl("create", "namespace", namespace)
    documents = worker_rbac(namespace)
    (role,) = [document for document in documents if document["kind"] == "Role"]
    for rule in role["rules"]:
        if rule["apiGroups"] == [api_group] and resource in rule["resources"]:
            rule["verbs"].remove(verb)
    role["rules"] = [rule for rule in role["rules"] if rule["verbs"]]
    rbac = tmp_path / "worker-rbac.yaml"
    rbac.write_text(yaml.safe_dump_all(documents))
    testbed.kubectl("apply", "-f", str(rbac))
    testbed.kubectl("create", "secret", "generic", "token-holder", "-n", namespace)
    config = testbed.kubeconfig_dict()
    config["users"][0]["user"] = {
        "token": testbed.bound_token(namespace, SERVICE_ACCOUNT, "token-holder")
    }
    block = {"config": config, "context_name": config["current-context"]}
    with temporary_settings({PREFECT_TEST_MODE: True, PREFECT_LOGGING_TO_API_ENABLED: False}):
        async with Worker("rbac") as worker:
            result, _, _ = await run_flow(
                worker, block, namespace=namespace, pod_watch_timeout_seconds=10,
                annotations=scripted(log_lines=3),
            )  # fmt: skip
    assert warning in caplog.text, caplog.text
    if resource == "pods/log":
        assert "needs get on pods/log in the namespace" in caplog.text
        assert result.status_code == 0  # the Job's end still counts
    else:
        assert "needs list and watch on jobs and pods" in caplog.text
