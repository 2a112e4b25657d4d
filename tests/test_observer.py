"""Runs nobody follows, the parts without a cluster: what a crashed run's state says, the
0.8-named settings, and the times of forwarded log lines. (End to end, with a real Prefect server
and the testbed: `test_end_to_end.py`, the tests about workers that were killed or stopped.)"""

from __future__ import annotations

import datetime
import logging
import uuid
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from prefect_kubernetes_rs.observer import (
    EndedJob,
    RunsNobodyFollows,
    _parse_time,
    crash_message,
)
from prefect_kubernetes_rs.settings import KubernetesRsSettings


def examination(**fields: Any) -> Any:
    defaults: dict[str, Any] = {
        "end": "failed",
        "end_reason": "BackoffLimitExceeded",
        "exit_code": 1,
        "message": None,
        "pod_reason": "Error",
    }
    return SimpleNamespace(**(defaults | fields))


def test_an_oom_kill_names_the_code_and_the_reason_as_prefect_words_an_exit():
    message = crash_message("job-a", examination(exit_code=137, pod_reason="OOMKilled"))
    assert message.startswith("Flow run infrastructure exited with non-zero status code 137 ")
    assert "(OOMKilled)" in message
    assert "Kubernetes Job 'job-a' failed (BackoffLimitExceeded)" in message
    assert "no worker process was following it" in message


def test_a_plain_error_exit_does_not_repeat_error():
    message = crash_message("job-a", examination(exit_code=3))
    assert "status code 3. " in message
    assert "(Error)" not in message


def test_a_deleted_job_says_job_deleted_and_one_without_exit_code_says_what_happened():
    deleted = crash_message("job-a", examination(end="deleted", end_reason=None, exit_code=-1))
    assert deleted == (
        "Kubernetes Job 'job-a' was deleted before it succeeded (Job deleted), while no worker "
        "process was following it."
    )
    lost = crash_message(
        "job-a",
        examination(exit_code=-1, message="the Job failed (X) without any pod", pod_reason=None),
    )
    assert lost.endswith("no worker process was following it: the Job failed (X) without any pod.")


def test_observer_settings_take_0_8_names_and_comma_lists(monkeypatch):
    prefix = "PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_"
    monkeypatch.setenv(prefix + "NAMESPACES", "data, ml")
    monkeypatch.setenv(prefix + "ADDITIONAL_LABEL_FILTERS", "team=data,env = prod")
    monkeypatch.setenv(prefix + "FORWARD_CRASHED_RUN_LOGS_TAIL_LINES", "20")
    monkeypatch.setenv(prefix + "ENABLED", "false")
    monkeypatch.setenv(prefix + "STARTUP_EVENT_CONCURRENCY", "3")
    observer = KubernetesRsSettings().observer
    assert observer.namespaces == ["data", "ml"]
    assert observer.label_filters() == [("team", "data"), ("env", "prod")]
    assert observer.forward_crashed_run_logs_tail_lines == 20
    assert observer.enabled is False
    assert observer.startup_event_concurrency == 3


@pytest.mark.parametrize(
    ("name", "value", "named"),
    [
        ("ADDITIONAL_LABEL_FILTERS", "team", "'team' is not a label filter: write label=value"),
        ("FORWARD_CRASHED_RUN_LOGS_TAIL_LINES", "0", "forward_crashed_run_logs_tail_lines"),
    ],
)
def test_a_bad_observer_setting_is_refused_naming_it(monkeypatch, name, value, named):
    monkeypatch.setenv("PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_" + name, value)
    with pytest.raises(ValidationError, match=named):
        KubernetesRsSettings()


def test_forwarded_lines_keep_the_kubelets_time_to_the_microsecond():
    assert _parse_time("2026-12-02T10:00:01.123456789Z") == datetime.datetime(
        2026, 12, 2, 10, 0, 1, 123456, tzinfo=datetime.timezone.utc
    )
    assert _parse_time("2026-12-02T10:00:01Z") == datetime.datetime(
        2026, 12, 2, 10, 0, 1, tzinfo=datetime.timezone.utc
    )
    assert _parse_time("not a time") is None
    assert _parse_time(None) is None


# --- judging a Job that ended while nobody followed it ----------------------------------------
# The worker's Prefect client and the cluster are stand-ins here: these tests isolate the rules
# (what is left alone, what is crashed, with which words, after how many reads). End to end with
# a real server and cluster: test_end_to_end.py.


class JudgingStandIns:
    """A worker whose Prefect client answers the flow run's reads from a script, a cluster
    whose examinations of the Job come from a script, and the proposals made."""

    def __init__(self, states: list[Any], examinations: list[Any], pid: str | None) -> None:
        from prefect.client.schemas.objects import FlowRun

        self.run_id = uuid.uuid4()
        self.states = states
        self.examinations = examinations
        self.reads = 0
        self.examined = 0
        self.proposed: list[str] = []
        self.flow_run = lambda state: FlowRun(
            id=self.run_id, name="r", flow_id=uuid.uuid4(), state=state, infrastructure_pid=pid
        )
        self.history: list[Any] = []
        standins = self

        class Client:
            async def read_flow_run(self, flow_run_id: uuid.UUID) -> Any:
                state = standins.states[min(standins.reads, len(standins.states) - 1)]
                standins.reads += 1
                return standins.flow_run(state)

            async def read_flow_run_states(self, flow_run_id: uuid.UUID) -> list[Any]:
                return standins.history

        class Cluster:
            async def examine_runs(self, namespace: str, runs: list[tuple[str, str]]) -> list[Any]:
                assert runs == [(str(standins.run_id), "job-a")]
                found = standins.examinations[standins.examined]
                standins.examined += 1
                return [found]

        self.worker = SimpleNamespace(client=Client(), _following=set(), _logger=None)
        self.cluster = Cluster()

    async def judge(self, created: datetime.datetime | None = None) -> None:
        observer = RunsNobodyFollows(self.worker)  # type: ignore[arg-type]

        async def propose_crashed(flow_run, message, cluster, namespace, job_name) -> None:
            assert (flow_run.id, namespace, job_name) == (self.run_id, "ns", "job-a")
            self.proposed.append(message)

        observer.propose_crashed = propose_crashed  # type: ignore[method-assign]
        await observer.judge(EndedJob(self.cluster, "ns", self.run_id, "job-a", created))  # type: ignore[arg-type]


@pytest.fixture
def short_patience(monkeypatch):
    import prefect_kubernetes_rs.observer as observer_module

    monkeypatch.setattr(observer_module, "RESCHEDULE_PATIENCE_SECONDS", 0.3)
    monkeypatch.setattr(observer_module, "_LOOK_INTERVAL_SECONDS", 0.05)


async def test_a_run_still_running_after_the_patience_is_crashed_with_the_exit_code_first_seen(
    short_patience,
):
    """The pod is read at once (its exit code and reason), the Job once more before proposing:
    by then a TTL may have deleted it, and the crash still names the OOM kill."""
    from prefect.states import Running

    standins = JudgingStandIns(
        [Running()],
        [
            examination(exit_code=137, pod_reason="OOMKilled", other_job_alive=False),
            examination(end="deleted", exit_code=-1, pod_reason=None, other_job_alive=False),
        ],
        pid="uid:ns:job-a",
    )
    await standins.judge()
    assert len(standins.proposed) == 1
    assert "status code 137 (OOMKilled)" in standins.proposed[0]
    assert standins.examined == 2, "the cluster is read twice, not at every look"
    assert standins.reads >= 3, "the flow run's state was looked at during the patience"


async def test_a_run_that_reschedules_itself_during_the_patience_is_left_alone(short_patience):
    from prefect.states import Running, Scheduled

    standins = JudgingStandIns(
        [Running(), Running(), Scheduled()], [examination(other_job_alive=False)], pid=None
    )
    await standins.judge()
    assert standins.proposed == []
    assert standins.examined == 1


async def test_a_run_that_rescheduled_and_was_picked_up_again_is_left_alone(short_patience):
    """Scheduled came and went between two looks (another worker proposed Pending before the
    new Job's pid): the run's history shows it rescheduled after the Job was created."""
    from prefect.states import Pending, Running, Scheduled

    created = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=5)
    standins = JudgingStandIns(
        [Running(), Pending()],
        [examination(other_job_alive=False), examination(other_job_alive=False)],
        pid="uid:ns:job-a",
    )
    standins.history = [Running(), Scheduled(), Pending()]
    await standins.judge(created)
    assert standins.proposed == []


async def test_a_run_with_another_job_alive_or_another_pid_is_left_alone(short_patience):
    from prefect.states import Running

    started_again = JudgingStandIns(
        [Running()],
        [examination(other_job_alive=False), examination(other_job_alive=True)],
        pid="uid:ns:job-a",
    )
    await started_again.judge()
    assert started_again.proposed == []

    moved_on = JudgingStandIns(
        [Running()], [examination(other_job_alive=False)], pid="uid:ns:job-b"
    )
    await moved_on.judge()
    assert moved_on.proposed == [] and moved_on.reads == 1


async def test_a_job_labelled_with_something_not_a_flow_run_id_is_passed_over():
    """A Job someone labelled `prefect.io/flow-run-id: nightly` is not a flow run's: it is not
    judged (before, its judging raised and logged a traceback); the next Job is judged as
    usual."""
    standins = JudgingStandIns([], [], pid=None)
    observer = RunsNobodyFollows(standins.worker)  # type: ignore[arg-type]
    started: list[Any] = []
    observer._task_group = SimpleNamespace(  # type: ignore[assignment]
        start_soon=lambda function, ended: started.append(ended)
    )

    def sighting(flow_run_id: str) -> Any:
        return SimpleNamespace(
            namespace="ns", flow_run_id=flow_run_id, job_name=f"job-{flow_run_id[:4]}",
            created="2026-12-02T10:00:00Z",
        )  # fmt: skip

    async def sightings():
        yield [sighting("nightly"), sighting(str(standins.run_id))]

    await observer._listen(standins.cluster, sightings())  # type: ignore[arg-type]
    assert [ended.flow_run_id for ended in started] == [standins.run_id]


async def test_after_a_watch_gap_the_runs_in_flight_there_whose_jobs_ended_are_judged():
    """The Job watch of `ns` lost its place: the pool's runs in flight in `ns` that nobody here
    follows are examined once, together; the ended ones are judged, the running one, the
    followed one and those of other namespaces are not."""
    from prefect.client.schemas.objects import FlowRun

    def in_flight(pid: str) -> FlowRun:
        return FlowRun(id=uuid.uuid4(), name="r", flow_id=uuid.uuid4(), infrastructure_pid=pid)

    failed, deleted, running, followed, elsewhere = (
        in_flight("ns:job-failed"),
        in_flight("ns:job-deleted"),
        in_flight("ns:job-running"),
        in_flight("ns:job-followed"),
        in_flight("other:job-x"),
    )
    ends = {"job-failed": "failed", "job-deleted": "deleted", "job-running": None}
    examined: list[list[tuple[str, str]]] = []

    class Cluster:
        async def examine_runs(self, namespace: str, runs: list[tuple[str, str]]) -> list[Any]:
            assert namespace == "ns"
            examined.append(runs)
            return [examination(end=ends[job], other_job_alive=False) for _, job in runs]

    worker = SimpleNamespace(_following={followed.id}, _logger=logging.getLogger("test"))
    observer = RunsNobodyFollows(worker)  # type: ignore[arg-type]
    judged: list[Any] = []
    observer._task_group = SimpleNamespace(  # type: ignore[assignment]
        start_soon=lambda function, ended: judged.append(ended)
    )

    async def runs_in_flight() -> list[FlowRun]:
        return [failed, deleted, running, followed, elsewhere]

    observer._runs_in_flight = runs_in_flight  # type: ignore[method-assign]
    await observer.sweep(Cluster(), "ns")  # type: ignore[arg-type]
    assert len(examined) == 1, "one examination for all of them"
    assert {job for _, job in examined[0]} == {"job-failed", "job-deleted", "job-running"}
    assert sorted((ended.flow_run_id, ended.job_name) for ended in judged) == sorted(
        [(failed.id, "job-failed"), (deleted.id, "job-deleted")]
    )
