//! Jobs and pods as the shared watchers decode them: only the parts following a run reads.
//!
//! Every watch event carries the whole object. Most of it is never read here: the spec (a
//! Job's pod template, a pod's containers, env, volumes) and `managedFields`, the server's
//! record of who set which field, which k8s-openapi decodes into nested JSON maps (an
//! allocation per key). These types decode the metadata that routes an event to its run and
//! the status that says how the run goes; serde skips everything else without building it.
//! Decoding was about a tenth of the CPU the worker spent following runs.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec, JobStatus};
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use serde::{Deserialize, Deserializer};

/// The metadata a run reads: identity, routing label, owner and age.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WatchedMeta {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    owner_references: Option<Vec<OwnerReference>>,
    creation_timestamp: Option<Time>,
    deletion_timestamp: Option<Time>,
}

impl From<WatchedMeta> for ObjectMeta {
    fn from(meta: WatchedMeta) -> Self {
        ObjectMeta {
            name: meta.name,
            namespace: meta.namespace,
            uid: meta.uid,
            resource_version: meta.resource_version,
            labels: meta.labels,
            owner_references: meta.owner_references,
            creation_timestamp: meta.creation_timestamp,
            deletion_timestamp: meta.deletion_timestamp,
            ..ObjectMeta::default()
        }
    }
}

/// A pod from the watch: metadata as above and its whole status; no spec.
#[derive(Clone, Debug)]
pub struct WatchedPod(pub Pod);

impl<'de> Deserialize<'de> for WatchedPod {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Wire {
            metadata: WatchedMeta,
            status: Option<PodStatus>,
        }
        let wire = Wire::deserialize(deserializer)?;
        Ok(WatchedPod(Pod {
            metadata: wire.metadata.into(),
            spec: None,
            status: wire.status,
        }))
    }
}

/// A Job from the watch: metadata as above, its whole status and of its spec the backoff
/// limit, `suspend` (Kueue's queue) and `managedBy` (pods run by another controller).
#[derive(Clone, Debug)]
pub struct WatchedJob(pub Job);

impl<'de> Deserialize<'de> for WatchedJob {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct WireSpec {
            backoff_limit: Option<i32>,
            suspend: Option<bool>,
            managed_by: Option<String>,
        }
        #[derive(Deserialize)]
        struct Wire {
            metadata: WatchedMeta,
            spec: Option<WireSpec>,
            status: Option<JobStatus>,
        }
        let wire = Wire::deserialize(deserializer)?;
        Ok(WatchedJob(Job {
            metadata: wire.metadata.into(),
            spec: wire.spec.map(|spec| JobSpec {
                backoff_limit: spec.backoff_limit,
                suspend: spec.suspend,
                managed_by: spec.managed_by,
                ..JobSpec::default()
            }),
            status: wire.status,
        }))
    }
}

/// The API paths and names are those of the full types: the watchers request pods and Jobs.
macro_rules! same_resource_as {
    ($watched:ty, $full:ty) => {
        impl k8s_openapi::Resource for $watched {
            const API_VERSION: &'static str = <$full as k8s_openapi::Resource>::API_VERSION;
            const GROUP: &'static str = <$full as k8s_openapi::Resource>::GROUP;
            const KIND: &'static str = <$full as k8s_openapi::Resource>::KIND;
            const VERSION: &'static str = <$full as k8s_openapi::Resource>::VERSION;
            const URL_PATH_SEGMENT: &'static str =
                <$full as k8s_openapi::Resource>::URL_PATH_SEGMENT;
            type Scope = <$full as k8s_openapi::Resource>::Scope;
        }

        impl k8s_openapi::Metadata for $watched {
            type Ty = ObjectMeta;

            fn metadata(&self) -> &ObjectMeta {
                &self.0.metadata
            }

            fn metadata_mut(&mut self) -> &mut ObjectMeta {
                &mut self.0.metadata
            }
        }
    };
}

same_resource_as!(WatchedPod, Pod);
same_resource_as!(WatchedJob, Job);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn full_pod() -> serde_json::Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "run-abc-x1",
                "namespace": "prefect",
                "uid": "5f0c",
                "resourceVersion": "42",
                "creationTimestamp": "2026-11-27T10:00:00Z",
                "labels": {"prefect.io/flow-run-id": "f1", "job-name": "run-abc"},
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "run-abc", "uid": "j1"}],
                "managedFields": [{"manager": "kube-controller-manager", "operation": "Update",
                                   "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:labels": {".": {}}}}}]
            },
            "spec": {"containers": [{"name": "prefect-job", "image": "prefecthq/prefect:3",
                                     "env": [{"name": "A", "value": "1"}]}]},
            "status": {
                "phase": "Failed",
                "reason": "Evicted",
                "containerStatuses": [{"name": "prefect-job", "image": "i", "imageID": "", "ready": false,
                                       "restartCount": 0,
                                       "state": {"terminated": {"exitCode": 3, "reason": "Error"}}}]
            }
        })
    }

    #[test]
    fn a_watched_pod_keeps_what_a_run_reads() {
        let full: Pod = serde_json::from_value(full_pod()).unwrap();
        let WatchedPod(watched) = serde_json::from_value(full_pod()).unwrap();
        assert_eq!(watched.status, full.status);
        assert_eq!(watched.metadata.name, full.metadata.name);
        assert_eq!(watched.metadata.uid, full.metadata.uid);
        assert_eq!(watched.metadata.labels, full.metadata.labels);
        assert_eq!(
            watched.metadata.owner_references,
            full.metadata.owner_references
        );
        assert_eq!(
            watched.metadata.resource_version,
            full.metadata.resource_version
        );
        assert_eq!(
            watched.metadata.creation_timestamp,
            full.metadata.creation_timestamp
        );
        // What it leaves out.
        assert!(watched.metadata.managed_fields.is_none());
        assert!(watched.spec.is_none());
    }

    #[test]
    fn a_watched_job_keeps_its_status_and_backoff_limit() {
        let body = json!({
            "metadata": {"name": "run-abc", "labels": {"prefect.io/flow-run-id": "f1"},
                         "deletionTimestamp": "2026-11-27T10:05:00Z"},
            "spec": {"backoffLimit": 2, "template": {"spec": {"containers": [{"name": "prefect-job"}]}}},
            "status": {"failed": 3, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}
        });
        let full: Job = serde_json::from_value(body.clone()).unwrap();
        let WatchedJob(watched) = serde_json::from_value(body).unwrap();
        assert_eq!(watched.status, full.status);
        assert_eq!(watched.spec.unwrap().backoff_limit, Some(2));
        assert_eq!(
            watched.metadata.deletion_timestamp,
            full.metadata.deletion_timestamp
        );
    }

    #[test]
    fn a_watched_object_has_the_api_path_of_its_kind() {
        use kube::Resource;
        assert_eq!(WatchedPod::plural(&()), "pods");
        assert_eq!(WatchedJob::plural(&()), "jobs");
        assert_eq!(WatchedJob::api_version(&()), "batch/v1");
        assert_eq!(WatchedPod::kind(&()), "Pod");
    }
}
