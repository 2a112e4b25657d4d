"""Runs nobody follows, the parts without a cluster: what a crashed run's state says, the
0.8-named settings, and the times of forwarded log lines. (End to end, with a real Prefect server
and the testbed: `test_end_to_end.py`, the tests about workers that were killed or stopped.)"""

from __future__ import annotations

import datetime
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from prefect_kubernetes_rs.observer import _parse_time, crash_message
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
