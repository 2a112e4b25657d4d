//! State shared by all tasks: API client, write limits, events, logs, live processes, options.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use kube::Client;
use tokio::sync::Semaphore;

use crate::events::EventRecorder;
use crate::logs::LogRegistry;

#[derive(Clone, Debug)]
pub struct Opts {
    /// First non-zero restart back-off (doubles per restart, capped at 300 s).
    pub restart_backoff: Duration,
    pub max_log_bytes: usize,
    /// Host variables every exec container gets (before its own env).
    pub host_env: Vec<(String, String)>,
    pub cwd: PathBuf,
    /// How long a container with neither command nor args "runs" (exec mode).
    pub no_command_run: Duration,
    pub heartbeat: Duration,
}

/// Exec processes alive right now (leader pid by marker), for shutdown.
#[derive(Default)]
pub struct ProcTable {
    procs: Mutex<HashMap<String, i32>>,
}

impl ProcTable {
    /// Spawns under the table lock and records the leader, so `reap` never sees an
    /// unrecorded leader.
    pub fn spawn<T>(
        &self,
        marker: &str,
        f: impl FnOnce() -> std::io::Result<T>,
        pid_of: impl Fn(&T) -> i32,
    ) -> std::io::Result<T> {
        let mut procs = self.procs.lock().unwrap();
        let t = f()?;
        procs.insert(marker.to_string(), pid_of(&t));
        Ok(t)
    }

    /// Reaps orphaned zombies (see `exec::reap_orphans`).
    pub fn reap(&self) -> usize {
        let procs = self.procs.lock().unwrap();
        let leaders: std::collections::HashSet<i32> = procs.values().copied().collect();
        crate::exec::reap_orphans(&leaders)
    }

    pub fn remove(&self, marker: &str) {
        self.procs.lock().unwrap().remove(marker);
    }
    pub fn snapshot(&self) -> Vec<(String, i32)> {
        self.procs
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }
}

#[derive(Default)]
pub struct Stats {
    pub pods_seen: AtomicU64,
    pub nodes_added: AtomicU64,
    pub status_patches: AtomicU64,
    pub deletes: AtomicU64,
    pub containers_started: AtomicU64,
    pub api_retries: AtomicU64,
}

pub struct Ctx {
    pub client: Client,
    /// The node this kubelet registers at start.
    pub node: String,
    /// Every node this kubelet plays: its own and those its autoscaler added.
    nodes: Mutex<HashSet<String>>,
    /// The log server's port, which every node advertises.
    pub port: OnceLock<u16>,
    pub api_sem: Arc<Semaphore>,
    pub events: Arc<EventRecorder>,
    pub logs: Arc<LogRegistry>,
    pub procs: ProcTable,
    pub stats: Stats,
    pub opts: Opts,
    rng: RandomState,
    seq: AtomicU64,
}

impl Ctx {
    pub fn new(
        client: Client,
        node: String,
        api_concurrency: usize,
        event_concurrency: usize,
        opts: Opts,
    ) -> Arc<Self> {
        Arc::new(Ctx {
            events: EventRecorder::new(client.clone(), node.clone(), event_concurrency),
            client,
            nodes: Mutex::new(HashSet::from([node.clone()])),
            node,
            port: OnceLock::new(),
            api_sem: Arc::new(Semaphore::new(api_concurrency.max(1))),
            logs: Arc::new(LogRegistry::default()),
            procs: ProcTable::default(),
            stats: Stats::default(),
            opts,
            rng: RandomState::new(),
            seq: AtomicU64::new(0),
        })
    }

    /// Whether pods bound to `node` are this kubelet's to run.
    pub fn plays(&self, node: &str) -> bool {
        self.nodes.lock().unwrap().contains(node)
    }

    /// Takes on a node the autoscaler added.
    pub fn add_node(&self, node: String) {
        self.nodes.lock().unwrap().insert(node);
    }

    /// `n` random-looking hex digits (unique per call within this process).
    pub fn random_hex(&self, n: usize) -> String {
        let mut s = String::with_capacity(n + 16);
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let mut i = 0u64;
        while s.len() < n {
            let mut h = self.rng.build_hasher();
            h.write_u64(seq);
            h.write_u64(i);
            s.push_str(&format!("{:016x}", h.finish()));
            i += 1;
        }
        s.truncate(n);
        s
    }

    pub fn container_id(&self) -> String {
        format!("containerd://{}", self.random_hex(64))
    }
}

/// Stable fake image digest: `<repo>@sha256:<hex>`.
pub fn image_id(image: &str) -> String {
    let repo = match image.rsplit_once('@') {
        Some((r, _)) => r,
        None => match image.rsplit_once(':') {
            Some((r, tag)) if !tag.contains('/') => r,
            _ => image,
        },
    };
    let mut hex = String::new();
    let mut h: u64 = 0xcbf29ce484222325;
    for round in 0..4u64 {
        for b in image.bytes().chain(round.to_le_bytes()) {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
        hex.push_str(&format!("{h:016x}"));
    }
    format!("{repo}@sha256:{hex}")
}

/// Whether a real kubelet would pull (policy Always, or no policy and a `:latest`/untagged image).
pub fn pulls(image: &str, policy: Option<&str>) -> bool {
    match policy {
        Some("Always") => true,
        Some(_) => false,
        None => {
            if image.contains('@') {
                return false;
            }
            let last = image.rsplit('/').next().unwrap_or(image);
            match last.rsplit_once(':') {
                Some((_, tag)) => tag == "latest",
                None => true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_helpers() {
        assert!(image_id("busybox:1.36").starts_with("busybox@sha256:"));
        assert_eq!(image_id("busybox:1.36").len(), "busybox@sha256:".len() + 64);
        assert!(image_id("localhost:5000/x").starts_with("localhost:5000/x@sha256:"));
        assert!(pulls("busybox", None));
        assert!(pulls("busybox:latest", None));
        assert!(!pulls("busybox:1.36", None));
        assert!(pulls("localhost:5000/x", None));
        assert!(!pulls("busybox", Some("IfNotPresent")));
        assert!(pulls("busybox:1", Some("Always")));
    }
}
