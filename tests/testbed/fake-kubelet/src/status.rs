//! Pod status model: container states, the pod phase and conditions as a v1.20 kubelet computes
//! them (`getPhase`, `GeneratePodReadyCondition`, ...), and the JSON the kubelet patches.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Map, Value};

pub type Time = DateTime<Utc>;

/// `metav1.Time` wire format (second precision).
pub fn ts(t: &Time) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[derive(Clone, Debug, PartialEq)]
pub struct Terminated {
    pub exit_code: i32,
    pub reason: String,
    pub message: Option<String>,
    pub started_at: Option<Time>,
    pub finished_at: Time,
    pub container_id: Option<String>,
}

impl Terminated {
    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("exitCode".into(), json!(self.exit_code));
        m.insert("reason".into(), json!(self.reason));
        if let Some(msg) = &self.message {
            m.insert("message".into(), json!(msg));
        }
        m.insert(
            "startedAt".into(),
            self.started_at
                .as_ref()
                .map(|t| json!(ts(t)))
                .unwrap_or(Value::Null),
        );
        m.insert("finishedAt".into(), json!(ts(&self.finished_at)));
        if let Some(id) = &self.container_id {
            m.insert("containerID".into(), json!(id));
        }
        Value::Object(m)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum CState {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: Time,
    },
    Terminated(Terminated),
}

impl CState {
    pub fn waiting(reason: &str, message: Option<String>) -> Self {
        CState::Waiting {
            reason: reason.to_string(),
            message,
        }
    }

    fn to_json(&self) -> Value {
        match self {
            CState::Waiting { reason, message } => {
                let mut w = Map::new();
                w.insert("reason".into(), json!(reason));
                if let Some(m) = message {
                    w.insert("message".into(), json!(m));
                }
                json!({ "waiting": w })
            }
            CState::Running { started_at } => json!({"running": {"startedAt": ts(started_at)}}),
            CState::Terminated(t) => json!({ "terminated": t.to_json() }),
        }
    }
}

/// One entry of `containerStatuses` / `initContainerStatuses`.
#[derive(Clone, Debug, PartialEq)]
pub struct CStatus {
    pub name: String,
    pub image: String,
    pub image_id: String,
    pub container_id: Option<String>,
    pub state: CState,
    pub last_state: Option<Terminated>,
    pub restart_count: u32,
    pub ready: bool,
    pub started: bool,
}

impl CStatus {
    pub fn new(name: &str, image: &str, waiting_reason: &str) -> Self {
        CStatus {
            name: name.to_string(),
            image: image.to_string(),
            image_id: String::new(),
            container_id: None,
            state: CState::waiting(waiting_reason, None),
            last_state: None,
            restart_count: 0,
            ready: false,
            started: false,
        }
    }

    pub fn terminated(&self) -> Option<&Terminated> {
        match &self.state {
            CState::Terminated(t) => Some(t),
            _ => None,
        }
    }

    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("name".into(), json!(self.name));
        m.insert("state".into(), self.state.to_json());
        m.insert(
            "lastState".into(),
            match &self.last_state {
                Some(t) => json!({ "terminated": t.to_json() }),
                None => json!({}),
            },
        );
        m.insert("ready".into(), json!(self.ready));
        m.insert("restartCount".into(), json!(self.restart_count));
        m.insert("image".into(), json!(self.image));
        m.insert("imageID".into(), json!(self.image_id));
        if let Some(id) = &self.container_id {
            m.insert("containerID".into(), json!(id));
        }
        m.insert("started".into(), json!(self.started));
        Value::Object(m)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Pending,
    Running,
    Succeeded,
    Failed,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Running => "Running",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    pub fn parse(s: Option<&str>) -> Self {
        match s {
            Some("Never") => RestartPolicy::Never,
            Some("OnFailure") => RestartPolicy::OnFailure,
            _ => RestartPolicy::Always,
        }
    }

    /// Whether a container that exited with `exit_code` is started again.
    pub fn restarts(self, exit_code: i32) -> bool {
        match self {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => exit_code != 0,
            RestartPolicy::Never => false,
        }
    }
}

/// The kubelet's `getPhase` (v1.20) over init and regular container statuses.
pub fn pod_phase(init: &[CStatus], main: &[CStatus], policy: RestartPolicy) -> Phase {
    let mut pending_init = 0;
    let mut failed_init = 0;
    for c in init {
        match &c.state {
            CState::Running { .. } => pending_init += 1,
            CState::Terminated(t) => {
                if t.exit_code != 0 {
                    failed_init += 1
                }
            }
            CState::Waiting { .. } => match &c.last_state {
                Some(t) if t.exit_code != 0 => failed_init += 1,
                Some(_) => {}
                None => pending_init += 1,
            },
        }
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for c in main {
        match &c.state {
            CState::Running { .. } => running += 1,
            CState::Terminated(t) => {
                stopped += 1;
                if t.exit_code == 0 {
                    succeeded += 1
                }
            }
            CState::Waiting { .. } => {
                if c.last_state.is_some() {
                    stopped += 1
                } else {
                    waiting += 1
                }
            }
        }
    }
    if failed_init > 0 && policy == RestartPolicy::Never {
        return Phase::Failed;
    }
    if pending_init > 0 || waiting > 0 {
        return Phase::Pending;
    }
    if running > 0 {
        return Phase::Running;
    }
    if stopped > 0 {
        if policy == RestartPolicy::Always {
            return Phase::Running;
        }
        if stopped == succeeded {
            return Phase::Succeeded;
        }
        if policy == RestartPolicy::Never {
            return Phase::Failed;
        }
        return Phase::Running;
    }
    Phase::Pending
}

#[derive(Clone, Debug, PartialEq)]
pub struct Condition {
    pub type_: &'static str,
    pub status: bool,
    pub reason: Option<String>,
    pub message: Option<String>,
    pub last_transition: Time,
}

impl Condition {
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("type".into(), json!(self.type_));
        m.insert(
            "status".into(),
            json!(if self.status { "True" } else { "False" }),
        );
        m.insert("lastProbeTime".into(), Value::Null);
        m.insert(
            "lastTransitionTime".into(),
            json!(ts(&self.last_transition)),
        );
        if let Some(r) = &self.reason {
            m.insert("reason".into(), json!(r));
        }
        if let Some(msg) = &self.message {
            m.insert("message".into(), json!(msg));
        }
        Value::Object(m)
    }
}

fn go_list(names: &[&str]) -> String {
    format!("[{}]", names.join(" "))
}

/// (status, reason, message) of the Initialized condition.
fn initialized(init: &[CStatus], phase: Phase) -> (bool, Option<String>, Option<String>) {
    if init.is_empty() {
        return (true, None, None);
    }
    if phase == Phase::Succeeded {
        return (true, Some("PodCompleted".into()), None);
    }
    let unready: Vec<&str> = init
        .iter()
        .filter(|c| !c.ready)
        .map(|c| c.name.as_str())
        .collect();
    if unready.is_empty() {
        (true, None, None)
    } else {
        (
            false,
            Some("ContainersNotInitialized".into()),
            Some(format!(
                "containers with incomplete status: {}",
                go_list(&unready)
            )),
        )
    }
}

/// (status, reason, message) of the ContainersReady (and Ready) condition.
fn containers_ready(main: &[CStatus], phase: Phase) -> (bool, Option<String>, Option<String>) {
    if phase == Phase::Succeeded {
        return (false, Some("PodCompleted".into()), None);
    }
    let unready: Vec<&str> = main
        .iter()
        .filter(|c| !c.ready)
        .map(|c| c.name.as_str())
        .collect();
    if unready.is_empty() {
        (true, None, None)
    } else {
        (
            false,
            Some("ContainersNotReady".into()),
            Some(format!(
                "containers with unready status: {}",
                go_list(&unready)
            )),
        )
    }
}

/// What the kubelet knows about a pod it runs; turned into the `status` it patches.
#[derive(Clone, Debug)]
pub struct PodModel {
    pub init: Vec<CStatus>,
    pub main: Vec<CStatus>,
    pub policy: RestartPolicy,
    pub start_time: Time,
    pub phase: Phase,
    /// `status.reason` / `status.message` (Evicted, DeadlineExceeded, NodeLost, ...).
    pub reason: Option<String>,
    pub message: Option<String>,
    /// Forces the Ready condition to False (node lost).
    pub not_ready: bool,
    pub conditions: Vec<Condition>,
    pub scheduled_at: Time,
}

impl PodModel {
    pub fn new(
        init: Vec<CStatus>,
        main: Vec<CStatus>,
        policy: RestartPolicy,
        now: Time,
        scheduled_at: Time,
    ) -> Self {
        let mut m = PodModel {
            init,
            main,
            policy,
            start_time: now,
            phase: Phase::Pending,
            reason: None,
            message: None,
            not_ready: false,
            conditions: Vec::new(),
            scheduled_at,
        };
        m.recompute(now);
        m
    }

    fn set_condition(
        &mut self,
        type_: &'static str,
        (status, reason, message): (bool, Option<String>, Option<String>),
        now: Time,
    ) {
        if let Some(c) = self.conditions.iter_mut().find(|c| c.type_ == type_) {
            if c.status != status {
                c.last_transition = now;
            }
            c.status = status;
            c.reason = reason;
            c.message = message;
        } else {
            let last_transition = if type_ == "PodScheduled" {
                self.scheduled_at
            } else {
                now
            };
            self.conditions.push(Condition {
                type_,
                status,
                reason,
                message,
                last_transition,
            });
        }
    }

    /// Recomputes phase (terminal phases are sticky) and conditions.
    pub fn recompute(&mut self, now: Time) {
        if !self.phase.is_terminal() {
            self.phase = pod_phase(&self.init, &self.main, self.policy);
        }
        let phase = self.phase;
        let init = initialized(&self.init, phase);
        self.set_condition("Initialized", init, now);
        let mut ready = containers_ready(&self.main, phase);
        if self.not_ready {
            ready = (false, ready.1, ready.2);
        }
        self.set_condition("Ready", ready.clone(), now);
        self.set_condition("ContainersReady", ready, now);
        self.set_condition("PodScheduled", (true, None, None), now);
    }

    /// The condition a 1.26+ kubelet adds to a pod it is about to evict (KEP-3329): kept
    /// through the rest of the pod's life, also once the phase is Failed.
    pub fn mark_disruption_target(&mut self, message: &str, now: Time) {
        let target = (
            true,
            Some("TerminationByKubelet".to_string()),
            Some(message.to_string()),
        );
        self.set_condition("DisruptionTarget", target, now);
    }

    /// Force a terminal phase with a reason (DeadlineExceeded, ...).
    pub fn fail(&mut self, reason: &str, message: &str, now: Time) {
        self.phase = Phase::Failed;
        self.reason = Some(reason.to_string());
        self.message = Some(message.to_string());
        self.recompute(now);
    }

    /// The `status` object for a JSON merge patch (lists are replaced whole).
    pub fn status_json(&self) -> Value {
        let mut s = Map::new();
        s.insert("phase".into(), json!(self.phase.as_str()));
        s.insert(
            "conditions".into(),
            Value::Array(self.conditions.iter().map(|c| c.to_json()).collect()),
        );
        s.insert("hostIP".into(), json!("127.0.0.1"));
        s.insert("podIP".into(), json!("127.0.0.1"));
        s.insert("podIPs".into(), json!([{"ip": "127.0.0.1"}]));
        s.insert("startTime".into(), json!(ts(&self.start_time)));
        s.insert("reason".into(), json!(self.reason));
        s.insert("message".into(), json!(self.message));
        if !self.init.is_empty() {
            s.insert(
                "initContainerStatuses".into(),
                Value::Array(self.init.iter().map(|c| c.to_json()).collect()),
            );
        }
        s.insert(
            "containerStatuses".into(),
            Value::Array(self.main.iter().map(|c| c.to_json()).collect()),
        );
        Value::Object(s)
    }

    /// What a v1.20 kubelet leaves in `status` after evicting a pod: phase, reason, message and
    /// start time only (nulls remove the other fields in a merge patch).
    pub fn evicted_status_json(&self, message: &str) -> Value {
        json!({
            "phase": "Failed",
            "reason": "Evicted",
            "message": message,
            "startTime": ts(&self.start_time),
            "conditions": null,
            "containerStatuses": null,
            "initContainerStatuses": null,
            "hostIP": null,
            "podIP": null,
            "podIPs": null,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(s: i64) -> Time {
        Utc.timestamp_opt(1_800_000_000 + s, 0).unwrap()
    }

    fn term(code: i32) -> Terminated {
        Terminated {
            exit_code: code,
            reason: if code == 0 { "Completed" } else { "Error" }.into(),
            message: None,
            started_at: Some(t(1)),
            finished_at: t(2),
            container_id: Some("containerd://abc".into()),
        }
    }

    fn c(name: &str, state: CState) -> CStatus {
        let mut s = CStatus::new(name, "busybox", "ContainerCreating");
        s.state = state;
        s
    }

    #[test]
    fn phase_rules() {
        let running = CState::Running { started_at: t(0) };
        let waiting = CState::waiting("ContainerCreating", None);
        let ok = CState::Terminated(term(0));
        let bad = CState::Terminated(term(3));
        use RestartPolicy::*;
        assert_eq!(
            pod_phase(&[], &[c("a", waiting.clone())], Never),
            Phase::Pending
        );
        assert_eq!(
            pod_phase(&[], &[c("a", running.clone())], Never),
            Phase::Running
        );
        // one waiting container keeps the pod Pending
        assert_eq!(
            pod_phase(
                &[],
                &[c("a", running.clone()), c("b", waiting.clone())],
                Never
            ),
            Phase::Pending
        );
        assert_eq!(
            pod_phase(&[], &[c("a", ok.clone())], Never),
            Phase::Succeeded
        );
        assert_eq!(pod_phase(&[], &[c("a", bad.clone())], Never), Phase::Failed);
        assert_eq!(
            pod_phase(&[], &[c("a", bad.clone())], OnFailure),
            Phase::Running
        );
        assert_eq!(
            pod_phase(&[], &[c("a", ok.clone())], OnFailure),
            Phase::Succeeded
        );
        assert_eq!(
            pod_phase(&[], &[c("a", ok.clone())], Always),
            Phase::Running
        );
        assert_eq!(
            pod_phase(&[], &[c("a", ok.clone()), c("b", running.clone())], Never),
            Phase::Running
        );
        // crash-looping container (waiting with a last state) counts as stopped
        let mut looping = c("a", CState::waiting("CrashLoopBackOff", None));
        looping.last_state = Some(term(1));
        assert_eq!(pod_phase(&[], &[looping], OnFailure), Phase::Running);
        // init containers
        assert_eq!(
            pod_phase(
                &[c("i", running.clone())],
                &[c("a", waiting.clone())],
                Never
            ),
            Phase::Pending
        );
        assert_eq!(
            pod_phase(&[c("i", bad.clone())], &[c("a", waiting.clone())], Never),
            Phase::Failed
        );
        assert_eq!(
            pod_phase(&[c("i", bad)], &[c("a", waiting)], OnFailure),
            Phase::Pending
        );
    }

    #[test]
    fn conditions_follow_the_kubelet() {
        let mut m = PodModel::new(
            vec![],
            vec![c("main", CState::waiting("ContainerCreating", None))],
            RestartPolicy::Never,
            t(10),
            t(5),
        );
        let ready = m.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert!(!ready.status);
        assert_eq!(ready.reason.as_deref(), Some("ContainersNotReady"));
        assert_eq!(
            ready.message.as_deref(),
            Some("containers with unready status: [main]")
        );
        let sched = m
            .conditions
            .iter()
            .find(|c| c.type_ == "PodScheduled")
            .unwrap();
        assert_eq!(sched.last_transition, t(5));

        m.main[0].state = CState::Running { started_at: t(11) };
        m.main[0].ready = true;
        m.recompute(t(11));
        assert_eq!(m.phase, Phase::Running);
        let ready = m.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert!(ready.status && ready.reason.is_none());
        assert_eq!(ready.last_transition, t(11));

        m.main[0].state = CState::Terminated(term(0));
        m.main[0].ready = false;
        m.recompute(t(12));
        assert_eq!(m.phase, Phase::Succeeded);
        let ready = m.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.reason.as_deref(), Some("PodCompleted"));
        // terminal phase is sticky
        m.main[0].state = CState::Terminated(term(1));
        m.recompute(t(13));
        assert_eq!(m.phase, Phase::Succeeded);

        let js = m.status_json();
        assert_eq!(js["phase"], "Succeeded");
        assert_eq!(
            js["containerStatuses"][0]["state"]["terminated"]["exitCode"],
            1
        );
        assert_eq!(
            js["containerStatuses"][0]["state"]["terminated"]["startedAt"],
            "2027-01-15T08:00:01Z"
        );
        assert_eq!(js["containerStatuses"][0]["lastState"], json!({}));
        assert_eq!(js["podIP"], "127.0.0.1");
        let types: Vec<_> = js["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["type"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            types,
            ["Initialized", "Ready", "ContainersReady", "PodScheduled"]
        );
    }

    #[test]
    fn evicted_status_is_bare() {
        let m = PodModel::new(
            vec![],
            vec![c("main", CState::Running { started_at: t(1) })],
            RestartPolicy::Never,
            t(0),
            t(0),
        );
        let js = m.evicted_status_json("The node was low on resource: memory. ");
        assert_eq!(js["phase"], "Failed");
        assert_eq!(js["reason"], "Evicted");
        assert!(js["containerStatuses"].is_null());
    }

    #[test]
    fn init_condition_message() {
        let m = PodModel::new(
            vec![c("setup", CState::Running { started_at: t(1) })],
            vec![c("main", CState::waiting("PodInitializing", None))],
            RestartPolicy::Never,
            t(0),
            t(0),
        );
        let init = m
            .conditions
            .iter()
            .find(|c| c.type_ == "Initialized")
            .unwrap();
        assert!(!init.status);
        assert_eq!(
            init.message.as_deref(),
            Some("containers with incomplete status: [setup]")
        );
        assert_eq!(m.phase, Phase::Pending);
    }
}
