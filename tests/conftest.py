"""Shared fixtures: the Prefect objects a worker sees for one flow run, built locally."""

from __future__ import annotations

import datetime
import os
import uuid
from typing import Any

import pytest
from prefect.client.schemas.objects import Flow, FlowRun, WorkPool
from prefect.client.schemas.responses import DeploymentResponse

from prefect_kubernetes_rs.worker import KubernetesWorker


class NoApiClient:
    """Stands in for a Prefect client where no API call may happen; any use fails the test."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"unexpected Prefect API call: client.{name}")


@pytest.fixture
def no_api_client() -> NoApiClient:
    return NoApiClient()


@pytest.fixture
def flow() -> Flow:
    return Flow(id=uuid.UUID("11111111-1111-4111-8111-111111111111"), name="ETL Pipeline")


@pytest.fixture
def deployment(flow: Flow) -> DeploymentResponse:
    return DeploymentResponse(
        id=uuid.UUID("22222222-2222-4222-8222-222222222222"),
        name="nightly-load",
        flow_id=flow.id,
        updated=datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
    )


@pytest.fixture
def flow_run(flow: Flow, deployment: DeploymentResponse) -> FlowRun:
    return FlowRun(
        id=uuid.UUID("33333333-3333-4333-8333-333333333333"),
        name="happy-cat",
        flow_id=flow.id,
        deployment_id=deployment.id,
    )


@pytest.fixture
def work_pool() -> WorkPool:
    return WorkPool(
        id=uuid.UUID("44444444-4444-4444-8444-444444444444"),
        name="k8s-pool",
        type="kubernetes-rs",
        base_job_template=KubernetesWorker.get_default_base_job_template(),
    )


@pytest.fixture(scope="session")
def temporary_prefect_server_starts():
    """Refuses Prefect's temporary server for the whole session and lists who asked for one."""
    from prefect.server.api.server import SubprocessASGIServer

    asked: list[str] = []

    def refuse(self: object, timeout: int | None = None) -> None:
        asked.append(os.environ.get("PYTEST_CURRENT_TEST", "?"))
        raise RuntimeError("tests may not start Prefect's temporary server")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SubprocessASGIServer, "start", refuse)
        yield asked


@pytest.fixture(autouse=True)
def no_temporary_prefect_server(temporary_prefect_server_starts):
    """A test that reaches Prefect's API without a server of its own fails, instead of quietly
    starting Prefect's temporary server: that server outlives the test and, at interpreter
    exit, logs its stop into pytest's closed output ("--- Logging error ---"). Prefect's event
    emitter swallows the refusal, hence the check after each test. Tests that need Prefect's
    API start a real server (`prefect_support.PrefectServer`); the others keep events and API
    logging off (`test_lifecycle.no_prefect_server`)."""
    before = len(temporary_prefect_server_starts)
    yield
    assert len(temporary_prefect_server_starts) == before, (
        "this test reached Prefect's API without a Prefect server: start one "
        "(prefect_support.PrefectServer) or keep events and API logs off (no_prefect_server)"
    )


@pytest.fixture(scope="session")
def testbed(tmp_path_factory):
    """A real Kubernetes control plane, the fake kubelet and the fault proxy, per session."""
    from testbed_support import Testbed

    bed = Testbed(tmp_path_factory.mktemp("testbed") / "cluster")
    try:
        bed.start()
        yield bed
    finally:
        bed.stop()
