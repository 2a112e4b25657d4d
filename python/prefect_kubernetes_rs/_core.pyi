"""The native core of prefect-kubernetes-rs (Rust, built with PyO3).

Manifests cross this boundary as plain JSON-compatible data (dicts, lists, strings, numbers,
booleans, None). Problems with the data raise `prefect_kubernetes_rs.exceptions.ManifestError`,
a `ValueError`.
"""

from collections.abc import Awaitable
from typing import Any, final

__all__ = [
    "ClusterHandle",
    "KubernetesClients",
    "RunEvents",
    "RunWatch",
    "__version__",
    "active_followers",
    "default_job_manifest_template",
    "prepare_job_manifest",
    "render_template",
    "slugify_label_key",
    "slugify_label_value",
    "slugify_name",
    "split_command",
    "validate_job_manifest",
]

__version__: str

def render_template(template: Any, values: dict[str, Any]) -> tuple[Any, bool]:
    """Render `template` with `values` by Prefect's `{{ placeholder }}` rules; return
    `(rendered, needs_api_resolution)`.

    A string that is exactly one placeholder becomes the value (any JSON type); a missing value
    removes the key or list item holding it; placeholders inside other text become Python's
    `str()` of the value; `{{ $NAME }}` reads the process environment. Block and
    `prefect.variables` placeholders are left as they are. Returns None where Prefect returns
    `NotSet` (the whole template was one missing placeholder). `needs_api_resolution` tells
    whether `$ref` block references or `prefect.blocks.*` / `prefect.variables.*` placeholders
    remain, which only the Prefect API can resolve.
    """

def validate_job_manifest(job_manifest: Any, namespace: str) -> dict[str, Any]:
    """Check that `job_manifest` is a Job a flow can run in; return it with `metadata`,
    `metadata.labels`, `metadata.annotations` and `metadata.namespace` filled in.

    Raises ManifestError with the Python worker's wording ("Job is missing required attributes
    at the following paths: ..." / "Job has incompatible values for the following attributes:
    ...") or when two containers are named `prefect-job`.
    """

def prepare_job_manifest(
    job_manifest: Any,
    env: dict[str, Any],
    env_references: list[dict[str, Any]],
    labels: dict[str, Any],
    annotations: dict[str, Any],
    name: str | None,
    default_image: str,
    api_dns_name: str | None = None,
) -> tuple[dict[str, Any], dict[str, Any] | list[dict[str, Any]]]:
    """Prepare a validated manifest for one flow run; return `(manifest, env)`.

    Sets the `prefect-job` container's env (Prefect's values win over hard-coded entries,
    `valueFrom` entries kept after the plain ones, the SIGTERM behaviour for evictions), image,
    args (the command as POSIX shell words) and the Job's generateName; slugifies and copies
    labels and annotations onto the Job and its pod. `env` comes back as a mapping, or as a
    list of entries when `env_references` is not empty.
    """

def default_job_manifest_template() -> dict[str, Any]:
    """The Job manifest template of the `kubernetes-rs` work pool type."""

def slugify_name(name: str) -> str | None:
    """A lowercase slug of at most 45 characters for a Job's generateName, or None if empty."""

def slugify_label_key(key: str) -> str:
    """A label key slug: optional prefix (at most 253) and name (at most 63), case kept."""

def slugify_label_value(value: str) -> str:
    """A label value slug of at most 63 characters, case kept."""

def active_followers() -> int:
    """How many runs this process is following right now."""

def split_command(command: str) -> list[str]:
    """Split `command` into words as a POSIX shell does (Python's `shlex.split`)."""

@final
class KubernetesClients:
    """The Kubernetes clients of one worker: one per distinct cluster configuration, kept for
    the worker's lifetime, with the shared job and pod watchers of each namespace."""

    def __new__(cls) -> KubernetesClients: ...
    def connect(
        self, kubeconfig: dict[str, Any] | None = None, context: str | None = None
    ) -> Awaitable[ClusterHandle]:
        """The cluster of a kubeconfig and context; without one, the in-cluster service account
        else the default kubeconfig. Raises ClusterConfigError naming the source."""

    def connected(
        self, kubeconfig: dict[str, Any] | None = None, context: str | None = None
    ) -> ClusterHandle | None:
        """The cluster of this kubeconfig and context if it is connected already, else None."""

    def close(self) -> Awaitable[None]:
        """Stop every watcher and forget every client."""

@final
class ClusterHandle:
    """One connected cluster."""

    @property
    def source_name(self) -> str:
        """Where the configuration came from."""

    @property
    def server(self) -> str:
        """The API server's URL."""

    def watch_run(self, namespace: str, flow_run_id: str) -> Awaitable[RunWatch]:
        """Subscribe to a flow run's Jobs and pods (before creating its Job)."""

    def create_job(
        self,
        namespace: str,
        manifest: dict[str, Any],
        flow_run_id: str,
        max_attempts: int = 3,
        delay_seconds: float = 1.0,
        jitter_min_seconds: float = 0.0,
        jitter_max_seconds: float = 3.0,
    ) -> Awaitable[dict[str, Any]]:
        """Create the Job (retrying only this call; adopting a Job an ambiguous attempt made);
        returns `{name, namespace, uid, adopted, attempts}`. Raises KubernetesApiError or
        ClusterUnreachableError."""

    def find_run_job(self, namespace: str, flow_run_id: str) -> Awaitable[dict[str, Any] | None]:
        """The newest live Job of a flow run."""

    def delete_job(
        self, namespace: str, name: str, grace_seconds: int | None = None
    ) -> Awaitable[bool]:
        """Delete a Job with Foreground propagation; False when it did not exist."""

    def ensure_secret(self, namespace: str, name: str, key: str, value: str) -> Awaitable[bool]:
        """Create the Secret `name` with `value` under `key` unless it exists; True if created."""

    def delete_secret(self, namespace: str, name: str) -> Awaitable[bool]:
        """Delete the Secret `name`; False when it did not exist."""

    def cluster_uid(self) -> Awaitable[tuple[str | None, str | None]]:
        """`(uid, None)` of the kube-system namespace, or `(None, reason)`; read once."""

    def known_cluster_uid(self) -> tuple[str | None, str | None] | None:
        """What `cluster_uid` returned, without an await, once it was read; else None."""

    def watch_stats(self, namespace: str) -> dict[str, int]:
        """The shared watchers of a namespace: `job_watches_opened`, `pod_watches_opened`,
        `resyncs`, `subscribed_runs`."""

@final
class RunWatch:
    """A run's subscription to the shared watchers."""

    def follow(
        self,
        job_name: str,
        pod_watch_timeout_seconds: float = 60.0,
        job_watch_timeout_seconds: float | None = None,
        stream_output: bool = True,
    ) -> RunEvents:
        """Follow the Job to its end. With `stream_output`, the container's log lines are
        printed on `sys.stdout` (one printer thread for all runs, batched), all of them before
        the `finished` event arrives."""

    def close(self) -> None:
        """Drop the subscription without following."""

@final
class RunEvents:
    """Async iterator of event batches: lists of dicts with `kind` `message` (`level`,
    `text`), `pod` (`name`, `uid`, `phase`, `evicted`, `reason`) or `finished` (`exit_code`,
    `message`, `evicted`), the last."""

    def __aiter__(self) -> RunEvents: ...
    def __anext__(self) -> Awaitable[list[dict[str, Any]]]: ...
    def close(self) -> None:
        """Stop following; the Job is left as it is."""
