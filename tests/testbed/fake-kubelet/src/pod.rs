//! One task per pod: waiting for the scheduler (and the autoscaler's part), the container drivers, pod-level
//! behaviour (eviction, node loss, activeDeadlineSeconds), status patches and graceful deletion.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::behaviour::{self, EvictStyle, Mode};
use crate::container::{self, ContainerDef, PodCtx, Report, StopKind, StopReq};
use crate::ctx::Ctx;
use crate::events::{ObjRef, Source, Type};
use crate::logs::PodLogs;
use crate::node;
use crate::status::{CState, CStatus, PodModel, RestartPolicy, Terminated};

/// The kubelet's floor for a container's grace period (kuberuntime's
/// `minimumGracePeriodInSeconds`): even "kill now" gives SIGTERM this long before SIGKILL.
const MINIMUM_GRACE: Duration = Duration::from_secs(2);

/// The latest object of a pod, or `gone` once it was deleted from the API.
#[derive(Clone)]
pub struct PodUpdate {
    pub pod: Arc<Pod>,
    pub gone: bool,
}

/// Runs an API write under the write semaphore, retrying 429, 5xx and transport errors.
pub async fn with_retry<T, F, Fut>(ctx: &Ctx, what: &str, mut f: F) -> Result<T, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, kube::Error>>,
{
    let mut delay = Duration::from_millis(100);
    let mut attempt = 0;
    loop {
        let r = {
            let _permit = ctx.api_sem.acquire().await;
            f().await
        };
        let retry = match &r {
            Ok(_) => false,
            Err(kube::Error::Api(s)) => s.code == 429 || s.code >= 500,
            Err(_) => true,
        };
        if !retry || attempt >= 10 {
            return r;
        }
        attempt += 1;
        ctx.stats.api_retries.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = &r {
            tracing::debug!(what, attempt, error = %e, "retrying API write");
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Cause {
    Delete,
    Evict(String),
    Deadline,
}

struct Slot {
    init: bool,
    stop: watch::Sender<Option<StopReq>>,
    started: bool,
    done: bool,
    sidecar: bool,
}

struct PodTask {
    ctx: Arc<Ctx>,
    rx: watch::Receiver<PodUpdate>,
    obj: ObjRef,
    api: Api<Pod>,
}

pub async fn run(ctx: Arc<Ctx>, rx: watch::Receiver<PodUpdate>) {
    let pod = rx.borrow().pod.clone();
    let obj = ObjRef {
        kind: "Pod",
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        name: pod.metadata.name.clone().unwrap_or_default(),
        uid: pod.metadata.uid.clone().unwrap_or_default(),
    };
    let api = Api::namespaced(ctx.client.clone(), &obj.namespace);
    let mut t = PodTask {
        ctx: ctx.clone(),
        rx,
        obj: obj.clone(),
        api,
    };
    t.run().await;
    ctx.logs.remove(&obj.namespace, &obj.name, &obj.uid);
    ctx.events.forget(&obj.uid);
    tracing::debug!(pod = %obj.name, "pod task ended");
}

impl PodTask {
    fn current(&self) -> Arc<Pod> {
        self.rx.borrow().pod.clone()
    }

    fn is_gone(&self) -> bool {
        self.rx.borrow().gone
    }

    fn deleting(&self) -> bool {
        self.rx.borrow().pod.metadata.deletion_timestamp.is_some()
    }

    fn event(&self, type_: Type, reason: &str, message: &str, source: Source) {
        self.ctx
            .events
            .emit(&self.obj, None, type_, reason, message, source);
    }

    /// Waits for the next update; false when the pod is gone (or the dispatcher stopped).
    async fn next_update(&mut self) -> bool {
        self.rx.changed().await.is_ok() && !self.is_gone()
    }

    async fn wait_gone(&mut self) {
        while self.next_update().await {}
    }

    async fn patch_status(&self, status: Value) -> bool {
        let body = json!({ "metadata": {"uid": self.obj.uid}, "status": status });
        let pp = PatchParams::default();
        let patch = Patch::Merge(&body);
        let r = with_retry(&self.ctx, "patch status", || {
            self.api.patch_status(&self.obj.name, &pp, &patch)
        })
        .await;
        self.ctx
            .stats
            .status_patches
            .fetch_add(1, Ordering::Relaxed);
        match r {
            Ok(_) => true,
            Err(e) => {
                if !matches!(api_code(&e), Some(404 | 409 | 422)) {
                    tracing::warn!(pod = %self.obj.name, error = %e, "status patch failed");
                }
                false
            }
        }
    }

    /// Confirms a graceful deletion (grace 0, uid precondition).
    async fn confirm_delete(&self) {
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.obj.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        let r = with_retry(&self.ctx, "delete pod", || {
            self.api.delete(&self.obj.name, &dp)
        })
        .await;
        self.ctx.stats.deletes.fetch_add(1, Ordering::Relaxed);
        match r {
            Ok(_) => tracing::debug!(pod = %self.obj.name, "deletion confirmed"),
            Err(e) if matches!(api_code(&e), Some(404 | 409)) => {}
            Err(e) => {
                tracing::warn!(pod = %self.obj.name, error = %e, "confirming deletion failed")
            }
        }
    }

    /// After the containers ended: confirm a deletion when one comes, until the pod is gone.
    async fn idle(&mut self, mut confirm_now: bool) {
        let mut confirmed = false;
        loop {
            if self.is_gone() {
                return;
            }
            if (confirm_now || self.deleting()) && !confirmed {
                // With grace 0 the apiserver removes the pod itself (terminal and unscheduled
                // pods always get 0); a confirmation would only meet a 404.
                let immediate = self.current().metadata.deletion_grace_period_seconds == Some(0);
                if !immediate {
                    self.confirm_delete().await;
                }
                confirmed = true;
                confirm_now = false;
            }
            if !self.next_update().await {
                return;
            }
        }
    }

    /// Until the kube-scheduler binds the pod: what a node autoscaler does for a pod the
    /// scheduler found no node for (cluster-autoscaler's Events on the pod, and, when the pod
    /// asks for it, a node that fits it). Returns the node, or `None` once the pod is gone.
    async fn wait_for_binding(&mut self, scale_up_after: Option<Duration>) -> Option<String> {
        let mut autoscaler_answered = false;
        let mut node_added_at: Option<Instant> = None;
        loop {
            let pod = self.current();
            let spec = pod.spec.as_ref();
            if let Some(node) = spec
                .and_then(|s| s.node_name.clone())
                .filter(|n| !n.is_empty())
            {
                return Some(node);
            }
            if !autoscaler_answered && is_unschedulable(&pod) {
                autoscaler_answered = true;
                match scale_up_after {
                    // What cluster-autoscaler writes on the pod (its wording, v1.2x).
                    Some(after) => {
                        self.event(
                            Type::Normal,
                            "TriggeredScaleUp",
                            "pod triggered scale-up: [{testbed-pool 0->1 (max: 3)}]",
                            Source::ClusterAutoscaler,
                        );
                        node_added_at = Some(Instant::now() + after);
                    }
                    None => self.event(
                        Type::Normal,
                        "NotTriggerScaleUp",
                        "pod didn't trigger scale-up: 1 node(s) didn't match Pod's node affinity/selector",
                        Source::ClusterAutoscaler,
                    ),
                }
            }
            let far = Instant::now() + Duration::from_secs(86_400 * 365);
            tokio::select! {
                ok = self.next_update() => if !ok { return None },
                _ = tokio::time::sleep_until(node_added_at.unwrap_or(far)), if node_added_at.is_some() => {
                    node_added_at = None;
                    let selector = spec.and_then(|s| s.node_selector.clone()).unwrap_or_default();
                    match node::add_scaled_node(&self.ctx, &selector).await {
                        Ok(name) => {
                            self.ctx.stats.nodes_added.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(pod = %self.obj.name, node = %name, "autoscaler added a node");
                        }
                        Err(e) => tracing::warn!(pod = %self.obj.name, error = %e, "adding a node failed"),
                    }
                }
            }
        }
    }

    async fn run(&mut self) {
        self.ctx.stats.pods_seen.fetch_add(1, Ordering::Relaxed);
        let pod = self.current();
        let spec = pod.spec.clone().unwrap_or_default();
        let node_name = spec.node_name.clone().unwrap_or_default();
        let names: Vec<String> = spec
            .init_containers
            .iter()
            .flatten()
            .chain(spec.containers.iter())
            .map(|c| c.name.clone())
            .collect();
        let name_refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
        let (pb, cbs) = behaviour::parse(
            pod.metadata
                .annotations
                .as_ref()
                .unwrap_or(&Default::default()),
            &name_refs,
        );
        for w in &pb.warnings {
            tracing::warn!(pod = %self.obj.name, "{w}");
            self.event(
                Type::Warning,
                "FakeKubeletBadAnnotation",
                w,
                Source::FakeKubelet,
            );
        }

        let mut scheduled_at = scheduled_time(&pod).unwrap_or_else(Utc::now);

        if node_name.is_empty() {
            match self.wait_for_binding(pb.scale_up_after).await {
                None => return,
                Some(node) if !self.ctx.plays(&node) => {
                    tracing::info!(pod = %self.obj.name, node = %node, "pod bound to a node this kubelet does not play");
                    return self.wait_gone().await;
                }
                Some(_) => {}
            }
            scheduled_at = scheduled_time(&self.current()).unwrap_or_else(Utc::now);
        } else {
            let status = pod.status.clone().unwrap_or_default();
            let phase = status.phase.clone().unwrap_or_default();
            if phase == "Succeeded" || phase == "Failed" {
                return self.idle(false).await;
            }
            let started_before = status.container_statuses.iter().flatten().any(|c| {
                c.restart_count > 0
                    || c.state
                        .as_ref()
                        .map(|s| s.running.is_some() || s.terminated.is_some())
                        .unwrap_or(false)
            });
            if started_before {
                return self.adopt_orphan(&pod).await;
            }
        }
        if self.is_gone() {
            return;
        }
        if self.deleting() {
            return self.idle(true).await;
        }
        self.run_bound(pod, pb, cbs, scheduled_at).await;
    }

    /// A pod this node ran before the fake kubelet restarted: its processes are gone.
    async fn adopt_orphan(&mut self, pod: &Pod) {
        tracing::warn!(pod = %self.obj.name, "pod was started by an earlier fake-kubelet; marking its containers lost");
        let now = Utc::now();
        let spec = pod.spec.clone().unwrap_or_default();
        let statuses: Vec<CStatus> = spec
            .containers
            .iter()
            .map(|c| {
                let mut s = CStatus::new(&c.name, c.image.as_deref().unwrap_or(""), "");
                s.state = CState::Terminated(Terminated {
                    exit_code: 137,
                    reason: "ContainerStatusUnknown".into(),
                    message: Some(
                        "The container could not be located when the pod was terminated".into(),
                    ),
                    started_at: None,
                    finished_at: now,
                    container_id: None,
                });
                s
            })
            .collect();
        let mut model = PodModel::new(vec![], statuses, RestartPolicy::Never, now, now);
        model.phase = crate::status::Phase::Failed;
        model.recompute(now);
        self.patch_status(model.status_json()).await;
        self.idle(false).await;
    }

    fn set_views(logs: &PodLogs, model: &PodModel) {
        for s in model.init.iter().chain(model.main.iter()) {
            if let Some(c) = logs.containers.get(&s.name) {
                *c.view.lock().unwrap() = Some(s.clone());
            }
        }
    }

    async fn run_bound(
        &mut self,
        pod: Arc<Pod>,
        pb: behaviour::PodBehaviour,
        cbs: Vec<behaviour::ContainerBehaviour>,
        scheduled_at: chrono::DateTime<Utc>,
    ) {
        let ctx = self.ctx.clone();
        let spec = pod.spec.clone().unwrap_or_default();
        let init_specs = spec.init_containers.clone().unwrap_or_default();
        let main_specs = spec.containers.clone();
        let policy = RestartPolicy::parse(spec.restart_policy.as_deref());
        let waiting = if init_specs.is_empty() {
            "ContainerCreating"
        } else {
            "PodInitializing"
        };
        let names: Vec<String> = init_specs
            .iter()
            .chain(main_specs.iter())
            .map(|c| c.name.clone())
            .collect();
        let logs = ctx
            .logs
            .register(&self.obj.namespace, &self.obj.name, &self.obj.uid, &names);
        let now = Utc::now();
        let mk = |c: &k8s_openapi::api::core::v1::Container| {
            CStatus::new(&c.name, c.image.as_deref().unwrap_or(""), waiting)
        };
        let mut model = PodModel::new(
            init_specs.iter().map(mk).collect(),
            main_specs.iter().map(mk).collect(),
            policy,
            now,
            scheduled_at,
        );
        Self::set_views(&logs, &model);
        let mut last_sent = model.status_json();
        self.patch_status(last_sent.clone()).await;

        let pc = Arc::new(PodCtx {
            obj: self.obj.clone(),
            pod: pod.clone(),
            logs: logs.clone(),
            restart_backoff: pb.restart_backoff.unwrap_or(ctx.opts.restart_backoff),
        });
        let has_cmd =
            |c: &k8s_openapi::api::core::v1::Container| c.command.is_some() || c.args.is_some();
        let any_cmd = main_specs.iter().any(has_cmd);
        let (rep_tx, mut rep_rx) = mpsc::unbounded_channel::<Report>();
        let mut slots: Vec<Slot> = Vec::new();
        let mut defs: Vec<Option<ContainerDef>> = Vec::new();
        for (i, c) in init_specs.iter().enumerate() {
            defs.push(Some(ContainerDef {
                init: true,
                index: i,
                spec: c.clone(),
                behaviour: cbs[i].clone(),
                mode: pb.mode,
                sidecar: false,
                policy: if policy == RestartPolicy::Never {
                    RestartPolicy::Never
                } else {
                    RestartPolicy::OnFailure
                },
                initial: model.init[i].clone(),
            }));
        }
        for (i, c) in main_specs.iter().enumerate() {
            let sidecar = pb.mode == Mode::Exec && !has_cmd(c) && any_cmd;
            defs.push(Some(ContainerDef {
                init: false,
                index: i,
                spec: c.clone(),
                behaviour: cbs[init_specs.len() + i].clone(),
                mode: pb.mode,
                sidecar,
                policy,
                initial: model.main[i].clone(),
            }));
        }
        for d in defs.iter().flatten() {
            slots.push(Slot {
                init: d.init,
                stop: watch::channel(None).0,
                started: false,
                done: false,
                sidecar: d.sidecar,
            });
        }
        let start = |slots: &mut Vec<Slot>, defs: &mut Vec<Option<ContainerDef>>, k: usize| {
            if let Some(def) = defs[k].take() {
                let rx = slots[k].stop.subscribe();
                slots[k].started = true;
                container::spawn(ctx.clone(), pc.clone(), def, rx, rep_tx.clone());
            }
        };
        let n_init = init_specs.len();
        let mut next_init = 0usize;
        let mut mains_started = false;
        let mut init_failed = false;
        if n_init > 0 {
            start(&mut slots, &mut defs, 0);
            next_init = 1;
        } else {
            for k in 0..slots.len() {
                start(&mut slots, &mut defs, k);
            }
            mains_started = true;
        }

        let t0 = Instant::now();
        let opt_at = |d: Option<Duration>| d.map(|d| t0 + d);
        let mut evict_at = opt_at(pb.evict_after);
        let lost_at = opt_at(pb.node_lost_after);
        let mut deadline_at = opt_at(
            spec.active_deadline_seconds
                .map(|s| Duration::from_secs(s.max(0) as u64)),
        );
        let tgps =
            Duration::from_secs(spec.termination_grace_period_seconds.unwrap_or(30).max(0) as u64);
        let mut stopping: Option<Cause> = None;
        let far = t0 + Duration::from_secs(100 * 365 * 24 * 3600);

        let stop_all = |slots: &[Slot], req: StopReq| {
            for s in slots.iter().filter(|s| s.started && !s.done) {
                s.stop.send_replace(Some(req));
            }
        };

        loop {
            let more_to_start = stopping.is_none() && !mains_started && !init_failed;
            let all_done = slots.iter().all(|s| !s.started || s.done);
            if all_done && !more_to_start {
                break;
            }
            tokio::select! {
                Some(r) = rep_rx.recv() => {
                    let mut apply = |r: Report| {
                        let k = if r.init { r.index } else { n_init + r.index };
                        if r.done { slots[k].done = true; }
                        if r.init { model.init[r.index] = r.status; } else { model.main[r.index] = r.status; }
                    };
                    apply(r);
                    while let Ok(r) = rep_rx.try_recv() { apply(r); }
                }
                ok = self.rx.changed() => {
                    if ok.is_err() || self.is_gone() {
                        // force-deleted: kill with the minimum grace period, nothing to report
                        stop_all(&slots, StopReq { grace: MINIMUM_GRACE, kind: StopKind::Graceful });
                        let _ = tokio::time::timeout(Duration::from_secs(10), async {
                            while slots.iter().any(|s| s.started && !s.done) {
                                match rep_rx.recv().await {
                                    Some(r) => {
                                        let k = if r.init { r.index } else { n_init + r.index };
                                        if r.done { slots[k].done = true; }
                                    }
                                    None => break,
                                }
                            }
                        }).await;
                        return;
                    }
                    let p = self.current();
                    if p.metadata.deletion_timestamp.is_some() && stopping != Some(Cause::Delete) {
                        let grace = p.metadata.deletion_grace_period_seconds
                            .map(|s| Duration::from_secs(s.max(0) as u64))
                            .unwrap_or(tgps);
                        if stopping.is_none() {
                            stopping = Some(Cause::Delete);
                        }
                        stop_all(&slots, StopReq { grace, kind: StopKind::Graceful });
                    }
                }
                _ = tokio::time::sleep_until(evict_at.unwrap_or(far)), if evict_at.is_some() && stopping.is_none() => {
                    evict_at = None;
                    let msg = pb.evict_message.clone().unwrap_or_else(|| format!(
                        "The node was low on resource: memory. Container {} was using 1843200Ki, which exceeds its request of 0. ",
                        main_specs.first().map(|c| c.name.as_str()).unwrap_or("main")
                    ));
                    self.event(Type::Warning, "Evicted", &msg, Source::Kubelet);
                    match pb.evict_style {
                        // As a v1.20 kubelet does (syncPod with SyncPodKill): the evicted status
                        // is set first, the containers are killed after; the API server never
                        // sees the containers' ends without the eviction.
                        EvictStyle::V1_20 => {
                            self.patch_status(model.evicted_status_json(&msg)).await;
                        }
                        // A 1.27+ kubelet adds DisruptionTarget at once but holds the terminal
                        // phase back until every container has stopped (the status manager's
                        // mergePodStatus), so the containers' ends are published, then Failed.
                        EvictStyle::V1_27 => {
                            model.mark_disruption_target(&msg, Utc::now());
                            last_sent = model.status_json();
                            self.patch_status(last_sent.clone()).await;
                        }
                    }
                    stopping = Some(Cause::Evict(msg));
                    // A hard eviction asks for grace 0, which the kubelet raises to its minimum of
                    // 2 s: the process gets SIGTERM and a moment to act on it (Prefect's engine
                    // reschedules the flow run then).
                    stop_all(&slots, StopReq { grace: MINIMUM_GRACE, kind: StopKind::Graceful });
                }
                _ = tokio::time::sleep_until(deadline_at.unwrap_or(far)), if deadline_at.is_some() && stopping.is_none() => {
                    deadline_at = None;
                    self.event(Type::Normal, "DeadlineExceeded",
                        "Pod was active on the node longer than the specified deadline", Source::Kubelet);
                    stopping = Some(Cause::Deadline);
                    stop_all(&slots, StopReq { grace: tgps, kind: StopKind::Graceful });
                }
                _ = tokio::time::sleep_until(lost_at.unwrap_or(far)), if lost_at.is_some() && stopping.is_none() => {
                    logs.lost.store(true, Ordering::Relaxed);
                    for s in &slots {
                        s.stop.send_replace(Some(StopReq { grace: Duration::ZERO, kind: StopKind::Lost }));
                    }
                    model.not_ready = true;
                    model.reason = Some("NodeLost".into());
                    model.message = Some(format!(
                        "Node {} which was running pod {} is unresponsive",
                        spec.node_name.as_deref().unwrap_or(&ctx.node), self.obj.name
                    ));
                    model.recompute(Utc::now());
                    Self::set_views(&logs, &model);
                    self.patch_status(model.status_json()).await;
                    tracing::info!(pod = %self.obj.name, "node loss emulated; deletion will not be confirmed");
                    // like a lost node: never confirms deletion; only force deletion removes it
                    return self.wait_gone().await;
                }
            }

            if stopping.is_none() {
                // init containers one after the other, then all regular containers
                if !mains_started && n_init > 0 {
                    let cur = next_init - 1;
                    if slots[cur].done {
                        match model.init[cur].terminated() {
                            Some(t) if t.exit_code == 0 => {
                                if next_init < n_init {
                                    start(&mut slots, &mut defs, next_init);
                                    next_init += 1;
                                } else {
                                    for k in n_init..slots.len() {
                                        start(&mut slots, &mut defs, k);
                                    }
                                    mains_started = true;
                                }
                            }
                            _ => init_failed = true,
                        }
                    }
                }
                // sidecars end once every other regular container has ended for good
                if mains_started {
                    let mains_done = slots
                        .iter()
                        .filter(|s| !s.init && !s.sidecar)
                        .all(|s| s.done);
                    if mains_done {
                        for s in slots.iter().filter(|s| s.sidecar && !s.done) {
                            if s.stop.borrow().is_none() {
                                s.stop.send_replace(Some(StopReq {
                                    grace: Duration::ZERO,
                                    kind: StopKind::Sidecar,
                                }));
                            }
                        }
                    }
                }
            }
            model.recompute(Utc::now());
            Self::set_views(&logs, &model);
            let js = model.status_json();
            // A v1.20 evicted pod's status stays the eviction's (published above).
            let frozen =
                matches!(stopping, Some(Cause::Evict(_))) && pb.evict_style == EvictStyle::V1_20;
            if js != last_sent && !frozen {
                self.patch_status(js.clone()).await;
                last_sent = js;
            }
        }

        match stopping {
            Some(Cause::Evict(msg)) if pb.evict_style == EvictStyle::V1_27 => {
                model.fail("Evicted", &msg, Utc::now());
                Self::set_views(&logs, &model);
                self.patch_status(model.status_json()).await;
                self.idle(false).await
            }
            Some(Cause::Evict(msg)) => {
                model.phase = crate::status::Phase::Failed;
                for c in logs.containers.values() {
                    *c.view.lock().unwrap() = None;
                }
                self.patch_status(model.evicted_status_json(&msg)).await;
                self.idle(false).await
            }
            Some(Cause::Deadline) => {
                model.fail(
                    "DeadlineExceeded",
                    "Pod was active on the node longer than the specified deadline",
                    Utc::now(),
                );
                Self::set_views(&logs, &model);
                self.patch_status(model.status_json()).await;
                self.idle(false).await
            }
            Some(Cause::Delete) => {
                model.recompute(Utc::now());
                Self::set_views(&logs, &model);
                let js = model.status_json();
                if js != last_sent {
                    self.patch_status(js).await;
                }
                self.idle(true).await
            }
            None => {
                tracing::debug!(pod = %self.obj.name, phase = model.phase.as_str(), "pod finished");
                self.idle(false).await
            }
        }
    }
}

/// Whether the scheduler has marked the pod Unschedulable (`PodScheduled=False`).
fn is_unschedulable(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable")
            })
        })
}

/// When the pod was bound (its `PodScheduled=True` condition), as the kubelet's view of the
/// pod's start.
fn scheduled_time(pod: &Pod) -> Option<chrono::DateTime<Utc>> {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| {
            cs.iter()
                .find(|c| c.type_ == "PodScheduled" && c.status == "True")
        })
        .and_then(|c| c.last_transition_time.as_ref())
        .and_then(|t| {
            chrono::DateTime::from_timestamp(t.0.as_second(), t.0.subsec_nanosecond() as u32)
        })
}
