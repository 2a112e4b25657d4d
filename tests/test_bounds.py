"""Every number and string a user or Prefect hands the worker is checked: a value out of range
gets an error that names the field, never a panic of the Rust core (in the calling thread or
in any other). Before these bounds, `pod_watch_timeout_seconds: 10000000000000000000` panicked
the run's tokio task ("overflow when adding duration to instant") and the run was lost.

Property tests (hypothesis) feed NaN, infinities, negatives, 1e19, 1e20 and huge strings to
every numeric field of the job configuration, every setting and every binding that takes one.
"""

from __future__ import annotations

import asyncio
import copy
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from prefect_kubernetes_rs import _core
from prefect_kubernetes_rs.exceptions import InvalidPidError, JobElsewhereError, ManifestError
from prefect_kubernetes_rs.settings import KubernetesRsSettings
from prefect_kubernetes_rs.worker import KubernetesWorker, KubernetesWorkerJobConfiguration

TEMPLATE = KubernetesWorker.get_default_base_job_template()
YEARS_10 = 10 * 365 * 24 * 3600

# The values that broke things, and their neighbours.
EXTREMES = [
    math.nan,
    math.inf,
    -math.inf,
    -1,
    -1.5,
    1e19,
    1e20,
    10_000_000_000_000_000_000,
    2**64,
    -(2**63) - 1,
    YEARS_10 + 1,
    "9" * 5000,
    "x" * 100_000,
]
numbers = st.one_of(
    st.sampled_from(EXTREMES),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**70), max_value=2**70),
)
PROPERTY = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def in_range(value: Any, low: int, high: int) -> bool:
    """Would pydantic take `value` as an integer field within [low, high]?"""
    if isinstance(value, bool) or isinstance(value, str):
        return False
    if isinstance(value, float):
        return math.isfinite(value) and value.is_integer() and low <= value <= high
    return low <= value <= high


def configuration(**values: Any) -> KubernetesWorkerJobConfiguration:
    return asyncio.run(
        KubernetesWorkerJobConfiguration.from_template_and_values(copy.deepcopy(TEMPLATE), values)
    )


@pytest.mark.parametrize("field", ["pod_watch_timeout_seconds", "job_watch_timeout_seconds"])
@PROPERTY
@given(value=numbers)
def test_timeouts_out_of_range_are_refused_naming_the_field(field: str, value: Any) -> None:
    if in_range(value, 0, YEARS_10):
        assert getattr(configuration(**{field: value}), field) == int(value)
        return
    # pydantic's range check, or, for an integer JSON cannot hold, the template renderer's.
    with pytest.raises((ValidationError, ManifestError)) as refused:
        configuration(**{field: value})
    assert field in str(refused.value)


VARIABLES = sorted(TEMPLATE["variables"]["properties"])


@pytest.mark.parametrize("variable", VARIABLES)
@settings(max_examples=40, deadline=None)
@given(value=st.one_of(st.sampled_from(EXTREMES), numbers))
def test_any_variable_with_an_extreme_value_is_taken_or_refused_naming_it(
    variable: str, value: Any
) -> None:
    """Every job variable of the pool: the worker builds its configuration, or refuses with the
    variable's name (what the API server then says of a value it takes is its business)."""
    try:
        configuration(**{variable: value})
    except (ValidationError, ManifestError) as refused:
        assert variable in str(refused), str(refused)


SETTINGS = {
    "max_retries": (1, _core.MAX_CREATE_ATTEMPTS),
    "delay_seconds": (0, _core.MAX_CREATE_PAUSE_SECONDS),
    "jitter_min_seconds": (0, _core.MAX_CREATE_PAUSE_SECONDS),
    "jitter_max_seconds": (0, _core.MAX_CREATE_PAUSE_SECONDS),
}


@pytest.mark.parametrize("field", list(SETTINGS))
@PROPERTY
@given(value=numbers)
def test_settings_out_of_range_are_refused_naming_the_setting(
    field: str, value: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    variable = f"PREFECT_INTEGRATIONS_KUBERNETES_WORKER_CREATE_JOB_RETRY_{field.upper()}"
    text = repr(value) if isinstance(value, float) else str(value)
    monkeypatch.setenv(variable, text)
    low, high = SETTINGS[field]
    if isinstance(value, int) and low <= value <= high:
        assert getattr(KubernetesRsSettings().worker.create_job_retry, field) == value
        return
    if isinstance(value, float) and in_range(value, low, high) and text.endswith(".0"):
        return  # "3.0" in an environment variable: pydantic's own business, not a range
    with pytest.raises(ValidationError) as refused:
        KubernetesRsSettings()
    assert field in str(refused.value)


# --- the bindings: the last line, for callers that bypass the pydantic models ---------------


@pytest.fixture(scope="module")
def cluster() -> _core.ClusterHandle:
    """A cluster handle on a loopback address nothing listens on: the checks come first."""
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:9"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }

    async def connect() -> _core.ClusterHandle:
        return await _core.KubernetesClients(tcp_keepalive=True).connect(kubeconfig, "x")

    return asyncio.run(connect())


START_ARGUMENTS: dict[str, Any] = {
    "namespace": "default",
    "flow_run_id": "run",
    "manifest": {"kind": "Job"},
    "pod_watch_timeout_seconds": 60.0,
    "job_watch_timeout_seconds": None,
    "stream_output": True,
    "create_attempts": 3,
    "create_delay_seconds": 1.0,
    "create_jitter_min_seconds": 0.0,
    "create_jitter_max_seconds": 3.0,
    "cluster_uid": None,
    "api_key_secret_name": None,
    "api_key_secret_key": None,
    "create_api_key_secret_for_pool": None,
    "api_auth_string_secret_name": None,
    "api_auth_string_secret_key": None,
    "store_env_as_secret": False,
}
SECONDS_ARGUMENTS = {
    "pod_watch_timeout_seconds": ("pod_watch_timeout_seconds", YEARS_10),
    "job_watch_timeout_seconds": ("job_watch_timeout_seconds", YEARS_10),
    "create_delay_seconds": ("create_job_retry.delay_seconds", 3600),
    "create_jitter_min_seconds": ("create_job_retry.jitter_min_seconds", 3600),
    "create_jitter_max_seconds": ("create_job_retry.jitter_max_seconds", 3600),
}
floats = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, -1.0, 1e19, 1e20, YEARS_10 + 0.5]),
    st.floats(allow_nan=True, allow_infinity=True),
)


@pytest.mark.parametrize("argument", list(SECONDS_ARGUMENTS))
@PROPERTY
@given(value=floats)
def test_start_run_refuses_seconds_out_of_range_naming_them(
    cluster: _core.ClusterHandle, argument: str, value: float, capfd: pytest.CaptureFixture[str]
) -> None:
    name, high = SECONDS_ARGUMENTS[argument]
    if math.isfinite(value) and 0 <= value <= high:
        return  # in range: a real start, covered by the lifecycle tests
    with pytest.raises(ValueError, match=rf"^{re_escape(name)} must be a number of seconds"):
        cluster.start_run(**(START_ARGUMENTS | {argument: value}))
    assert "panicked" not in capfd.readouterr().err


@PROPERTY
@given(
    value=st.one_of(st.sampled_from([0, -1, 101, 2**31, 2**32 + 1]), st.integers(-(2**62), 2**62))
)
def test_start_run_refuses_attempts_out_of_range(
    cluster: _core.ClusterHandle, value: int, capfd: pytest.CaptureFixture[str]
) -> None:
    if 1 <= value <= _core.MAX_CREATE_ATTEMPTS:
        return
    with pytest.raises(ValueError, match=r"^create_job_retry.max_retries must be from 1 to 100"):
        cluster.start_run(**(START_ARGUMENTS | {"create_attempts": value}))
    assert "panicked" not in capfd.readouterr().err


def test_integers_beyond_64_bits_are_refused_not_wrapped(cluster: _core.ClusterHandle) -> None:
    with pytest.raises(OverflowError):
        cluster.start_run(**(START_ARGUMENTS | {"create_attempts": 2**70}))


@PROPERTY
@given(grace=st.one_of(st.sampled_from([-1, 2**32, 2**40]), st.integers(-(2**62), 2**62)))
def test_kill_refuses_a_grace_period_out_of_range(
    cluster: _core.ClusterHandle, grace: int, capfd: pytest.CaptureFixture[str]
) -> None:
    if 0 <= grace <= 2**32 - 1:
        return
    with pytest.raises(ValueError, match=r"^grace_seconds must be a whole number of seconds"):
        cluster.kill_run("default:job", namespace="default", grace_seconds=grace, cluster_uid=None)
    assert "panicked" not in capfd.readouterr().err


@PROPERTY
@given(pid=st.one_of(st.sampled_from(["", ":", "a:b:c:d", "x" * 1_000_000]), st.text()))
def test_any_pid_text_is_refused_or_placed_never_a_panic(
    cluster: _core.ClusterHandle, pid: str
) -> None:
    parts = pid.split(":")
    if len(parts) in (2, 3) and parts[-2] == "default":
        return  # a pid of this namespace: it would be deleted, which needs a cluster
    with pytest.raises((InvalidPidError, JobElsewhereError)):
        cluster.kill_run(pid, namespace="default", grace_seconds=None, cluster_uid=None)


@PROPERTY
@given(
    text=st.one_of(st.sampled_from(["x" * 1_000_000, "\x00", "{{ x }}" * 10_000]), st.text()),
    number=numbers,
)
def test_manifest_functions_take_huge_and_odd_values_without_panicking(
    text: str, number: Any
) -> None:
    """Huge strings and extreme numbers anywhere in a template, its variables and the run's
    labels: a result or a ManifestError, nothing else."""
    template = {"job_manifest": TEMPLATE["job_configuration"]["job_manifest"], "n": "{{ n }}"}
    try:
        rendered, _ = _core.render_template(template, {"n": number, "name": text})
        manifest = _core.validate_job_manifest(rendered["job_manifest"], "default")
        _core.prepare_job_manifest(
            manifest,
            env={"A": text, "B": number if isinstance(number, str) else str(number)},
            env_list=None,
            labels={text[:300] or "k": text},
            annotations={"note": text},
            name=text,
            default_image="image:1",
            api_dns_name=text,
        )
    except ManifestError:
        pass


def re_escape(text: str) -> str:
    import re

    return re.escape(text)
