//! One watch on all pods; each pod that is unscheduled or bound to a node this kubelet plays
//! gets a task (`pod::run`) that receives the pod's latest object through a watch channel.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use tokio::sync::watch;

use crate::ctx::Ctx;
use crate::pod::{self, PodUpdate};

struct Dispatcher {
    ctx: Arc<Ctx>,
    tasks: HashMap<String, watch::Sender<PodUpdate>>,
}

impl Dispatcher {
    /// Routes a pod object; returns its uid if this node handles it.
    fn apply(&mut self, p: Pod) -> Option<String> {
        let uid = p.metadata.uid.clone()?;
        let node = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        if !node.is_empty() && !self.ctx.plays(&node) && !self.tasks.contains_key(&uid) {
            return None;
        }
        let update = PodUpdate {
            pod: Arc::new(p),
            gone: false,
        };
        match self.tasks.get(&uid) {
            Some(tx) => {
                tx.send_replace(update);
            }
            None => {
                let (tx, rx) = watch::channel(update);
                tokio::spawn(pod::run(self.ctx.clone(), rx));
                self.tasks.insert(uid.clone(), tx);
            }
        }
        Some(uid)
    }

    fn gone(&mut self, uid: &str) {
        if let Some(tx) = self.tasks.remove(uid) {
            tx.send_modify(|u| u.gone = true);
        }
    }
}

pub async fn run(ctx: Arc<Ctx>) {
    let api: Api<Pod> = Api::all(ctx.client.clone());
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut d = Dispatcher {
        ctx,
        tasks: HashMap::new(),
    };
    let mut relist: Option<HashSet<String>> = None;
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(Event::Init) => relist = Some(HashSet::new()),
            Ok(Event::InitApply(p)) => {
                if let Some(uid) = d.apply(p) {
                    if let Some(seen) = relist.as_mut() {
                        seen.insert(uid);
                    }
                }
            }
            Ok(Event::InitDone) => {
                // pods that disappeared while the watch was down
                if let Some(seen) = relist.take() {
                    let missing: Vec<String> = d
                        .tasks
                        .keys()
                        .filter(|u| !seen.contains(*u))
                        .cloned()
                        .collect();
                    for uid in missing {
                        d.gone(&uid);
                    }
                }
                tracing::debug!(pods = d.tasks.len(), "pod list synced");
            }
            Ok(Event::Apply(p)) => {
                d.apply(p);
            }
            Ok(Event::Delete(p)) => {
                if let Some(uid) = p.metadata.uid.as_deref() {
                    d.gone(uid);
                }
            }
            Err(e) => tracing::warn!(error = %e, "pod watch error"),
        }
    }
    tracing::error!("pod watch ended");
}
