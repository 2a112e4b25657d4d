//! Shared watchers: one job watch and one pod watch per (cluster, namespace), multiplexed to
//! every run in flight by its flow-run id.
//!
//! A namespace may hold tens of thousands of finished Prefect Jobs, so nothing here lists the
//! namespace: the watch starts from "now" (the resourceVersion of a one-item list). Runs
//! subscribe before they create their Job, so nothing of theirs is missed. When the watch must
//! resync (410 Gone), only the objects of subscribed runs are read again, in batches, and the
//! watch restarts from "now".

use crate::k8s::error::K8sError;
use crate::k8s::observer::Bystander;
use crate::k8s::watched::{WatchedJob, WatchedPod};
use futures::TryStreamExt;
use kube::api::{ListParams, WatchEvent, WatchParams};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
// Poisoned locks are used as they are: each update of the subscriber maps is one insert or
// remove, so a panic elsewhere cannot leave them half-changed.
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// The label every Job and pod of a flow run carries; runs subscribe by its value.
pub const FLOW_RUN_LABEL: &str = "prefect.io/flow-run-id";

/// How many flow-run ids go into one set-based label selector when reading runs' objects.
pub const RESYNC_BATCH: usize = 50;
/// Server-side timeout of one watch request; the watch is reopened from the last version.
const WATCH_TIMEOUT_SECONDS: u32 = 290;
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long a run waits for a watch that fails to open for a reason that may pass (429, 5xx,
/// a reset or refused connection) before it reports that reason.
const OPEN_PATIENCE: Duration = Duration::from_secs(10);

/// What a run learns about its objects.
#[derive(Debug, Clone)]
pub enum ObjectEvent<K> {
    /// The object was created or changed; this is its new state.
    Applied(K),
    /// The object is gone; this is its last state.
    Deleted(K),
    /// After a gap in the watch: every object of the run that exists now. Objects the run
    /// knew that are not in the list were deleted during the gap.
    Resynced(Vec<K>),
}

impl<K> ObjectEvent<K> {
    /// The same event about the object converted by `convert`.
    pub fn map<T>(self, convert: impl Fn(K) -> T) -> ObjectEvent<T> {
        match self {
            ObjectEvent::Applied(object) => ObjectEvent::Applied(convert(object)),
            ObjectEvent::Deleted(object) => ObjectEvent::Deleted(convert(object)),
            ObjectEvent::Resynced(objects) => {
                ObjectEvent::Resynced(objects.into_iter().map(convert).collect())
            }
        }
    }
}

type Subscribers<K> =
    Arc<Mutex<HashMap<String, Vec<(u64, mpsc::UnboundedSender<ObjectEvent<K>>)>>>>;

/// Where an event that no run subscribed to goes: `(object, deleted)`.
type Unfollowed<K> = Arc<dyn Fn(&K, bool) + Send + Sync>;
/// Told when the watch lost its place and started again from "now" (events may be missed).
type Gap = Arc<dyn Fn() + Send + Sync>;

/// Counters a test or benchmark can read to see what the watchers cost.
#[derive(Debug, Default)]
pub struct WatchStats {
    /// Watch requests opened (including reconnects).
    pub watches_opened: AtomicU64,
    /// Resyncs after 410 Gone.
    pub resyncs: AtomicU64,
    /// Events received.
    pub events: AtomicU64,
}

/// Whether a shared watch is open.
#[derive(Debug, Clone)]
enum WatchState {
    /// Opening for the first time.
    Starting,
    /// Watching.
    Ready,
    /// The last attempt to open it failed (it keeps trying in the background).
    Failing(K8sError),
}

/// One long-running watch of one kind of object in one namespace.
struct SharedWatch<K: Clone> {
    subscribers: Subscribers<K>,
    ready: watch::Receiver<WatchState>,
    task: JoinHandle<()>,
    stats: Arc<WatchStats>,
}

impl<K> SharedWatch<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
{
    fn start(
        client: Client,
        namespace: &str,
        kind: &'static str,
        unfollowed: Unfollowed<K>,
        gap: Gap,
    ) -> Self {
        let subscribers: Subscribers<K> = Arc::default();
        let (ready_tx, ready) = watch::channel(WatchState::Starting);
        let stats = Arc::new(WatchStats::default());
        let api: Api<K> = Api::namespaced(client, namespace);
        let task = tokio::spawn(watch_loop(
            api,
            format!("{kind} in namespace '{namespace}'"),
            Routes {
                subscribers: subscribers.clone(),
                unfollowed,
                gap,
            },
            ready_tx,
            stats.clone(),
        ));
        SharedWatch {
            subscribers,
            ready,
            task,
            stats,
        }
    }

    fn subscribe(&self, id: u64, flow_run_id: &str) -> mpsc::UnboundedReceiver<ObjectEvent<K>> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(flow_run_id.to_owned())
            .or_default()
            .push((id, tx));
        rx
    }

    fn unsubscribe(&self, id: u64, flow_run_id: &str) {
        let mut subscribers = self
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(list) = subscribers.get_mut(flow_run_id) {
            list.retain(|(subscriber, _)| *subscriber != id);
            if list.is_empty() {
                subscribers.remove(flow_run_id);
            }
        }
    }

    /// Waits until the watch is open, or fails with why it cannot open: at once when the API
    /// server refuses (e.g. the worker may not list or watch this kind of object there), after
    /// [`OPEN_PATIENCE`] of transient failures (throttling, 5xx, connection errors).
    async fn wait_ready(&self) -> Result<(), K8sError> {
        let mut ready = self.ready.clone();
        let give_up_at = tokio::time::Instant::now() + OPEN_PATIENCE;
        loop {
            let state = ready.borrow_and_update().clone();
            let changed = match state {
                WatchState::Ready => return Ok(()),
                WatchState::Failing(error) if !error.is_retryable() => return Err(error),
                WatchState::Failing(error) => {
                    match tokio::time::timeout_at(give_up_at, ready.changed()).await {
                        Ok(changed) => changed,
                        Err(_) => return Err(error),
                    }
                }
                WatchState::Starting => ready.changed().await,
            };
            if changed.is_err() {
                // The watcher is gone: nothing to wait for.
                return Ok(());
            }
        }
    }
}

/// The job watcher and the pod watcher of one namespace.
pub struct NamespaceWatch {
    namespace: String,
    client: Client,
    jobs: SharedWatch<WatchedJob>,
    pods: SharedWatch<WatchedPod>,
    next_id: AtomicU64,
}

impl NamespaceWatch {
    /// Starts both watchers (they open their watches in the background). Events no run
    /// subscribed to go to `bystander`.
    pub fn start(client: Client, namespace: &str, bystander: Arc<Bystander>) -> Arc<Self> {
        let (owner, jobs_bystander) = (namespace.to_owned(), bystander.clone());
        let unfollowed_jobs: Unfollowed<WatchedJob> =
            Arc::new(move |job, deleted| jobs_bystander.saw_job(&owner, &job.0, deleted));
        let (owner, gap_bystander) = (namespace.to_owned(), bystander.clone());
        let jobs_gap: Gap = Arc::new(move || gap_bystander.missed_jobs(&owner));
        let owner = namespace.to_owned();
        let unfollowed_pods: Unfollowed<WatchedPod> =
            Arc::new(move |pod, deleted| bystander.saw_pod(&owner, &pod.0, deleted));
        // A pod phase missed in a gap is one event fewer; a Job's end missed is a run left
        // unended, so only the Job watch's gaps are told.
        let pods_gap: Gap = Arc::new(|| {});
        Arc::new(NamespaceWatch {
            namespace: namespace.to_owned(),
            client: client.clone(),
            jobs: SharedWatch::start(client.clone(), namespace, "jobs", unfollowed_jobs, jobs_gap),
            pods: SharedWatch::start(client, namespace, "pods", unfollowed_pods, pods_gap),
            next_id: AtomicU64::new(1),
        })
    }

    /// Hands the current Jobs and pods of `flow_run_id` to its subscribers (as after a gap in
    /// the watch): a run followed from the middle, e.g. after a worker restart, learns where
    /// its Job stands without waiting for its next change.
    pub async fn catch_up(&self, flow_run_id: &str) -> Result<(), K8sError> {
        let keys = [flow_run_id.to_owned()];
        let jobs: Api<WatchedJob> = Api::namespaced(self.client.clone(), &self.namespace);
        resync_runs(&jobs, &self.jobs.subscribers, &keys).await?;
        let pods: Api<WatchedPod> = Api::namespaced(self.client.clone(), &self.namespace);
        resync_runs(&pods, &self.pods.subscribers, &keys).await
    }

    /// The namespace watched.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Subscribes to the Jobs and pods of `flow_run_id`; returns once both watches are open,
    /// so a Job created afterwards is seen from its creation on. Fails, subscribing nothing,
    /// when a watch cannot be opened (no permission, unreachable API server).
    pub async fn subscribe(
        self: &Arc<Self>,
        flow_run_id: &str,
    ) -> Result<RunSubscription, K8sError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let jobs = self.jobs.subscribe(id, flow_run_id);
        let pods = self.pods.subscribe(id, flow_run_id);
        // Dropped on an error below, which unsubscribes it.
        let subscription = RunSubscription {
            watch: self.clone(),
            id,
            flow_run_id: flow_run_id.to_owned(),
            jobs,
            pods,
        };
        self.jobs.wait_ready().await?;
        self.pods.wait_ready().await?;
        Ok(subscription)
    }

    /// How many runs are subscribed now.
    pub fn subscribed_runs(&self) -> usize {
        self.jobs
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(Vec::len)
            .sum()
    }

    /// Counters of the job watcher and the pod watcher.
    pub fn stats(&self) -> (Arc<WatchStats>, Arc<WatchStats>) {
        (self.jobs.stats.clone(), self.pods.stats.clone())
    }

    /// Stops both watchers.
    pub fn stop(&self) {
        self.jobs.task.abort();
        self.pods.task.abort();
    }
}

impl Drop for NamespaceWatch {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One run's view of the shared watchers; unsubscribes when dropped.
pub struct RunSubscription {
    watch: Arc<NamespaceWatch>,
    id: u64,
    flow_run_id: String,
    /// Events of the run's Jobs.
    pub jobs: mpsc::UnboundedReceiver<ObjectEvent<WatchedJob>>,
    /// Events of the run's pods.
    pub pods: mpsc::UnboundedReceiver<ObjectEvent<WatchedPod>>,
}

impl RunSubscription {
    /// The namespace of the run.
    pub fn namespace(&self) -> &str {
        self.watch.namespace()
    }
}

impl Drop for RunSubscription {
    fn drop(&mut self) {
        self.watch.jobs.unsubscribe(self.id, &self.flow_run_id);
        self.watch.pods.unsubscribe(self.id, &self.flow_run_id);
    }
}

fn route_key<K: Resource>(object: &K) -> Option<String> {
    object.meta().labels.as_ref()?.get(FLOW_RUN_LABEL).cloned()
}

/// Where a shared watch sends what it sees: to the runs subscribed by flow-run id, else to
/// the bystander.
struct Routes<K> {
    subscribers: Subscribers<K>,
    unfollowed: Unfollowed<K>,
    gap: Gap,
}

fn deliver<K: Resource + Clone>(routes: &Routes<K>, object: &K, deleted: bool) {
    let Some(key) = route_key(object) else { return };
    let subscribers = routes
        .subscribers
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    match subscribers.get(&key) {
        Some(list) => {
            for (_, tx) in list {
                let event = if deleted {
                    ObjectEvent::Deleted(object.clone())
                } else {
                    ObjectEvent::Applied(object.clone())
                };
                let _ = tx.send(event);
            }
        }
        None => {
            drop(subscribers);
            (routes.unfollowed)(object, deleted);
        }
    }
}

struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Backoff { next: BACKOFF_MIN }
    }

    async fn wait(&mut self) {
        let jitter = self.next.mul_f64(fastrand::f64() * 0.5);
        tokio::time::sleep(self.next + jitter).await;
        self.next = (self.next * 2).min(BACKOFF_MAX);
    }

    fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }
}

enum WatchEnd {
    /// The server ended the watch (timeout) or the connection dropped: reopen from `rv`.
    Reopen,
    /// The version is too old: resync.
    Gone,
}

async fn watch_loop<K>(
    api: Api<K>,
    what: String,
    routes: Routes<K>,
    ready: watch::Sender<WatchState>,
    stats: Arc<WatchStats>,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let selector = FLOW_RUN_LABEL.to_string();
    let mut backoff = Backoff::new();
    let mut first = true;
    loop {
        // "Now": the collection's version from a one-item list; never the namespace's history.
        let version = match api
            .list(&ListParams::default().labels(&selector).limit(1))
            .await
        {
            Ok(list) => list.metadata.resource_version.unwrap_or_default(),
            Err(error) => {
                let error = K8sError::from_kube(error, "list", &what);
                log::warn!("cannot start watching {what}: {error}");
                // Runs waiting to subscribe learn why; the watch keeps trying in the background.
                let _ = ready.send(WatchState::Failing(error));
                backoff.wait().await;
                continue;
            }
        };
        if !first {
            stats.resyncs.fetch_add(1, Ordering::Relaxed);
            if let Err(error) = resync(&api, &routes.subscribers).await {
                log::warn!("cannot re-read {what} after a watch gap, trying again: {error}");
                backoff.wait().await;
                continue;
            }
            (routes.gap)();
        }
        first = false;
        let _ = ready.send(WatchState::Ready);
        let mut version = version;
        let mut refusal_said = false;
        loop {
            match watch_once(&api, &selector, &mut version, &routes, &stats).await {
                Ok(WatchEnd::Reopen) => {
                    backoff.reset();
                    refusal_said = false;
                }
                Ok(WatchEnd::Gone) => break,
                Err(error) if error.status_code() == Some(410) => break,
                // A missing permission or a token the server no longer takes does not pass
                // like a cut connection: without the watch no run of the namespace sees its
                // end. Said once per outage; the watch keeps trying (RBAC gets fixed, tokens
                // are rotated).
                Err(error) if matches!(error.status_code(), Some(401 | 403)) => {
                    if !refusal_said {
                        log::warn!(
                            "the API server refuses to watch {what} ({error}); runs there are \
                             not followed until it allows it: the worker's identity needs list \
                             and watch on jobs and pods in the namespace; trying again with \
                             back-off"
                        );
                        refusal_said = true;
                    }
                    backoff.wait().await;
                }
                Err(error) => {
                    log::debug!("watch of {what} interrupted, reopening: {error}");
                    backoff.wait().await;
                }
            }
        }
        log::info!("watch of {what} lost its place (410 Gone); re-reading the runs in flight");
    }
}

async fn watch_once<K>(
    api: &Api<K>,
    selector: &str,
    version: &mut String,
    routes: &Routes<K>,
    stats: &WatchStats,
) -> Result<WatchEnd, K8sError>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let params = WatchParams::default()
        .labels(selector)
        .timeout(WATCH_TIMEOUT_SECONDS);
    // Bookmarks are on by default: they keep `version` fresh so a reopen rarely meets a 410.
    stats.watches_opened.fetch_add(1, Ordering::Relaxed);
    let stream = api
        .watch(&params, version)
        .await
        .map_err(|error| K8sError::from_kube(error, "watch", "objects"))?;
    let mut stream = std::pin::pin!(stream);
    loop {
        let event = match stream.try_next().await {
            Ok(Some(event)) => event,
            Ok(None) => return Ok(WatchEnd::Reopen),
            Err(error) => return Err(K8sError::from_kube(error, "watch", "objects")),
        };
        stats.events.fetch_add(1, Ordering::Relaxed);
        match event {
            WatchEvent::Added(object) | WatchEvent::Modified(object) => {
                remember_version(version, &object);
                deliver(routes, &object, false);
            }
            WatchEvent::Deleted(object) => {
                remember_version(version, &object);
                deliver(routes, &object, true);
            }
            WatchEvent::Bookmark(bookmark) => *version = bookmark.metadata.resource_version,
            WatchEvent::Error(status) if status.code == 410 => return Ok(WatchEnd::Gone),
            WatchEvent::Error(status) => {
                return Err(K8sError::Api {
                    verb: "watch".into(),
                    what: "objects".into(),
                    code: status.code,
                    reason: status.reason.clone(),
                    message: status.message.clone(),
                })
            }
        }
    }
}

fn remember_version<K: Resource>(version: &mut String, object: &K) {
    if let Some(new_version) = &object.meta().resource_version {
        version.clone_from(new_version);
    }
}

/// Re-reads the objects of every subscribed run, a batch of runs per request.
async fn resync<K>(api: &Api<K>, subscribers: &Subscribers<K>) -> Result<(), K8sError>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let keys: Vec<String> = subscribers
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .keys()
        .cloned()
        .collect();
    resync_runs(api, subscribers, &keys).await
}

/// Re-reads the objects of the runs `keys`, a batch of runs per request, and hands each its
/// own.
async fn resync_runs<K>(
    api: &Api<K>,
    subscribers: &Subscribers<K>,
    keys: &[String],
) -> Result<(), K8sError>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    for batch in keys.chunks(RESYNC_BATCH) {
        let selector = format!("{FLOW_RUN_LABEL} in ({})", batch.join(","));
        let objects = api
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|error| K8sError::from_kube(error, "list", "objects of runs in flight"))?
            .items;
        let subscribers = subscribers.lock().unwrap_or_else(PoisonError::into_inner);
        for key in batch {
            let mine: Vec<K> = objects
                .iter()
                .filter(|object| route_key(*object).as_deref() == Some(key))
                .cloned()
                .collect();
            if let Some(list) = subscribers.get(key) {
                for (_, tx) in list {
                    let _ = tx.send(ObjectEvent::Resynced(mine.clone()));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch_in(state: WatchState) -> (SharedWatch<WatchedPod>, watch::Sender<WatchState>) {
        let (sender, ready) = watch::channel(state);
        let shared = SharedWatch {
            subscribers: Arc::default(),
            ready,
            task: tokio::spawn(async {}),
            stats: Arc::default(),
        };
        (shared, sender)
    }

    fn api_error(code: u16) -> K8sError {
        K8sError::Api {
            verb: "list".into(),
            what: "pods".into(),
            code,
            reason: String::new(),
            message: String::new(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_watch_fails_at_once() {
        let (shared, _sender) = watch_in(WatchState::Failing(api_error(403)));
        let error = shared.wait_ready().await.unwrap_err();
        assert_eq!(error.status_code(), Some(403));
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttled_watch_is_waited_for_until_it_opens() {
        let (shared, sender) = watch_in(WatchState::Failing(api_error(429)));
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = sender.send(WatchState::Failing(api_error(503)));
            tokio::time::sleep(Duration::from_secs(2)).await;
            let _ = sender.send(WatchState::Ready);
            std::future::pending::<()>().await;
        });
        let started = tokio::time::Instant::now();
        shared.wait_ready().await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_watch_that_keeps_failing_reports_why_after_the_patience() {
        let (shared, _sender) = watch_in(WatchState::Failing(api_error(503)));
        let started = tokio::time::Instant::now();
        let error = shared.wait_ready().await.unwrap_err();
        assert_eq!(error.status_code(), Some(503));
        assert_eq!(started.elapsed(), OPEN_PATIENCE);
    }
}
