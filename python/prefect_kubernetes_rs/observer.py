"""Runs nobody follows: the flow runs whose Jobs no `run()` of this worker process follows.

A worker that was restarted, SIGKILLed or scaled down leaves its runs' Jobs behind, and
another replica's runs live in the same namespaces. Their flow engines die with their pods
(OOMKilled, evicted, deleted), so nobody would report them: they would stay Running or Pending
in Prefect forever. This worker's shared watches already see every Prefect Job of their
namespaces; what no run subscribed to reaches the core's bystander, which reports a Job that
failed or vanished. Here the worker asks Prefect what that means for the flow run:

- a run that is final, Scheduled, Paused or Cancelling is left alone, as is one whose
  infrastructure pid names another Job, or which has another Job running or succeeded, or which
  put itself back to Scheduled after the Job was created (an evicted run rescheduling itself);
  these are looked at again for `RESCHEDULE_PATIENCE_SECONDS` before anything is proposed;
- otherwise Crashed is proposed, with the reason (exit code, OOMKilled, "Job deleted");
  Prefect's answer decides (a rejection or an abort is the end of it);
- once Crashed was accepted, the last lines of the flow container go to the flow run's logs.

At start, the pool's runs that are Pending or Running with a pid on a cluster this worker
reaches are read (their Jobs only, by label, in batches): those that ended while nobody watched
are judged as above, the others are followed again (their log from now on, their end).

When a namespace's Job watch loses its place (410 Gone) it starts again from "now": a Job that
ended in the gap was not seen. The pool's runs in flight in that namespace are then read again
the same way, and those whose Jobs ended are judged.

The pods of runs nobody follows have their phase changes emitted as Prefect events too
(`pod_events.py`), with the same deterministic ids as a following worker's.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from uuid import UUID

import anyio
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    WorkPoolFilter,
    WorkPoolFilterName,
)
from prefect.client.schemas.objects import StateType
from prefect.exceptions import Abort, ObjectNotFound
from prefect.states import Crashed
from prefect.utilities.engine import propose_state

from prefect_kubernetes_rs import _core
from prefect_kubernetes_rs.exceptions import (
    ClusterConfigError,
    ClusterUnreachableError,
    InvalidPidError,
    KubernetesApiError,
)
from prefect_kubernetes_rs.pod_events import UnfollowedPodEvents
from prefect_kubernetes_rs.settings import current_settings

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.objects import FlowRun

    from prefect_kubernetes_rs.worker import KubernetesWorker, KubernetesWorkerJobConfiguration

# How long an ended Job's flow run is watched before Crashed is proposed: an evicted run's
# engine reschedules it on SIGTERM, which the kubelet sends right after publishing the
# eviction, and the worker that followed the run (another replica) reports its end in that time.
RESCHEDULE_PATIENCE_SECONDS = 30.0
# Between two looks during that patience.
_LOOK_INTERVAL_SECONDS = 2.0
# Flow runs read per request when a worker starts.
_FLOW_RUN_PAGE = 200
# Runs whose configuration is resolved at once when a worker starts.
_RESOLVE_CONCURRENCY = 10
_LOGGER_NAME = "prefect.kubernetes.crashed-run"

_API_ERRORS = (KubernetesApiError, ClusterUnreachableError, ClusterConfigError)


async def rescheduled_since(
    client: PrefectClient, flow_run_id: UUID, since: datetime.datetime
) -> bool:
    """Did the flow run put itself back to Scheduled after `since` (its Job's creation)?"""
    states = await client.read_flow_run_states(flow_run_id)
    return any(state.is_scheduled() and state.timestamp >= since for state in states)


def crash_message(job_name: str, examination: _core.RunExamination) -> str:
    """Why a Job that nobody followed ended the run, in the words of Prefect's own crash
    reports where there is an exit code."""
    from prefect._internal.infrastructure_exit_codes import get_infrastructure_exit_info

    if examination.end == "deleted" and examination.exit_code in (None, -1):
        return (
            f"Kubernetes Job {job_name!r} was deleted before it succeeded (Job deleted), while "
            "no worker process was following it."
        )
    code = examination.exit_code if examination.exit_code is not None else -1
    # `Error` and `Completed` say nothing the exit code does not.
    said = examination.pod_reason not in (None, "Error", "Completed")
    reason = f" ({examination.pod_reason})" if said else ""
    how = (
        f"failed ({examination.end_reason})"
        if examination.end == "failed"
        else "was deleted (Job deleted)"
    )
    if code == -1:
        detail = examination.message or "its pod reported no exit code"
        return (
            f"Kubernetes Job {job_name!r} {how} while no worker process was following it: "
            f"{detail}{reason}."
        )
    explanation = get_infrastructure_exit_info(code).explanation
    return (
        f"Flow run infrastructure exited with non-zero status code {code}{reason}. "
        f"{explanation} Kubernetes Job {job_name!r} {how} while no worker process was "
        "following it."
    )


@dataclass(frozen=True)
class EndedJob:
    """A Job that ended (failed, or was deleted before it succeeded) while nobody followed it."""

    cluster: _core.ClusterHandle
    namespace: str
    flow_run_id: UUID
    job_name: str
    # When the Job was created, when known: a reschedule after it means the run went on.
    created: datetime.datetime | None


class RunsNobodyFollows:
    """The worker's part in ending and re-following runs that no `run()` follows."""

    def __init__(self, worker: KubernetesWorker) -> None:
        self._worker = worker
        self._task_group: anyio.abc.TaskGroup | None = None
        # Clusters observed, by where their configuration came from and their server.
        self._observed: set[tuple[str, str]] = set()
        # Jobs being judged, so a Job seen failing and then deleted is judged once.
        self._judging: set[tuple[str, str]] = set()
        # Namespaces being swept after a watch gap, by cluster.
        self._sweeping: set[tuple[int, str]] = set()
        self._pod_events = UnfollowedPodEvents()

    @property
    def _client(self) -> PrefectClient:
        return self._worker.client

    @property
    def _logger(self) -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
        return self._worker._logger

    async def start(self, task_group: anyio.abc.TaskGroup) -> None:
        """Observe the pool's default cluster and namespace, then re-attach runs in flight."""
        self._task_group = task_group
        # A worker set up again has new clients: observe them anew.
        self._observed.clear()
        settings = current_settings().observer
        if not settings.enabled:
            return
        work_pool = self._worker._work_pool
        if work_pool is None:
            self._logger.warning(
                "The work pool is not known yet: runs nobody follows are not observed until "
                "the worker starts again."
            )
            return
        try:
            configuration = await self._worker.job_configuration.from_template_and_values(
                work_pool.base_job_template, {}, client=self._client
            )
            cluster = await self._worker._cluster(configuration)
        except Exception as error:
            self._logger.warning(
                "Cannot observe the work pool's default cluster (%s): runs nobody follows are "
                "only ended in namespaces this worker runs flows in.",
                error,
            )
            return
        await self.observe(cluster, [configuration.namespace, *settings.namespaces])
        task_group.start_soon(self._reattach_guarded)

    async def observe(self, cluster: _core.ClusterHandle, namespaces: list[str]) -> None:
        """End the runs nobody follows on `cluster`, in `namespaces` and in every namespace
        the worker watches there for its own runs."""
        settings = current_settings().observer
        key = (cluster.source_name, cluster.server)
        if not settings.enabled or self._task_group is None:
            return
        if key in self._observed:
            await cluster.watch_namespaces(namespaces)
            return
        self._observed.add(key)
        sightings = await cluster.observe(
            namespaces=namespaces,
            label_filters=settings.label_filters(),
            pod_events=settings.replicate_pod_events,
        )
        self._task_group.start_soon(self._listen, cluster, sightings)

    async def _listen(self, cluster: _core.ClusterHandle, sightings: _core.Sightings) -> None:
        async for batch in sightings:
            for ended in batch:
                if isinstance(ended, _core.UnfollowedPodChange):
                    self._pod_events.emit(ended)
                    continue
                if isinstance(ended, _core.JobsMissed):
                    self._spawn_sweep(cluster, ended.namespace)
                    continue
                try:
                    flow_run_id = UUID(ended.flow_run_id)
                except ValueError:
                    continue  # a label that is not a flow run id: not a Prefect run's Job
                created = (
                    datetime.datetime.fromisoformat(ended.created.replace("Z", "+00:00"))
                    if ended.created
                    else None
                )
                self._spawn_judge(
                    EndedJob(cluster, ended.namespace, flow_run_id, ended.job_name, created)
                )

    def _spawn_sweep(self, cluster: _core.ClusterHandle, namespace: str) -> None:
        key = (id(cluster), namespace)
        if key in self._sweeping or self._task_group is None:
            return
        self._sweeping.add(key)
        self._task_group.start_soon(self._sweep_guarded, cluster, namespace, key)

    async def _sweep_guarded(
        self, cluster: _core.ClusterHandle, namespace: str, key: tuple[int, str]
    ) -> None:
        try:
            await self.sweep(cluster, namespace)
        except Exception:
            self._logger.exception(
                "Could not look for runs whose Jobs ended unseen in namespace %r", namespace
            )
        finally:
            self._sweeping.discard(key)

    async def sweep(self, cluster: _core.ClusterHandle, namespace: str) -> None:
        """After the Job watch of `namespace` lost its place: the pool's runs in flight there
        that nobody here follows are read by label (batches of 50 per Job list and pod list)
        and those whose Jobs ended unseen are judged. Runs still running are left to whoever
        follows them."""
        candidates: list[tuple[FlowRun, str]] = []
        for flow_run in await self._runs_in_flight():
            if flow_run.id in self._worker._following:
                continue
            pid = _pid_parts(flow_run.infrastructure_pid)
            if pid is None:
                continue
            cluster_uid, pid_namespace, job_name = pid
            if pid_namespace != namespace:
                continue
            if cluster_uid is not None and not await _same_cluster(cluster, cluster_uid):
                continue
            candidates.append((flow_run, job_name))
        if not candidates:
            return
        examinations = await cluster.examine_runs(
            namespace=namespace,
            runs=[(str(flow_run.id), job_name) for flow_run, job_name in candidates],
        )
        ended = 0
        for (flow_run, job_name), examination in zip(candidates, examinations, strict=True):
            if examination.end in ("failed", "deleted"):
                ended += 1
                self._spawn_judge(EndedJob(cluster, namespace, flow_run.id, job_name, None))
        self._logger.info(
            "The Job watch of namespace %r missed a stretch: %d of the pool's runs in flight "
            "there read again, %d ended unseen",
            namespace,
            len(candidates),
            ended,
        )

    def _spawn_judge(self, ended: EndedJob) -> None:
        key = (ended.namespace, ended.job_name)
        if key in self._judging or self._task_group is None:
            return
        self._judging.add(key)
        self._task_group.start_soon(self._judge_guarded, ended)

    async def _judge_guarded(self, ended: EndedJob) -> None:
        try:
            await self.judge(ended)
        except Exception:
            self._logger.exception("Could not judge the end of Kubernetes job %r", ended.job_name)
        finally:
            self._judging.discard((ended.namespace, ended.job_name))

    async def judge(self, ended: EndedJob) -> None:
        """Propose Crashed for the flow run whose Job ended unfollowed, unless the run went on
        without it (see the module's description).

        The flow run's state is looked at every `_LOOK_INTERVAL_SECONDS` during the patience
        (a final, rescheduled or re-followed run ends it early); the Job and its pods are read
        twice only: at once (the exit code, while the pod is still there) and before proposing
        (another Job of the run may have started meanwhile)."""
        if ended.flow_run_id in self._worker._following:
            return
        first = await self._examine(ended)
        if first is None:
            return
        give_up_waiting_at = time.monotonic() + RESCHEDULE_PATIENCE_SECONDS
        while True:
            flow_run = await self._run_still_in_question(ended)
            if flow_run is None:
                return
            if time.monotonic() >= give_up_waiting_at:
                break
            await asyncio.sleep(_LOOK_INTERVAL_SECONDS)
        last = await self._examine(ended)
        if last is None:
            return
        if ended.created is not None and await rescheduled_since(
            self._client, ended.flow_run_id, ended.created
        ):
            return
        # The first look saw the pod; by now a TTL or a user may have deleted it.
        telling = first if first.exit_code not in (None, -1) else last
        await self.propose_crashed(
            flow_run,
            crash_message(ended.job_name, telling),
            ended.cluster,
            ended.namespace,
            ended.job_name,
        )

    async def _examine(self, ended: EndedJob) -> _core.RunExamination | None:
        """The Job's end, or None when the run has another Job alive or the Job did not end
        badly after all."""
        (examination,) = await ended.cluster.examine_runs(
            namespace=ended.namespace, runs=[(str(ended.flow_run_id), ended.job_name)]
        )
        if examination.end in (None, "complete") or examination.other_job_alive:
            return None
        return examination

    async def _run_still_in_question(self, ended: EndedJob) -> FlowRun | None:
        """The flow run if its state still says it runs on the ended Job; None when it is
        gone, final, Scheduled, Paused, Cancelling, or its pid names another Job."""
        try:
            flow_run = await self._client.read_flow_run(ended.flow_run_id)
        except ObjectNotFound:
            return None
        state = flow_run.state
        if state is None or state.is_final() or state.is_scheduled() or state.is_paused():
            return None
        if state.is_cancelling():
            return None
        if flow_run.infrastructure_pid and not _pid_names(
            flow_run.infrastructure_pid, ended.namespace, ended.job_name
        ):
            return None
        return flow_run

    async def propose_crashed(
        self,
        flow_run: FlowRun,
        message: str,
        cluster: _core.ClusterHandle | None,
        namespace: str | None,
        job_name: str | None,
    ) -> None:
        """Propose Crashed; once accepted, forward the flow container's last lines."""
        logger = self._worker.get_flow_run_logger(flow_run)
        try:
            state = await propose_state(
                self._client, Crashed(message=message), flow_run_id=flow_run.id
            )
        except (Abort, ObjectNotFound):
            # Already final, or deleted: nothing to do.
            return
        except Exception:
            logger.exception(f"Failed to update state of flow run '{flow_run.id}'")
            return
        if not state.is_crashed():
            return
        logger.info(f"Reported flow run '{flow_run.id}' as crashed: {message}")
        settings = current_settings().observer
        if cluster is None or namespace is None or job_name is None:
            return
        if settings.forward_crashed_run_logs:
            await self._forward_log_tail(
                flow_run.id,
                cluster,
                namespace,
                job_name,
                settings.forward_crashed_run_logs_tail_lines,
            )

    async def _forward_log_tail(
        self,
        flow_run_id: UUID,
        cluster: _core.ClusterHandle,
        namespace: str,
        job_name: str,
        lines: int,
    ) -> None:
        try:
            tail = await cluster.crashed_run_log_tail(
                namespace=namespace, flow_run_id=str(flow_run_id), job_name=job_name, lines=lines
            )
        except _API_ERRORS as error:
            self._logger.warning(
                "Cannot read the log of Kubernetes job %r to forward it to flow run %s: %s",
                job_name,
                flow_run_id,
                error,
            )
            return
        if not tail:
            return
        now = datetime.datetime.now(datetime.timezone.utc)

        def entry(text: str, at: datetime.datetime) -> dict[str, Any]:
            return {
                "name": _LOGGER_NAME,
                "level": logging.INFO,
                "message": text,
                "timestamp": at.isoformat(),
                "flow_run_id": str(flow_run_id),
            }

        header = f"The last {len(tail)} lines of the flow container of Kubernetes job {job_name!r}:"
        entries = [entry(text, _parse_time(stamp) or now) for stamp, text in tail]
        # Each line keeps the time the container wrote it; the header goes just before the
        # first, so the flow run's log (ordered by time) shows it above them.
        first = _parse_time(tail[0][0]) or now
        logs = [entry(header, first - datetime.timedelta(microseconds=1)), *entries]
        try:
            await self._client.create_logs(logs)
        except Exception as error:
            self._logger.warning(
                "Cannot send the log of Kubernetes job %r to flow run %s: %s",
                job_name,
                flow_run_id,
                error,
            )

    async def _reattach_guarded(self) -> None:
        try:
            await self.reattach()
        except Exception:
            self._logger.exception("Could not look for the pool's runs in flight")

    async def reattach(self) -> None:
        """Judge or follow again the pool's runs in flight that no `run()` here follows."""
        runs = await self._runs_in_flight()
        if not runs:
            return
        deployments: dict[UUID, Any] = {}
        limiter = anyio.Semaphore(_RESOLVE_CONCURRENCY)
        groups: dict[
            tuple[int, str], list[tuple[FlowRun, str, KubernetesWorkerJobConfiguration]]
        ] = {}
        clusters: dict[int, _core.ClusterHandle] = {}

        async def place(flow_run: FlowRun) -> None:
            pid = _pid_parts(flow_run.infrastructure_pid)
            if pid is None:
                return  # not a pid of this worker type
            cluster_uid, namespace, job_name = pid
            async with limiter:
                try:
                    configuration = await self._configuration_of(flow_run, deployments)
                    cluster = await self._worker._cluster(configuration)
                except Exception as error:
                    self._logger.warning("Cannot follow flow run %s again: %s", flow_run.id, error)
                    return
                if cluster_uid is not None and not await _same_cluster(cluster, cluster_uid):
                    return
            await self.observe(cluster, [namespace])
            clusters[id(cluster)] = cluster
            groups.setdefault((id(cluster), namespace), []).append(
                (flow_run, job_name, configuration)
            )

        async with anyio.create_task_group() as placing:
            for flow_run in runs:
                placing.start_soon(place, flow_run)

        for (cluster_key, namespace), members in groups.items():
            cluster = clusters[cluster_key]
            members = [m for m in members if m[0].id not in self._worker._following]
            examinations = await cluster.examine_runs(
                namespace=namespace,
                runs=[(str(flow_run.id), job_name) for flow_run, job_name, _ in members],
            )
            for (flow_run, job_name, configuration), examination in zip(
                members, examinations, strict=True
            ):
                if examination.end is None:
                    assert self._task_group is not None
                    self._worker._following.add(flow_run.id)
                    self._task_group.start_soon(
                        self._follow_again, cluster, namespace, flow_run, job_name, configuration
                    )
                elif examination.end != "complete":
                    self._spawn_judge(EndedJob(cluster, namespace, flow_run.id, job_name, None))
        self._logger.info(
            "Runs in flight at start: %d read, %d on this worker's clusters",
            len(runs),
            sum(len(members) for members in groups.values()),
        )

    async def _runs_in_flight(self) -> list[FlowRun]:
        pool_name = self._worker._work_pool_name
        runs: list[FlowRun] = []
        offset = 0
        while True:
            page = await self._client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(
                        type=FlowRunFilterStateType(any_=[StateType.PENDING, StateType.RUNNING])
                    )
                ),
                work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool_name])),
                limit=_FLOW_RUN_PAGE,
                offset=offset,
            )
            runs.extend(run for run in page if run.infrastructure_pid)
            if len(page) < _FLOW_RUN_PAGE:
                return runs
            offset += len(page)

    async def _configuration_of(
        self, flow_run: FlowRun, deployments: dict[UUID, Any]
    ) -> KubernetesWorkerJobConfiguration:
        deployment = None
        if flow_run.deployment_id is not None:
            deployment = deployments.get(flow_run.deployment_id)
            if deployment is None:
                deployment = await self._client.read_deployment(flow_run.deployment_id)
                deployments[flow_run.deployment_id] = deployment
        return await self._worker.job_configuration.resolve_for_flow_run(
            flow_run,
            client=self._client,
            work_pool=self._worker.work_pool,
            worker_name=self._worker.name,
            worker_id=self._worker.backend_id,
            deployment=deployment,
        )

    async def _follow_again(
        self,
        cluster: _core.ClusterHandle,
        namespace: str,
        flow_run: FlowRun,
        job_name: str,
        configuration: KubernetesWorkerJobConfiguration,
    ) -> None:
        logger = self._worker.get_flow_run_logger(flow_run)
        try:
            events = await cluster.follow_existing_run(
                namespace=namespace,
                flow_run_id=str(flow_run.id),
                job_name=job_name,
                **configuration.follow_arguments(),
            )
        except _API_ERRORS as error:
            self._worker._following.discard(flow_run.id)
            logger.warning("Cannot follow Kubernetes job %r again: %s", job_name, error)
            return
        try:
            logger.info(
                "Following Kubernetes job %r in namespace %r again (the worker process that "
                "created it stopped)",
                job_name,
                namespace,
            )
            outcome = await self._worker._report(events, flow_run.id, configuration, logger)
        finally:
            events.close()
            self._worker._following.discard(flow_run.id)
        if outcome.exit_code != 0:
            self._spawn_judge(EndedJob(cluster, namespace, flow_run.id, job_name, None))


def _pid_parts(pid: str | None) -> tuple[str | None, str, str] | None:
    """A pid's `(cluster uid or None, namespace, job)`; None for no pid or another worker
    type's."""
    try:
        return _core.parse_infrastructure_pid(pid or "")
    except InvalidPidError:
        return None


def _pid_names(pid: str, namespace: str, job_name: str) -> bool:
    parts = _pid_parts(pid)
    return parts is not None and parts[1:] == (namespace, job_name)


async def _same_cluster(cluster: _core.ClusterHandle, pid_uid: str) -> bool:
    """Does a pid's cluster uid name `cluster`? (Unknown uids are trusted, as kill does.)"""
    configured = current_settings().cluster_uid
    current = configured or await cluster.uid()
    return current is None or current == pid_uid


def _parse_time(stamp: str | None) -> datetime.datetime | None:
    if not stamp:
        return None
    try:
        # The kubelet writes nanoseconds; Python keeps microseconds.
        head, _, rest = stamp.partition(".")
        fraction = rest.rstrip("Z")[:6]
        text = f"{head}.{fraction}+00:00" if fraction else f"{head.rstrip('Z')}+00:00"
        return datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
