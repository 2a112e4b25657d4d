//! Exec mode: a container's `command + args` as a local process.
//!
//! - argv: `command + args`; with no `command`, `args` alone (there is no image entrypoint).
//! - environment: a minimal host environment (`PATH`, `HOME`, `LANG`, `TMPDIR` and any
//!   `--pass-env` names), `HOSTNAME=<pod>`, then the container's `envFrom` and `env` with
//!   `$(VAR)` expansion as Kubernetes does it; `valueFrom` fieldRef / secretKeyRef /
//!   configMapKeyRef are resolved (Secrets and ConfigMaps through the API).
//! - `FAKE_KUBELET_CONTAINER_ID=<id>` marks every process of the container so that descendants
//!   that started their own session (or were re-parented) are still found when it is killed.
//! - each container runs in its own session / process group; stdout and stderr lines go to the
//!   container log with the time they were read.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::api::Api;
use kube::Client;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::task::JoinHandle;

use crate::logs::{LogBuffer, LogLine};

pub const MARKER_VAR: &str = "FAKE_KUBELET_CONTAINER_ID";
const MAX_LINE: usize = 4 << 20;

/// Kubernetes `$(VAR)` expansion (`k8s.io/kubernetes/third_party/forked/golang/expansion`):
/// `$(NAME)` is replaced when NAME is defined and kept as is otherwise; `$$` is an escaped `$`.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let b = input.as_bytes();
    let mut out = String::with_capacity(input.len());
    let mut last = 0;
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            out.push_str(&input[last..i]);
            match b[i + 1] {
                b'$' => {
                    out.push('$');
                    i += 2;
                }
                b'(' => match input[i + 2..].find(')') {
                    Some(end) => {
                        let name = &input[i + 2..i + 2 + end];
                        match lookup(name) {
                            Some(v) => out.push_str(&v),
                            None => out.push_str(&input[i..i + 3 + end]),
                        }
                        i += 3 + end;
                    }
                    None => {
                        out.push_str(&input[i..]);
                        i = b.len();
                    }
                },
                _ => {
                    out.push('$');
                    i += 1;
                }
            }
            last = i;
        } else {
            i += 1;
        }
    }
    out.push_str(&input[last.min(input.len())..]);
    out
}

/// Environment variable names Kubernetes accepts (C identifiers plus `.` and `-`).
fn valid_env_name(n: &str) -> bool {
    !n.is_empty()
        && !n.as_bytes()[0].is_ascii_digit()
        && n.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-' || c == b'.')
}

/// Fetches Secrets and ConfigMaps once per pod start.
pub struct RefCache {
    client: Client,
    namespace: String,
    secrets: HashMap<String, Option<BTreeMap<String, String>>>,
    configmaps: HashMap<String, Option<BTreeMap<String, String>>>,
}

impl RefCache {
    pub fn new(client: Client, namespace: &str) -> Self {
        RefCache {
            client,
            namespace: namespace.to_string(),
            secrets: HashMap::new(),
            configmaps: HashMap::new(),
        }
    }

    async fn secret(&mut self, name: &str) -> Result<Option<&BTreeMap<String, String>>, String> {
        if !self.secrets.contains_key(name) {
            let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
            let data = match api.get_opt(name).await {
                Ok(Some(s)) => {
                    let mut m: BTreeMap<String, String> = s
                        .data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                        .collect();
                    m.extend(s.string_data.unwrap_or_default());
                    Some(m)
                }
                Ok(None) => None,
                Err(e) => return Err(format!("failed to get secret {name:?}: {e}")),
            };
            self.secrets.insert(name.to_string(), data);
        }
        Ok(self.secrets[name].as_ref())
    }

    async fn configmap(&mut self, name: &str) -> Result<Option<&BTreeMap<String, String>>, String> {
        if !self.configmaps.contains_key(name) {
            let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
            let data = match api.get_opt(name).await {
                Ok(Some(c)) => {
                    let mut m = c.data.unwrap_or_default();
                    for (k, v) in c.binary_data.unwrap_or_default() {
                        m.insert(k, String::from_utf8_lossy(&v.0).into_owned());
                    }
                    Some(m)
                }
                Ok(None) => None,
                Err(e) => return Err(format!("failed to get configmap {name:?}: {e}")),
            };
            self.configmaps.insert(name.to_string(), data);
        }
        Ok(self.configmaps[name].as_ref())
    }
}

fn field_ref(pod: &Pod, path: &str) -> Option<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let keyed = |prefix: &str, map: Option<&BTreeMap<String, String>>| -> Option<String> {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(map.and_then(|m| m.get(key)).cloned().unwrap_or_default())
    };
    match path {
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => meta.namespace.clone(),
        "metadata.uid" => meta.uid.clone(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()),
        "status.hostIP" | "status.podIP" | "status.podIPs" | "status.hostIPs" => {
            Some("127.0.0.1".into())
        }
        _ => keyed("metadata.labels['", meta.labels.as_ref())
            .or_else(|| keyed("metadata.annotations['", meta.annotations.as_ref())),
    }
}

/// The container's environment (`envFrom` then `env`), without the host part.
/// `Err` is a CreateContainerConfigError message; the `Vec<String>` holds warnings.
pub async fn container_env(
    refs: &mut RefCache,
    pod: &Pod,
    c: &Container,
    base: &[(String, String)],
) -> Result<(Vec<(String, String)>, Vec<String>), String> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let mut warnings = Vec::new();
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, k: String, v: String| {
        if let Some(e) = env.iter_mut().find(|(n, _)| *n == k) {
            e.1 = v;
        } else {
            env.push((k, v));
        }
    };
    for src in c.env_from.iter().flatten() {
        let prefix = src.prefix.clone().unwrap_or_default();
        let (data, kind, name, optional) = if let Some(r) = &src.config_map_ref {
            let d = refs.configmap(&r.name).await?.cloned();
            (d, "configmap", r.name.clone(), r.optional.unwrap_or(false))
        } else if let Some(r) = &src.secret_ref {
            let d = refs.secret(&r.name).await?.cloned();
            (d, "secret", r.name.clone(), r.optional.unwrap_or(false))
        } else {
            continue;
        };
        match data {
            Some(d) => {
                for (k, v) in d {
                    let k = format!("{prefix}{k}");
                    if valid_env_name(&k) {
                        set(&mut env, k, v);
                    } else {
                        warnings.push(format!(
                            "skipping invalid env var name {k:?} from {kind} {name:?}"
                        ));
                    }
                }
            }
            None if optional => {}
            None => return Err(format!("{kind} {name:?} not found")),
        }
    }
    for e in c.env.iter().flatten() {
        let value = if let Some(vf) = &e.value_from {
            if let Some(f) = &vf.field_ref {
                match field_ref(pod, &f.field_path) {
                    Some(v) => Some(v),
                    None => {
                        warnings.push(format!(
                            "env {}: fieldRef {} is not supported; skipped",
                            e.name, f.field_path
                        ));
                        None
                    }
                }
            } else if let Some(r) = &vf.secret_key_ref {
                let optional = r.optional.unwrap_or(false);
                match refs.secret(&r.name).await? {
                    Some(d) => match d.get(&r.key) {
                        Some(v) => Some(v.clone()),
                        None if optional => None,
                        None => {
                            return Err(format!(
                                "couldn't find key {} in Secret {}/{}",
                                r.key, ns, r.name
                            ))
                        }
                    },
                    None if optional => None,
                    None => return Err(format!("secret {:?} not found", r.name)),
                }
            } else if let Some(r) = &vf.config_map_key_ref {
                let optional = r.optional.unwrap_or(false);
                match refs.configmap(&r.name).await? {
                    Some(d) => match d.get(&r.key) {
                        Some(v) => Some(v.clone()),
                        None if optional => None,
                        None => {
                            return Err(format!(
                                "couldn't find key {} in ConfigMap {}/{}",
                                r.key, ns, r.name
                            ))
                        }
                    },
                    None if optional => None,
                    None => return Err(format!("configmap {:?} not found", r.name)),
                }
            } else {
                warnings.push(format!(
                    "env {}: valueFrom (resourceFieldRef) is not supported; skipped",
                    e.name
                ));
                None
            }
        } else {
            let raw = e.value.clone().unwrap_or_default();
            Some(expand(&raw, |n| {
                env.iter()
                    .rev()
                    .find(|(k, _)| k == n)
                    .or_else(|| base.iter().rev().find(|(k, _)| k == n))
                    .map(|(_, v)| v.clone())
            }))
        };
        if let Some(v) = value {
            set(&mut env, e.name.clone(), v);
        }
    }
    Ok((env, warnings))
}

/// A resolved process to start.
#[derive(Clone, Debug)]
pub struct ExecPlan {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
}

/// argv with `$(VAR)` expanded from the final environment.
pub fn argv(c: &Container, env: &[(String, String)]) -> Vec<String> {
    let lookup = |n: &str| {
        env.iter()
            .rev()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
    };
    c.command
        .iter()
        .flatten()
        .chain(c.args.iter().flatten())
        .map(|a| expand(a, lookup))
        .collect()
}

/// Reads a stream into the log, one entry per line (lines over 4 MiB are split).
async fn pump<R: AsyncRead + Unpin>(r: R, buf: Arc<LogBuffer>) {
    let mut reader = BufReader::with_capacity(64 * 1024, r);
    let mut line: Vec<u8> = Vec::new();
    while let Ok(available) = reader.fill_buf().await {
        if available.is_empty() {
            break;
        }
        let (take, complete) = match available.iter().position(|&c| c == b'\n') {
            Some(p) => (p + 1, true),
            None => (available.len(), false),
        };
        let content = if complete {
            &available[..take - 1]
        } else {
            &available[..take]
        };
        line.extend_from_slice(content);
        reader.consume(take);
        if complete || line.len() >= MAX_LINE {
            let mut data = std::mem::take(&mut line);
            data.shrink_to_fit();
            buf.push(LogLine {
                ts: Utc::now(),
                data: Bytes::from(data),
                newline: complete,
            });
        }
    }
    if !line.is_empty() {
        buf.push(LogLine {
            ts: Utc::now(),
            data: Bytes::from(line),
            newline: false,
        });
    }
}

/// A started container process.
pub struct Proc {
    pub child: tokio::process::Child,
    pub pid: i32,
    pub marker: String,
    readers: Vec<JoinHandle<()>>,
}

pub fn spawn(plan: &ExecPlan, marker: &str, buf: Arc<LogBuffer>) -> io::Result<Proc> {
    let Some(prog) = plan.argv.first() else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty argv"));
    };
    let mut cmd = tokio::process::Command::new(prog);
    cmd.args(&plan.argv[1..])
        .env_clear()
        .envs(plan.env.iter().map(|(k, v)| (k, v)))
        .env(MARKER_VAR, marker)
        .current_dir(&plan.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(false);
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let pid = child.id().map(|p| p as i32).unwrap_or(-1);
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        readers.push(tokio::spawn(pump(out, buf.clone())));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(tokio::spawn(pump(err, buf)));
    }
    Ok(Proc {
        child,
        pid,
        marker: marker.to_string(),
        readers,
    })
}

/// Exit code as the runtime reports it: the code, or 128 + signal.
pub fn exit_code(s: &ExitStatus) -> i32 {
    match (s.code(), s.signal()) {
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        _ => 255,
    }
}

/// (state, ppid, pgrp, session) from `/proc/<pid>/stat`.
fn stat_fields(pid: i32) -> Option<(char, i32, i32, i32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    let pgrp = f.next()?.parse().ok()?;
    let sid = f.next()?.parse().ok()?;
    Some((state, ppid, pgrp, sid))
}

fn proc_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
                .collect()
        })
        .unwrap_or_default()
}

/// Makes this process the reaper of orphaned descendants (Linux), so processes that leave
/// their container's tree do not end up as zombies under a lazy init.
pub fn become_subreaper() {
    // SAFETY: plain prctl call.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if r != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "PR_SET_CHILD_SUBREAPER failed");
    }
}

/// Reaps zombie children that are not container leaders (those belong to tokio's `Child`).
/// Must run under the same lock as spawning so a fresh leader is never taken for an orphan.
pub fn reap_orphans(leaders: &HashSet<i32>) -> usize {
    let me = std::process::id() as i32;
    let mut n = 0;
    for pid in proc_pids() {
        if leaders.contains(&pid) {
            continue;
        }
        if let Some(('Z', ppid, _, _)) = stat_fields(pid) {
            if ppid == me {
                // SAFETY: waits for one specific child that nothing else waits for.
                let r = unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
                if r == pid {
                    n += 1;
                }
            }
        }
    }
    n
}

fn has_marker(pid: i32, needle: &[u8]) -> bool {
    match std::fs::read(format!("/proc/{pid}/environ")) {
        Ok(env) => env.split(|&c| c == 0).any(|kv| kv == needle),
        Err(_) => false,
    }
}

/// All live processes of a container: the leader's session and process group, everything
/// descended from those, and every process carrying the container's marker variable.
pub fn container_pids(leader: i32, marker: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let needle = format!("{MARKER_VAR}={marker}").into_bytes();
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    let mut roots: Vec<i32> = Vec::new();
    for pid in proc_pids() {
        if pid == me {
            continue;
        }
        let Some((state, ppid, pgrp, sid)) = stat_fields(pid) else {
            continue;
        };
        if state == 'Z' || state == 'X' {
            continue;
        }
        children.entry(ppid).or_default().push(pid);
        if pid == leader || pgrp == leader || sid == leader || has_marker(pid, &needle) {
            roots.push(pid);
        }
    }
    let mut seen: HashSet<i32> = HashSet::new();
    let mut stack = roots;
    while let Some(p) = stack.pop() {
        if p == me || !seen.insert(p) {
            continue;
        }
        if let Some(cs) = children.get(&p) {
            stack.extend(cs.iter().copied());
        }
    }
    let mut v: Vec<i32> = seen.into_iter().collect();
    v.sort_unstable();
    v
}

/// Signals every process of the container; returns how many were signalled.
pub fn signal_container(leader: i32, marker: &str, sig: i32) -> usize {
    let pids = container_pids(leader, marker);
    // SAFETY: plain kill(2) calls.
    unsafe {
        if leader > 0 {
            libc::kill(-leader, sig);
        }
        for p in &pids {
            libc::kill(*p, sig);
        }
    }
    pids.len()
}

impl Proc {
    /// Waits for the leader; on `stop`, SIGTERM to the whole container, SIGKILL after `grace`.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        self.child.wait().await
    }

    pub async fn terminate(&mut self, grace: Duration) -> io::Result<ExitStatus> {
        let (pid, marker) = (self.pid, self.marker.clone());
        let _ = tokio::task::spawn_blocking(move || signal_container(pid, &marker, libc::SIGTERM))
            .await;
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(r) => r,
            Err(_) => {
                let (pid, marker) = (self.pid, self.marker.clone());
                let _ = tokio::task::spawn_blocking(move || {
                    signal_container(pid, &marker, libc::SIGKILL)
                })
                .await;
                self.child.wait().await
            }
        }
    }

    /// After the leader exited: kills what is left of the container (as a runtime does when a
    /// container's init process ends) and collects the last output.
    pub async fn finish(self) {
        let (pid, marker) = (self.pid, self.marker.clone());
        let left =
            tokio::task::spawn_blocking(move || signal_container(pid, &marker, libc::SIGKILL))
                .await
                .unwrap_or(0);
        if left > 0 {
            tracing::debug!(pid, left, "killed leftover processes of container");
        }
        for mut r in self.readers {
            if tokio::time::timeout(Duration::from_secs(2), &mut r)
                .await
                .is_err()
            {
                r.abort();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_like_kubernetes() {
        let lookup = |n: &str| match n {
            "A" => Some("x".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        assert_eq!(expand("$(A)-$(B)", lookup), "x-$(B)");
        assert_eq!(expand("$$(A)", lookup), "$(A)");
        assert_eq!(expand("a$b", lookup), "a$b");
        assert_eq!(expand("$(A", lookup), "$(A");
        assert_eq!(expand("$(EMPTY)z$", lookup), "z$");
        assert_eq!(expand("plain", lookup), "plain");
        assert_eq!(expand("é$(A)é", lookup), "éxé");
    }

    #[test]
    fn argv_without_command_is_args() {
        let c: Container = serde_json::from_value(serde_json::json!({
            "name": "m", "args": ["echo", "$(X)"]
        }))
        .unwrap();
        assert_eq!(
            argv(&c, &[("X".into(), "hi".into())]),
            vec!["echo".to_string(), "hi".to_string()]
        );
        let c: Container = serde_json::from_value(serde_json::json!({
            "name": "m", "command": ["sh", "-c"], "args": ["exit 3"]
        }))
        .unwrap();
        assert_eq!(argv(&c, &[]), vec!["sh", "-c", "exit 3"]);
    }

    #[test]
    fn field_refs() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u",
                         "labels": {"job-name": "j"}},
            "spec": {"containers": [], "nodeName": "n"}
        }))
        .unwrap();
        assert_eq!(field_ref(&pod, "metadata.name").as_deref(), Some("p"));
        assert_eq!(
            field_ref(&pod, "metadata.labels['job-name']").as_deref(),
            Some("j")
        );
        assert_eq!(
            field_ref(&pod, "metadata.labels['none']").as_deref(),
            Some("")
        );
        assert_eq!(field_ref(&pod, "spec.nodeName").as_deref(), Some("n"));
        assert_eq!(
            field_ref(&pod, "status.podIP").as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(field_ref(&pod, "spec.bogus"), None);
    }

    #[tokio::test]
    async fn runs_kills_tree_and_reports_signal() {
        let buf = LogBuffer::new(1 << 20);
        let plan = ExecPlan {
            argv: vec![
                "sh".into(),
                "-c".into(),
                // a grandchild in its own session, then block
                "echo start; setsid sleep 300 & sleep 300".into(),
            ],
            env: vec![("PATH".into(), std::env::var("PATH").unwrap_or_default())],
            cwd: std::env::temp_dir(),
        };
        let marker = format!("test-{}", std::process::id());
        let mut p = spawn(&plan, &marker, buf.clone()).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let pids = container_pids(p.pid, &marker);
        assert!(pids.len() >= 3, "{pids:?}");
        let st = p.terminate(Duration::from_secs(5)).await.unwrap();
        assert_eq!(exit_code(&st), 143);
        let leader = p.pid;
        p.finish().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        // zombies waiting for init to reap them are not listed
        let left = container_pids(leader, &marker);
        assert!(left.is_empty(), "left: {left:?}");
        let c = buf.read_from(0, 10);
        assert_eq!(&c.lines[0].data[..], b"start");
    }

    #[tokio::test]
    async fn exit_code_and_partial_line() {
        let buf = LogBuffer::new(1 << 20);
        let plan = ExecPlan {
            argv: vec!["sh".into(), "-c".into(), "printf 'a\\nb'; exit 3".into()],
            env: vec![("PATH".into(), std::env::var("PATH").unwrap_or_default())],
            cwd: std::env::temp_dir(),
        };
        let mut p = spawn(&plan, "m2", buf.clone()).unwrap();
        let st = p.wait().await.unwrap();
        assert_eq!(exit_code(&st), 3);
        p.finish().await;
        let c = buf.read_from(0, 10);
        assert_eq!(c.lines.len(), 2);
        assert!(c.lines[0].newline && !c.lines[1].newline);
    }
}
