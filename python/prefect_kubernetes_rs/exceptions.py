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
