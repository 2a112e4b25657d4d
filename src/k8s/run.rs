//! Following one flow run's Job from creation to its outcome.
//!
//! [`RunState`] is the pure part: it folds the Job and pod events of one run into what the
//! worker needs to know (has the pod started, did it fail for good, is the Job finished, which
//! exit code). [`follow_run`] drives it from the shared watchers, streams the log, enforces the
//! deadlines and reports [`RunEvent`]s.

use crate::k8s::cluster::Cluster;
use crate::k8s::jobs::{delete_job, recent_events};
use crate::k8s::logs::{follow_container_log, LogSink};
use crate::k8s::watch::{ObjectEvent, RunSubscription};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::Api;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// The container the flow runs in.
pub const PREFECT_CONTAINER: &str = "prefect-job";

/// Waiting reasons after which a pod will not start without someone changing something.
const HARD_WAITING_REASONS: [&str; 4] = [
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
];

/// How long the log may take to drain once the Job is over.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for the newest pod's final status once the Job is over.
const POD_SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// How a run is followed (the job configuration's fields).
#[derive(Debug, Clone)]
pub struct FollowOptions {
    /// How long the pod may stay Pending.
    pub pod_watch_timeout: Duration,
    /// Overall deadline for the Job once its pod started.
    pub job_watch_timeout: Option<Duration>,
    /// Stream the flow container's log.
    pub stream_output: bool,
}

/// Severity of a message for the flow run's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Progress.
    Info,
    /// Something the user should look at.
    Warning,
    /// Why the run failed.
    Error,
}

/// A pod of the run changed phase (replicated as a Prefect event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPhaseChange {
    /// Pod name.
    pub name: String,
    /// Pod uid.
    pub uid: String,
    /// `Pending`, `Running`, `Succeeded`, `Failed` or `Unknown`.
    pub phase: String,
    /// The pod was evicted (phase Failed, reason Evicted).
    pub evicted: bool,
    /// Why, when Kubernetes says (pod reason, or the flow container's terminated reason).
    pub reason: Option<String>,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutcome {
    /// The flow container's exit code, or -1 when there is none.
    pub exit_code: i32,
    /// What happened, in words, when it is not a plain exit.
    pub message: Option<String>,
    /// The newest pod was evicted (with `backoffLimit: 0`, the flow run reschedules itself).
    pub evicted: bool,
}

/// What [`follow_run`] reports, in order. (The flow container's lines go to the shared
/// [`LogSink`]; all of them are printed before `Finished` is sent.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEvent {
    /// A message for the flow run's log.
    Message(Level, String),
    /// A pod changed phase.
    Pod(PodPhaseChange),
    /// The end; nothing follows.
    Finished(RunOutcome),
}

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

/// Where the pod start stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartStatus {
    /// No pod yet, or all pending; the latest reason when there is one.
    Pending(Option<String>),
    /// A pod left Pending.
    Started,
    /// A pod cannot start without outside help.
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
            let phase = pod_phase(pod).to_owned();
            if self.phases.get(&uid) == Some(&phase) {
                continue;
            }
            self.phases.insert(uid.clone(), phase.clone());
            let evicted = is_evicted(pod);
            let reason = pod
                .status
                .as_ref()
                .and_then(|status| status.reason.clone())
                .or_else(|| flow_container(pod).and_then(terminated_reason));
            changes.push(PodPhaseChange {
                name: pod.metadata.name.clone().unwrap_or_default(),
                uid,
                phase,
                evicted,
                reason,
            });
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

    /// Has a pod left Pending, or is one stuck for good?
    pub fn start_status(&self) -> StartStatus {
        let pods = self.pods_newest_first();
        if pods.iter().any(|pod| pod_phase(pod) != "Pending") {
            return StartStatus::Started;
        }
        for pod in &pods {
            if let Some(diagnosis) = stuck_reason(pod) {
                return StartStatus::Stuck(diagnosis);
            }
        }
        StartStatus::Pending(pods.first().and_then(|pod| pending_reason(pod)))
    }

    /// Whether and how the Job is over.
    pub fn job_end(&self) -> Option<JobEnd> {
        if self.job_deleted {
            return Some(JobEnd::Deleted);
        }
        let job = self.job.as_ref()?;
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
        // Without the condition, only once nothing runs: a pod deleted from outside counts as
        // failed while the Job controller may still run its replacement to the end.
        if status.failed.unwrap_or(0) > backoff_limit && status.active.unwrap_or(0) == 0 {
            return Some(JobEnd::Failed("BackoffLimitExceeded".into()));
        }
        None
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

fn pod_phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|status| status.phase.as_deref())
        .unwrap_or("Pending")
}

fn is_evicted(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .is_some_and(|status| status.reason.as_deref() == Some("Evicted"))
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

fn stuck_reason(pod: &Pod) -> Option<String> {
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
            if HARD_WAITING_REASONS.contains(&reason) {
                return Some(format!(
                    "container '{}' cannot start: {reason}: {}",
                    container.name,
                    waiting.message.as_deref().unwrap_or("no message")
                ));
            }
        }
    }
    for condition in status.conditions.iter().flatten() {
        if condition.type_ == "PodScheduled"
            && condition.status == "False"
            && condition.reason.as_deref() == Some("Unschedulable")
        {
            return Some(format!(
                "the pod cannot be scheduled: {}",
                condition.message.as_deref().unwrap_or("no node fits it")
            ));
        }
    }
    None
}

fn pending_reason(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    status
        .container_statuses
        .iter()
        .flatten()
        .find_map(|container| container.state.as_ref()?.waiting.as_ref()?.reason.clone())
        .or_else(|| status.reason.clone())
}

/// Follows the Job `job_name` of a run to its end, sending what happens to `events` and the
/// flow container's lines to `log_lines`; the last event is always [`RunEvent::Finished`], sent
/// once every line was printed. Dropping the future stops following and leaves the Job alone.
pub async fn follow_run(
    cluster: Arc<Cluster>,
    mut subscription: RunSubscription,
    job_name: String,
    options: FollowOptions,
    events: mpsc::Sender<RunEvent>,
    log_lines: LogSink,
) {
    let _counted = ActiveFollower::enter();
    let namespace = subscription.namespace().to_owned();
    let mut state = RunState::new(&job_name);
    let mut follower = RunFollower {
        cluster,
        namespace,
        job_name,
        events,
        log_lines,
        log_tasks: HashMap::new(),
    };
    let outcome = follower
        .follow(&mut state, &mut subscription, &options)
        .await;
    // Only a run whose pods' logs were followed must wait for the printer.
    if follower.finish_logs().await {
        follower.log_lines.wait_printed().await;
    }
    drop(state);
    crate::k8s::memory::release_freed_memory();
    let _ = follower.events.send(RunEvent::Finished(outcome)).await;
}

/// Runs being followed right now in this process (for tests and benchmarks: a cancelled run
/// must leave nothing running behind).
static ACTIVE_FOLLOWERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How many runs are being followed in this process.
pub fn active_followers() -> usize {
    ACTIVE_FOLLOWERS.load(std::sync::atomic::Ordering::Relaxed)
}

struct ActiveFollower;

impl ActiveFollower {
    fn enter() -> Self {
        ACTIVE_FOLLOWERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ActiveFollower
    }
}

impl Drop for ActiveFollower {
    fn drop(&mut self) {
        ACTIVE_FOLLOWERS.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

struct LogTask {
    ended: watch::Sender<bool>,
    handle: tokio::task::JoinHandle<()>,
}

struct RunFollower {
    cluster: Arc<Cluster>,
    namespace: String,
    job_name: String,
    events: mpsc::Sender<RunEvent>,
    log_lines: LogSink,
    log_tasks: HashMap<String, LogTask>,
}

impl RunFollower {
    async fn say(&self, level: Level, text: String) {
        let _ = self.events.send(RunEvent::Message(level, text)).await;
    }

    /// Takes the next event of the run into `state`; false when the watchers are gone.
    async fn next_event(
        &mut self,
        state: &mut RunState,
        subscription: &mut RunSubscription,
    ) -> bool {
        tokio::select! {
            job = subscription.jobs.recv() => match job {
                Some(event) => { state.apply_job(event.map(|job| job.0)); true }
                None => false,
            },
            pod = subscription.pods.recv() => match pod {
                Some(event) => {
                    for change in state.apply_pod(event.map(|pod| pod.0)) {
                        let _ = self.events.send(RunEvent::Pod(change)).await;
                    }
                    true
                }
                None => false,
            },
        }
    }

    async fn follow(
        &mut self,
        state: &mut RunState,
        subscription: &mut RunSubscription,
        options: &FollowOptions,
    ) -> RunOutcome {
        // (The worker said "waiting for its pod to start" with the Job's creation.)
        let job = self.job_name.clone();
        let start_deadline = Instant::now() + options.pod_watch_timeout;
        let mut last_pending = None;
        loop {
            if let Some(end) = state.job_end() {
                return self
                    .ended(state, subscription, &end, options.stream_output)
                    .await;
            }
            match state.start_status() {
                StartStatus::Started => break,
                StartStatus::Stuck(diagnosis) => return self.give_up(state, &diagnosis).await,
                StartStatus::Pending(reason) => {
                    if reason != last_pending {
                        if let Some(reason) = &reason {
                            self.say(
                                Level::Info,
                                format!("Job '{job}': pod is Pending ({reason})"),
                            )
                            .await;
                        }
                        last_pending = reason;
                    }
                }
            }
            tokio::select! {
                alive = self.next_event(state, subscription) => if !alive {
                    return watchers_gone();
                },
                _ = tokio::time::sleep_until(start_deadline) => {
                    let diagnosis = format!(
                        "the pod did not start within {} s (pod_watch_timeout_seconds){}",
                        options.pod_watch_timeout.as_secs(),
                        last_pending.map(|reason| format!("; last reason: {reason}")).unwrap_or_default()
                    );
                    return self.give_up(state, &diagnosis).await;
                }
            }
        }
        self.say(Level::Info, format!("Job '{job}': pod started"))
            .await;

        let deadline = options
            .job_watch_timeout
            .map(|timeout| Instant::now() + timeout);
        loop {
            if options.stream_output {
                self.update_log_tasks(state);
            }
            if let Some(end) = state.job_end() {
                return self
                    .ended(state, subscription, &end, options.stream_output)
                    .await;
            }
            let until_deadline = async {
                match deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                alive = self.next_event(state, subscription) => if !alive {
                    return watchers_gone();
                },
                _ = until_deadline => {
                    let seconds = options.job_watch_timeout.unwrap_or_default().as_secs();
                    self.say(Level::Error, format!(
                        "Job '{job}' did not complete within {seconds} s (job_watch_timeout_seconds); deleting it"
                    )).await;
                    self.delete_quietly().await;
                    return RunOutcome {
                        exit_code: -1,
                        message: Some(format!("the Job did not complete within {seconds} s")),
                        evicted: false,
                    };
                }
            }
        }
    }

    async fn ended(
        &mut self,
        state: &mut RunState,
        subscription: &mut RunSubscription,
        end: &JobEnd,
        stream_output: bool,
    ) -> RunOutcome {
        // The Job and its pods come on different watches: the pod's last status may still be on
        // its way. Take it in (bounded) so the exit code and the last phase event are right.
        let settle_until = Instant::now() + POD_SETTLE_TIMEOUT;
        while !state.newest_pod_settled() {
            tokio::select! {
                alive = self.next_event(state, subscription) => if !alive { break },
                _ = tokio::time::sleep_until(settle_until) => break,
            }
        }
        // A short run may be over before its pod was ever seen running: its log is still there
        // to read, so start the followers it did not get yet.
        if stream_output {
            self.update_log_tasks(state);
        }
        let job = self.job_name.clone();
        let job = &job;
        match end {
            JobEnd::Complete => {
                self.say(Level::Info, format!("Job '{job}' completed"))
                    .await
            }
            JobEnd::Failed(reason) => {
                self.say(Level::Warning, format!("Job '{job}' failed: {reason}"))
                    .await
            }
            JobEnd::Deleted => {
                self.say(Level::Warning, format!("Job '{job}' was deleted"))
                    .await
            }
        }
        let outcome = state.outcome(end);
        if let Some(message) = &outcome.message {
            let level = if outcome.exit_code == 0 {
                Level::Info
            } else {
                Level::Error
            };
            self.say(level, format!("Job '{job}': {message}")).await;
        }
        outcome
    }

    /// A pod that cannot start: say why, show the Events, delete the Job so it cannot start
    /// later behind the worker's back, and report -1.
    async fn give_up(&self, state: &RunState, diagnosis: &str) -> RunOutcome {
        let job = &self.job_name;
        self.say(Level::Error, format!("Job '{job}': {diagnosis}"))
            .await;
        let mut objects = vec![("Job", job.clone())];
        if let Some(pod) = state
            .pods_newest_first()
            .first()
            .and_then(|pod| pod.metadata.name.clone())
        {
            objects.push(("Pod", pod));
        }
        for (kind, name) in objects {
            match recent_events(&self.cluster, &self.namespace, kind, &name).await {
                Ok(lines) => {
                    for line in lines {
                        self.say(Level::Error, line).await;
                    }
                }
                Err(error) => {
                    self.say(
                        Level::Warning,
                        format!("cannot read the Events of {kind} '{name}': {error}"),
                    )
                    .await
                }
            }
        }
        self.delete_quietly().await;
        RunOutcome {
            exit_code: -1,
            message: Some(diagnosis.to_owned()),
            evicted: false,
        }
    }

    async fn delete_quietly(&self) {
        match delete_job(&self.cluster, &self.namespace, &self.job_name, None).await {
            Ok(_) => {
                self.say(Level::Info, format!("Job '{}' deleted", self.job_name))
                    .await
            }
            Err(error) => {
                self.say(
                    Level::Warning,
                    format!("could not delete Job '{}': {error}", self.job_name),
                )
                .await
            }
        }
    }

    fn update_log_tasks(&mut self, state: &RunState) {
        for pod in state.pods_with_logs() {
            if !self.log_tasks.contains_key(&pod) {
                let (ended_tx, ended_rx) = watch::channel(false);
                let events = self.events.clone();
                let api: Api<Pod> = Api::namespaced(self.cluster.client(), &self.namespace);
                let pod_name = pod.clone();
                let log_lines = self.log_lines.clone();
                let handle = tokio::spawn(async move {
                    let result = follow_container_log(
                        api,
                        pod_name.clone(),
                        PREFECT_CONTAINER.into(),
                        ended_rx,
                        log_lines,
                    )
                    .await;
                    if let Err(error) = result {
                        let _ = events
                            .send(RunEvent::Message(
                                Level::Warning,
                                format!(
                                    "log of pod '{pod_name}' could not be read to the end: {error}"
                                ),
                            ))
                            .await;
                    }
                });
                self.log_tasks.insert(
                    pod.clone(),
                    LogTask {
                        ended: ended_tx,
                        handle,
                    },
                );
            }
            if state.flow_container_ended(&pod) {
                if let Some(task) = self.log_tasks.get(&pod) {
                    let _ = task.ended.send(true);
                }
            }
        }
    }

    /// Lets the log followers read to the end of their containers (bounded), then stops them;
    /// true when there was any.
    async fn finish_logs(&mut self) -> bool {
        let mut handles = Vec::new();
        for (_, task) in self.log_tasks.drain() {
            // The Job is over: whatever its pods wrote is final.
            let _ = task.ended.send(true);
            handles.push(task.handle);
        }
        let followed_any = !handles.is_empty();
        for mut handle in handles {
            if tokio::time::timeout(SETTLE_TIMEOUT, &mut handle)
                .await
                .is_err()
            {
                handle.abort();
            }
        }
        followed_any
    }
}

impl Drop for RunFollower {
    fn drop(&mut self) {
        for task in self.log_tasks.values() {
            task.handle.abort();
        }
    }
}

fn watchers_gone() -> RunOutcome {
    RunOutcome {
        exit_code: -1,
        message: Some("the worker stopped following the Job (its watchers were closed)".into()),
        evicted: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        assert_eq!(
            state.start_status(),
            StartStatus::Pending(Some("ContainerCreating".into()))
        );
    }

    #[test]
    fn image_pull_failures_and_unschedulable_pods_are_stuck() {
        for reason in [
            "ImagePullBackOff",
            "ErrImagePull",
            "InvalidImageName",
            "CreateContainerConfigError",
        ] {
            let mut state = RunState::new(JOB);
            state.apply_pod(ObjectEvent::Applied(pod(
                "p1",
                "2026-01-01T00:00:00Z",
                waiting(reason),
            )));
            match state.start_status() {
                StartStatus::Stuck(diagnosis) => assert!(diagnosis.contains(reason), "{diagnosis}"),
                other => panic!("{reason}: {other:?}"),
            }
        }
        let mut state = RunState::new(JOB);
        state.apply_pod(ObjectEvent::Applied(pod(
            "p1",
            "2026-01-01T00:00:00Z",
            json!({"phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                            "message": "0/1 nodes are available: 1 Insufficient cpu."}]}),
        )));
        assert_eq!(
            state.start_status(),
            StartStatus::Stuck(
                "the pod cannot be scheduled: 0/1 nodes are available: 1 Insufficient cpu.".into()
            )
        );
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
