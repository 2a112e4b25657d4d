"""Settings of the `kubernetes-rs` worker.

They use the names of `prefect-kubernetes`, so an existing deployment of the Python worker
configures this one unchanged: environment variables `PREFECT_INTEGRATIONS_KUBERNETES_*`
(plus the older `PREFECT_KUBERNETES_*` aliases), `.env`, `prefect.toml`
(`[integrations.kubernetes]`) or `pyproject.toml` (`[tool.prefect.integrations.kubernetes]`).
"""

from __future__ import annotations

import os
from typing import Annotated, Any

from prefect.settings.base import PrefectBaseSettings, build_settings_config
from pydantic import AliasChoices, AliasPath, Field, field_validator
from pydantic_settings import NoDecode

from prefect_kubernetes_rs import _core


def _aliases(field: str, *env_names: str) -> AliasChoices:
    """Accept the field name (from files) and each environment variable name given."""
    return AliasChoices(AliasPath(field), *env_names)


class CreateJobRetrySettings(PrefectBaseSettings):
    """How the worker retries the Kubernetes API call that creates a flow run's Job."""

    model_config = build_settings_config(
        ("integrations", "kubernetes", "worker", "create_job_retry")
    )

    max_retries: int = Field(
        default=_core.DEFAULT_CREATE_ATTEMPTS,
        ge=1,
        le=_core.MAX_CREATE_ATTEMPTS,
        description="How many times in all the worker tries to create a Job before giving up.",
    )
    delay_seconds: int = Field(
        default=_core.DEFAULT_CREATE_DELAY_SECONDS,
        ge=0,
        le=_core.MAX_CREATE_PAUSE_SECONDS,
        description="Seconds to wait between two attempts to create a Job.",
    )
    jitter_min_seconds: int = Field(
        default=_core.DEFAULT_CREATE_JITTER_MIN_SECONDS,
        ge=0,
        le=_core.MAX_CREATE_PAUSE_SECONDS,
        description="Least random extra wait added to the delay between attempts.",
    )
    jitter_max_seconds: int = Field(
        default=_core.DEFAULT_CREATE_JITTER_MAX_SECONDS,
        ge=0,
        le=_core.MAX_CREATE_PAUSE_SECONDS,
        description="Most random extra wait added to the delay between attempts.",
    )


class WorkerSettings(PrefectBaseSettings):
    """Settings of the worker process itself."""

    model_config = build_settings_config(("integrations", "kubernetes", "worker"))

    api_key_secret_name: str | None = Field(
        default=None,
        description="Name of an existing Kubernetes Secret that holds the Prefect API key; "
        "flow-run pods then read the key from it instead of from plain text.",
    )
    api_key_secret_key: str | None = Field(
        default=None, description="Key inside that Secret (default: 'value')."
    )
    api_auth_string_secret_name: str | None = Field(
        default=None,
        description="Name of an existing Kubernetes Secret that holds the Prefect API auth string.",
    )
    api_auth_string_secret_key: str | None = Field(
        default=None, description="Key of the auth string inside that Secret."
    )
    create_secret_for_api_key: bool = Field(
        default=False,
        description="Store the worker's Prefect API key in a Kubernetes Secret that this worker "
        "creates (and deletes when it stops), instead of in the Job manifest.",
        validation_alias=_aliases(
            "create_secret_for_api_key",
            "prefect_integrations_kubernetes_worker_create_secret_for_api_key",
            "prefect_kubernetes_worker_store_prefect_api_in_secret",
        ),
    )
    add_tcp_keepalive: bool = Field(
        default=True,
        description="Enable TCP keepalive on connections to the Kubernetes API, so load "
        "balancers do not drop idle watches and log streams.",
        validation_alias=_aliases(
            "add_tcp_keepalive",
            "prefect_integrations_kubernetes_worker_add_tcp_keepalive",
            "prefect_kubernetes_worker_add_tcp_keepalive",
        ),
    )
    store_env_as_secret: bool = Field(
        default=False,
        description="Move the flow container's plain environment values out of the Job "
        "manifest into a Secret per Job (read with envFrom, owned by the Job so it is deleted "
        "with it; deleted at once when the Job is refused). Needs create, patch and delete on "
        "secrets.",
    )
    create_job_retry: CreateJobRetrySettings = Field(
        default_factory=CreateJobRetrySettings,
        description="Retries of the call that creates a Job.",
    )


def _comma_list(value: Any) -> Any:
    """`a, b` (prefect-kubernetes 0.8's spelling in the environment) as a list; lists as given."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class ObserverSettings(PrefectBaseSettings):
    """Runs nobody follows: Prefect Jobs of runs that no `run()` of this process follows (the
    worker was restarted or killed, or another replica created them).

    The names are those of prefect-kubernetes 0.8's observer; here the observing is done by the
    worker's own shared watches (no second component, no extra watch).
    """

    model_config = build_settings_config(("integrations", "kubernetes", "observer"))

    enabled: bool = Field(
        default=True,
        description="End the flow runs whose Jobs failed or vanished while no worker process "
        "followed them, and follow again at start the pool's runs in flight on this cluster.",
    )
    namespaces: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Namespaces watched besides the pool template's default namespace and the "
        "namespaces of the runs in flight (comma-separated in the environment).",
    )
    additional_label_filters: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="`label=value` pairs (comma-separated in the environment) a Job must carry "
        "to be ended by this worker when nobody follows it. Applied by the worker, not the API "
        "server: the runs it follows share the same watches.",
    )
    replicate_pod_events: bool = Field(
        default=True,
        description="Emit a Prefect event for each phase change of the pods of the runs the "
        "worker follows and of the runs nobody follows in its namespaces.",
    )
    forward_crashed_run_logs: bool = Field(
        default=True,
        description="Send the last lines of a crashed run's flow container to the flow run's "
        "logs in Prefect, once the Crashed state was accepted.",
    )
    forward_crashed_run_logs_tail_lines: int = Field(
        default=500,
        ge=1,
        le=_core.MAX_LOG_TAIL_LINES,
        description="How many of those lines.",
    )
    startup_event_concurrency: int = Field(
        default=5,
        ge=1,
        description="Accepted for compatibility with prefect-kubernetes 0.8; has no effect here "
        "(this worker does not replay pod events at start, so it has no look-ups to bound).",
    )

    @field_validator("namespaces", "additional_label_filters", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return _comma_list(value)

    @field_validator("additional_label_filters")
    @classmethod
    def _pairs(cls, value: list[str]) -> list[str]:
        for pair in value:
            name, equals, label_value = pair.partition("=")
            if not equals or not name.strip():
                raise ValueError(
                    f"{pair!r} is not a label filter: write label=value, several separated by "
                    "commas (e.g. team=data,env=prod)"
                )
        return value

    def label_filters(self) -> list[tuple[str, str]]:
        """The filters as `(label, value)` pairs."""
        pairs = (pair.partition("=") for pair in self.additional_label_filters)
        return [(name.strip(), value.strip()) for name, _, value in pairs]


class KubernetesRsSettings(PrefectBaseSettings):
    """All settings of prefect-kubernetes-rs."""

    model_config = build_settings_config(("integrations", "kubernetes"))

    cluster_uid: str | None = Field(
        default=None,
        description="Identifier of the cluster used in infrastructure pids; when unset the "
        "worker reads the uid of the kube-system namespace once.",
        validation_alias=_aliases(
            "cluster_uid",
            "prefect_integrations_kubernetes_cluster_uid",
            "prefect_kubernetes_cluster_uid",
        ),
    )
    worker: WorkerSettings = Field(
        default_factory=WorkerSettings, description="Settings of the worker process."
    )
    observer: ObserverSettings = Field(
        default_factory=ObserverSettings,
        description="Runs nobody follows (prefect-kubernetes 0.8's observer settings).",
    )


_ENVIRONMENT_PREFIXES = ("PREFECT_INTEGRATIONS_KUBERNETES_", "PREFECT_KUBERNETES_")
_read: tuple[tuple[object, ...], KubernetesRsSettings] | None = None


def current_settings() -> KubernetesRsSettings:
    """The settings, read again only when one of their environment variables or the working
    directory (where `.env`, `prefect.toml` and `pyproject.toml` are looked up) changed.

    Reading them builds several pydantic-settings models (about 1 ms, the largest share of the
    worker's own CPU per flow run); like Prefect's own settings, an edit to those files takes
    effect when the worker starts again.
    """
    global _read
    key = (
        os.getcwd(),
        *sorted(
            (name, value)
            for name, value in os.environ.items()
            if name.upper().startswith(_ENVIRONMENT_PREFIXES)
        ),
    )
    if _read is None or _read[0] != key:
        _read = (key, KubernetesRsSettings())
    return _read[1]
