//! Runs nobody follows: what the shared watchers see of Prefect Jobs that no run of this
//! process subscribed to.
//!
//! A worker that was restarted, killed or scaled down leaves its runs' Jobs behind, and other
//! replicas' runs live in the same namespaces. The shared watchers already receive every
//! Prefect Job of the namespaces they watch (their selector is the flow-run label, not a run's
//! id), so noticing what happens to those runs costs no request and no watch: an event that no
//! run subscribed to is handed to the cluster's [`Bystander`] instead of being dropped. It
//! reports a Job's failure, or its deletion before it succeeded, once per Job, and, when asked,
//! each phase change of a pod (for Prefect's pod events). What a Job's end means
//! for the flow run (is it still waiting for this Job, did it reschedule itself) is for the
//! worker to find out from Prefect; [`crate::k8s::run::examine_runs`] reads what it needs.

use crate::k8s::run::{job_end_of, phase_change_of, JobEnd, PodPhaseChange};
use crate::k8s::watch::FLOW_RUN_LABEL;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
// Each update of the bystander's state is one insert or remove: a poisoned lock is used as is.
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::mpsc;

/// Jobs remembered as reported; beyond this the oldest are forgotten (a forgotten Job that is
/// deleted later is reported again, and the worker finds its flow run final).
const REMEMBERED_JOBS: usize = 50_000;
/// Pods whose last phase is remembered at most.
const REMEMBERED_PODS: usize = 50_000;
/// Sightings per batch at most.
const SIGHTINGS_PER_BATCH: usize = 64;
/// How long a batch waits for more sightings after its first.
const SIGHTING_GATHER_WINDOW: Duration = Duration::from_millis(50);

/// A Prefect Job that nobody in this process follows ended without succeeding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnfollowedJobEnd {
    /// The Job's namespace.
    pub namespace: String,
    /// The flow run's id (the Job's `prefect.io/flow-run-id` label).
    pub flow_run_id: String,
    /// The Job's name.
    pub job_name: String,
    /// When the Job was created (RFC 3339), when the API server said.
    pub created: Option<String>,
    /// `Failed(reason)`, or `Deleted` for a Job deleted before it succeeded.
    pub end: JobEnd,
}

/// A pod of a run nobody in this process follows changed phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnfollowedPodChange {
    /// The pod's namespace.
    pub namespace: String,
    /// The flow run's id.
    pub flow_run_id: String,
    /// The pod's Prefect labels (`prefect.io/...`: deployment, flow, names), for the event's
    /// related resources.
    pub labels: BTreeMap<String, String>,
    /// The change.
    pub change: PodPhaseChange,
}

/// What the bystander reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sighting {
    /// See [`UnfollowedJobEnd`].
    JobEnded(UnfollowedJobEnd),
    /// See [`UnfollowedPodChange`].
    PodChanged(UnfollowedPodChange),
    /// The Job watch of this namespace lost its place (410 Gone) and started again from "now":
    /// a Job nobody follows may have ended unseen in between. (Followed runs were read again.)
    JobsMissed {
        /// The namespace.
        namespace: String,
    },
}

/// What the worker wants to hear about.
#[derive(Debug, Clone, Default)]
pub struct ObserveOptions {
    /// Labels (name, value) an object must carry to be reported, besides the flow-run label
    /// (`..._OBSERVER_ADDITIONAL_LABEL_FILTERS`).
    pub label_filters: Vec<(String, String)>,
    /// Report pods' phase changes (`..._OBSERVER_REPLICATE_POD_EVENTS`).
    pub pod_events: bool,
}

/// The receiving end: sightings in batches.
pub struct Sightings {
    receiver: tokio::sync::Mutex<mpsc::UnboundedReceiver<Sighting>>,
}

impl Sightings {
    /// The next batch; None once the bystander stopped (the cluster was closed or another
    /// observer replaced this one).
    pub async fn next_batch(&self) -> Option<Vec<Sighting>> {
        let mut receiver = self.receiver.lock().await;
        let first = receiver.recv().await?;
        let mut batch = vec![first];
        let gather_until = tokio::time::Instant::now() + SIGHTING_GATHER_WINDOW;
        while batch.len() < SIGHTINGS_PER_BATCH {
            match tokio::time::timeout_at(gather_until, receiver.recv()).await {
                Ok(Some(sighting)) => batch.push(sighting),
                Ok(None) | Err(_) => break,
            }
        }
        Some(batch)
    }
}

#[derive(Default)]
struct Watching {
    sender: Option<mpsc::UnboundedSender<Sighting>>,
    options: ObserveOptions,
    /// Jobs whose end was reported (by uid), oldest first in `order`.
    reported: HashSet<String>,
    order: VecDeque<String>,
    /// The last phase reported of each pod (by uid), while the pod exists.
    pod_phases: HashMap<String, String>,
}

impl Watching {
    fn matches(&self, labels: Option<&BTreeMap<String, String>>) -> bool {
        self.options
            .label_filters
            .iter()
            .all(|(name, value)| labels.and_then(|labels| labels.get(name)) == Some(value))
    }

    /// Remembers `uid` as reported; false when it was already.
    fn remember(&mut self, uid: &str) -> bool {
        if !self.reported.insert(uid.to_owned()) {
            return false;
        }
        self.order.push_back(uid.to_owned());
        if self.order.len() > REMEMBERED_JOBS {
            if let Some(oldest) = self.order.pop_front() {
                self.reported.remove(&oldest);
            }
        }
        true
    }
}

/// The per-cluster receiver of what the shared watchers see of runs nobody here follows.
/// Until [`Bystander::observe`] is called it ignores everything, at the cost of one atomic load.
#[derive(Default)]
pub struct Bystander {
    enabled: AtomicBool,
    watching: Mutex<Watching>,
}

impl Bystander {
    /// Starts reporting (again, with these options); an earlier receiver's stream ends.
    pub fn observe(&self, options: ObserveOptions) -> Sightings {
        let (sender, receiver) = mpsc::unbounded_channel();
        let mut watching = self.watching.lock().unwrap_or_else(PoisonError::into_inner);
        watching.sender = Some(sender);
        watching.options = options;
        self.enabled.store(true, Ordering::Release);
        Sightings {
            receiver: tokio::sync::Mutex::new(receiver),
        }
    }

    /// Stops reporting; the receiver's stream ends.
    pub fn stop(&self) {
        self.enabled.store(false, Ordering::Release);
        let mut watching = self.watching.lock().unwrap_or_else(PoisonError::into_inner);
        *watching = Watching::default();
    }

    /// A pod event that no run subscribed to (`deleted`: its last state).
    pub fn saw_pod(&self, namespace: &str, pod: &Pod, deleted: bool) {
        if !self.enabled.load(Ordering::Acquire) {
            return;
        }
        let meta = &pod.metadata;
        let (Some(flow_run_id), Some(uid)) = (
            meta.labels
                .as_ref()
                .and_then(|labels| labels.get(FLOW_RUN_LABEL)),
            meta.uid.as_ref(),
        ) else {
            return;
        };
        let mut watching = self.watching.lock().unwrap_or_else(PoisonError::into_inner);
        if !watching.options.pod_events || !watching.matches(meta.labels.as_ref()) {
            return;
        }
        let change = phase_change_of(pod);
        let last = if deleted {
            watching.pod_phases.remove(uid)
        } else {
            if watching.pod_phases.len() >= REMEMBERED_PODS {
                // Pods whose deletion was missed (a watch gap) would pile up: start afresh. At
                // worst a phase is reported again, under the same event id.
                watching.pod_phases.clear();
            }
            watching
                .pod_phases
                .insert(uid.clone(), change.phase.clone())
        };
        if last.as_deref() == Some(change.phase.as_str()) {
            return;
        }
        let labels = meta
            .labels
            .iter()
            .flatten()
            .filter(|(name, _)| name.starts_with("prefect.io/"))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        let sighting = Sighting::PodChanged(UnfollowedPodChange {
            namespace: namespace.to_owned(),
            flow_run_id: flow_run_id.clone(),
            labels,
            change,
        });
        self.send(&watching, sighting);
    }

    fn send(&self, watching: &Watching, sighting: Sighting) {
        let closed = watching
            .sender
            .as_ref()
            .is_none_or(|sender| sender.send(sighting).is_err());
        if closed {
            // Nobody listens any more (the worker dropped its stream): stop looking.
            self.enabled.store(false, Ordering::Release);
        }
    }

    /// The Job watch of `namespace` lost its place: what ended meanwhile was not seen.
    pub fn missed_jobs(&self, namespace: &str) {
        if !self.enabled.load(Ordering::Acquire) {
            return;
        }
        let watching = self.watching.lock().unwrap_or_else(PoisonError::into_inner);
        self.send(
            &watching,
            Sighting::JobsMissed {
                namespace: namespace.to_owned(),
            },
        );
    }

    /// A Job event that no run subscribed to (`deleted`: the Job is gone, this is its last
    /// state).
    pub fn saw_job(&self, namespace: &str, job: &Job, deleted: bool) {
        if !self.enabled.load(Ordering::Acquire) {
            return;
        }
        let end = match (job_end_of(job), deleted) {
            (Some(JobEnd::Failed(reason)), _) => JobEnd::Failed(reason),
            (Some(JobEnd::Complete), _) | (_, false) => return,
            (_, true) => JobEnd::Deleted,
        };
        let meta = &job.metadata;
        let (Some(flow_run_id), Some(uid), Some(job_name)) = (
            meta.labels
                .as_ref()
                .and_then(|labels| labels.get(FLOW_RUN_LABEL)),
            meta.uid.as_ref(),
            meta.name.as_ref(),
        ) else {
            return;
        };
        let mut watching = self.watching.lock().unwrap_or_else(PoisonError::into_inner);
        if !watching.matches(meta.labels.as_ref()) {
            return;
        }
        let new = if deleted {
            // Gone: nothing more will be heard of it, so it need not be remembered.
            let known = watching.reported.remove(uid);
            !known
        } else {
            watching.remember(uid)
        };
        if !new {
            return;
        }
        let sighting = Sighting::JobEnded(UnfollowedJobEnd {
            namespace: namespace.to_owned(),
            flow_run_id: flow_run_id.clone(),
            job_name: job_name.clone(),
            created: meta
                .creation_timestamp
                .as_ref()
                .map(|time| time.0.to_string()),
            end,
        });
        self.send(&watching, sighting);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(uid: &str, status: serde_json::Value) -> Job {
        serde_json::from_value(json!({
            "metadata": {"name": format!("job-{uid}"), "uid": uid,
                         "creationTimestamp": "2026-12-02T10:00:00Z",
                         "labels": {FLOW_RUN_LABEL: format!("run-{uid}"), "team": "data"}},
            "spec": {"backoffLimit": 0},
            "status": status,
        }))
        .unwrap()
    }

    fn failed() -> serde_json::Value {
        json!({"failed": 1, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]})
    }

    fn drain(sightings: &Sightings) -> Vec<Sighting> {
        let mut receiver = sightings.receiver.try_lock().unwrap();
        std::iter::from_fn(|| receiver.try_recv().ok()).collect()
    }

    #[test]
    fn nothing_is_reported_before_observing() {
        let bystander = Bystander::default();
        bystander.saw_job("ns", &job("a", failed()), false);
        let sightings = bystander.observe(ObserveOptions::default());
        assert!(drain(&sightings).is_empty());
    }

    #[test]
    fn a_watch_gap_is_told_while_observing() {
        let bystander = Bystander::default();
        bystander.missed_jobs("before");
        let sightings = bystander.observe(ObserveOptions::default());
        bystander.missed_jobs("ns");
        assert_eq!(
            drain(&sightings),
            vec![Sighting::JobsMissed {
                namespace: "ns".into()
            }]
        );
    }

    #[test]
    fn a_failure_is_reported_once_and_its_deletion_not_again() {
        let bystander = Bystander::default();
        let sightings = bystander.observe(ObserveOptions::default());
        bystander.saw_job("ns", &job("a", json!({"active": 1})), false);
        bystander.saw_job("ns", &job("a", failed()), false);
        bystander.saw_job("ns", &job("a", failed()), false);
        bystander.saw_job("ns", &job("a", failed()), true);
        let seen = drain(&sightings);
        assert_eq!(
            seen,
            vec![Sighting::JobEnded(UnfollowedJobEnd {
                namespace: "ns".into(),
                flow_run_id: "run-a".into(),
                job_name: "job-a".into(),
                created: Some("2026-12-02T10:00:00Z".into()),
                end: JobEnd::Failed("BackoffLimitExceeded".into()),
            })]
        );
    }

    #[test]
    fn a_deletion_before_success_is_reported_and_after_success_is_not() {
        let bystander = Bystander::default();
        let sightings = bystander.observe(ObserveOptions::default());
        bystander.saw_job("ns", &job("running", json!({"active": 1})), true);
        let complete =
            json!({"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]});
        bystander.saw_job("ns", &job("done", complete.clone()), false);
        bystander.saw_job("ns", &job("done", complete), true);
        let ends: Vec<(String, JobEnd)> = drain(&sightings)
            .into_iter()
            .filter_map(|sighting| match sighting {
                Sighting::JobEnded(end) => Some((end.job_name, end.end)),
                Sighting::PodChanged(_) | Sighting::JobsMissed { .. } => None,
            })
            .collect();
        assert_eq!(ends, vec![("job-running".into(), JobEnd::Deleted)]);
    }

    #[test]
    fn label_filters_limit_what_is_reported() {
        let bystander = Bystander::default();
        let sightings = bystander.observe(ObserveOptions {
            label_filters: vec![("team".into(), "ml".into())],
            pod_events: false,
        });
        bystander.saw_job("ns", &job("a", failed()), false);
        assert!(drain(&sightings).is_empty());
        let sightings = bystander.observe(ObserveOptions {
            label_filters: vec![("team".into(), "data".into())],
            pod_events: false,
        });
        bystander.saw_job("ns", &job("b", failed()), false);
        assert_eq!(drain(&sightings).len(), 1);
    }

    #[test]
    fn the_reported_set_is_bounded() {
        let mut watching = Watching::default();
        for n in 0..(REMEMBERED_JOBS + 10) {
            assert!(watching.remember(&n.to_string()));
        }
        assert_eq!(watching.reported.len(), REMEMBERED_JOBS);
        assert!(watching.remember("0"), "the oldest was forgotten");
        assert!(!watching.remember(&(REMEMBERED_JOBS + 9).to_string()));
    }

    fn pod(phase: &str, restarts: i32) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "job-a-x1", "uid": "p1",
                         "labels": {FLOW_RUN_LABEL: "run-a", "prefect.io/deployment-id": "d1",
                                    "job-name": "job-a"}},
            "status": {"phase": phase, "containerStatuses": [{
                "name": "prefect-job", "image": "i", "imageID": "", "ready": false,
                "restartCount": restarts, "state": {"running": {}}}]},
        }))
        .unwrap()
    }

    fn pod_changes(sightings: &Sightings) -> Vec<(String, i32, BTreeMap<String, String>)> {
        drain(sightings)
            .into_iter()
            .filter_map(|sighting| match sighting {
                Sighting::PodChanged(change) => Some((
                    change.change.phase,
                    change.change.restart_count,
                    change.labels,
                )),
                Sighting::JobEnded(_) | Sighting::JobsMissed { .. } => None,
            })
            .collect()
    }

    #[test]
    fn pod_phases_are_reported_once_each_with_the_prefect_labels_only_when_asked() {
        let bystander = Bystander::default();
        let quiet = bystander.observe(ObserveOptions::default());
        bystander.saw_pod("ns", &pod("Running", 0), false);
        assert!(pod_changes(&quiet).is_empty());

        let sightings = bystander.observe(ObserveOptions {
            label_filters: Vec::new(),
            pod_events: true,
        });
        bystander.saw_pod("ns", &pod("Pending", 0), false);
        bystander.saw_pod("ns", &pod("Running", 0), false);
        bystander.saw_pod("ns", &pod("Running", 0), false);
        bystander.saw_pod("ns", &pod("Failed", 1), false);
        bystander.saw_pod("ns", &pod("Failed", 1), true);
        let changes = pod_changes(&sightings);
        let phases: Vec<(&str, i32)> = changes
            .iter()
            .map(|(phase, restarts, _)| (phase.as_str(), *restarts))
            .collect();
        assert_eq!(phases, vec![("Pending", 0), ("Running", 0), ("Failed", 1)]);
        let labels: Vec<&String> = changes[0].2.keys().collect();
        assert_eq!(labels, vec!["prefect.io/deployment-id", FLOW_RUN_LABEL]);
        assert!(bystander.watching.lock().unwrap().pod_phases.is_empty());
    }

    #[test]
    fn a_dropped_receiver_stops_the_bystander() {
        let bystander = Bystander::default();
        drop(bystander.observe(ObserveOptions::default()));
        bystander.saw_job("ns", &job("a", failed()), false);
        assert!(!bystander.enabled.load(Ordering::Acquire));
    }
}
