//! The Kubernetes Events that explain why a run's Job or pod did not start.

use crate::k8s::cluster::Cluster;
use crate::k8s::error::{K8sError, Result};
use k8s_openapi::api::core::v1::Event;
use kube::api::ListParams;
use kube::Api;

/// What a node autoscaler last said about a pod that no node can take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleUpNews {
    /// A node is being added for the pod (cluster-autoscaler's `TriggeredScaleUp`, Karpenter's
    /// `Nominated`), or none will be (`NotTriggerScaleUp`).
    pub node_coming: bool,
    /// The Event's reason and message, for the run's log.
    pub text: String,
}

/// Event reasons of node autoscalers that say a node is on its way for the pod.
const SCALE_UP_REASONS: [&str; 2] = ["TriggeredScaleUp", "Nominated"];
/// ... and that say none will come.
const NO_SCALE_UP_REASONS: [&str; 1] = ["NotTriggerScaleUp"];

/// The newest word of a node autoscaler on the pod `name`, if any has spoken.
pub async fn scale_up_news(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
) -> Result<Option<ScaleUpNews>> {
    Ok(newest_scale_up_news(
        &events_about(cluster, namespace, "Pod", name).await?,
    ))
}

/// The Events about the object `name` of `kind`, as the API lists them.
async fn events_about(
    cluster: &Cluster,
    namespace: &str,
    kind: &str,
    name: &str,
) -> Result<Vec<Event>> {
    let events: Api<Event> = Api::namespaced(cluster.client(), namespace);
    let selector = format!("involvedObject.name={name},involvedObject.kind={kind}");
    let list = events
        .list(&ListParams::default().fields(&selector))
        .await
        .map_err(|error| {
            K8sError::from_kube(error, "list", &format!("events of {kind} '{name}'"))
        })?;
    Ok(list.items)
}

fn newest_scale_up_news(events: &[Event]) -> Option<ScaleUpNews> {
    events
        .iter()
        .filter(|event| {
            let reason = event.reason.as_deref().unwrap_or("");
            SCALE_UP_REASONS.contains(&reason) || NO_SCALE_UP_REASONS.contains(&reason)
        })
        .max_by_key(|event| event_time(event))
        .map(|event| {
            let reason = event.reason.as_deref().unwrap_or("");
            ScaleUpNews {
                node_coming: SCALE_UP_REASONS.contains(&reason),
                text: format!(
                    "{reason}: {}",
                    event.message.as_deref().unwrap_or("").trim_end()
                ),
            }
        })
}

/// Recent Events about the object `name` of `kind`, oldest first, as log lines.
pub async fn recent_events(
    cluster: &Cluster,
    namespace: &str,
    kind: &str,
    name: &str,
) -> Result<Vec<String>> {
    let mut events = events_about(cluster, namespace, kind, name).await?;
    events.sort_by_key(event_time);
    Ok(events
        .iter()
        .map(|event| describe_event(kind, event))
        .collect())
}

/// An Event's time, whichever of the two shapes it has: legacy Events set `lastTimestamp`
/// (or `firstTimestamp`), newer components set `eventTime` and leave those empty.
pub fn event_time(event: &Event) -> Option<k8s_openapi::jiff::Timestamp> {
    event
        .last_timestamp
        .as_ref()
        .map(|time| time.0)
        .or_else(|| event.event_time.as_ref().map(|time| time.0))
        .or_else(|| event.first_timestamp.as_ref().map(|time| time.0))
        .or_else(|| {
            event
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|time| time.0)
        })
}

/// `Pod event 'Failed' (3 times) at <time>: <message>`.
pub fn describe_event(kind: &str, event: &Event) -> String {
    let reason = event.reason.as_deref().unwrap_or("Unknown");
    let message = event.message.as_deref().unwrap_or("").trim();
    let time = event_time(event)
        .map(|time| time.to_string())
        .unwrap_or_else(|| "an unknown time".into());
    match event.count {
        Some(count) if count > 1 => {
            format!("{kind} event '{reason}' ({count} times) at {time}: {message}")
        }
        _ => format!("{kind} event '{reason}' at {time}: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(value: serde_json::Value) -> Event {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn events_read_with_either_timestamp_shape() {
        let legacy = event(
            json!({"metadata": {"name": "a"}, "involvedObject": {}, "reason": "Failed",
            "message": "Failed to pull image", "count": 3, "lastTimestamp": "2026-01-01T00:00:05Z"}),
        );
        let newer = event(
            json!({"metadata": {"name": "b"}, "involvedObject": {}, "reason": "Scheduled",
            "message": "assigned", "eventTime": "2026-01-01T00:00:01.500000Z"}),
        );
        assert_eq!(
            describe_event("Pod", &legacy),
            "Pod event 'Failed' (3 times) at 2026-01-01T00:00:05Z: Failed to pull image"
        );
        assert_eq!(
            describe_event("Pod", &newer),
            "Pod event 'Scheduled' at 2026-01-01T00:00:01.5Z: assigned"
        );
        let mut events = [legacy, newer];
        events.sort_by_key(event_time);
        assert_eq!(
            events[0].reason.as_deref(),
            Some("Scheduled"),
            "sorted by whichever time they have"
        );
    }

    #[test]
    fn the_newest_autoscaler_event_decides_whether_a_node_is_coming() {
        let triggered = event(json!({"metadata": {"name": "a"}, "involvedObject": {},
            "reason": "TriggeredScaleUp", "source": {"component": "cluster-autoscaler"},
            "message": "pod triggered scale-up: [{pool-1 0->1 (max: 3)}]",
            "lastTimestamp": "2026-01-01T00:00:10Z"}));
        let scheduling = event(json!({"metadata": {"name": "b"}, "involvedObject": {},
            "reason": "FailedScheduling", "message": "0/1 nodes are available",
            "lastTimestamp": "2026-01-01T00:00:20Z"}));
        let news = newest_scale_up_news(&[triggered.clone(), scheduling.clone()]).unwrap();
        assert!(news.node_coming);
        assert_eq!(
            news.text,
            "TriggeredScaleUp: pod triggered scale-up: [{pool-1 0->1 (max: 3)}]"
        );
        let refused = event(json!({"metadata": {"name": "c"}, "involvedObject": {},
            "reason": "NotTriggerScaleUp",
            "message": "pod didn't trigger scale-up: 1 max node group size reached",
            "lastTimestamp": "2026-01-01T00:00:30Z"}));
        let news = newest_scale_up_news(&[triggered, refused, scheduling.clone()]).unwrap();
        assert!(!news.node_coming, "the newer refusal wins");
        assert_eq!(newest_scale_up_news(&[scheduling]), None);
    }
}
