//! Following a run's Job from the shared watchers: pod start, log streams, deadlines, outcome.

use super::start_clock::PodStart;
use super::state::{JobEnd, RunState, StartStatus, Waiting};
use super::{FollowOptions, Level, RunEvent, RunEventStream, RunOutcome};
use crate::k8s::cluster::Cluster;
use crate::k8s::error::K8sError;
use crate::k8s::events::{recent_events, scale_up_news};
use crate::k8s::jobs::delete_job;
use crate::k8s::logs::{follow_container_log, LogSink};
use crate::k8s::watch::RunSubscription;
use crate::manifest::PREFECT_CONTAINER;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// How long the log may take to drain once the Job is over.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for the newest pod's final status once the Job is over.
const POD_SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// `timeout` from now; None when that lies beyond what the clock can count (then there is no
/// deadline: a timeout of billions of years is never reached anyway).
fn deadline_after(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
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
        log_since: options.log_since,
        log_tasks: HashMap::new(),
    };
    let outcome = follower
        .follow(&mut state, &mut subscription, &options)
        .await;
    // Only a run whose pods' logs were followed must wait for the printer (a run that ended
    // normally has drained its logs already, before its end was said).
    if follower.finish_logs().await {
        follower.log_lines.wait_printed().await;
    }
    drop(state);
    crate::k8s::memory::release_freed_memory();
    let _ = follower.events.send(RunEvent::Finished(outcome)).await;
}

/// Follows the Job `job_name` of a run this process did not start (a worker restarted while
/// the run was in flight): subscribes, reads where the Job stands, then follows it as
/// [`follow_run`] does, printing the log lines written from now on (the earlier ones were the
/// earlier worker's to print). Fails when the watches cannot be opened or the run's objects
/// read.
pub async fn follow_existing_run(
    cluster: Arc<Cluster>,
    namespace: &str,
    flow_run_id: &str,
    job_name: String,
    mut options: FollowOptions,
    log_lines: LogSink,
) -> Result<RunEventStream, K8sError> {
    options.log_since.get_or_insert_with(Timestamp::now);
    let watch = cluster.namespace(namespace);
    let subscription = watch.subscribe(flow_run_id).await?;
    // Subscribed first, read second: a change between the two comes on the watch after the
    // read, so nothing is missed.
    watch.catch_up(flow_run_id).await?;
    Ok(RunEventStream::spawn(|sender| {
        follow_run(cluster, subscription, job_name, options, sender, log_lines)
    }))
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
    log_since: Option<Timestamp>,
    log_tasks: HashMap<String, LogTask>,
}

impl RunFollower {
    async fn say(&self, level: Level, text: String) {
        let _ = self.events.send(RunEvent::Message(level, text)).await;
    }

    async fn waiting(&self, why: String) {
        let _ = self.events.send(RunEvent::Waiting(why)).await;
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
        let timeout = options.pod_watch_timeout;
        let mut start = PodStart::new(timeout);
        loop {
            if let Some(end) = state.job_end() {
                return self
                    .ended(state, subscription, &end, options.stream_output)
                    .await;
            }
            if let Some(controller) = state.managed_elsewhere() {
                // MultiKueue and its kind run the pods in another cluster: nothing starts here.
                self.say(
                    Level::Info,
                    format!(
                        "Job '{job}' is managed by '{controller}', which runs its pods elsewhere: \
                         their logs and exit code are not available here; following the Job's status"
                    ),
                )
                .await;
                return self.follow_status_only(state, subscription).await;
            }
            match state.start_status() {
                StartStatus::Started => break,
                StartStatus::Stuck(diagnosis) => return self.give_up(state, &diagnosis).await,
                StartStatus::Suspended => {
                    if start.suspend() {
                        self.say(
                            Level::Info,
                            format!(
                                "Job '{job}' is suspended (queued, e.g. by Kueue): waiting for it \
                                 to be admitted; pod_watch_timeout_seconds counts from then"
                            ),
                        )
                        .await;
                        self.waiting(format!(
                            "Kubernetes job '{job}' is suspended (queued, e.g. by Kueue)"
                        ))
                        .await;
                    }
                }
                StartStatus::Pending(waiting) => {
                    start.pending(state.newest_pod_scheduled());
                    if start.waiting_changed(&waiting) {
                        if let Some(waiting) = &waiting {
                            self.say(
                                Level::Info,
                                format!("Job '{job}': pod is Pending ({waiting})"),
                            )
                            .await;
                            self.waiting(format!("Kubernetes pod is pending: {waiting}"))
                                .await;
                        }
                    }
                    if waiting.as_ref().is_some_and(Waiting::is_unschedulable) {
                        self.hear_from_the_autoscaler(state, &mut start).await;
                    } else {
                        start.no_scale_up_needed();
                    }
                }
            }
            tokio::select! {
                alive = self.next_event(state, subscription) => if !alive {
                    return watchers_gone();
                },
                _ = sleep_until(start.deadline()) => {
                    let diagnosis = start.gave_up(timeout);
                    return self.give_up(state, &diagnosis).await;
                }
                _ = sleep_until(start.next_autoscaler_look()) => {}
            }
        }
        self.say(Level::Info, format!("Job '{job}': pod started"))
            .await;

        let deadline = options.job_watch_timeout.and_then(deadline_after);
        loop {
            if options.stream_output {
                self.update_log_tasks(state);
            }
            if let Some(end) = state.job_end() {
                return self
                    .ended(state, subscription, &end, options.stream_output)
                    .await;
            }
            let until_deadline = sleep_until(deadline);
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

    /// While no node can take the pod, asks now and then whether a node autoscaler is adding
    /// one (its Events on the pod); says so once per change.
    async fn hear_from_the_autoscaler(&self, state: &RunState, start: &mut PodStart) {
        if !start.autoscaler_look_due() {
            return;
        }
        let Some(pod) = state.newest_pod_name() else {
            return;
        };
        match scale_up_news(&self.cluster, &self.namespace, &pod).await {
            Ok(news) => {
                if let Some(news) = start.autoscaler_said(news) {
                    let text = if news.node_coming {
                        format!(
                            "Job '{}': a node is being added for pod '{pod}' ({}); waiting for it",
                            self.job_name, news.text
                        )
                    } else {
                        format!(
                            "Job '{}': no node will be added for pod '{pod}' ({})",
                            self.job_name, news.text
                        )
                    };
                    self.say(Level::Info, text).await;
                }
            }
            Err(error) => {
                start.autoscaler_said(None);
                log::debug!("cannot read the Events of pod '{pod}': {error}");
            }
        }
    }

    /// A Job whose pods run elsewhere: its end comes from its conditions alone.
    async fn follow_status_only(
        &mut self,
        state: &mut RunState,
        subscription: &mut RunSubscription,
    ) -> RunOutcome {
        loop {
            if let Some(end) = state.job_end() {
                return self.ended(state, subscription, &end, false).await;
            }
            if !self.next_event(state, subscription).await {
                return watchers_gone();
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
        let settle_until = deadline_after(POD_SETTLE_TIMEOUT);
        while !state.newest_pod_settled() {
            tokio::select! {
                alive = self.next_event(state, subscription) => if !alive { break },
                _ = sleep_until(settle_until) => break,
            }
        }
        // A short run may be over before its pod was ever seen running: its log is still there
        // to read, so start the followers it did not get yet.
        if stream_output {
            self.update_log_tasks(state);
        }
        // The Job's end is said after the flow's last line: a log stream on a dead connection
        // is read again from its cursor first (bounded), so "completed" closes the run's log.
        if self.finish_logs().await {
            self.log_lines.wait_printed().await;
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
                let since = self.log_since;
                let handle = tokio::spawn(async move {
                    let result = follow_container_log(
                        api,
                        pod_name.clone(),
                        PREFECT_CONTAINER.into(),
                        since,
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
