//! The pod-start clock: how long a run waits for its pod, and what pauses or restarts the wait.
//!
//! `pod_watch_timeout_seconds` is the time a pod may go without progress, not the time from
//! the Job's creation:
//! - the clock starts when the Job can have pods: at once, or when a suspended Job (queued,
//!   e.g. by Kueue) is admitted; it does not run while the Job is suspended;
//! - it starts anew when the pod is bound to a node: what follows (image pull, container
//!   creation) gets the whole timeout;
//! - while no node can take the pod and a node autoscaler says it is adding one
//!   (cluster-autoscaler's `TriggeredScaleUp`, Karpenter's `Nominated`), the wait goes on for
//!   up to [`SCALE_UP_PATIENCE`] even past the timeout: nodes take 30-180 s to join.
//!
//! Failed image pulls and missing Secrets are retried by the kubelet: they end the wait only
//! when the timeout passes, with their message and a hint. Waiting reasons the kubelet never
//! retries end it at once (see the run-state reducer).

use super::state::Waiting;
use crate::k8s::events::ScaleUpNews;
use std::time::Duration;
use tokio::time::Instant;

/// How long a node an autoscaler is adding may take to join (cluster-autoscaler's default
/// `--max-node-provision-time`).
pub const SCALE_UP_PATIENCE: Duration = Duration::from_secs(15 * 60);
/// How often the autoscaler's Events are read while no node can take the pod.
pub const AUTOSCALER_LOOK_INTERVAL: Duration = Duration::from_secs(10);

/// One run's wait for its pod to start.
#[derive(Debug)]
pub struct PodStart {
    timeout: Duration,
    /// None while the Job is suspended (or the timeout is beyond what a clock counts).
    deadline: Option<Instant>,
    suspended: bool,
    scheduled: bool,
    last_waiting: Option<Waiting>,
    last_pull_error: Option<Waiting>,
    scale_up_until: Option<Instant>,
    autoscaler_news: Option<ScaleUpNews>,
    next_autoscaler_look: Option<Instant>,
}

fn after(duration: Duration) -> Option<Instant> {
    Instant::now().checked_add(duration)
}

impl PodStart {
    /// The wait of a Job just created.
    pub fn new(timeout: Duration) -> Self {
        PodStart {
            timeout,
            deadline: after(timeout),
            suspended: false,
            scheduled: false,
            last_waiting: None,
            last_pull_error: None,
            scale_up_until: None,
            autoscaler_news: None,
            next_autoscaler_look: None,
        }
    }

    /// The Job is suspended: the clock stops. True the first time of each suspension (say so).
    pub fn suspend(&mut self) -> bool {
        self.deadline = None;
        self.scale_up_until = None;
        self.next_autoscaler_look = None;
        !std::mem::replace(&mut self.suspended, true)
    }

    /// The Job may have pods; `scheduled`: its newest pod is bound to a node.
    pub fn pending(&mut self, scheduled: bool) {
        if std::mem::take(&mut self.suspended) || (scheduled && !self.scheduled) {
            self.deadline = after(self.timeout);
        }
        self.scheduled = scheduled;
    }

    /// Takes in why the pod waits now; true when that is news for the run's log. A pull that
    /// fails again and again (ErrImagePull, then ImagePullBackOff, and again) is one piece of
    /// news until its error changes.
    pub fn waiting_changed(&mut self, waiting: &Option<Waiting>) -> bool {
        if let Some(waiting) = waiting.as_ref().filter(|w| w.reason == "ErrImagePull") {
            self.last_pull_error = Some(waiting.clone());
        }
        let key = |waiting: &Option<Waiting>| -> Option<(String, Option<String>)> {
            waiting.as_ref().map(|waiting| {
                if waiting.is_image_pull() {
                    let error = self
                        .last_pull_error
                        .as_ref()
                        .and_then(|e| e.message.clone());
                    ("image pull".to_owned(), error)
                } else {
                    (waiting.reason.clone(), waiting.message.clone())
                }
            })
        };
        let changed = key(waiting) != key(&self.last_waiting);
        self.last_waiting = waiting.clone();
        changed
    }

    /// Is it time to read the autoscaler's Events?
    pub fn autoscaler_look_due(&self) -> bool {
        self.next_autoscaler_look
            .is_none_or(|at| Instant::now() >= at)
    }

    /// Takes in what the autoscaler said (None: nothing, or the Events could not be read);
    /// returns it when it is news for the run's log.
    pub fn autoscaler_said(&mut self, news: Option<ScaleUpNews>) -> Option<ScaleUpNews> {
        self.next_autoscaler_look = after(AUTOSCALER_LOOK_INTERVAL);
        let news = news?;
        if self.autoscaler_news.as_ref() == Some(&news) {
            return None;
        }
        self.scale_up_until = if news.node_coming {
            after(SCALE_UP_PATIENCE)
        } else {
            None
        };
        self.autoscaler_news = Some(news.clone());
        Some(news)
    }

    /// The pod no longer waits for a node.
    pub fn no_scale_up_needed(&mut self) {
        self.next_autoscaler_look = None;
        self.scale_up_until = None;
    }

    /// When the wait ends, if nothing happens before; None: not while suspended.
    pub fn deadline(&self) -> Option<Instant> {
        match (self.deadline, self.scale_up_until) {
            (Some(deadline), Some(scale_up)) => Some(deadline.max(scale_up)),
            (deadline, _) => deadline,
        }
    }

    /// When to read the autoscaler's Events next, while the pod waits for a node.
    pub fn next_autoscaler_look(&self) -> Option<Instant> {
        self.next_autoscaler_look
    }

    /// Why the run is given up once the deadline passed: what the pod waited for, in
    /// Kubernetes' words, and what to do about it.
    pub fn gave_up(&self, timeout: Duration) -> String {
        let mut text = format!(
            "the pod did not start within {} s (pod_watch_timeout_seconds)",
            timeout.as_secs()
        );
        let waiting = self.last_waiting.as_ref();
        let hint = match waiting {
            Some(waiting) if waiting.is_image_pull() => {
                let error = self.last_pull_error.as_ref().unwrap_or(waiting);
                text.push_str(&format!("; {}", error.cannot_start()));
                Some(
                    "check the image's name and tag, the registry's credentials (the pod's \
                     imagePullSecrets) and its rate limits",
                )
            }
            Some(waiting) if waiting.reason == "CreateContainerConfigError" => {
                text.push_str(&format!("; {}", waiting.cannot_start()));
                Some("create the Secret or ConfigMap the pod refers to (the kubelet retries)")
            }
            Some(waiting) if waiting.is_unschedulable() => {
                text.push_str(&format!("; no node can take it: {}", message_of(waiting)));
                if let Some(news) = &self.autoscaler_news {
                    text.push_str(&format!("; the autoscaler said {}", news.text));
                }
                Some(
                    "compare the pod's resource requests, node selector, affinity and \
                     tolerations with the cluster's nodes; where nodes are added on demand, see \
                     why the autoscaler adds none, or raise pod_watch_timeout_seconds",
                )
            }
            Some(waiting) => {
                text.push_str(&format!("; last reason: {waiting}"));
                None
            }
            None => None,
        };
        if let Some(hint) = hint {
            text.push_str(&format!(". Hint: {hint}"));
        }
        text
    }
}

fn message_of(waiting: &Waiting) -> &str {
    waiting
        .message
        .as_deref()
        .map(str::trim_end)
        .unwrap_or("the scheduler gave no reason")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(reason: &str, message: &str) -> Option<Waiting> {
        Some(Waiting {
            container: Some("prefect-job".into()),
            reason: reason.into(),
            message: Some(message.into()).filter(|m: &String| !m.is_empty()),
        })
    }

    fn unschedulable() -> Option<Waiting> {
        Some(Waiting {
            container: None,
            reason: "Unschedulable".into(),
            message: Some("0/3 nodes are available: 3 Insufficient cpu.".into()),
        })
    }

    fn news(node_coming: bool, text: &str) -> Option<ScaleUpNews> {
        Some(ScaleUpNews {
            node_coming,
            text: text.into(),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn binding_to_a_node_restarts_the_clock() {
        let mut start = PodStart::new(Duration::from_secs(60));
        start.pending(false);
        tokio::time::advance(Duration::from_secs(50)).await;
        start.pending(true);
        let left = start.deadline().unwrap() - Instant::now();
        assert_eq!(
            left,
            Duration::from_secs(60),
            "the pull gets the whole timeout"
        );
        start.pending(true);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(
            start.deadline().unwrap() - Instant::now(),
            Duration::from_secs(50)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_suspended_job_stops_the_clock_until_it_is_admitted() {
        let mut start = PodStart::new(Duration::from_secs(60));
        assert!(start.suspend(), "said once");
        assert!(!start.suspend());
        assert_eq!(start.deadline(), None);
        tokio::time::advance(Duration::from_secs(3600)).await;
        start.pending(false);
        assert_eq!(
            start.deadline().unwrap() - Instant::now(),
            Duration::from_secs(60)
        );
        assert!(start.suspend(), "a second suspension is said again");
    }

    /// The acceptance: default variables (60 s), a node added 90 s later.
    #[tokio::test(start_paused = true)]
    async fn a_node_being_added_holds_the_wait_past_the_timeout() {
        let mut start = PodStart::new(Duration::from_secs(60));
        start.pending(false);
        assert!(start.waiting_changed(&unschedulable()));
        assert!(start.autoscaler_look_due());
        let said = start.autoscaler_said(news(true, "TriggeredScaleUp: pod triggered scale-up"));
        assert!(said.is_some());
        assert!(start
            .autoscaler_said(news(true, "TriggeredScaleUp: pod triggered scale-up"))
            .is_none());
        tokio::time::advance(Duration::from_secs(90)).await;
        assert!(
            start.deadline().unwrap() > Instant::now(),
            "still waiting at 90 s"
        );
        start.pending(true);
        start.no_scale_up_needed();
        assert_eq!(
            start.deadline().unwrap() - Instant::now(),
            Duration::from_secs(60)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_node_coming_gives_up_at_the_timeout_with_the_schedulers_words_and_a_hint() {
        let mut start = PodStart::new(Duration::from_secs(60));
        start.pending(false);
        start.waiting_changed(&unschedulable());
        start.autoscaler_said(news(
            false,
            "NotTriggerScaleUp: pod didn't trigger scale-up",
        ));
        assert_eq!(
            start.deadline().unwrap() - Instant::now(),
            Duration::from_secs(60)
        );
        let diagnosis = start.gave_up(Duration::from_secs(60));
        assert_eq!(
            diagnosis,
            "the pod did not start within 60 s (pod_watch_timeout_seconds); no node can take \
             it: 0/3 nodes are available: 3 Insufficient cpu.; the autoscaler said \
             NotTriggerScaleUp: pod didn't trigger scale-up. Hint: compare the pod's resource \
             requests, node selector, affinity and tolerations with the cluster's nodes; where \
             nodes are added on demand, see why the autoscaler adds none, or raise \
             pod_watch_timeout_seconds"
        );
    }

    #[test]
    fn repeated_pull_failures_are_one_piece_of_news_and_the_pull_error_is_kept() {
        let mut start = PodStart::new(Duration::from_secs(60));
        let pull = waiting("ErrImagePull", "rpc error: pull access denied");
        let back_off = waiting("ImagePullBackOff", "Back-off pulling image \"x\"");
        assert!(start.waiting_changed(&pull));
        assert!(!start.waiting_changed(&back_off));
        assert!(!start.waiting_changed(&pull));
        assert!(start.waiting_changed(&waiting("ContainerCreating", "")));
        start.waiting_changed(&back_off);
        let diagnosis = start.gave_up(Duration::from_secs(60));
        assert!(
            diagnosis.starts_with(
                "the pod did not start within 60 s (pod_watch_timeout_seconds); container \
                 'prefect-job' cannot start: ErrImagePull: rpc error: pull access denied. Hint: \
                 check the image's name"
            ),
            "{diagnosis}"
        );
    }
}
