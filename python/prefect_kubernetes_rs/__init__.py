"""prefect-kubernetes-rs: a Prefect worker that runs flow runs as Kubernetes Jobs, with its
core in Rust.

Start it with `prefect worker start --pool my-pool --type kubernetes-rs`.
"""

from __future__ import annotations

from prefect_kubernetes_rs._core import __version__
from prefect_kubernetes_rs.worker import (
    KubernetesClusterConfig,
    KubernetesWorker,
    KubernetesWorkerJobConfiguration,
    KubernetesWorkerResult,
    KubernetesWorkerVariables,
)

__all__ = [
    "KubernetesClusterConfig",
    "KubernetesWorker",
    "KubernetesWorkerJobConfiguration",
    "KubernetesWorkerResult",
    "KubernetesWorkerVariables",
    "__version__",
]
