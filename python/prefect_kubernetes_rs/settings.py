"""Settings of the `kubernetes-rs` worker.

They use the names of `prefect-kubernetes`, so an existing deployment of the Python worker
configures this one unchanged: environment variables `PREFECT_INTEGRATIONS_KUBERNETES_*`
(plus the older `PREFECT_KUBERNETES_*` aliases), `.env`, `prefect.toml`
(`[integrations.kubernetes]`) or `pyproject.toml` (`[tool.prefect.integrations.kubernetes]`).
"""

from __future__ import annotations

import os

from prefect.settings.base import PrefectBaseSettings, build_settings_config
from pydantic import AliasChoices, AliasPath, Field

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
