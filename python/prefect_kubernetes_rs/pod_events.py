"""Pod phase changes as Prefect events: `prefect.kubernetes.pod.{pending,running,succeeded,
failed,unknown,evicted}`, for the pods of the runs a worker follows and, seen on the same
watches, of the runs nobody follows.

An event's id is derived from the pod's uid, the event's name and the flow container's restart
count: two replicas that watch one namespace, or a worker restarted mid-run, emit the same id for
the same change, and Prefect's server keeps one event per id.
"""

from __future__ import annotations

from collections import OrderedDict
from uuid import UUID, uuid5

from prefect.events import Event, RelatedResource, emit_event

from prefect_kubernetes_rs import _core

# The uuid5 namespace of pod event ids (any fixed value; changing it would change every id).
_POD_EVENT_IDS = UUID("3f7f0c52-52a4-4c0e-9d57-6a0b7e2b5c11")
# Pods whose last event is kept for `follows`, at most.
_REMEMBERED_PODS = 10_000


def pod_event_id(pod_uid: str, event_name: str, restart_count: int) -> UUID:
    """The id of the event that says pod `pod_uid` reached `event_name` (e.g. `running`)."""
    return uuid5(_POD_EVENT_IDS, f"{pod_uid}:{event_name}:{restart_count}")


def emit_pod_event(
    change: _core.PodPhaseChange,
    namespace: str,
    related: list[RelatedResource],
    follows: Event | None,
) -> Event | None:
    """Emit the Prefect event of a pod's phase change; returns it (the next one follows it)."""
    name = "evicted" if change.evicted else change.phase.lower()
    resource = {
        "prefect.resource.id": f"prefect.kubernetes.pod.{change.uid}",
        "prefect.resource.name": change.name,
        "kubernetes.namespace": namespace,
    }
    if change.evicted and change.reason:
        resource["kubernetes.reason"] = change.reason
    return emit_event(
        event=f"prefect.kubernetes.pod.{name}",
        resource=resource,
        related=related,
        follows=follows,
        id=pod_event_id(change.uid, name, change.restart_count),
    )


def related_from_labels(flow_run_id: str, labels: dict[str, str]) -> list[RelatedResource]:
    """The flow run, deployment and flow a pod belongs to, from the labels the worker gave it."""
    related = [
        RelatedResource.model_validate(
            {
                "prefect.resource.id": f"prefect.flow-run.{flow_run_id}",
                "prefect.resource.role": "flow-run",
                "prefect.resource.name": labels.get("prefect.io/flow-run-name", ""),
            }
        )
    ]
    for kind in ("deployment", "flow"):
        object_id = labels.get(f"prefect.io/{kind}-id")
        if object_id:
            related.append(
                RelatedResource.model_validate(
                    {
                        "prefect.resource.id": f"prefect.{kind}.{object_id}",
                        "prefect.resource.role": kind,
                        "prefect.resource.name": labels.get(f"prefect.io/{kind}-name", ""),
                    }
                )
            )
    return related


class UnfollowedPodEvents:
    """Emits the events of pods of runs nobody here follows, each following the pod's last."""

    def __init__(self) -> None:
        self._last: OrderedDict[str, Event] = OrderedDict()

    def emit(self, seen: _core.UnfollowedPodChange) -> None:
        change = seen.change
        follows = self._last.pop(change.uid, None)
        emitted = emit_pod_event(
            change, seen.namespace, related_from_labels(seen.flow_run_id, seen.labels), follows
        )
        if emitted is not None and change.phase not in ("Succeeded", "Failed"):
            self._last[change.uid] = emitted
            while len(self._last) > _REMEMBERED_PODS:
                self._last.popitem(last=False)
