"""Exceptions raised by prefect-kubernetes-rs.

Every error this package raises on its own account derives from `KubernetesRsError`.
Problems with a job template or manifest are `ManifestError`s, which are also `ValueError`s,
so pydantic reports them as validation errors of the job configuration.
"""

from __future__ import annotations


class KubernetesRsError(Exception):
    """Base class of the errors raised by prefect-kubernetes-rs."""


class ManifestError(KubernetesRsError, ValueError):
    """A job template, job manifest or job variable that cannot make a valid Kubernetes Job."""


class ClusterConfigError(KubernetesRsError):
    """The Kubernetes configuration (kubeconfig, context, in-cluster account) cannot be used."""

    source_name: str | None = None


class ClusterUnreachableError(KubernetesRsError):
    """The Kubernetes API server did not answer (refused, TLS failure, timeout, reset)."""


class KubernetesApiError(KubernetesRsError):
    """The Kubernetes API server refused or failed a request.

    `status_code`, `reason` (e.g. `Forbidden`) and `api_message` carry the API's answer.
    """

    status_code: int | None = None
    reason: str | None = None
    api_message: str | None = None


class InvalidPidError(KubernetesRsError, ValueError):
    """An infrastructure pid that is neither `<cluster uid>:<namespace>:<job>` nor
    `<namespace>:<job>`."""


class JobElsewhereError(KubernetesRsError):
    """A flow run's Job lives in another namespace or on another cluster than the worker's."""


class JobNotFoundError(KubernetesRsError):
    """A flow run's Job does not exist (any more)."""
