"""The native core of prefect-kubernetes-rs (Rust, built with PyO3).

Manifests cross this boundary as plain JSON-compatible data (dicts, lists, strings, numbers,
booleans, None). Problems with the data raise `prefect_kubernetes_rs.exceptions.ManifestError`,
a `ValueError`.
"""

from collections.abc import Awaitable
from typing import Any, Final, Literal, final

__all__ = [
    "DEFAULT_CREATE_ATTEMPTS",
    "DEFAULT_CREATE_DELAY_SECONDS",
    "DEFAULT_CREATE_JITTER_MAX_SECONDS",
    "DEFAULT_CREATE_JITTER_MIN_SECONDS",
    "DEFAULT_POD_WATCH_TIMEOUT_SECONDS",
    "JOB_MANIFEST_PATCHES",
    "MAX_CREATE_ATTEMPTS",
    "MAX_CREATE_PAUSE_SECONDS",
    "MAX_LOG_TAIL_LINES",
    "MAX_WATCH_TIMEOUT_SECONDS",
    "PREFECT_CONTAINER",
    "ClusterHandle",
    "KubernetesClients",
    "PodPhaseChange",
    "InfrastructureWaiting",
    "RunEvents",
    "RunExamination",
    "RunFinished",
    "RunMessage",
    "Sightings",
    "StartedRun",
    "UnfollowedJobEnded",
    "UnfollowedPodChange",
    "JobsMissed",
    "WatchStats",
    "__version__",
    "active_followers",
    "apply_job_manifest_patches",
    "parse_infrastructure_pid",
    "default_job_manifest_template",
    "prepare_job_manifest",
    "render_template",
    "slugify_label_value",
    "slugify_name",
    "validate_job_manifest",
]

__version__: str

# Defaults and limits of the job variables and settings, defined once in the core.
DEFAULT_POD_WATCH_TIMEOUT_SECONDS: Final[int]
MAX_WATCH_TIMEOUT_SECONDS: Final[int]
DEFAULT_CREATE_ATTEMPTS: Final[int]
DEFAULT_CREATE_DELAY_SECONDS: Final[int]
DEFAULT_CREATE_JITTER_MIN_SECONDS: Final[int]
DEFAULT_CREATE_JITTER_MAX_SECONDS: Final[int]
MAX_CREATE_ATTEMPTS: Final[int]
MAX_CREATE_PAUSE_SECONDS: Final[int]
MAX_LOG_TAIL_LINES: Final[int]
# The container the flow runs in.
PREFECT_CONTAINER: Final[str]
# The job variable a pool template declares to let deployments patch their Job manifest.
JOB_MANIFEST_PATCHES: Final[str]

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

def apply_job_manifest_patches(job_manifest: Any, patches: Any) -> dict[str, Any]:
    """Apply `patches`, a list of RFC 6902 JSON Patch operations (or None for none), to a
    rendered `job_manifest`; return the patched manifest. All or none apply.

    Raises ManifestError naming the failing operation by its index, op and path
    (`job_manifest_patches[1] (remove /spec/template/spec/tolerations): the rendered Job
    manifest has nothing at that path`), or when `patches` is not a list.
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
    *,
    env: dict[str, Any],
    env_list: list[dict[str, Any]] | None,
    labels: dict[str, Any],
    annotations: dict[str, Any],
    name: str | None,
    default_image: str,
    api_dns_name: str | None,
) -> tuple[dict[str, Any], dict[str, Any] | list[dict[str, Any]]]:
    """Fill a validated manifest in for one flow run; return `(manifest, env)`.

    `env` is the environment after Prefect's merge; `env_list` the `env` job variable when it
    is a list of Kubernetes entries (its plain values join `env`, its `valueFrom` entries
    follow). The returned env is a mapping, or a list when `valueFrom` entries are present.
    """

def default_job_manifest_template() -> dict[str, Any]:
    """The default Job manifest template of the `kubernetes-rs` work pool type."""

def slugify_name(name: str) -> str | None:
    """Slug for a Job's generateName stem (lowercase, at most 45 characters), or None."""

def slugify_label_value(value: str) -> str:
    """Slug for a Kubernetes label value (at most 63 characters, case kept)."""

def parse_infrastructure_pid(pid: str) -> tuple[str | None, str, str]:
    """An infrastructure pid's `(cluster uid or None, namespace, job name)`; raises
    InvalidPidError for anything else."""

def active_followers() -> int:
    """How many runs this process is following right now."""

@final
class KubernetesClients:
    """All clients of one worker; closing it stops every shared watcher."""

    def __new__(cls, *, tcp_keepalive: bool) -> KubernetesClients:
        """`tcp_keepalive`: probe idle API connections (30 s idle, every 6 s, 6 probes)."""
    def connect(
        self, kubeconfig: dict[str, Any] | None = None, context: str | None = None
    ) -> Awaitable[ClusterHandle]:
        """Connect to a kubeconfig's cluster (or in-cluster / the default kubeconfig)."""
    def connected(
        self, kubeconfig: dict[str, Any] | None = None, context: str | None = None
    ) -> ClusterHandle | None:
        """The cluster if it is connected already, else None."""
    def close(self) -> Awaitable[None]:
        """Stop every watcher and forget the clients."""

@final
class ClusterHandle:
    """One connected cluster."""

    @property
    def source_name(self) -> str:
        """Where the configuration came from."""
    @property
    def server(self) -> str:
        """The API server's URL."""
    def start_run(
        self,
        *,
        namespace: str,
        flow_run_id: str,
        manifest: dict[str, Any],
        pod_watch_timeout_seconds: float,
        job_watch_timeout_seconds: float | None,
        stream_output: bool,
        create_attempts: int,
        create_delay_seconds: float,
        create_jitter_min_seconds: float,
        create_jitter_max_seconds: float,
        cluster_uid: str | None,
        api_key_secret_name: str | None,
        api_key_secret_key: str | None,
        create_api_key_secret_for_pool: str | None,
        api_auth_string_secret_name: str | None,
        api_auth_string_secret_key: str | None,
        store_env_as_secret: bool,
    ) -> Awaitable[StartedRun]:
        """Start a flow run: subscribe to its Job's events, store the API key (and with
        `store_env_as_secret` the flow container's plain env) in Secrets when asked, create
        the Job (retrying, adopting one an earlier attempt made), follow it.

        Raises ValueError naming the argument for a number out of range, KubernetesApiError
        when the API refused (the message says what and why, with a hint), and
        ClusterUnreachableError when the API server did not answer.
        """
    def kill_run(
        self,
        pid: str,
        *,
        namespace: str,
        grace_seconds: int | None,
        cluster_uid: str | None,
    ) -> Awaitable[tuple[str, str]]:
        """Delete the Job of an infrastructure pid; return its `(namespace, name)`.

        Raises InvalidPidError, JobElsewhereError (another namespace or cluster),
        JobNotFoundError, KubernetesApiError or ClusterUnreachableError.
        """
    def created_secrets(self) -> list[tuple[str, str]]:
        """`(namespace, name)` of the API-key Secrets this process created on this cluster."""
    def watch_stats(self, namespace: str) -> WatchStats | None:
        """The shared watchers of a namespace, or None when nothing watches it."""
    def observe(
        self,
        *,
        namespaces: list[str],
        label_filters: list[tuple[str, str]],
        pod_events: bool,
    ) -> Awaitable[Sightings]:
        """Report the Prefect Jobs nobody in this process follows that fail, or are deleted
        before they succeed, and with `pod_events` their pods' phase changes, in `namespaces`
        (whose watchers this starts) and every namespace watched later; replaces an earlier
        observation of this cluster."""
    def watch_namespaces(self, namespaces: list[str]) -> Awaitable[None]:
        """Start the shared watchers of `namespaces` (if not yet running)."""
    def examine_runs(
        self, *, namespace: str, runs: list[tuple[str, str]]
    ) -> Awaitable[list[RunExamination]]:
        """Where the Jobs of `(flow_run_id, job_name)` pairs stand, read by flow-run label, 50
        runs per request. Raises KubernetesApiError or ClusterUnreachableError."""
    def follow_existing_run(
        self,
        *,
        namespace: str,
        flow_run_id: str,
        job_name: str,
        pod_watch_timeout_seconds: float,
        job_watch_timeout_seconds: float | None,
        stream_output: bool,
    ) -> Awaitable[RunEvents]:
        """Follow the Job of a run this process did not start: pod start, the log lines
        written from now on, the end."""
    def crashed_run_log_tail(
        self, *, namespace: str, flow_run_id: str, job_name: str, lines: int
    ) -> Awaitable[list[tuple[str | None, str]]]:
        """The last `lines` lines of the flow container of the pod that ended the run's Job
        (the previous container's after a restart), as `(time or None, text)`."""
    def uid(self) -> Awaitable[str | None]:
        """The cluster's uid (its kube-system namespace's), or None when it cannot be read."""

@final
class WatchStats:
    """Counters of one namespace's shared watchers."""

    @property
    def job_watches_opened(self) -> int: ...
    @property
    def pod_watches_opened(self) -> int: ...
    @property
    def resyncs(self) -> int: ...
    @property
    def subscribed_runs(self) -> int: ...

@final
class StartedRun:
    """A run whose Job exists and is being followed."""

    @property
    def job_name(self) -> str: ...
    @property
    def namespace(self) -> str: ...
    @property
    def uid(self) -> str: ...
    @property
    def adopted(self) -> bool:
        """An earlier attempt had created the Job; this one found it."""
    @property
    def attempts(self) -> int: ...
    @property
    def pid(self) -> str:
        """`<cluster uid>:<namespace>:<job>`, or `<namespace>:<job>` without a cluster uid."""
    @property
    def cluster_uid_unknown(self) -> str | None:
        """Why the pid has no cluster uid, when it has none."""
    @property
    def warnings(self) -> list[str]:
        """Warnings for the flow run's log."""
    @property
    def events(self) -> RunEvents:
        """The run's events."""

@final
class RunMessage:
    """A message for the flow run's log."""

    @property
    def level(self) -> Literal["info", "warning", "error"]: ...
    @property
    def text(self) -> str: ...

@final
class InfrastructureWaiting:
    """The run waits for its infrastructure (pod Pending, Job suspended); sent when the reason
    changes."""

    @property
    def why(self) -> str:
        """Why, as a sentence for the flow run's state message."""

@final
class PodPhaseChange:
    """A pod of the run changed phase."""

    @property
    def name(self) -> str: ...
    @property
    def uid(self) -> str: ...
    @property
    def phase(self) -> str: ...
    @property
    def evicted(self) -> bool: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def restart_count(self) -> int:
        """How often the flow container was restarted."""

@final
class RunFinished:
    """The run's end: the flow container's exit code (-1 when there is none)."""

    @property
    def exit_code(self) -> int: ...
    @property
    def message(self) -> str | None: ...
    @property
    def evicted(self) -> bool: ...

@final
class RunEvents:
    """The events of one followed run: an async iterator of batches; the last event of the
    last batch is a RunFinished. The flow's log lines are printed by the core, all of them
    before RunFinished arrives."""

    def __aiter__(self) -> RunEvents: ...
    def __anext__(
        self,
    ) -> Awaitable[list[RunMessage | PodPhaseChange | InfrastructureWaiting | RunFinished]]: ...
    def close(self) -> None:
        """Stop following; the Job is left as it is."""

@final
class UnfollowedJobEnded:
    """A Prefect Job nobody in this process follows failed, or was deleted before it
    succeeded."""

    @property
    def namespace(self) -> str: ...
    @property
    def flow_run_id(self) -> str: ...
    @property
    def job_name(self) -> str: ...
    @property
    def created(self) -> str | None: ...
    @property
    def end(self) -> Literal["failed", "deleted"]: ...
    @property
    def end_reason(self) -> str | None: ...

@final
class UnfollowedPodChange:
    """A pod of a run nobody in this process follows changed phase."""

    @property
    def namespace(self) -> str: ...
    @property
    def flow_run_id(self) -> str: ...
    @property
    def labels(self) -> dict[str, str]:
        """The pod's `prefect.io/...` labels."""
    @property
    def change(self) -> PodPhaseChange:
        """The change, as a followed run's."""

@final
class JobsMissed:
    """The Job watch of a namespace lost its place (410 Gone) and started again from "now": a
    Job nobody follows may have ended unseen."""

    @property
    def namespace(self) -> str: ...

@final
class Sightings:
    """What the bystander reports: an async iterator of batches."""

    def __aiter__(self) -> Sightings: ...
    def __anext__(
        self,
    ) -> Awaitable[list[UnfollowedJobEnded | UnfollowedPodChange | JobsMissed]]: ...

@final
class RunExamination:
    """Where one run's Job stands."""

    @property
    def flow_run_id(self) -> str: ...
    @property
    def job_name(self) -> str: ...
    @property
    def found(self) -> bool: ...
    @property
    def end(self) -> Literal["complete", "failed", "deleted"] | None: ...
    @property
    def end_reason(self) -> str | None: ...
    @property
    def exit_code(self) -> int | None: ...
    @property
    def message(self) -> str | None: ...
    @property
    def evicted(self) -> bool: ...
    @property
    def pod_name(self) -> str | None: ...
    @property
    def pod_reason(self) -> str | None: ...
    @property
    def other_job_alive(self) -> bool: ...
