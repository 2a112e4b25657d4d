"""The `kubernetes-rs` worker: each flow run becomes a Kubernetes Job.

    prefect worker start --pool my-pool --type kubernetes-rs

Install the package where the worker runs (`pip install prefect-kubernetes-rs`), then create a
work pool of type `kubernetes-rs` (`prefect work-pool create my-pool --type kubernetes-rs`) or let
the worker create it. A base job template written for the `kubernetes` worker of
`prefect-kubernetes` works unchanged: the variables, their defaults and the way the Job manifest
is rendered are the same.

For each flow run the worker renders the pool's job template with the deployment's and the flow
run's job variables, checks that the result is a Job it can run a flow in (a container named
`prefect-job`, `restartPolicy: Never`, one pod), and fills in what the run needs: Prefect's
environment, labels and annotations on the Job and its pod, the image, the command and the Job's
name. Templating, validation and preparation run in Rust, in a few microseconds per run.

A pool whose template declares the variable `job_manifest_patches` (an array of RFC 6902 JSON
Patch operations; the README has the schema to paste) lets each deployment patch its Job, e.g.
add a toleration or a volume, without a pool of its own; the patches apply before validation.

To migrate code written against `prefect-kubernetes`, change the import:

    from prefect_kubernetes_rs.worker import KubernetesWorker, KubernetesWorkerJobConfiguration
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import logging
import time
from typing import TYPE_CHECKING, Any, Literal, TypedDict, cast
from uuid import UUID

import anyio.abc
import prefect
from prefect.client.schemas.objects import Flow as APIFlow
from prefect.events import Event
from prefect.exceptions import (
    InfrastructureError,
    InfrastructureNotAvailable,
    InfrastructureNotFound,
)
from prefect.settings.context import get_current_settings
from prefect.states import InfrastructurePending
from prefect.utilities.collections import deep_merge, set_in_dict
from prefect.utilities.dockerutils import get_prefect_image_name
from prefect.utilities.engine import propose_state
from prefect.utilities.templating import resolve_block_document_references, resolve_variables
from prefect.workers.base import (
    BaseJobConfiguration,
    BaseVariables,
    BaseWorker,
    BaseWorkerResult,
)
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from typing_extensions import Self

from prefect_kubernetes_rs import _core
from prefect_kubernetes_rs.exceptions import (
    ClusterConfigError,
    ClusterUnreachableError,
    JobElsewhereError,
    JobNotFoundError,
    KubernetesApiError,
    ManifestError,
)
from prefect_kubernetes_rs.observer import (
    RESCHEDULE_PATIENCE_SECONDS,
    RunsNobodyFollows,
    rescheduled_since,
)
from prefect_kubernetes_rs.pod_events import emit_pod_event
from prefect_kubernetes_rs.prefect_api import PatientPrefectClient, queue_requests_before_the_pool
from prefect_kubernetes_rs.settings import current_settings

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.objects import FlowRun, WorkPool
    from prefect.client.schemas.responses import DeploymentResponse
    from prefect.settings import Settings

WORKER_TYPE = "kubernetes-rs"


class KubernetesClusterConfig(BaseModel):
    """A kubeconfig and the context in it that the worker uses to reach a cluster.

    In a work pool this is a reference to a `kubernetes-cluster-config` block (the block type of
    `prefect-kubernetes`), so pools copied from a `kubernetes` pool keep working.
    """

    model_config = ConfigDict(
        title="KubernetesClusterConfig",
        json_schema_extra={
            "block_type_slug": "kubernetes-cluster-config",
            "secret_fields": [],
            "block_schema_references": {},
        },
    )

    config: dict[str, Any] = Field(description="The whole kubeconfig, as a mapping.")
    context_name: str = Field(description="The kubeconfig context to use.")

    @model_validator(mode="before")
    @classmethod
    def _accept_block_objects(cls, value: Any) -> Any:
        """Accept any object shaped like the block (e.g. prefect-kubernetes's own class)."""
        if isinstance(value, dict) or isinstance(value, cls):
            return value
        if hasattr(value, "config") and hasattr(value, "context_name"):
            return {"config": value.config, "context_name": value.context_name}
        return value


@functools.cache
def _default_image() -> str:
    """The Prefect image for this Prefect and Python version (computed once: it may run git)."""
    return get_prefect_image_name()


@functools.cache
def _prefect_version_label() -> str:
    return _core.slugify_label_value(prefect.__version__.split("+")[0])


# The environment Prefect's settings contribute to every flow run, computed once per settings
# object: serialising all settings costs ~20 ms, and it only changes when the settings do.
_settings_environment: tuple[Settings, dict[str, str]] | None = None


def _settings_environment_for(settings: Settings) -> dict[str, str]:
    global _settings_environment
    cached = _settings_environment
    if cached is None or cached[0] is not settings:
        cached = (settings, settings.to_environment_variables(exclude_unset=True))
        _settings_environment = cached
    return dict(cached[1])


class FollowArguments(TypedDict):
    """The arguments of the core's calls that follow a run, from its job configuration."""

    pod_watch_timeout_seconds: float
    job_watch_timeout_seconds: float | None
    stream_output: bool


class KubernetesWorkerJobConfiguration(BaseJobConfiguration):
    """Everything the worker needs to run one flow run as a Kubernetes Job.

    Built from the work pool's base job template and the job variables; `job_manifest` is the
    Job sent to Kubernetes once `prepare_for_flow_run` has filled it in.
    """

    annotations: dict[str, str] = Field(
        default_factory=dict,
        description="Annotations added to the Job and its pod.",
    )
    namespace: str = Field(default="default", description="Namespace the Job is created in.")
    job_manifest: dict[str, Any] = Field(
        json_schema_extra={"template": _core.default_job_manifest_template()},
        description="The Kubernetes Job manifest.",
    )
    cluster_config: KubernetesClusterConfig | None = Field(
        default=None, description="Kubeconfig to reach the cluster; default: in-cluster or local."
    )
    job_watch_timeout_seconds: int | None = Field(
        default=None,
        ge=0,
        le=_core.MAX_WATCH_TIMEOUT_SECONDS,
        description="Overall deadline, in seconds, for the Job to finish once its pod has started.",
    )
    pod_watch_timeout_seconds: int = Field(
        default=_core.DEFAULT_POD_WATCH_TIMEOUT_SECONDS,
        ge=0,
        le=_core.MAX_WATCH_TIMEOUT_SECONDS,
        description="Seconds the pod may stay Pending before the run is given up.",
    )
    stream_output: bool = Field(
        default=True, description="Print the flow container's log to the worker's output."
    )
    # Wider than the base class's mapping: prefect-kubernetes also takes Kubernetes env entries.
    env: dict[str, str | None] | list[dict[str, Any]] = Field(  # type: ignore[assignment]
        default_factory=dict,
        description="Environment of the flow container, as a mapping or as Kubernetes env entries.",
    )

    # Replaces 'localhost' and '127.0.0.1' in PREFECT_API_URL when set (pods cannot reach the
    # worker's loopback); set by code that knows the worker's cluster-visible name.
    _api_dns_name: str | None = None

    @field_validator("env", mode="before")
    @classmethod
    def _coerce_env(cls, value: Any) -> Any:  # replaces the base class validator of that name
        """Env mapping values become strings (None still means "unset"); lists pass as they are."""
        if isinstance(value, dict):
            return {key: None if item is None else str(item) for key, item in value.items()}
        return value

    @model_validator(mode="after")
    def _validate_job_manifest(self) -> Self:
        """Check the manifest can run a flow; fill in metadata defaults (namespace, labels)."""
        self.job_manifest = _core.validate_job_manifest(self.job_manifest, self.namespace)
        return self

    @classmethod
    async def from_template_and_values(
        cls,
        base_job_template: dict[str, Any],
        values: dict[str, Any],
        client: PrefectClient | None = None,
    ) -> Self:
        """Render the pool's base job template with job variables, by Prefect's rules.

        The placeholders are rendered in Rust; block references and `prefect.variables`
        placeholders are resolved through the Prefect API only when the result contains any.
        """
        if not isinstance(base_job_template, dict) or not isinstance(
            base_job_template.get("job_configuration"), dict
        ):
            raise ManifestError(
                "The base job template must be a mapping with a 'job_configuration' mapping; "
                "get a valid one with `prefect work-pool get-default-base-job-template "
                f"--type {WORKER_TYPE}`."
            )
        configuration = dict(base_job_template["job_configuration"])
        properties = (base_job_template.get("variables") or {}).get("properties") or {}
        # A pool whose template declares `job_manifest_patches` lets deployments patch their Job
        # manifest (RFC 6902); the default template does not: the pool's admin opts in.
        if _core.JOB_MANIFEST_PATCHES in properties:
            configuration.setdefault(
                _core.JOB_MANIFEST_PATCHES, "{{ " + _core.JOB_MANIFEST_PATCHES + " }}"
            )
        variables = {
            name: schema["default"]
            for name, schema in properties.items()
            if isinstance(schema, dict) and schema.get("default") is not None
        }
        # A default `env` joins (or replaces) the configuration's env before job variables apply.
        if variables.get("env"):
            if isinstance(configuration.get("env"), dict):
                configuration["env"] = configuration["env"] | variables["env"]
            else:
                configuration["env"] = variables["env"]

        # `{"env.FOO": "x"}` means `{"env": {"FOO": "x"}}`; the nested spelling wins.
        dotted: dict[str, Any] = {}
        for key, value in values.items():
            if "." in key:
                set_in_dict(dotted, key, value)
        for key, value in values.items():
            if "." in key:
                continue
            if isinstance(dotted.get(key), dict) and isinstance(value, dict):
                dotted[key] = deep_merge(dotted[key], value)
            else:
                dotted[key] = value
        variables.update(dotted)

        if isinstance(configuration.get("env"), dict) and variables.get("env"):
            configuration["env"] = configuration["env"] | variables["env"]

        rendered, needs_api_resolution = _core.render_template(configuration, variables)
        if needs_api_resolution:
            rendered = await resolve_block_document_references(template=rendered, client=client)
            rendered = await resolve_variables(template=rendered, client=client)
        # Patched before validation, so no patch can take away what validation requires.
        patches = rendered.pop(_core.JOB_MANIFEST_PATCHES, None)
        if patches is not None and isinstance(rendered.get("job_manifest"), dict):
            rendered["job_manifest"] = _core.apply_job_manifest_patches(
                rendered["job_manifest"], patches
            )
        return cls(**rendered)

    def follow_arguments(self) -> FollowArguments:
        """How the core follows this configuration's Job (timeouts as seconds, log or not)."""
        return {
            "pod_watch_timeout_seconds": float(self.pod_watch_timeout_seconds),
            "job_watch_timeout_seconds": (
                float(self.job_watch_timeout_seconds) if self.job_watch_timeout_seconds else None
            ),
            "stream_output": self.stream_output,
        }

    @classmethod
    def _base_environment(cls) -> dict[str, str]:
        return _settings_environment_for(get_current_settings())

    @staticmethod
    def _base_flow_run_labels(flow_run: FlowRun) -> dict[str, str]:
        version = _prefect_version_label()
        return {
            "prefect.io/flow-run-id": str(flow_run.id),
            "prefect.io/flow-run-name": flow_run.name,
            "prefect.io/version": version,
            "app.kubernetes.io/managed-by": "prefect",
            "app.kubernetes.io/part-of": "prefect",
            "app.kubernetes.io/version": version,
        }

    @staticmethod
    def _base_flow_labels(flow: APIFlow | None) -> dict[str, str]:
        labels = BaseJobConfiguration._base_flow_labels(flow)
        if flow is not None:
            labels["app.kubernetes.io/name"] = _core.slugify_label_value(flow.name)
        return labels

    @staticmethod
    def _base_deployment_labels(deployment: DeploymentResponse | None) -> dict[str, str]:
        labels = BaseJobConfiguration._base_deployment_labels(deployment)
        if deployment is not None:
            labels["app.kubernetes.io/name"] = _core.slugify_label_value(deployment.name)
        return labels

    def prepare_for_flow_run(
        self,
        flow_run: FlowRun,
        deployment: DeploymentResponse | None = None,
        flow: APIFlow | None = None,
        work_pool: WorkPool | None = None,
        worker_name: str | None = None,
        worker_id: UUID | None = None,
    ) -> None:
        """Fill the Job manifest in for `flow_run`: env, labels, annotations, image, command, name.

        Every edit targets the container named `prefect-job`.
        """
        # Prefect's merge below keeps only a mapping; a list of Kubernetes env entries is merged
        # by the core (plain values join the mapping, `valueFrom` entries follow them).
        env_list = self.env if isinstance(self.env, list) else None
        super().prepare_for_flow_run(
            flow_run, deployment, flow, work_pool, worker_name, worker_id=worker_id
        )
        self.job_manifest, self.env = _core.prepare_job_manifest(
            self.job_manifest,
            env=self.env if isinstance(self.env, dict) else {},  # a mapping after Prefect's merge
            env_list=env_list,
            labels=self.labels,
            annotations=self.annotations,
            name=self.name,
            default_image=_default_image(),
            api_dns_name=self._api_dns_name,
        )


class KubernetesWorkerVariables(BaseVariables):
    """The job variables of a `kubernetes-rs` work pool (the UI's and CLI's form fields)."""

    annotations: dict[str, str] = Field(
        default_factory=dict,
        description="Annotations added to the Kubernetes Jobs and pods of flow runs.",
    )
    namespace: str = Field(
        default="default", description="The Kubernetes namespace flow-run Jobs are created in."
    )
    image: str | None = Field(
        default=None,
        examples=["docker.io/prefecthq/prefect:3-latest"],
        description="Container image of the flow run. Default: the Prefect image matching the "
        "worker's Prefect and Python versions.",
    )
    service_account_name: str | None = Field(
        default=None, description="Kubernetes service account the flow-run pods run as."
    )
    image_pull_policy: Literal["IfNotPresent", "Always", "Never"] = Field(
        default="IfNotPresent", description="When Kubernetes pulls the image of flow-run pods."
    )
    backoff_limit: int = Field(
        default=0,
        ge=0,
        title="Backoff Limit",
        description="How many times Kubernetes retries a failed or evicted pod of the Job. "
        "With 0, a flow run whose pod is evicted is rescheduled by Prefect instead.",
    )
    finished_job_ttl: int | None = Field(
        default=None,
        title="Finished Job TTL",
        description="Seconds Kubernetes keeps a finished Job (and its pods) before deleting "
        "it. Unset: finished Jobs are kept until someone deletes them.",
    )
    job_watch_timeout_seconds: int | None = Field(
        default=None,
        ge=0,
        le=_core.MAX_WATCH_TIMEOUT_SECONDS,
        description="Overall deadline, in seconds, for a flow-run Job to finish once its pod "
        "has started; the run is reported as crashed when it passes. Unset: no deadline.",
    )
    pod_watch_timeout_seconds: int = Field(
        default=_core.DEFAULT_POD_WATCH_TIMEOUT_SECONDS,
        ge=0,
        le=_core.MAX_WATCH_TIMEOUT_SECONDS,
        description="Seconds a flow-run pod may stay Pending (scheduling, image pull) before "
        "the worker deletes the Job and reports the run as crashed.",
    )
    stream_output: bool = Field(
        default=True,
        description="Print the log of the flow-run container to the worker's standard output.",
    )
    cluster_config: KubernetesClusterConfig | None = Field(
        default=None,
        description="The cluster to run Jobs on, as a kubernetes-cluster-config block. "
        "Default: the in-cluster service account, else the local kubeconfig.",
    )
    cpu_request: str | None = Field(
        default=None,
        title="CPU Request",
        description="CPU the flow-run container requests, as a Kubernetes quantity (e.g. 500m).",
    )
    cpu_limit: str | None = Field(
        default=None,
        title="CPU Limit",
        description="Most CPU the flow-run container may use, as a Kubernetes quantity (e.g. 2).",
    )
    memory_request: str | None = Field(
        default=None,
        title="Memory Request",
        description="Memory the flow-run container requests, as a Kubernetes quantity "
        "(e.g. 512Mi).",
    )
    memory_limit: str | None = Field(
        default=None,
        title="Memory Limit",
        description="Most memory the flow-run container may use, as a Kubernetes quantity "
        "(e.g. 1Gi).",
    )


class KubernetesWorkerResult(BaseWorkerResult):
    """The outcome of a flow run's Job: its infrastructure pid and exit code."""


class KubernetesWorker(
    BaseWorker[KubernetesWorkerJobConfiguration, KubernetesWorkerVariables, KubernetesWorkerResult]
):
    """Runs each flow run as a Kubernetes Job."""

    type: str = WORKER_TYPE
    job_configuration = KubernetesWorkerJobConfiguration
    job_configuration_variables = KubernetesWorkerVariables
    _description = (
        "Runs flow runs as Kubernetes Jobs, with a Rust core: compatible with `kubernetes` "
        "work pool templates, lighter on the worker and the API server."
    )
    _display_name = "Kubernetes (Rust)"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # One set of clients (and shared watchers) for the worker's lifetime.
        self._kubernetes = _core.KubernetesClients(
            tcp_keepalive=current_settings().worker.add_tcp_keepalive
        )
        self._clusters_used: list[_core.ClusterHandle] = []
        self._warned_no_cluster_uid = False
        # Flow runs a `run()` (or a re-attachment) of this process follows right now.
        self._following: set[UUID] = set()
        # Where the Job of a run that ended non-zero is, until its Crashed proposal (which then
        # forwards the flow container's last lines).
        self._ended_jobs: dict[UUID, tuple[_core.ClusterHandle, str, str]] = {}
        self._runs_nobody_follows = RunsNobodyFollows(self)
        self._background_tasks: anyio.abc.TaskGroup | None = None

    @property
    def _created_secrets(self) -> list[tuple[str, str]]:
        """`(namespace, name)` of the API-key Secrets this worker created (they outlive it)."""
        # (Two handles may wrap one cluster: a connect raced another's.)
        names = (name for cluster in self._clusters_used for name in cluster.created_secrets())
        return list(dict.fromkeys(names))

    async def setup(self) -> None:
        await super().setup()
        queue_requests_before_the_pool(self.client)
        # State proposals (Pending, Crashed, ...) and the pid write are asked again while
        # Prefect's API answers 503 or refuses connections (`prefect_api.py`).
        self._client = cast("PrefectClient", PatientPrefectClient(self.client, self._logger))
        # Its own task group, entered last so it is left first: it never ends by itself.
        tasks = anyio.create_task_group()
        await self._exit_stack.enter_async_context(tasks)
        self._background_tasks = tasks
        await self._runs_nobody_follows.start(tasks)

    async def teardown(self, *exc_info: Any) -> None:
        if self._background_tasks is not None:
            self._background_tasks.cancel_scope.cancel()
            self._background_tasks = None
        await super().teardown(*exc_info)
        await self.close_kubernetes()

    async def close_kubernetes(self) -> None:
        """Stop the watchers and close the connections."""
        self._clusters_used.clear()
        # A handle kept here would keep its client's pooled connections open.
        self._ended_jobs.clear()
        await self._kubernetes.close()

    async def _cluster(
        self, configuration: KubernetesWorkerJobConfiguration
    ) -> _core.ClusterHandle:
        """The connected cluster of this configuration (cached per distinct kubeconfig)."""
        cluster_config = configuration.cluster_config
        kubeconfig, context = (
            (None, None)
            if cluster_config is None
            else (cluster_config.config, cluster_config.context_name)
        )
        try:
            # Every run after the first finds its cluster connected: no await needed.
            cluster = self._kubernetes.connected(kubeconfig, context)
            if cluster is None:
                cluster = await self._kubernetes.connect(kubeconfig, context)
                self._clusters_used.append(cluster)
                await self._runs_nobody_follows.observe(cluster, [configuration.namespace])
            return cluster
        except ClusterConfigError as error:
            raise InfrastructureNotAvailable(str(error)) from error

    async def run(
        self,
        flow_run: FlowRun,
        configuration: KubernetesWorkerJobConfiguration,
        task_status: anyio.abc.TaskStatus[Any] | None = None,
    ) -> KubernetesWorkerResult:
        """Create the flow run's Job, report its pid, follow it to the end, return its exit code.

        The whole start (subscription, API-key Secret, Job, pid) is one call into the core;
        what stays here is what only Prefect can do: the flow run's log, Prefect events and
        the eviction check against the run's states.
        """
        self._following.add(flow_run.id)
        try:
            return await self._run(flow_run, configuration, task_status)
        finally:
            self._following.discard(flow_run.id)

    async def _run(
        self,
        flow_run: FlowRun,
        configuration: KubernetesWorkerJobConfiguration,
        task_status: anyio.abc.TaskStatus[Any] | None,
    ) -> KubernetesWorkerResult:
        logger = self.get_flow_run_logger(flow_run)
        settings = current_settings()
        worker_settings = settings.worker
        retry = worker_settings.create_job_retry
        cluster = await self._cluster(configuration)
        logger.info("Creating Kubernetes job...")
        created_at = datetime.datetime.now(datetime.timezone.utc)
        try:
            started = await cluster.start_run(
                namespace=configuration.namespace,
                flow_run_id=str(flow_run.id),
                manifest=configuration.job_manifest,
                **configuration.follow_arguments(),
                create_attempts=retry.max_retries,
                create_delay_seconds=float(retry.delay_seconds),
                create_jitter_min_seconds=float(retry.jitter_min_seconds),
                create_jitter_max_seconds=float(retry.jitter_max_seconds),
                cluster_uid=settings.cluster_uid,
                api_key_secret_name=worker_settings.api_key_secret_name,
                api_key_secret_key=worker_settings.api_key_secret_key,
                create_api_key_secret_for_pool=(
                    self._work_pool_name if worker_settings.create_secret_for_api_key else None
                ),
                api_auth_string_secret_name=worker_settings.api_auth_string_secret_name,
                api_auth_string_secret_key=worker_settings.api_auth_string_secret_key,
                store_env_as_secret=worker_settings.store_env_as_secret,
            )
        except KubernetesApiError as error:
            raise InfrastructureError(str(error)) from error
        except ClusterUnreachableError as error:
            raise InfrastructureNotAvailable(str(error)) from error
        events = started.events
        try:
            for warning in started.warnings:
                logger.warning(warning)
            if started.cluster_uid_unknown is not None and not self._warned_no_cluster_uid:
                self._warned_no_cluster_uid = True
                logger.warning(
                    "Cannot read the cluster's uid (%s); infrastructure pids will be "
                    "'<namespace>:<job>'. Set PREFECT_INTEGRATIONS_KUBERNETES_CLUSTER_UID to "
                    "include one.",
                    started.cluster_uid_unknown,
                )
            logger.info(
                "Kubernetes job %r %s in namespace %r; waiting for its pod to start...",
                started.job_name,
                "found (created by an earlier attempt)" if started.adopted else "created",
                started.namespace,
            )
            if task_status is not None:
                task_status.started(started.pid)
            outcome = await self._report(events, flow_run.id, configuration, logger)
        finally:
            events.close()
        status_code = outcome.exit_code
        if (
            outcome.evicted
            and status_code != 0
            and await self._was_rescheduled(flow_run, since=created_at)
        ):
            logger.info("The pod was evicted and the flow run rescheduled itself.")
            status_code = 0
        if status_code != 0:
            self._ended_jobs[flow_run.id] = (cluster, started.namespace, started.job_name)
        return KubernetesWorkerResult(identifier=started.pid, status_code=status_code)

    async def _give_worker_labels_to_flow_run(self, flow_run_id: UUID) -> None:
        """Label the flow run with this worker and pool, as the base worker does, but as a step
        the run can do without: the labels only help find a worker's runs. Under load Prefect's
        API may answer 503 until the client gives up; the base worker then crashed the run
        before its Job existed. Here that costs one warning."""
        try:
            await super()._give_worker_labels_to_flow_run(flow_run_id)
        except Exception as error:
            self._logger.warning(
                "Could not label flow run %s with this worker and its pool (%s: %s); the run "
                "goes on without the labels.",
                flow_run_id,
                type(error).__name__,
                error,
            )

    async def _propose_crashed_state(
        self, flow_run: FlowRun, message: str, client: PrefectClient | None = None
    ) -> None:
        """Propose Crashed (as the base worker does); once accepted, forward the flow
        container's last lines to the flow run's logs when the run's Job is known."""
        cluster, namespace, job_name = self._ended_jobs.pop(flow_run.id, (None, None, None))
        await self._runs_nobody_follows.propose_crashed(
            flow_run, message, cluster, namespace, job_name
        )

    async def _report(
        self,
        events: _core.RunEvents,
        flow_run_id: UUID,
        configuration: KubernetesWorkerJobConfiguration,
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
    ) -> _core.RunFinished:
        """Log messages, emit pod events, tell Prefect the run waits for its infrastructure;
        return the run's end. (The flow's log lines are printed on stdout by the Rust core, all
        of them before the end arrives.)"""
        last_event: Event | None = None
        related = self._event_related_resources(configuration=configuration, include_self=True)
        replicate_pod_events = current_settings().observer.replicate_pod_events
        # The InfrastructurePending proposal runs beside the follow, but the run's end waits for
        # it: a late proposal must not land over the Crashed that follows a failed start
        # (Prefect accepts Crashed -> Pending). Once per run: Prefect keeps one (a second, even
        # with a new reason, is refused as a Pending-to-Pending transition). Without a Prefect
        # client (a worker not set up) there is no one to tell.
        proposal: asyncio.Task[None] | None = None
        try:
            async for batch in events:
                for event in batch:
                    if isinstance(event, _core.RunMessage):
                        logger.log(_LOG_LEVELS[event.level], event.text)
                    elif isinstance(event, _core.PodPhaseChange):
                        if not replicate_pod_events:
                            continue
                        last_event = emit_pod_event(
                            event, configuration.namespace, related, last_event
                        )
                    elif isinstance(event, _core.InfrastructureWaiting):
                        if proposal is None and self._client is not None:
                            proposal = asyncio.create_task(
                                self._propose_infrastructure_pending(flow_run_id, event.why)
                            )
                    else:
                        if proposal is not None:
                            await proposal
                        return event
        finally:
            if proposal is not None and not proposal.done():
                proposal.cancel()
        raise InfrastructureError("Lost track of the Kubernetes job before it finished.")

    async def _propose_infrastructure_pending(self, flow_run_id: UUID, why: str) -> None:
        """Show in Prefect that the run waits for its pod (Unschedulable, image pull, ...), as
        prefect-kubernetes 0.8 does: `InfrastructurePending`, with the reason. Only over the
        worker's own Pending or Submitting: never over a state the run moved on from (Running,
        Scheduled again, final); Prefect refuses Running, Cancelling and Cancelled to Pending
        itself, should the engine start between the look and the proposal."""
        try:
            with anyio.fail_after(_INFRASTRUCTURE_PENDING_TIMEOUT_SECONDS):
                flow_run = await self.client.read_flow_run(flow_run_id)
                state = flow_run.state
                if state is None or state.name not in _WORKERS_PENDING_STATES:
                    return
                await propose_state(
                    self.client, InfrastructurePending(message=why), flow_run_id=flow_run_id
                )
        except Exception as error:  # an Abort or a refusal included: the run goes on as it is
            self._logger.debug(
                "InfrastructurePending not proposed for flow run %s: %s", flow_run_id, error
            )

    async def _was_rescheduled(self, flow_run: FlowRun, since: datetime.datetime) -> bool:
        """Did the flow run put itself back to Scheduled after `since` (this Job's creation)?

        The run's current state is not enough: a rescheduled run may already have been picked
        up again (Pending, Running) by the time its evicted Job's end is seen, and crashing it
        then would kill the new attempt. Nor is one look: the kubelet publishes the eviction
        before it sends SIGTERM, so the Job can be seen failed before the flow's engine has
        rescheduled the run; the states are read again for up to `_RESCHEDULE_PATIENCE_SECONDS`.
        """
        from prefect.client.orchestration import get_client

        deadline = time.monotonic() + _RESCHEDULE_PATIENCE_SECONDS
        async with get_client() as client:
            while True:
                if await rescheduled_since(client, flow_run.id, since):
                    return True
                if time.monotonic() >= deadline:
                    return False
                await asyncio.sleep(1)

    async def kill_infrastructure(
        self,
        infrastructure_pid: str,
        configuration: KubernetesWorkerJobConfiguration,
        grace_seconds: int = 30,
    ) -> None:
        """Delete the flow run's Job (and its pods) with the given grace period."""
        cluster = await self._cluster(configuration)
        try:
            namespace, job_name = await cluster.kill_run(
                infrastructure_pid,
                namespace=configuration.namespace,
                grace_seconds=grace_seconds,
                cluster_uid=current_settings().cluster_uid,
            )
        except JobNotFoundError as error:
            raise InfrastructureNotFound(str(error)) from error
        except (JobElsewhereError, ClusterUnreachableError) as error:
            raise InfrastructureNotAvailable(str(error)) from error
        self._logger.info("Deleted Kubernetes job %r in namespace %r", job_name, namespace)


# The Pending-type states the worker itself puts a run in before its Job exists.
_WORKERS_PENDING_STATES = ("Pending", "Submitting")
# A look at the run's state and one proposal; Prefect's client retries within it.
_INFRASTRUCTURE_PENDING_TIMEOUT_SECONDS = 30.0

_LOG_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}

# How long an evicted run's flow may take to reschedule itself after its Job is seen failed:
# its engine does so on SIGTERM, which the kubelet sends right after publishing the eviction.
_RESCHEDULE_PATIENCE_SECONDS = RESCHEDULE_PATIENCE_SECONDS
