"""The worker as Prefect finds it: plugin registration, its template, settings, its limits."""

from __future__ import annotations

import importlib.metadata
import os

import pytest
from prefect.plugins import load_prefect_collections
from prefect.workers.base import BaseWorker

from prefect_kubernetes_rs.settings import KubernetesRsSettings, current_settings
from prefect_kubernetes_rs.worker import KubernetesWorker


def test_prefect_finds_the_worker_type_through_its_plugin_entry_point():
    entry_points = importlib.metadata.entry_points(group="prefect.collections")
    assert "prefect_kubernetes_rs" in {entry.name for entry in entry_points}
    load_prefect_collections()
    assert BaseWorker.get_worker_class_from_type("kubernetes-rs") is KubernetesWorker


def test_default_template_renders_the_variables_the_ui_shows():
    template = KubernetesWorker.get_default_base_job_template()
    properties = template["variables"]["properties"]
    for name in (
        "namespace", "image", "service_account_name", "image_pull_policy", "backoff_limit",
        "finished_job_ttl", "annotations", "cpu_request", "cpu_limit", "memory_request",
        "memory_limit", "job_watch_timeout_seconds", "pod_watch_timeout_seconds",
        "stream_output", "cluster_config", "name", "env", "labels", "command",
    ):  # fmt: skip
        assert properties[name].get("description"), f"{name} has no help text"
    assert "deadline" in properties["job_watch_timeout_seconds"]["description"]
    assert template["job_configuration"]["job_manifest"]["kind"] == "Job"


def test_settings_read_the_prefect_kubernetes_names_and_aliases(monkeypatch):
    monkeypatch.setenv("PREFECT_KUBERNETES_CLUSTER_UID", "uid-from-alias")
    monkeypatch.setenv("PREFECT_KUBERNETES_WORKER_STORE_PREFECT_API_IN_SECRET", "true")
    monkeypatch.setenv("PREFECT_INTEGRATIONS_KUBERNETES_WORKER_CREATE_JOB_RETRY_MAX_RETRIES", "5")
    settings = KubernetesRsSettings()
    assert settings.cluster_uid == "uid-from-alias"
    assert settings.worker.create_secret_for_api_key is True
    assert settings.worker.create_job_retry.max_retries == 5
    assert settings.worker.add_tcp_keepalive is True

    monkeypatch.setenv("PREFECT_INTEGRATIONS_KUBERNETES_CLUSTER_UID", "uid-canonical")
    monkeypatch.delenv("PREFECT_KUBERNETES_CLUSTER_UID")
    assert KubernetesRsSettings().cluster_uid == "uid-canonical"


def test_settings_defaults_match_the_python_worker(monkeypatch):
    for name in list(os.environ):
        if name.startswith(("PREFECT_INTEGRATIONS_KUBERNETES", "PREFECT_KUBERNETES")):
            monkeypatch.delenv(name)
    settings = KubernetesRsSettings()
    retry = settings.worker.create_job_retry
    assert (retry.max_retries, retry.delay_seconds, retry.jitter_min_seconds) == (3, 1, 0)
    assert retry.jitter_max_seconds == 3
    assert settings.worker.create_secret_for_api_key is False
    assert settings.cluster_uid is None


def test_settings_are_read_again_when_their_environment_changes(monkeypatch):
    monkeypatch.setenv("PREFECT_INTEGRATIONS_KUBERNETES_CLUSTER_UID", "uid-one")
    first = current_settings()
    assert first.cluster_uid == "uid-one"
    assert current_settings() is first, "unchanged environment: the same settings, not re-read"
    monkeypatch.setenv("PREFECT_INTEGRATIONS_KUBERNETES_CLUSTER_UID", "uid-two")
    assert current_settings().cluster_uid == "uid-two"
    monkeypatch.setenv("prefect_kubernetes_worker_store_prefect_api_in_secret", "true")
    assert current_settings().worker.create_secret_for_api_key is True


def test_settings_follow_the_working_directory(monkeypatch, tmp_path):
    for name in list(os.environ):
        if name.startswith(("PREFECT_INTEGRATIONS_KUBERNETES", "PREFECT_KUBERNETES")):
            monkeypatch.delenv(name)
    assert current_settings().worker.create_job_retry.max_retries == 3
    (tmp_path / "prefect.toml").write_text(
        "[integrations.kubernetes.worker.create_job_retry]\nmax_retries = 7\n"
    )
    monkeypatch.chdir(tmp_path)
    assert current_settings().worker.create_job_retry.max_retries == 7


class ScriptedStates:
    """Stands in for Prefect's client: each `read_flow_run_states` call gets the next answer."""

    def __init__(self, *answers: list) -> None:
        self.answers = answers
        self.calls = 0

    async def __aenter__(self) -> ScriptedStates:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    async def read_flow_run_states(self, flow_run_id: object) -> list:
        answer = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        return answer


def _evicted_run_check(monkeypatch, client: ScriptedStates):
    import datetime
    import uuid

    from prefect.client.schemas.objects import FlowRun

    monkeypatch.setattr("prefect.client.orchestration.get_client", lambda: client)
    worker = KubernetesWorker(work_pool_name="reschedule-check")
    flow_run = FlowRun(id=uuid.uuid4(), name="evicted", flow_id=uuid.uuid4())
    created = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=5)
    return worker._was_rescheduled(flow_run, since=created)


async def test_an_evicted_run_that_reschedules_itself_a_moment_later_is_seen(monkeypatch):
    """The kubelet publishes the eviction before SIGTERM: the flow's engine may reschedule the
    run only after the worker saw the Job fail. The worker keeps looking."""
    from prefect.states import Running, Scheduled

    client = ScriptedStates([Running()], [Running()], [Running(), Scheduled()])
    assert await _evicted_run_check(monkeypatch, client) is True
    assert client.calls == 3


async def test_an_evicted_run_that_never_reschedules_is_not_waited_for_forever(monkeypatch):
    from prefect.states import Running

    import prefect_kubernetes_rs.worker as worker_module

    monkeypatch.setattr(worker_module, "_RESCHEDULE_PATIENCE_SECONDS", 2)
    client = ScriptedStates([Running()])
    assert await _evicted_run_check(monkeypatch, client) is False
    assert 2 <= client.calls <= 4


@pytest.mark.parametrize(
    ("current", "proposed"),
    [("Pending", True), ("Submitting", True), ("Running", False), ("Scheduled", False),
     ("Crashed", False), ("InfrastructurePending", False)],
)  # fmt: skip
async def test_infrastructure_pending_is_proposed_only_over_the_workers_own_pending(
    current, proposed
):
    """A pod waiting for a node shows in Prefect as InfrastructurePending with the reason, but
    only over the states the worker itself set before the Job (Pending, Submitting): never over
    a state the run moved on from (Prefect itself refuses Running to Pending, not Scheduled or
    a final state to Pending)."""
    import uuid

    from prefect.client.schemas.objects import FlowRun, State, StateType
    from prefect.client.schemas.responses import OrchestrationResult, SetStateStatus

    types = {"Pending": StateType.PENDING, "Submitting": StateType.PENDING,
             "InfrastructurePending": StateType.PENDING, "Running": StateType.RUNNING,
             "Scheduled": StateType.SCHEDULED, "Crashed": StateType.CRASHED}  # fmt: skip
    run_id = uuid.uuid4()
    asked: list[State] = []

    class Client:
        async def read_flow_run(self, flow_run_id: uuid.UUID) -> FlowRun:
            state = State(type=types[current], name=current)
            return FlowRun(id=flow_run_id, name="r", flow_id=uuid.uuid4(), state=state)

        async def set_flow_run_state(self, flow_run_id, state, force=False):
            asked.append(state)
            return OrchestrationResult(state=state, status=SetStateStatus.ACCEPT, details={})

    worker = KubernetesWorker(work_pool_name="pending-check")
    worker._client = Client()  # type: ignore[assignment]
    why = "Kubernetes pod is pending: Unschedulable: 0/3 nodes are available"
    await worker._propose_infrastructure_pending(run_id, why)
    assert [(state.name, state.message) for state in asked] == (
        [("InfrastructurePending", why)] if proposed else []
    )
