//! One flow run's Job, from subscription to outcome.
//!
//! - [`state`]: the pure part. [`RunState`] folds the Job and pod events of one run into what
//!   the worker needs to know (has the pod started, did it fail for good, is the Job finished,
//!   which exit code).
//! - [`start`]: the one way a run starts ([`start_run`]): subscription, credentials, Job,
//!   pid, follower.
//! - [`follower`]: drives that state from the shared watchers, streams the log, enforces the
//!   deadlines and reports [`RunEvent`]s.
//! - [`stream`]: hands those events out in batches.

pub mod examine;
pub mod follower;
pub mod kill;
pub mod start;
pub mod start_clock;
pub mod state;
pub mod stream;

pub use examine::{crashed_run_log_tail, examine_runs, RunExamination, RunToExamine};
pub use follower::{active_followers, follow_existing_run, follow_run};
pub use kill::{kill_run, parse_pid_for, KillError};
pub use start::{start_run, RunRequest, StartError, StartedRun};
pub use state::{job_end_of, phase_change_of, EndedPod, JobEnd, RunState, StartStatus, Waiting};
pub use stream::RunEventStream;

use std::time::Duration;

/// `pod_watch_timeout_seconds` when the job configuration sets none.
pub const DEFAULT_POD_WATCH_TIMEOUT_SECONDS: u64 = 60;
/// The longest `pod_watch_timeout_seconds` or `job_watch_timeout_seconds` accepted: ten years,
/// far beyond any run and far within what a clock can count.
pub const MAX_WATCH_TIMEOUT_SECONDS: u64 = 10 * 365 * 24 * 3600;

/// How a run is followed (the job configuration's fields).
#[derive(Debug, Clone)]
pub struct FollowOptions {
    /// How long the pod may stay Pending.
    pub pod_watch_timeout: Duration,
    /// Overall deadline for the Job once its pod started.
    pub job_watch_timeout: Option<Duration>,
    /// Stream the flow container's log.
    pub stream_output: bool,
    /// Print only the lines written after this time (a run followed from the middle, e.g.
    /// after a worker restart, whose earlier lines the earlier worker printed).
    pub log_since: Option<k8s_openapi::jiff::Timestamp>,
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
    /// How often the flow container was restarted (part of the event's identity).
    pub restart_count: i32,
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
    /// The run waits for its infrastructure, and why: its pod is Pending (with the reason), or
    /// its Job is suspended (queued). Sent when the reason changes, as the log message is.
    Waiting(String),
    /// The end; nothing follows.
    Finished(RunOutcome),
}
