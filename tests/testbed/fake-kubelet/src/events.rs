//! Legacy `core/v1` Events as a v1.20 kubelet's event recorder writes them: `involvedObject`,
//! `source.component`/`source.host`, `firstTimestamp`/`lastTimestamp`, `count`; repeats of the
//! same (object, type, reason, message) are aggregated by patching `count`/`lastTimestamp`.
//!
//! Writes are asynchronous (a pod's progress never waits for its events) and bounded by a
//! semaphore of their own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::Utc;
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;
use tokio::sync::Semaphore;

use crate::status::ts;

#[derive(Clone, Debug)]
pub struct ObjRef {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Type {
    Normal,
    Warning,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    Kubelet,
    ClusterAutoscaler,
    FakeKubelet,
}

impl Source {
    fn component(self) -> &'static str {
        match self {
            Source::Kubelet => "kubelet",
            Source::ClusterAutoscaler => "cluster-autoscaler",
            Source::FakeKubelet => "fake-kubelet",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    uid: String,
    field_path: Option<String>,
    type_: Type,
    reason: String,
    message: String,
    source: Source,
}

struct Agg {
    name: String,
    count: u32,
    first: String,
}

pub struct EventRecorder {
    client: Client,
    node: String,
    sem: Arc<Semaphore>,
    seen: Mutex<HashMap<Key, Agg>>,
    counter: AtomicU64,
    pub written: AtomicU64,
}

/// `spec.containers{name}` / `spec.initContainers{name}`.
pub fn container_path(init: bool, name: &str) -> String {
    if init {
        format!("spec.initContainers{{{name}}}")
    } else {
        format!("spec.containers{{{name}}}")
    }
}

impl EventRecorder {
    pub fn new(client: Client, node: String, concurrency: usize) -> Arc<Self> {
        Arc::new(EventRecorder {
            client,
            node,
            sem: Arc::new(Semaphore::new(concurrency.max(1))),
            seen: Mutex::new(HashMap::new()),
            counter: AtomicU64::new(0),
            written: AtomicU64::new(0),
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub fn emit(
        self: &Arc<Self>,
        obj: &ObjRef,
        field_path: Option<String>,
        type_: Type,
        reason: &str,
        message: &str,
        source: Source,
    ) {
        tracing::debug!(pod = %obj.name, reason, message, "event");
        let now = ts(&Utc::now());
        let key = Key {
            uid: obj.uid.clone(),
            field_path: field_path.clone(),
            type_,
            reason: reason.to_string(),
            message: message.to_string(),
            source,
        };
        let (name, count, first, repeat) = {
            let mut seen = self.seen.lock().unwrap();
            match seen.get_mut(&key) {
                Some(a) => {
                    a.count += 1;
                    (a.name.clone(), a.count, a.first.clone(), true)
                }
                None => {
                    let nanos = Utc::now().timestamp_nanos_opt().unwrap_or(0) as u64
                        + self.counter.fetch_add(1, Ordering::Relaxed);
                    let name = format!("{}.{:x}", obj.name, nanos);
                    seen.insert(
                        key,
                        Agg {
                            name: name.clone(),
                            count: 1,
                            first: now.clone(),
                        },
                    );
                    (name, 1, now.clone(), false)
                }
            }
        };
        let mut involved = json!({
            "kind": obj.kind,
            "name": obj.name,
            "uid": obj.uid,
            "apiVersion": "v1",
        });
        if !obj.namespace.is_empty() {
            involved["namespace"] = json!(obj.namespace);
        }
        if let Some(fp) = &field_path {
            involved["fieldPath"] = json!(fp);
        }
        let namespace = if obj.namespace.is_empty() {
            "default".to_string()
        } else {
            obj.namespace.clone()
        };
        let body = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": involved,
            "reason": reason,
            "message": message,
            "source": {"component": source.component(), "host": self.node},
            "firstTimestamp": first,
            "lastTimestamp": now,
            "count": count,
            "type": match type_ { Type::Normal => "Normal", Type::Warning => "Warning" },
        });
        let this = self.clone();
        tokio::spawn(async move {
            let _permit = this.sem.acquire().await;
            let api: Api<Event> = Api::namespaced(this.client.clone(), &namespace);
            let res = if repeat {
                let patch = json!({"count": count, "lastTimestamp": now});
                match api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Err(kube::Error::Api(s)) if s.code == 404 => create(&api, &body).await,
                    other => other.map(|_| ()),
                }
            } else {
                create(&api, &body).await
            };
            match res {
                Ok(()) => {
                    this.written.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => tracing::warn!(event = %name, error = %e, "writing event failed"),
            }
        });
    }

    /// Forgets the aggregation state of an object (when it is deleted).
    pub fn forget(&self, uid: &str) {
        self.seen.lock().unwrap().retain(|k, _| k.uid != uid);
    }
}

async fn create(api: &Api<Event>, body: &serde_json::Value) -> Result<(), kube::Error> {
    let ev: Event = serde_json::from_value(body.clone()).map_err(kube::Error::SerdeError)?;
    match api.create(&PostParams::default(), &ev).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}
