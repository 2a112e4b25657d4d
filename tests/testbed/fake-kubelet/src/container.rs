//! One container of a pod: image "pull", pre-start failures, attempts (exec or scripted),
//! restarts with back-off, and stop requests. Reports every state change to the pod task.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use k8s_openapi::api::core::v1::{Container, Pod};
use tokio::sync::{mpsc, watch};

use crate::behaviour::{script_lines, ContainerBehaviour, Mode, PullFailure};
use crate::ctx::{image_id, pulls, Ctx};
use crate::events::{container_path, ObjRef, Source, Type};
use crate::exec::{self, ExecPlan, RefCache};
use crate::logs::{LogBuffer, PodLogs};
use crate::status::{CState, CStatus, RestartPolicy, Terminated};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopKind {
    /// Deletion, eviction, deadline: SIGTERM, grace, SIGKILL; `Killing` event.
    Graceful,
    /// A sidecar whose main containers ended: exits 0.
    Sidecar,
    /// Node loss: everything stops silently, nothing is reported.
    Lost,
}

#[derive(Clone, Copy, Debug)]
pub struct StopReq {
    pub grace: Duration,
    pub kind: StopKind,
}

#[derive(Debug)]
pub struct Report {
    pub init: bool,
    pub index: usize,
    pub status: CStatus,
    pub done: bool,
}

/// What one container runs.
pub struct ContainerDef {
    pub init: bool,
    pub index: usize,
    pub spec: Container,
    pub behaviour: ContainerBehaviour,
    pub mode: Mode,
    /// Exec mode, no command and args, in a pod where other containers have one.
    pub sidecar: bool,
    pub policy: RestartPolicy,
    pub initial: CStatus,
}

pub struct PodCtx {
    pub obj: ObjRef,
    pub pod: Arc<Pod>,
    pub logs: Arc<PodLogs>,
    pub restart_backoff: Duration,
}

enum Outcome {
    Exited {
        code: i32,
        reason: String,
        message: Option<String>,
        started: Option<chrono::DateTime<Utc>>,
        stopped: bool,
    },
    Lost,
}

struct Driver {
    ctx: Arc<Ctx>,
    pc: Arc<PodCtx>,
    def: ContainerDef,
    stop: watch::Receiver<Option<StopReq>>,
    tx: mpsc::UnboundedSender<Report>,
    st: CStatus,
    fp: String,
}

fn backoff(base: Duration, restarts: u32) -> Duration {
    if restarts == 0 {
        return Duration::ZERO;
    }
    let d = base.saturating_mul(1u32 << (restarts - 1).min(16));
    d.min(Duration::from_secs(300))
}

fn go_duration(d: Duration) -> String {
    let secs = |x: f64| {
        let t = format!("{x:.9}");
        let t = t.trim_end_matches('0').trim_end_matches('.');
        format!("{t}s")
    };
    let whole = d.as_secs();
    if whole >= 60 {
        let rest = (whole % 60) as f64 + d.subsec_nanos() as f64 / 1e9;
        format!("{}m{}", whole / 60, secs(rest))
    } else {
        secs(d.as_secs_f64())
    }
}

impl Driver {
    fn report(&self, done: bool) {
        let _ = self.tx.send(Report {
            init: self.def.init,
            index: self.def.index,
            status: self.st.clone(),
            done,
        });
    }

    fn event(&self, type_: Type, reason: &str, message: &str) {
        self.ctx.events.emit(
            &self.pc.obj,
            Some(self.fp.clone()),
            type_,
            reason,
            message,
            Source::Kubelet,
        );
    }

    fn stop_requested(&self) -> Option<StopReq> {
        *self.stop.borrow()
    }

    /// Sleeps `d` unless a stop arrives first.
    async fn sleep(&mut self, d: Duration) -> Option<StopReq> {
        if let Some(s) = self.stop_requested() {
            return Some(s);
        }
        tokio::select! {
            _ = tokio::time::sleep(d) => None,
            r = self.stop.changed() => match r {
                Ok(()) => self.stop_requested(),
                // pod task gone: treat as a silent stop
                Err(_) => Some(StopReq { grace: Duration::ZERO, kind: StopKind::Lost }),
            },
        }
    }

    /// Ends the driver while the container never started.
    fn finish_waiting(&mut self, req: StopReq) {
        if req.kind != StopKind::Lost {
            self.report(true);
        }
    }

    fn set_waiting(&mut self, reason: &str, message: Option<String>) {
        self.st.state = CState::waiting(reason, message);
        self.st.ready = false;
        self.report(false);
    }

    async fn run(mut self) {
        let image = self.def.spec.image.clone().unwrap_or_default();
        let name = self.def.spec.name.clone();
        let b = self.def.behaviour.clone();
        let mut tries: u32 = 0;

        // invalid image name: stays waiting forever
        if b.invalid_image {
            let msg = format!(
                "Failed to apply default image tag {image:?}: couldn't parse image reference {image:?}: invalid reference format"
            );
            loop {
                self.event(Type::Warning, "InspectFailed", &msg);
                self.event(Type::Warning, "Failed", "Error: InvalidImageName");
                self.set_waiting("InvalidImageName", Some(msg.clone()));
                tries += 1;
                let wait = backoff(self.pc.restart_backoff, tries);
                if let Some(req) = self.sleep(wait).await {
                    return self.finish_waiting(req);
                }
            }
        }

        // image pull failure: Pulling / Failed / BackOff as a kubelet with containerd writes them;
        // with `image-pull-failures`, the pull succeeds after that many failures
        if let Some(kind) = b.image_pull.filter(|_| b.image_pull_failures != Some(0)) {
            let err = format!(
                "rpc error: code = Unknown desc = failed to pull and unpack image \"{image}\": failed to resolve reference \"{image}\": pull access denied, repository does not exist or may require authorization: server message: insufficient_scope: authorization failed"
            );
            loop {
                self.event(Type::Normal, "Pulling", &format!("Pulling image {image:?}"));
                self.event(
                    Type::Warning,
                    "Failed",
                    &format!("Failed to pull image {image:?}: {err}"),
                );
                self.event(Type::Warning, "Failed", "Error: ErrImagePull");
                self.set_waiting("ErrImagePull", Some(err.clone()));
                tries += 1;
                let wait = backoff(self.pc.restart_backoff, tries);
                if kind == PullFailure::ImagePullBackOff {
                    if let Some(req) = self.sleep(Duration::from_millis(500)).await {
                        return self.finish_waiting(req);
                    }
                    let m = format!("Back-off pulling image {image:?}");
                    self.event(Type::Normal, "BackOff", &m);
                    self.event(Type::Warning, "Failed", "Error: ImagePullBackOff");
                    self.set_waiting("ImagePullBackOff", Some(m));
                }
                if let Some(req) = self.sleep(wait).await {
                    return self.finish_waiting(req);
                }
                if b.image_pull_failures
                    .is_some_and(|failures| u64::from(tries) >= failures)
                {
                    break;
                }
            }
        }

        // pull (or not) and slow start
        let t0 = Instant::now();
        if pulls(&image, self.def.spec.image_pull_policy.as_deref()) {
            self.event(Type::Normal, "Pulling", &format!("Pulling image {image:?}"));
            if let Some(req) = self.sleep(b.start_delay).await {
                return self.finish_waiting(req);
            }
            let took = t0.elapsed().max(Duration::from_millis(137));
            self.event(
                Type::Normal,
                "Pulled",
                &format!(
                    "Successfully pulled image {image:?} in {}",
                    go_duration(Duration::from_millis(took.as_millis() as u64))
                ),
            );
        } else {
            if let Some(req) = self.sleep(b.start_delay).await {
                return self.finish_waiting(req);
            }
            self.event(
                Type::Normal,
                "Pulled",
                &format!("Container image {image:?} already present on machine"),
            );
        }
        self.st.image_id = image_id(&image);

        // configuration (env) errors
        let mut plan: Option<ExecPlan> = None;
        tries = 0;
        loop {
            let err = if let Some(e) = &b.config_error {
                Some(e.clone())
            } else if self.def.mode == Mode::Exec && !self.def.sidecar {
                match self.exec_plan().await {
                    Ok(p) => {
                        plan = Some(p);
                        None
                    }
                    Err(e) => Some(e),
                }
            } else {
                None
            };
            let Some(err) = err else { break };
            self.event(Type::Warning, "Failed", &format!("Error: {err}"));
            self.set_waiting("CreateContainerConfigError", Some(err));
            tries += 1;
            let wait = backoff(self.pc.restart_backoff, tries).max(Duration::from_secs(1));
            if let Some(req) = self.sleep(wait).await {
                return self.finish_waiting(req);
            }
        }
        if let Some(req) = self.stop_requested() {
            return self.finish_waiting(req);
        }

        // attempts
        let mut attempt: u32 = 0;
        loop {
            let cid = self.ctx.container_id();
            let buf = self
                .pc
                .logs
                .containers
                .get(&name)
                .map(|c| c.new_attempt(&cid, self.ctx.opts.max_log_bytes))
                .unwrap_or_else(|| LogBuffer::new(self.ctx.opts.max_log_bytes));
            self.event(
                Type::Normal,
                "Created",
                &format!("Created container {name}"),
            );
            self.ctx
                .stats
                .containers_started
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let outcome = match (self.def.mode, &plan) {
                (Mode::Script, _) => self.script_attempt(&cid, &buf, attempt).await,
                (Mode::Exec, Some(p)) => {
                    let p = p.clone();
                    self.exec_attempt(&cid, &buf, &p).await
                }
                (Mode::Exec, None) => self.idle_attempt(&cid).await,
            };
            buf.close();
            let Outcome::Exited {
                code,
                reason,
                message,
                started,
                stopped,
            } = outcome
            else {
                return;
            };
            let message = message.or_else(|| {
                let fallback = self.def.spec.termination_message_policy.as_deref()
                    == Some("FallbackToLogsOnError");
                (fallback && code != 0).then(|| log_tail(&buf)).flatten()
            });
            let term = Terminated {
                exit_code: code,
                reason,
                message,
                started_at: started,
                finished_at: Utc::now(),
                container_id: Some(cid.clone()),
            };
            self.st.state = CState::Terminated(term.clone());
            self.st.ready = false;
            self.st.started = false;
            let script_retry = self.def.mode == Mode::Script && attempt < b.script.restart_count;
            if stopped || !(self.def.policy.restarts(code) || script_retry) {
                self.report(true);
                return;
            }
            self.report(false);
            let wait = backoff(self.pc.restart_backoff, self.st.restart_count);
            if !wait.is_zero() {
                self.event(
                    Type::Warning,
                    "BackOff",
                    "Back-off restarting failed container",
                );
                self.st.last_state = Some(term.clone());
                let m = format!(
                    "back-off {} restarting failed container={} pod={}_{}({})",
                    go_duration(wait),
                    name,
                    self.pc.obj.name,
                    self.pc.obj.namespace,
                    self.pc.obj.uid
                );
                self.set_waiting("CrashLoopBackOff", Some(m));
                if let Some(req) = self.sleep(wait).await {
                    return self.finish_waiting(req);
                }
            }
            self.st.last_state = Some(term);
            self.st.restart_count += 1;
            attempt += 1;
        }
    }

    async fn exec_plan(&self) -> Result<ExecPlan, String> {
        let pod = &self.pc.pod;
        let c = &self.def.spec;
        let mut base = self.ctx.opts.host_env.clone();
        base.push((
            "HOSTNAME".into(),
            pod.metadata.name.clone().unwrap_or_default(),
        ));
        let mut refs = RefCache::new(
            self.ctx.client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        let (env, warnings) = exec::container_env(&mut refs, pod, c, &base).await?;
        for w in warnings {
            tracing::warn!(pod = %self.pc.obj.name, container = %c.name, "{w}");
        }
        let mut all = base;
        for (k, v) in env {
            all.retain(|(n, _)| *n != k);
            all.push((k, v));
        }
        let argv = exec::argv(c, &all);
        let cwd = match c.working_dir.as_deref() {
            Some(d) if !d.is_empty() => {
                let p = std::path::PathBuf::from(d);
                if p.is_dir() {
                    p
                } else {
                    tracing::warn!(
                        pod = %self.pc.obj.name, container = %c.name, dir = d,
                        "workingDir does not exist on this host; using the kubelet's cwd"
                    );
                    self.ctx.opts.cwd.clone()
                }
            }
            _ => self.ctx.opts.cwd.clone(),
        };
        Ok(ExecPlan {
            argv,
            env: all,
            cwd,
        })
    }

    fn set_running(&mut self, cid: &str) -> chrono::DateTime<Utc> {
        let now = Utc::now();
        self.event(
            Type::Normal,
            "Started",
            &format!("Started container {}", self.def.spec.name),
        );
        self.st.container_id = Some(cid.to_string());
        self.st.state = CState::Running { started_at: now };
        self.st.ready = !self.def.init;
        self.st.started = true;
        self.report(false);
        now
    }

    fn killing(&self) {
        self.event(
            Type::Normal,
            "Killing",
            &format!("Stopping container {}", self.def.spec.name),
        );
    }

    async fn exec_attempt(&mut self, cid: &str, buf: &Arc<LogBuffer>, plan: &ExecPlan) -> Outcome {
        if plan.argv.is_empty() {
            return self.idle_attempt(cid).await;
        }
        let marker = cid.trim_start_matches("containerd://")[..16].to_string();
        let spawned = self.ctx.procs.spawn(
            &marker,
            || exec::spawn(plan, &marker, buf.clone()),
            |p| p.pid,
        );
        let mut proc = match spawned {
            Ok(p) => p,
            Err(e) => {
                let msg = format!(
                    "failed to create containerd task: OCI runtime create failed: exec: {:?}: {e}: unknown",
                    plan.argv[0]
                );
                self.event(Type::Warning, "Failed", &format!("Error: {msg}"));
                self.st.container_id = Some(cid.to_string());
                return Outcome::Exited {
                    code: 128,
                    reason: "StartError".into(),
                    message: Some(msg),
                    started: None,
                    stopped: false,
                };
            }
        };
        let started = self.set_running(cid);
        tracing::debug!(pod = %self.pc.obj.name, pid = proc.pid, argv = ?plan.argv, "started process");
        let mut stop_kind = None;
        let status = tokio::select! {
            s = proc.wait() => s,
            req = wait_stop(&mut self.stop) => {
                stop_kind = Some(req.kind);
                match req.kind {
                    StopKind::Lost => {
                        exec::signal_container(proc.pid, &marker, libc::SIGKILL);
                        proc.wait().await
                    }
                    _ => {
                        self.killing();
                        proc.terminate(req.grace).await
                    }
                }
            }
        };
        let pid = proc.pid;
        proc.finish().await;
        self.ctx.procs.remove(&marker);
        if stop_kind == Some(StopKind::Lost) {
            return Outcome::Lost;
        }
        let code = match status {
            Ok(s) => exec::exit_code(&s),
            Err(e) => {
                tracing::warn!(pid, error = %e, "waiting for process failed");
                137
            }
        };
        Outcome::Exited {
            code,
            reason: if code == 0 { "Completed" } else { "Error" }.into(),
            message: None,
            started: Some(started),
            stopped: stop_kind.is_some(),
        }
    }

    /// A container without a process: a sidecar runs until told to stop, others succeed soon.
    async fn idle_attempt(&mut self, cid: &str) -> Outcome {
        if !self.def.sidecar {
            tracing::warn!(
                pod = %self.pc.obj.name, container = %self.def.spec.name,
                "container has neither command nor args; it succeeds after {:?}",
                self.ctx.opts.no_command_run
            );
        }
        let started = self.set_running(cid);
        let wait = if self.def.sidecar {
            Duration::from_secs(u32::MAX as u64)
        } else {
            self.ctx.opts.no_command_run
        };
        let (code, stopped) = match self.sleep(wait).await {
            None => (0, false),
            Some(StopReq {
                kind: StopKind::Lost,
                ..
            }) => return Outcome::Lost,
            Some(StopReq {
                kind: StopKind::Sidecar,
                ..
            }) => (0, true),
            Some(_) => {
                self.killing();
                (143, true)
            }
        };
        Outcome::Exited {
            code,
            reason: if code == 0 { "Completed" } else { "Error" }.into(),
            message: None,
            started: Some(started),
            stopped,
        }
    }

    async fn script_attempt(&mut self, cid: &str, buf: &Arc<LogBuffer>, attempt: u32) -> Outcome {
        let s = self.def.behaviour.script.clone();
        let started = self.set_running(cid);
        let t0 = tokio::time::Instant::now();
        let lines = script_lines(&s);
        let interval = s.log_interval.unwrap_or_else(|| {
            if !s.run.is_zero() && !lines.is_empty() {
                s.run / lines.len() as u32
            } else {
                Duration::ZERO
            }
        });
        let mut stop: Option<StopReq> = None;
        for (i, line) in lines.into_iter().enumerate() {
            let at = t0 + interval * i as u32;
            if tokio::time::Instant::now() < at {
                if let Some(req) = self.sleep(at - tokio::time::Instant::now()).await {
                    stop = Some(req);
                    break;
                }
            }
            if s.log_stamps {
                buf.push_now(stamped(line));
            } else {
                buf.push_now(line);
            }
        }
        if stop.is_none() {
            let end = t0 + s.run;
            let now = tokio::time::Instant::now();
            if now < end {
                stop = self.sleep(end - now).await;
            }
        }
        let ended_stamp = s
            .log_stamps
            .then(|| String::from_utf8_lossy(&stamped(b"ended".to_vec())).into_owned());
        let failed_try = attempt < s.restart_count;
        let (code, reason, stopped) = match stop {
            None if failed_try => (1, "Error", false),
            None if s.oom => (137, "OOMKilled", false),
            None => (
                s.exit_code,
                if s.exit_code == 0 {
                    "Completed"
                } else {
                    "Error"
                },
                false,
            ),
            Some(StopReq {
                kind: StopKind::Lost,
                ..
            }) => return Outcome::Lost,
            Some(StopReq {
                kind: StopKind::Sidecar,
                ..
            }) => (0, "Completed", true),
            Some(req) => {
                self.killing();
                if s.ignore_sigterm {
                    tokio::time::sleep(req.grace).await;
                    (137, "Error", true)
                } else {
                    (143, "Error", true)
                }
            }
        };
        Outcome::Exited {
            code,
            reason: reason.into(),
            message: s.termination_message.clone().or(ended_stamp),
            started: Some(started),
            stopped,
        }
    }
}

/// `line` with ` @<unix microseconds>` of now appended (the `log-stamps` annotation).
fn stamped(mut line: Vec<u8>) -> Vec<u8> {
    let micros = Utc::now().timestamp_micros();
    line.extend_from_slice(format!(" @{micros}").as_bytes());
    line
}

async fn wait_stop(rx: &mut watch::Receiver<Option<StopReq>>) -> StopReq {
    loop {
        if let Some(r) = *rx.borrow_and_update() {
            return r;
        }
        if rx.changed().await.is_err() {
            return StopReq {
                grace: Duration::ZERO,
                kind: StopKind::Lost,
            };
        }
    }
}

/// `FallbackToLogsOnError`: the last 80 lines / 2048 bytes of the log.
fn log_tail(buf: &LogBuffer) -> Option<String> {
    let start = buf.tail_start(Some(80));
    let chunk = buf.read_from(start, 80);
    let mut out = Vec::new();
    for l in &chunk.lines {
        out.extend_from_slice(&l.data);
        if l.newline {
            out.push(b'\n');
        }
    }
    if out.len() > 2048 {
        out.drain(..out.len() - 2048);
    }
    (!out.is_empty()).then(|| String::from_utf8_lossy(&out).into_owned())
}

pub fn spawn(
    ctx: Arc<Ctx>,
    pc: Arc<PodCtx>,
    def: ContainerDef,
    stop: watch::Receiver<Option<StopReq>>,
    tx: mpsc::UnboundedSender<Report>,
) {
    let fp = container_path(def.init, &def.spec.name);
    let st = def.initial.clone();
    let d = Driver {
        ctx,
        pc,
        def,
        stop,
        tx,
        st,
        fp,
    };
    tokio::spawn(d.run());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let b = Duration::from_secs(10);
        assert_eq!(backoff(b, 0), Duration::ZERO);
        assert_eq!(backoff(b, 1), Duration::from_secs(10));
        assert_eq!(backoff(b, 2), Duration::from_secs(20));
        assert_eq!(backoff(b, 6), Duration::from_secs(300));
        assert_eq!(backoff(b, 60), Duration::from_secs(300));
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(Duration::from_secs(10)), "10s");
        assert_eq!(go_duration(Duration::from_secs(300)), "5m0s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(go_duration(Duration::ZERO), "0s");
    }
}
