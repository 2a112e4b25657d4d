//! The run-state reducer: Job and pod events in, what the worker must know out. No I/O.

use super::{PodPhaseChange, RunOutcome};
use crate::k8s::watch::ObjectEvent;
use crate::manifest::PREFECT_CONTAINER;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Waiting reasons the kubelet never retries: the pod will not start, waiting cannot help.
/// (`ErrImagePull`, `ImagePullBackOff` and `CreateContainerConfigError` are retried, with
/// back-off: a registry's 429, a tag pushed a minute later, a Secret created after the Job.)
const FATAL_WAITING_REASONS: [&str; 2] = ["InvalidImageName", "ErrImageNeverPull"];

/// The Job controller of Kubernetes itself; any other `spec.managedBy` runs the Job elsewhere.
const BUILT_IN_JOB_CONTROLLER: &str = "kubernetes.io/job-controller";

/// Why the Job is over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEnd {
    /// It succeeded.
    Complete,
    /// It failed, with Kubernetes' reason.
    Failed(String),
    /// It was deleted.
    Deleted,
}

/// Why a pod waits, as Kubernetes says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    /// The container that waits, when it is a container's reason.
    pub container: Option<String>,
    /// `Unschedulable`, `ErrImagePull`, `ImagePullBackOff`, `ContainerCreating`, ...
    pub reason: String,
    /// The scheduler's or the kubelet's words, when there are any.
    pub message: Option<String>,
}

impl Waiting {
    /// The scheduler found no node for the pod.
    pub fn is_unschedulable(&self) -> bool {
        self.reason == "Unschedulable"
    }

    /// The image could not be pulled (yet).
    pub fn is_image_pull(&self) -> bool {
        matches!(self.reason.as_str(), "ErrImagePull" | "ImagePullBackOff")
    }

    /// `container 'c' cannot start: <reason>: <message>`.
    pub fn cannot_start(&self) -> String {
        format!(
            "container '{}' cannot start: {self}",
            self.container.as_deref().unwrap_or("?")
        )
    }
}

impl std::fmt::Display for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.message {
            Some(message) => write!(f, "{}: {}", self.reason, message.trim_end()),
            None => f.write_str(&self.reason),
        }
    }
}

/// Where the pod start stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartStatus {
    /// The Job is suspended (queued, e.g. by Kueue): it has no pods until it is admitted.
    Suspended,
    /// No pod yet, or all pending: why the newest waits, when Kubernetes says.
    Pending(Option<Waiting>),
    /// A pod left Pending.
    Started,
    /// A pod cannot start, and waiting cannot help.
    Stuck(String),
}

/// Everything known about one run's Job and pods.
#[derive(Debug, Clone)]
pub struct RunState {
    job_name: String,
    job: Option<Job>,
    job_deleted: bool,
    pods: BTreeMap<String, Pod>,
    /// Pods seen deleted: their last state is final.
    deleted_pods: HashSet<String>,
    phases: HashMap<String, String>,
}

impl RunState {
    /// State of the run whose Job is named `job_name`.
    pub fn new(job_name: &str) -> Self {
        RunState {
            job_name: job_name.to_owned(),
            job: None,
            job_deleted: false,
            pods: BTreeMap::new(),
            deleted_pods: HashSet::new(),
            phases: HashMap::new(),
        }
    }

    /// Folds in a Job event; events of other Jobs of the same flow run are ignored.
    pub fn apply_job(&mut self, event: ObjectEvent<Job>) {
        match event {
            ObjectEvent::Applied(job) if self.is_mine(&job) => self.job = Some(job),
            ObjectEvent::Deleted(job) if self.is_mine(&job) => {
                self.job = Some(job);
                self.job_deleted = true;
            }
            ObjectEvent::Resynced(jobs) => match jobs.into_iter().find(|job| self.is_mine(job)) {
                Some(job) => self.job = Some(job),
                None if self.job.is_some() => self.job_deleted = true,
                None => {}
            },
            _ => {}
        }
    }

    /// Folds in a pod event; returns the phase changes it caused.
    pub fn apply_pod(&mut self, event: ObjectEvent<Pod>) -> Vec<PodPhaseChange> {
        match event {
            ObjectEvent::Applied(pod) if self.owns(&pod) => {
                let name = pod.metadata.name.clone().unwrap_or_default();
                self.pods.insert(name, pod);
            }
            ObjectEvent::Deleted(pod) if self.owns(&pod) => {
                let name = pod.metadata.name.clone().unwrap_or_default();
                self.deleted_pods.insert(name.clone());
                self.pods.insert(name, pod);
            }
            ObjectEvent::Resynced(pods) => {
                let current: Vec<Pod> = pods.into_iter().filter(|pod| self.owns(pod)).collect();
                // Pods gone during the gap keep their last state: it is all we will know.
                for pod in current {
                    let name = pod.metadata.name.clone().unwrap_or_default();
                    self.pods.insert(name, pod);
                }
            }
            _ => return Vec::new(),
        }
        self.phase_changes()
    }

    fn is_mine(&self, job: &Job) -> bool {
        job.metadata.name.as_deref() == Some(self.job_name.as_str())
    }

    fn owns(&self, pod: &Pod) -> bool {
        let labels = pod.metadata.labels.as_ref();
        let by_label = labels.is_some_and(|labels| {
            labels
                .get("job-name")
                .or_else(|| labels.get("batch.kubernetes.io/job-name"))
                == Some(&self.job_name)
        });
        by_label
            || pod
                .metadata
                .owner_references
                .iter()
                .flatten()
                .any(|owner| owner.kind == "Job" && owner.name == self.job_name)
    }

    fn phase_changes(&mut self) -> Vec<PodPhaseChange> {
        let mut changes = Vec::new();
        for pod in self.pods.values() {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            let phase = pod_phase(pod);
            if self.phases.get(&uid).map(String::as_str) == Some(phase) {
                continue;
            }
            self.phases.insert(uid, phase.to_owned());
            changes.push(phase_change_of(pod));
        }
        changes
    }

    /// The run's pods, newest first.
    pub fn pods_newest_first(&self) -> Vec<&Pod> {
        let mut pods: Vec<&Pod> = self.pods.values().collect();
        pods.sort_by(|a, b| {
            b.metadata
                .creation_timestamp
                .cmp(&a.metadata.creation_timestamp)
                .then_with(|| b.metadata.name.cmp(&a.metadata.name))
        });
        pods
    }

    /// The pod whose end is the Job's: for a completed Job the newest pod whose flow container
    /// exited 0, for a failed one the newest pod that failed; else the newest pod. Creation
    /// times have second precision, so "newest" alone cannot tell a pod deleted from outside
    /// from its replacement started the same second.
    fn pod_that_ended_the_job(&self, end: &JobEnd) -> Option<&Pod> {
        let pods = self.pods_newest_first();
        let code = |pod: &Pod| flow_container(pod).and_then(exit_code);
        let matching = match end {
            JobEnd::Complete => pods.iter().find(|pod| code(pod) == Some(0)),
            JobEnd::Failed(_) => pods
                .iter()
                .find(|pod| pod_phase(pod) == "Failed" || code(pod).is_some_and(|code| code != 0)),
            JobEnd::Deleted => None,
        };
        matching.or(pods.first()).copied()
    }

    /// Has a pod left Pending, is one stuck for good, or does the Job wait to be admitted?
    pub fn start_status(&self) -> StartStatus {
        let pods = self.pods_newest_first();
        if pods.iter().any(|pod| pod_phase(pod) != "Pending") {
            return StartStatus::Started;
        }
        for pod in &pods {
            if let Some(diagnosis) = fatal_reason(pod) {
                return StartStatus::Stuck(diagnosis);
            }
        }
        if pods.is_empty() && self.is_suspended() {
            return StartStatus::Suspended;
        }
        StartStatus::Pending(pods.first().and_then(|pod| waiting(pod)))
    }

    /// Has the newest pod been bound to a node? (Progress: the pod-start clock starts anew.)
    pub fn newest_pod_scheduled(&self) -> bool {
        self.pods_newest_first().first().is_some_and(|pod| {
            pod.status.as_ref().is_some_and(|status| {
                status.conditions.iter().flatten().any(|condition| {
                    condition.type_ == "PodScheduled" && condition.status == "True"
                })
            })
        })
    }

    /// The newest pod's name, if any.
    pub fn newest_pod_name(&self) -> Option<String> {
        self.pods_newest_first()
            .first()
            .and_then(|pod| pod.metadata.name.clone())
    }

    /// Is the Job suspended (`spec.suspend`, or the `Suspended` condition)?
    pub fn is_suspended(&self) -> bool {
        let Some(job) = &self.job else { return false };
        job.spec.as_ref().and_then(|spec| spec.suspend) == Some(true)
            || job
                .status
                .as_ref()
                .and_then(|status| status.conditions.as_ref())
                .is_some_and(|conditions| {
                    conditions.iter().any(|condition| {
                        condition.type_ == "Suspended" && condition.status == "True"
                    })
                })
    }

    /// The controller that runs the Job when it is not Kubernetes' own (`spec.managedBy`, e.g.
    /// MultiKueue, which runs its pods in another cluster): there are no pods here to follow.
    pub fn managed_elsewhere(&self) -> Option<String> {
        self.job
            .as_ref()?
            .spec
            .as_ref()?
            .managed_by
            .clone()
            .filter(|controller| controller != BUILT_IN_JOB_CONTROLLER)
    }

    /// Whether and how the Job is over.
    pub fn job_end(&self) -> Option<JobEnd> {
        // A Job deleted right after it ended (its TTL, a user) ended as its conditions say.
        let end = self.job_end_from_status();
        if self.job_deleted {
            return Some(end.unwrap_or(JobEnd::Deleted));
        }
        end
    }

    fn job_end_from_status(&self) -> Option<JobEnd> {
        job_end_of(self.job.as_ref()?)
    }

    /// The outcome once the Job is over: the exit code of the newest pod's flow container.
    pub fn outcome(&self, end: &JobEnd) -> RunOutcome {
        let newest = self.pod_that_ended_the_job(end);
        let evicted = newest.is_some_and(is_evicted);
        let exit_code = newest.and_then(flow_container).and_then(exit_code);
        match (end, exit_code) {
            (_, Some(code)) => RunOutcome { exit_code: code, message: None, evicted },
            (JobEnd::Complete, None) => RunOutcome {
                exit_code: 0,
                message: Some("the Job completed; its pod's exit code is no longer available".into()),
                evicted,
            },
            (JobEnd::Failed(reason), None) => RunOutcome {
                exit_code: -1,
                message: Some(match newest {
                    Some(pod) if evicted => format!(
                        "the Job failed ({reason}): its pod '{}' was evicted: {}",
                        pod.metadata.name.as_deref().unwrap_or("?"),
                        pod.status
                            .as_ref()
                            .and_then(|status| status.message.as_deref())
                            .unwrap_or("no reason given")
                            .trim_end()
                    ),
                    Some(pod) => format!(
                        "the Job failed ({reason}) and its pod '{}' reported no exit code; the node \
                         may have been lost",
                        pod.metadata.name.as_deref().unwrap_or("?"),
                    ),
                    None => format!("the Job failed ({reason}) without any pod"),
                }),
                evicted,
            },
            (JobEnd::Deleted, None) => RunOutcome {
                exit_code: -1,
                message: Some(format!("the Job '{}' was deleted before its pod finished", self.job_name)),
                evicted,
            },
        }
    }

    /// The pod whose end is the Job's, for someone who did not follow the run: its name, why
    /// it ended (the flow container's reason such as `OOMKilled`, or the pod's such as
    /// `Evicted`) and whether its last words are in the previous container's log (the
    /// container was restarted and has not ended for good).
    pub fn ended_pod(&self, end: &JobEnd) -> Option<EndedPod> {
        let pod = self.pod_that_ended_the_job(end)?;
        let container = flow_container(pod);
        let reason = container
            .and_then(terminated_reason)
            .filter(|reason| reason != "Completed" && reason != "Error")
            .or_else(|| pod.status.as_ref().and_then(|status| status.reason.clone()))
            .or_else(|| container.and_then(terminated_reason))
            .or_else(|| container.and_then(last_terminated_reason));
        let previous_log = container.is_some_and(|status| {
            let ended_now = status
                .state
                .as_ref()
                .is_some_and(|state| state.terminated.is_some());
            !ended_now
                && status
                    .last_state
                    .as_ref()
                    .is_some_and(|state| state.terminated.is_some())
        });
        Some(EndedPod {
            name: pod.metadata.name.clone()?,
            reason,
            previous_log,
        })
    }

    /// Is the newest pod's story told: no pod, or one in a final phase, with an ended flow
    /// container, deleted, or on a lost node? A pod being deleted is not: the kubelet writes
    /// its container's exit code before it confirms the deletion.
    pub fn newest_pod_settled(&self) -> bool {
        match self.pods_newest_first().first() {
            // No pod seen: settled only if the Job never had one (its pods' events may lag
            // behind the Job's on the other watch).
            None => !self.job_had_pods(),
            Some(pod) => {
                matches!(pod_phase(pod), "Succeeded" | "Failed")
                    || flow_container(pod).and_then(exit_code).is_some()
                    || pod
                        .metadata
                        .name
                        .as_ref()
                        .is_some_and(|name| self.deleted_pods.contains(name))
                    || pod
                        .status
                        .as_ref()
                        .is_some_and(|status| status.reason.as_deref() == Some("NodeLost"))
            }
        }
    }

    fn job_had_pods(&self) -> bool {
        self.job
            .as_ref()
            .and_then(|job| job.status.as_ref())
            .is_some_and(|status| {
                status.active.unwrap_or(0)
                    + status.succeeded.unwrap_or(0)
                    + status.failed.unwrap_or(0)
                    > 0
            })
    }

    /// Has the flow container of `pod` ended (so its log is complete)?
    pub fn flow_container_ended(&self, pod_name: &str) -> bool {
        self.pods.get(pod_name).is_some_and(|pod| {
            flow_container(pod).is_some_and(|status| {
                status
                    .state
                    .as_ref()
                    .is_some_and(|s| s.terminated.is_some())
            }) || matches!(pod_phase(pod), "Succeeded" | "Failed")
                || pod.metadata.deletion_timestamp.is_some() && pod_phase(pod) != "Running"
        })
    }

    /// Pods whose flow container has started (has a log to read).
    pub fn pods_with_logs(&self) -> Vec<String> {
        self.pods
            .values()
            .filter(|pod| {
                flow_container(pod).is_some_and(|status| {
                    status
                        .state
                        .as_ref()
                        .is_some_and(|state| state.running.is_some() || state.terminated.is_some())
                })
            })
            .filter_map(|pod| pod.metadata.name.clone())
            .collect()
    }
}

/// The pod that ended a run, as [`RunState::ended_pod`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndedPod {
    /// The pod's name.
    pub name: String,
    /// `OOMKilled`, `Evicted`, `DeadlineExceeded`, `Error`, ... when Kubernetes says.
    pub reason: Option<String>,
    /// The flow container was restarted: its last words are in the previous container's log.
    pub previous_log: bool,
}

/// Whether and how `job` is over by its status (a deletion is the caller's to know).
pub fn job_end_of(job: &Job) -> Option<JobEnd> {
    let status = job.status.as_ref()?;
    for condition in status.conditions.iter().flatten() {
        if condition.status != "True" {
            continue;
        }
        match condition.type_.as_str() {
            // SuccessCriteriaMet and FailureTarget are the interim conditions of newer
            // clusters; the outcome is settled when they appear.
            "Complete" | "SuccessCriteriaMet" => return Some(JobEnd::Complete),
            "Failed" | "FailureTarget" => {
                return Some(JobEnd::Failed(
                    condition.reason.clone().unwrap_or_else(|| "Failed".into()),
                ))
            }
            _ => {}
        }
    }
    let backoff_limit = job
        .spec
        .as_ref()
        .and_then(|spec| spec.backoff_limit)
        .unwrap_or(6);
    // Without a condition (a v1.20 API server may lag with it), only once nothing runs or
    // terminates: a pod deleted from outside counts as failed while the Job controller may
    // still run its replacement to the end. Newer API servers always set the conditions,
    // and their counters lag (Job tracking with finalizers, 1.26+).
    if status.failed.unwrap_or(0) > backoff_limit
        && status.active.unwrap_or(0) == 0
        && status.terminating.unwrap_or(0) == 0
    {
        return Some(JobEnd::Failed("BackoffLimitExceeded".into()));
    }
    None
}

/// `pod` as a phase change: its phase now, whether it was evicted and why it is where it is.
pub fn phase_change_of(pod: &Pod) -> PodPhaseChange {
    let reason = pod
        .status
        .as_ref()
        .and_then(|status| status.reason.clone())
        .or_else(|| flow_container(pod).and_then(terminated_reason));
    PodPhaseChange {
        name: pod.metadata.name.clone().unwrap_or_default(),
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        phase: pod_phase(pod).to_owned(),
        evicted: is_evicted(pod),
        reason,
        restart_count: flow_container(pod).map_or(0, |status| status.restart_count),
    }
}

fn pod_phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|status| status.phase.as_deref())
        .unwrap_or("Pending")
}

/// Evicted by the kubelet (`reason: Evicted`), or disrupted as 1.26+ clusters say it: the
/// `DisruptionTarget` condition of API-initiated evictions, drains, preemption and the taint
/// manager.
fn is_evicted(pod: &Pod) -> bool {
    pod.status.as_ref().is_some_and(|status| {
        status.reason.as_deref() == Some("Evicted")
            || status.conditions.iter().flatten().any(|condition| {
                condition.type_ == "DisruptionTarget" && condition.status == "True"
            })
    })
}

/// The status of the container named `prefect-job`, else of the only container.
fn flow_container(pod: &Pod) -> Option<&ContainerStatus> {
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    statuses
        .iter()
        .find(|status| status.name == PREFECT_CONTAINER)
        .or_else(|| {
            if statuses.len() == 1 {
                statuses.first()
            } else {
                None
            }
        })
}

fn exit_code(status: &ContainerStatus) -> Option<i32> {
    let state = status.state.as_ref()?;
    match &state.terminated {
        Some(terminated) => Some(terminated.exit_code),
        None => status
            .last_state
            .as_ref()?
            .terminated
            .as_ref()
            .map(|t| t.exit_code)
            .filter(|_| state.running.is_none()),
    }
}

fn terminated_reason(status: &ContainerStatus) -> Option<String> {
    status.state.as_ref()?.terminated.as_ref()?.reason.clone()
}

fn last_terminated_reason(status: &ContainerStatus) -> Option<String> {
    status
        .last_state
        .as_ref()?
        .terminated
        .as_ref()?
        .reason
        .clone()
}

/// A waiting reason the kubelet never retries, on any container of the pod (an init container
/// or a sidecar that cannot start holds the whole pod).
fn fatal_reason(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    let containers = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    for container in containers {
        if let Some(waiting) = container
            .state
            .as_ref()
            .and_then(|state| state.waiting.as_ref())
        {
            let reason = waiting.reason.as_deref().unwrap_or("");
            if FATAL_WAITING_REASONS.contains(&reason) {
                return Some(format!(
                    "container '{}' cannot start: {reason}: {}",
                    container.name,
                    waiting.message.as_deref().unwrap_or("no message")
                ));
            }
        }
    }
    None
}

/// Why a pending pod waits: the scheduler's verdict first (nothing else happens before a
/// node is found), then the first waiting container (init containers first: they go first),
/// then the pod's own reason.
fn waiting(pod: &Pod) -> Option<Waiting> {
    let status = pod.status.as_ref()?;
    let unscheduled = status.conditions.iter().flatten().find(|condition| {
        condition.type_ == "PodScheduled"
            && condition.status == "False"
            && condition.reason.as_deref() == Some("Unschedulable")
    });
    if let Some(condition) = unscheduled {
        return Some(Waiting {
            container: None,
            reason: "Unschedulable".into(),
            message: condition.message.clone(),
        });
    }
    status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .find_map(|container| {
            let waiting = container.state.as_ref()?.waiting.as_ref()?;
            Some(Waiting {
                container: Some(container.name.clone()),
                reason: waiting.reason.clone()?,
                message: waiting
                    .message
                    .clone()
                    .filter(|message| !message.is_empty()),
            })
        })
        .or_else(|| {
            Some(Waiting {
                container: None,
                reason: status.reason.clone()?,
                message: status.message.clone(),
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::JobSpec;
    use serde_json::json;

    const JOB: &str = "flow-abcde";

    fn job(status: serde_json::Value) -> Job {
        serde_json::from_value(json!({
            "metadata": {"name": JOB, "labels": {"prefect.io/flow-run-id": "run-1"}},
            "spec": {"backoffLimit": 0, "template": {"spec": {"containers": []}}},
            "status": status,
        }))
        .unwrap()
    }

    fn pod(name: &str, created: &str, status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {
                "name": name, "uid": format!("uid-{name}"), "creationTimestamp": created,
                "labels": {"job-name": JOB, "prefect.io/flow-run-id": "run-1"},
            },
            "status": status,
        }))
        .unwrap()
    }

    fn terminated(code: i32, reason: &str) -> serde_json::Value {
        json!({"phase": if code == 0 { "Succeeded" } else { "Failed" }, "containerStatuses": [
            {"name": "sidecar", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
             "state": {"terminated": {"exitCode": 0}}},
            {"name": "prefect-job", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
             "state": {"terminated": {"exitCode": code, "reason": reason}}}
        ]})
    }

    fn waiting(reason: &str) -> serde_json::Value {
        json!({"phase": "Pending", "containerStatuses": [
            {"name": "prefect-job", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
             "state": {"waiting": {"reason": reason, "message": "pull access denied"}}}
        ]})
    }

    #[test]
    fn pending_pods_wait_and_report_their_reason() {
        let mut state = RunState::new(JOB);
        assert_eq!(state.start_status(), StartStatus::Pending(None));
        state.apply_pod(ObjectEvent::Applied(pod(
            "p1",
            "2026-01-01T00:00:00Z",
            waiting("ContainerCreating"),
        )));
        match state.start_status() {
            StartStatus::Pending(Some(waiting)) => {
                assert_eq!(waiting.reason, "ContainerCreating");
                assert_eq!(waiting.container.as_deref(), Some("prefect-job"));
            }
            other => panic!("{other:?}"),
        }
    }

    /// Was `image_pull_failures_and_unschedulable_pods_are_stuck`: pull failures, missing
    /// Secrets and Unschedulable are retried by Kubernetes, so they are reasons to wait now.
    #[test]
    fn only_reasons_the_kubelet_never_retries_are_stuck() {
        for reason in ["InvalidImageName", "ErrImageNeverPull"] {
            let mut state = RunState::new(JOB);
            state.apply_pod(ObjectEvent::Applied(pod(
                "p1",
                "2026-01-01T00:00:00Z",
                waiting(reason),
            )));
            match state.start_status() {
                StartStatus::Stuck(diagnosis) => assert_eq!(
                    diagnosis,
                    format!("container 'prefect-job' cannot start: {reason}: pull access denied")
                ),
                other => panic!("{reason}: {other:?}"),
            }
        }
        for reason in [
            "ImagePullBackOff",
            "ErrImagePull",
            "CreateContainerConfigError",
        ] {
            let mut state = RunState::new(JOB);
            state.apply_pod(ObjectEvent::Applied(pod(
                "p1",
                "2026-01-01T00:00:00Z",
                waiting(reason),
            )));
            match state.start_status() {
                StartStatus::Pending(Some(waiting)) => {
                    assert_eq!(waiting.reason, reason);
                    assert_eq!(waiting.message.as_deref(), Some("pull access denied"));
                }
                other => panic!("{reason}: {other:?}"),
            }
        }
    }

    #[test]
    fn an_unschedulable_pod_waits_with_the_schedulers_words_until_it_is_bound() {
        let mut state = RunState::new(JOB);
        state.apply_pod(ObjectEvent::Applied(pod(
            "p1",
            "2026-01-01T00:00:00Z",
            json!({"phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                            "message": "0/1 nodes are available: 1 Insufficient cpu."}]}),
        )));
        let StartStatus::Pending(Some(waiting)) = state.start_status() else {
            panic!("{:?}", state.start_status())
        };
        assert!(waiting.is_unschedulable());
        assert_eq!(
            waiting.to_string(),
            "Unschedulable: 0/1 nodes are available: 1 Insufficient cpu."
        );
        assert!(!state.newest_pod_scheduled());
        state.apply_pod(ObjectEvent::Applied(pod(
            "p1",
            "2026-01-01T00:00:00Z",
            json!({"phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [{"name": "prefect-job", "image": "x", "imageID": "",
                "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ContainerCreating"}}}]}),
        )));
        assert!(state.newest_pod_scheduled());
    }

    fn job_with(spec: serde_json::Value, status: serde_json::Value) -> Job {
        let mut job = job(status);
        let extra: JobSpec = serde_json::from_value(spec).unwrap();
        let base = job.spec.get_or_insert_with(JobSpec::default);
        base.suspend = extra.suspend;
        base.managed_by = extra.managed_by;
        if extra.backoff_limit.is_some() {
            base.backoff_limit = extra.backoff_limit;
        }
        job
    }

    /// 1.21-1.24 (`suspend`; Kueue creates its Jobs suspended): no pods and no clock until
    /// admitted. The condition `Suspended` is written by the Job controller of 1.21+.
    #[test]
    fn v1_24_a_suspended_job_waits_to_be_admitted_and_a_resuspended_one_is_not_over() {
        let mut state = RunState::new(JOB);
        state.apply_job(ObjectEvent::Applied(job_with(
            json!({"suspend": true, "template": {"spec": {"containers": []}}}),
            json!({"conditions": [{"type": "Suspended", "status": "True", "reason": "JobSuspended"}]}),
        )));
        assert_eq!(state.start_status(), StartStatus::Suspended);
        assert_eq!(state.job_end(), None);
        state.apply_job(ObjectEvent::Applied(job_with(
            json!({"suspend": false, "template": {"spec": {"containers": []}}}),
            json!({"active": 1, "conditions": [{"type": "Suspended", "status": "False", "reason": "JobResumed"}]}),
        )));
        assert_eq!(state.start_status(), StartStatus::Pending(None));
        // Suspended again mid-run (Kueue preemption): the pods go, the Job is not over.
        state.apply_pod(ObjectEvent::Applied(pod(
            "p1",
            "2026-01-01T00:00:00Z",
            json!({"phase": "Running"}),
        )));
        state.apply_job(ObjectEvent::Applied(job_with(
            json!({"suspend": true, "template": {"spec": {"containers": []}}}),
            json!({"active": 0, "conditions": [{"type": "Suspended", "status": "True", "reason": "JobSuspended"}]}),
        )));
        state.apply_pod(ObjectEvent::Deleted(pod(
            "p1",
            "2026-01-01T00:00:00Z",
            json!({"phase": "Running"}),
        )));
        assert_eq!(state.job_end(), None);
    }

    /// 1.31+ (`FailureTarget` on by default): the interim condition comes while the failed
    /// pod still terminates; `podFailurePolicy` FailJob fails the Job with `failed` at or
    /// below `backoffLimit` (reason `PodFailurePolicy`); with the default
    /// `podReplacementPolicy` a replacement pod may already exist and be the newest.
    #[test]
    fn v1_31_failure_target_from_a_pod_failure_policy_ends_with_the_failed_pods_code() {
        let mut state = RunState::new(JOB);
        state.apply_pod(ObjectEvent::Applied(pod(
            "p1",
            "2026-01-01T00:00:00Z",
            terminated(42, "Error"),
        )));
        state.apply_pod(ObjectEvent::Applied(pod(
            "p2",
            "2026-01-01T00:00:05Z",
            waiting("ContainerCreating"),
        )));
        state.apply_job(ObjectEvent::Applied(job_with(
            json!({"backoffLimit": 6, "template": {"spec": {"containers": []}}}),
            json!({"active": 1, "failed": 1, "terminating": 1, "conditions": [
                {"type": "FailureTarget", "status": "True", "reason": "PodFailurePolicy",
                 "message": "Container prefect-job for pod default/p1 failed with exit code 42 matching FailJob rule at index 0"}]}),
        )));
        let end = state.job_end().expect("the interim condition settles it");
        assert_eq!(end, JobEnd::Failed("PodFailurePolicy".into()));
        assert_eq!(
            state.outcome(&end).exit_code,
            42,
            "the pod that failed, not the replacement"
        );
    }

    /// 1.26+ (Job tracking with finalizers) and 1.29+ (`status.terminating`): the counters
    /// lag; with a pod still terminating nothing is over without a condition.
    #[test]
    fn v1_29_counters_are_not_an_end_while_a_pod_terminates() {
        let mut state = RunState::new(JOB);
        state.apply_job(ObjectEvent::Applied(job(
            json!({"active": 0, "failed": 1, "terminating": 1}),
        )));
        assert_eq!(state.job_end(), None);
        state.apply_job(ObjectEvent::Applied(job(
            json!({"active": 0, "failed": 1, "terminating": 0}),
        )));
        assert_eq!(
            state.job_end(),
            Some(JobEnd::Failed("BackoffLimitExceeded".into()))
        );
    }

    /// 1.26+ kubelets, API evictions, drains and preemption mark the pod with the
    /// `DisruptionTarget` condition (reason e.g. `TerminationByKubelet`, `EvictionByEvictionAPI`,
    /// `PreemptionByScheduler`) instead of, or besides, `reason: Evicted`.
    #[test]
    fn v1_27_disruption_target_counts_as_an_eviction() {
        let mut state = RunState::new(JOB);
        let changes = state.apply_pod(ObjectEvent::Applied(pod(
            "p1",
            "2026-01-01T00:00:00Z",
            json!({"phase": "Failed", "conditions": [{"type": "DisruptionTarget", "status": "True",
                "reason": "EvictionByEvictionAPI", "message": "Eviction API: evicting"}],
                "containerStatuses": [{"name": "prefect-job", "image": "x", "imageID": "",
                    "ready": false, "restartCount": 0,
                    "state": {"terminated": {"exitCode": 143, "reason": "Error"}}}]}),
        )));
        assert!(changes[0].evicted);
        state.apply_job(ObjectEvent::Applied(job(
            json!({"failed": 1, "conditions": [
            {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}),
        )));
        let outcome = state.outcome(&state.job_end().unwrap());
        assert!(outcome.evicted);
        assert_eq!(outcome.exit_code, 143);
    }

    /// 1.29+ native sidecars: restartable init containers are in `initContainerStatuses`,
    /// still running (or killed) when the flow's container has ended; they decide nothing.
    #[test]
    fn v1_29_a_native_sidecar_never_decides_the_exit_code() {
        let mut state = RunState::new(JOB);
        state.apply_pod(ObjectEvent::Applied(pod(
            "p1",
            "2026-01-01T00:00:00Z",
            json!({"phase": "Succeeded",
                "initContainerStatuses": [{"name": "istio-proxy", "image": "x", "imageID": "",
                    "ready": false, "restartCount": 0,
                    "state": {"terminated": {"exitCode": 137, "reason": "Error"}}}],
                "containerStatuses": [{"name": "prefect-job", "image": "x", "imageID": "",
                    "ready": false, "restartCount": 0,
                    "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}),
        )));
        state.apply_job(ObjectEvent::Applied(job(
            json!({"succeeded": 1, "conditions": [
            {"type": "SuccessCriteriaMet", "status": "True"},
            {"type": "Complete", "status": "True"}]}),
        )));
        assert_eq!(state.outcome(&state.job_end().unwrap()).exit_code, 0);
        assert_eq!(state.pods_with_logs(), vec!["p1".to_owned()]);
    }

    /// 1.30-1.32 `managedBy` (MultiKueue): the status is mirrored from another cluster, there
    /// are no local pods; the end comes from the conditions.
    #[test]
    fn v1_32_a_job_managed_elsewhere_ends_from_its_conditions() {
        let mut state = RunState::new(JOB);
        let spec = json!({"managedBy": "kueue.x-k8s.io/multikueue",
                          "template": {"spec": {"containers": []}}});
        state.apply_job(ObjectEvent::Applied(job_with(spec.clone(), json!({}))));
        assert_eq!(
            state.managed_elsewhere().as_deref(),
            Some("kueue.x-k8s.io/multikueue")
        );
        state.apply_job(ObjectEvent::Applied(job_with(
            spec.clone(),
            json!({"conditions": [
            {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}),
        )));
        let outcome = state.outcome(&state.job_end().unwrap());
        assert_eq!(outcome.exit_code, -1);
        assert!(outcome.message.unwrap().contains("BackoffLimitExceeded"));
        let mut own = RunState::new(JOB);
        own.apply_job(ObjectEvent::Applied(job_with(
            json!({"managedBy": "kubernetes.io/job-controller", "template": {"spec": {"containers": []}}}),
            json!({}),
        )));
        assert_eq!(own.managed_elsewhere(), None);
    }

    /// 1.23+ `ttlSecondsAfterFinished`: the Job may be deleted right after it completed, the
    /// DELETED event carrying the final status.
    #[test]
    fn v1_23_a_job_deleted_by_its_ttl_after_completing_is_a_success() {
        let mut state = RunState::new(JOB);
        state.apply_job(ObjectEvent::Deleted(job(
            json!({"succeeded": 1, "conditions": [
            {"type": "Complete", "status": "True"}]}),
        )));
        assert_eq!(state.job_end(), Some(JobEnd::Complete));
        let mut gone = RunState::new(JOB);
        gone.apply_job(ObjectEvent::Deleted(job(json!({"active": 1}))));
        assert_eq!(gone.job_end(), Some(JobEnd::Deleted));
    }

    #[test]
    fn phase_changes_are_reported_once() {
        let mut state = RunState::new(JOB);
        let running = json!({"phase": "Running"});
        let changes = state.apply_pod(ObjectEvent::Applied(pod(
            "p1",
            "2026-01-01T00:00:00Z",
            running.clone(),
        )));
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].phase, "Running");
        assert!(state
            .apply_pod(ObjectEvent::Applied(pod(
                "p1",
                "2026-01-01T00:00:00Z",
                running
            )))
            .is_empty());
        let changes = state.apply_pod(ObjectEvent::Applied(pod(
            "p1",
            "2026-01-01T00:00:00Z",
            terminated(0, "Completed"),
        )));
        assert_eq!(changes[0].phase, "Succeeded");
        assert_eq!(state.start_status(), StartStatus::Started);
    }

    #[test]
    fn other_jobs_pods_are_ignored() {
        let mut state = RunState::new(JOB);
        let mut other = pod("q1", "2026-01-01T00:00:00Z", json!({"phase": "Running"}));
        other
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("job-name".into(), "other-job".into());
        assert!(state.apply_pod(ObjectEvent::Applied(other)).is_empty());
        assert_eq!(state.start_status(), StartStatus::Pending(None));
    }

    #[test]
    fn job_end_from_conditions_backoff_and_deletion() {
        let mut state = RunState::new(JOB);
        assert_eq!(state.job_end(), None);
        state.apply_job(ObjectEvent::Applied(job(json!({"active": 1}))));
        assert_eq!(state.job_end(), None);
        state.apply_job(ObjectEvent::Applied(job(
            json!({"conditions": [{"type": "Complete", "status": "True"}]}),
        )));
        assert_eq!(state.job_end(), Some(JobEnd::Complete));

        let mut state = RunState::new(JOB);
        state.apply_job(ObjectEvent::Applied(job(json!({"conditions": [
            {"type": "FailureTarget", "status": "True", "reason": "PodFailurePolicy"}]}))));
        assert_eq!(
            state.job_end(),
            Some(JobEnd::Failed("PodFailurePolicy".into()))
        );

        let mut state = RunState::new(JOB);
        state.apply_job(ObjectEvent::Applied(job(json!({"failed": 1}))));
        assert_eq!(
            state.job_end(),
            Some(JobEnd::Failed("BackoffLimitExceeded".into())),
            "failed > backoffLimit 0"
        );

        let mut state = RunState::new(JOB);
        state.apply_job(ObjectEvent::Applied(job(json!({"failed": 1, "active": 1}))));
        assert_eq!(
            state.job_end(),
            None,
            "a replacement pod still runs: the controller has not given up"
        );

        let mut state = RunState::new(JOB);
        state.apply_job(ObjectEvent::Applied(job(json!({"active": 1}))));
        state.apply_job(ObjectEvent::Resynced(vec![]));
        assert_eq!(
            state.job_end(),
            Some(JobEnd::Deleted),
            "gone after a watch gap"
        );
    }

    #[test]
    fn outcome_is_the_newest_pods_flow_container_exit_code() {
        let mut state = RunState::new(JOB);
        state.apply_pod(ObjectEvent::Applied(pod(
            "old",
            "2026-01-01T00:00:00Z",
            terminated(3, "Error"),
        )));
        state.apply_pod(ObjectEvent::Applied(pod(
            "new",
            "2026-01-01T00:01:00Z",
            terminated(137, "OOMKilled"),
        )));
        let outcome = state.outcome(&JobEnd::Failed("BackoffLimitExceeded".into()));
        assert_eq!(
            outcome,
            RunOutcome {
                exit_code: 137,
                message: None,
                evicted: false
            }
        );
    }

    #[test]
    fn no_exit_code_is_minus_one_with_a_reason() {
        let mut state = RunState::new(JOB);
        state.apply_pod(ObjectEvent::Applied(pod("p1", "2026-01-01T00:00:00Z", json!({"phase": "Failed", "reason": "NodeLost",
            "containerStatuses": [{"name": "prefect-job", "image": "x", "imageID": "", "ready": false,
                                   "restartCount": 0, "state": {"running": {}}}]}))));
        let outcome = state.outcome(&JobEnd::Failed("BackoffLimitExceeded".into()));
        assert_eq!(outcome.exit_code, -1);
        assert!(outcome.message.unwrap().contains("reported no exit code"));
    }

    #[test]
    fn evicted_pods_are_flagged() {
        let mut state = RunState::new(JOB);
        let changes = state.apply_pod(ObjectEvent::Applied(pod(
            "p1",
            "2026-01-01T00:00:00Z",
            json!({"phase": "Failed",
            "reason": "Evicted", "message": "The node was low on resource: memory."}),
        )));
        assert!(changes[0].evicted);
        assert_eq!(changes[0].reason.as_deref(), Some("Evicted"));
        let outcome = state.outcome(&JobEnd::Failed("BackoffLimitExceeded".into()));
        assert!(outcome.evicted);
        assert_eq!(outcome.exit_code, -1);
        assert_eq!(
            outcome.message.as_deref(),
            Some(
                "the Job failed (BackoffLimitExceeded): its pod 'p1' was evicted: The node was low \
                 on resource: memory."
            )
        );
    }

    #[test]
    fn a_job_that_had_pods_is_not_settled_before_its_pods_are_seen() {
        let mut state = RunState::new(JOB);
        assert!(state.newest_pod_settled(), "nothing to wait for");
        state.apply_job(ObjectEvent::Applied(job(json!({"failed": 1}))));
        assert!(
            !state.newest_pod_settled(),
            "the pod's events are still on their way"
        );
        state.apply_pod(ObjectEvent::Applied(pod(
            "p1",
            "2026-01-01T00:00:00Z",
            terminated(137, "OOMKilled"),
        )));
        assert!(state.newest_pod_settled());
        assert_eq!(
            state
                .outcome(&JobEnd::Failed("BackoffLimitExceeded".into()))
                .exit_code,
            137
        );
    }

    #[test]
    fn a_pod_being_deleted_is_settled_by_its_exit_code_or_its_deletion() {
        let running = json!({"phase": "Running", "containerStatuses": [
            {"name": "prefect-job", "image": "x", "imageID": "", "ready": true, "restartCount": 0,
             "state": {"running": {}}}]});
        let mut terminating = pod("p1", "2026-01-01T00:00:00Z", running.clone());
        terminating.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2026-01-01T00:00:05Z".parse().unwrap(),
            ));
        let mut state = RunState::new(JOB);
        state.apply_pod(ObjectEvent::Applied(terminating.clone()));
        assert!(
            !state.newest_pod_settled(),
            "the kubelet has not written the exit code yet"
        );
        let mut killed = terminating.clone();
        killed.status = pod("p1", "2026-01-01T00:00:00Z", terminated(143, "Error")).status;
        state.apply_pod(ObjectEvent::Applied(killed));
        assert!(state.newest_pod_settled());
        assert_eq!(
            state
                .outcome(&JobEnd::Failed("BackoffLimitExceeded".into()))
                .exit_code,
            143
        );

        let mut state = RunState::new(JOB);
        state.apply_pod(ObjectEvent::Deleted(terminating.clone()));
        assert!(state.newest_pod_settled(), "deleted without an exit code");
        let mut lost = terminating;
        lost.status.as_mut().unwrap().reason = Some("NodeLost".into());
        let mut state = RunState::new(JOB);
        state.apply_pod(ObjectEvent::Applied(lost));
        assert!(
            state.newest_pod_settled(),
            "a lost node writes no exit code"
        );
    }

    #[test]
    fn the_exit_code_comes_from_the_pod_that_ended_the_job() {
        // A pod deleted from outside (143) and its replacement, created the same second.
        let mut state = RunState::new(JOB);
        state.apply_pod(ObjectEvent::Applied(pod(
            "p-zzz",
            "2026-01-01T00:00:00Z",
            terminated(143, "Error"),
        )));
        state.apply_pod(ObjectEvent::Applied(pod(
            "p-aaa",
            "2026-01-01T00:00:00Z",
            terminated(0, "Completed"),
        )));
        assert_eq!(state.outcome(&JobEnd::Complete).exit_code, 0);
        assert_eq!(
            state
                .outcome(&JobEnd::Failed("BackoffLimitExceeded".into()))
                .exit_code,
            143
        );
    }

    #[test]
    fn deleted_job_uses_the_exit_code_when_there_is_one() {
        let mut state = RunState::new(JOB);
        state.apply_pod(ObjectEvent::Applied(pod(
            "p1",
            "2026-01-01T00:00:00Z",
            terminated(0, "Completed"),
        )));
        assert_eq!(state.outcome(&JobEnd::Deleted).exit_code, 0);
        let state = RunState::new(JOB);
        assert_eq!(state.outcome(&JobEnd::Deleted).exit_code, -1);
    }
}
