//! Container logs: in-memory per-attempt line buffers, the registry the log server reads, and
//! the kubelet's query semantics (`follow`, `timestamps`, `sinceTime`, `sinceSeconds`,
//! `tailLines`, `limitBytes`, `previous`).
//!
//! Memory: each attempt's buffer keeps at most `max_bytes` of line data; the oldest lines are
//! dropped beyond that (a follower that is further behind than the cap skips the dropped
//! lines). Only the current and the previous attempt of a container are kept, and all of a pod's
//! logs are dropped when the pod object is deleted.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use tokio::sync::watch;

use crate::status::{CState, CStatus};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    pub ts: DateTime<Utc>,
    pub data: Bytes,
    /// False for a fragment that was not ended by a newline (end of stream or split of an
    /// over-long line): written without a newline so the reader sees the bytes joined.
    pub newline: bool,
}

#[derive(Default)]
struct BufInner {
    lines: VecDeque<LogLine>,
    /// Sequence number of `lines[0]`.
    first_seq: u64,
    bytes: usize,
    closed: bool,
}

/// The log of one container attempt.
pub struct LogBuffer {
    inner: Mutex<BufInner>,
    notify: watch::Sender<u64>,
    max_bytes: usize,
}

pub struct Chunk {
    pub lines: Vec<LogLine>,
    pub next_seq: u64,
    pub closed: bool,
}

impl LogBuffer {
    pub fn new(max_bytes: usize) -> Arc<Self> {
        Arc::new(LogBuffer {
            inner: Mutex::new(BufInner::default()),
            notify: watch::channel(0).0,
            max_bytes,
        })
    }

    pub fn push(&self, line: LogLine) {
        let next = {
            let mut b = self.inner.lock().unwrap();
            if b.closed {
                return;
            }
            b.bytes += line.data.len();
            b.lines.push_back(line);
            while b.bytes > self.max_bytes && b.lines.len() > 1 {
                let old = b.lines.pop_front().unwrap();
                b.bytes -= old.data.len();
                b.first_seq += 1;
            }
            b.first_seq + b.lines.len() as u64
        };
        self.notify.send_replace(next);
    }

    pub fn push_now(&self, data: impl Into<Bytes>) {
        self.push(LogLine {
            ts: Utc::now(),
            data: data.into(),
            newline: true,
        })
    }

    pub fn close(&self) {
        let next = {
            let mut b = self.inner.lock().unwrap();
            b.closed = true;
            b.first_seq + b.lines.len() as u64
        };
        self.notify.send_replace(next);
    }

    #[cfg(test)]
    pub fn is_closed(&self) -> bool {
        self.inner.lock().unwrap().closed
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.notify.subscribe()
    }

    /// Lines from `seq` on (from the oldest kept line if `seq` was dropped).
    pub fn read_from(&self, seq: u64, max_lines: usize) -> Chunk {
        let b = self.inner.lock().unwrap();
        let start = seq.max(b.first_seq);
        let skip = (start - b.first_seq) as usize;
        let lines: Vec<LogLine> = b.lines.iter().skip(skip).take(max_lines).cloned().collect();
        let next_seq = start + lines.len() as u64;
        let end = b.first_seq + b.lines.len() as u64;
        Chunk {
            lines,
            next_seq,
            closed: b.closed && next_seq == end,
        }
    }

    /// First sequence number to send for `tail` lines (`None`: all).
    pub fn tail_start(&self, tail: Option<u64>) -> u64 {
        let b = self.inner.lock().unwrap();
        let end = b.first_seq + b.lines.len() as u64;
        match tail {
            None => b.first_seq,
            Some(n) => end.saturating_sub(n).max(b.first_seq),
        }
    }
}

/// Log query of `GET /containerLogs/...`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LogQuery {
    pub follow: bool,
    pub timestamps: bool,
    pub previous: bool,
    pub since: Option<DateTime<Utc>>,
    pub tail_lines: Option<u64>,
    pub limit_bytes: Option<u64>,
}

/// Go's `strconv.ParseBool`.
fn go_bool(v: &str) -> Result<bool, String> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(format!("invalid boolean {v:?}")),
    }
}

fn percent_decode(s: &str) -> String {
    fn hex(c: u8) -> Option<u8> {
        (c as char).to_digit(16).map(|d| d as u8)
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn parse_query(query: Option<&str>, now: DateTime<Utc>) -> Result<LogQuery, String> {
    let mut q = LogQuery::default();
    let mut since_seconds: Option<i64> = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v);
        match k {
            "follow" => q.follow = go_bool(&v)?,
            "timestamps" => q.timestamps = go_bool(&v)?,
            "previous" => q.previous = go_bool(&v)?,
            "sinceTime" => {
                let t = DateTime::parse_from_rfc3339(&v)
                    .map_err(|e| format!("invalid sinceTime {v:?}: {e}"))?;
                q.since = Some(t.with_timezone(&Utc));
            }
            "sinceSeconds" => {
                let s: i64 = v
                    .parse()
                    .map_err(|_| format!("invalid sinceSeconds {v:?}"))?;
                if s < 1 {
                    return Err("sinceSeconds must be greater than 0".into());
                }
                since_seconds = Some(s);
            }
            "tailLines" => {
                let n: i64 = v.parse().map_err(|_| format!("invalid tailLines {v:?}"))?;
                // The kubelet treats a negative tail as "all lines".
                q.tail_lines = (n >= 0).then_some(n as u64);
            }
            "limitBytes" => {
                let n: i64 = v.parse().map_err(|_| format!("invalid limitBytes {v:?}"))?;
                if n < 1 {
                    return Err("limitBytes must be greater than 0".into());
                }
                q.limit_bytes = Some(n as u64);
            }
            _ => {}
        }
    }
    if let Some(s) = since_seconds {
        if q.since.is_some() {
            return Err("at most one of sinceTime or sinceSeconds may be specified".into());
        }
        q.since = Some(now - chrono::Duration::seconds(s));
    }
    Ok(q)
}

/// `2026-11-27T03:30:00.123456789Z` (the kubelet's RFC3339NanoFixed).
pub fn format_ts(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// Streams the selected lines of `buf` as output chunks; applies since/timestamps/limitBytes and
/// stops at the end of the buffer unless `follow`.
pub struct LogCursor {
    pub seq: u64,
    pub sent_bytes: u64,
    pub query: LogQuery,
}

impl LogCursor {
    pub fn new(buf: &LogBuffer, query: LogQuery) -> Self {
        LogCursor {
            seq: buf.tail_start(query.tail_lines),
            sent_bytes: 0,
            query,
        }
    }

    pub fn limit_reached(&self) -> bool {
        matches!(self.query.limit_bytes, Some(l) if self.sent_bytes >= l)
    }

    /// Renders lines into output bytes (kubelet semantics: since filter on every line,
    /// timestamps prefix, limitBytes cuts mid-line).
    pub fn render(&mut self, lines: &[LogLine], out: &mut Vec<u8>) {
        for l in lines {
            if self.limit_reached() {
                return;
            }
            if let Some(since) = &self.query.since {
                if l.ts < *since {
                    continue;
                }
            }
            let start = out.len();
            if self.query.timestamps {
                out.extend_from_slice(format_ts(&l.ts).as_bytes());
                out.push(b' ');
            }
            out.extend_from_slice(&l.data);
            if l.newline {
                out.push(b'\n');
            }
            let mut n = (out.len() - start) as u64;
            if let Some(limit) = self.query.limit_bytes {
                let room = limit - self.sent_bytes;
                if n > room {
                    out.truncate(start + room as usize);
                    n = room;
                }
            }
            self.sent_bytes += n;
        }
    }
}

/// Which attempt's log a request reads.
#[derive(Debug, PartialEq, Eq)]
pub enum LogTarget {
    ContainerId(String),
}

/// The kubelet's `validateContainerLogStatus`: picks the container ID to read or the error text
/// (HTTP 400) for a container in this state.
pub fn validate_log_status(
    status: Option<&CStatus>,
    container: &str,
    pod: &str,
    previous: bool,
) -> Result<LogTarget, String> {
    let Some(s) = status else {
        return Err(format!(
            "container {container:?} in pod {pod:?} is not available"
        ));
    };
    let last_id = s.last_state.as_ref().and_then(|t| t.container_id.clone());
    if previous {
        return match last_id {
            Some(id) => Ok(LogTarget::ContainerId(id)),
            None => Err(format!(
                "previous terminated container {container:?} in pod {pod:?} not found"
            )),
        };
    }
    match &s.state {
        CState::Running { .. } => match &s.container_id {
            Some(id) => Ok(LogTarget::ContainerId(id.clone())),
            None => Err(format!(
                "container {container:?} in pod {pod:?} is waiting to start - no logs yet"
            )),
        },
        CState::Terminated(t) => match t.container_id.clone().or(last_id) {
            Some(id) => Ok(LogTarget::ContainerId(id)),
            None => Err(format!(
                "container {container:?} in pod {pod:?} is terminated"
            )),
        },
        CState::Waiting { reason, .. } => {
            if let Some(id) = last_id {
                return Ok(LogTarget::ContainerId(id));
            }
            Err(match reason.as_str() {
                "ErrImagePull" => format!(
                    "container {container:?} in pod {pod:?} is waiting to start: image can't be pulled"
                ),
                "ImagePullBackOff" => format!(
                    "container {container:?} in pod {pod:?} is waiting to start: trying and failing to pull image"
                ),
                r => format!("container {container:?} in pod {pod:?} is waiting to start: {r}"),
            })
        }
    }
}

/// Logs and log-visible status of one container.
pub struct ContainerLogs {
    /// The container status as this kubelet last computed it (`None`: not available).
    pub view: Mutex<Option<CStatus>>,
    /// (container ID, log) of the latest attempts, oldest first; at most two.
    attempts: Mutex<VecDeque<(String, Arc<LogBuffer>)>>,
}

impl ContainerLogs {
    fn new() -> Self {
        ContainerLogs {
            view: Mutex::new(None),
            attempts: Mutex::new(VecDeque::new()),
        }
    }

    pub fn new_attempt(&self, container_id: &str, max_bytes: usize) -> Arc<LogBuffer> {
        let buf = LogBuffer::new(max_bytes);
        let mut a = self.attempts.lock().unwrap();
        a.push_back((container_id.to_string(), buf.clone()));
        while a.len() > 2 {
            if let Some((_, old)) = a.pop_front() {
                old.close();
            }
        }
        buf
    }

    pub fn attempt(&self, container_id: &str) -> Option<Arc<LogBuffer>> {
        self.attempts
            .lock()
            .unwrap()
            .iter()
            .find(|(id, _)| id == container_id)
            .map(|(_, b)| b.clone())
    }

    fn close_all(&self) {
        for (_, b) in self.attempts.lock().unwrap().iter() {
            b.close();
        }
    }
}

pub struct PodLogs {
    pub uid: String,
    /// Node-loss emulation: log requests for this pod fail like an unreachable kubelet.
    pub lost: AtomicBool,
    pub containers: HashMap<String, Arc<ContainerLogs>>,
}

impl PodLogs {
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }
}

/// All pods this kubelet serves logs for, by namespace and name.
#[derive(Default)]
pub struct LogRegistry {
    pods: RwLock<HashMap<(String, String), Arc<PodLogs>>>,
}

impl LogRegistry {
    pub fn register(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        containers: &[String],
    ) -> Arc<PodLogs> {
        let p = Arc::new(PodLogs {
            uid: uid.to_string(),
            lost: AtomicBool::new(false),
            containers: containers
                .iter()
                .map(|c| (c.clone(), Arc::new(ContainerLogs::new())))
                .collect(),
        });
        self.pods
            .write()
            .unwrap()
            .insert((namespace.to_string(), name.to_string()), p.clone());
        p
    }

    /// Drops a pod's logs (only if the registered pod still has this uid).
    pub fn remove(&self, namespace: &str, name: &str, uid: &str) {
        let mut pods = self.pods.write().unwrap();
        let key = (namespace.to_string(), name.to_string());
        if pods.get(&key).map(|p| p.uid == uid).unwrap_or(false) {
            if let Some(p) = pods.remove(&key) {
                for c in p.containers.values() {
                    c.close_all();
                }
            }
        }
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<PodLogs>> {
        self.pods
            .read()
            .unwrap()
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    pub fn len(&self) -> usize {
        self.pods.read().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::Terminated;
    use chrono::TimeZone;

    fn t(ms: i64) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(1_800_000_000_000 + ms).unwrap()
    }

    fn buf_with(n: usize) -> Arc<LogBuffer> {
        let b = LogBuffer::new(1 << 20);
        for i in 0..n {
            b.push(LogLine {
                ts: t(i as i64 * 1000),
                data: Bytes::from(format!("line {}", i + 1)),
                newline: true,
            });
        }
        b
    }

    fn render_all(b: &LogBuffer, q: LogQuery) -> String {
        let mut c = LogCursor::new(b, q);
        let chunk = b.read_from(c.seq, usize::MAX);
        let mut out = Vec::new();
        c.render(&chunk.lines, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn query_parsing() {
        let now = t(0);
        let q = parse_query(
            Some("follow=True&timestamps=1&tailLines=5&limitBytes=10&previous=false"),
            now,
        )
        .unwrap();
        assert!(q.follow && q.timestamps && !q.previous);
        assert_eq!(q.tail_lines, Some(5));
        assert_eq!(q.limit_bytes, Some(10));
        let q = parse_query(Some("sinceSeconds=10"), now).unwrap();
        assert_eq!(q.since, Some(t(-10_000)));
        let q = parse_query(Some("sinceTime=2027-01-15T08%3A00%3A05Z"), now).unwrap();
        assert_eq!(q.since, Some(t(5000)));
        let q = parse_query(Some("tailLines=-1"), now).unwrap();
        assert_eq!(q.tail_lines, None);
        assert!(parse_query(Some("follow=yes"), now).is_err());
        assert!(parse_query(Some("sinceSeconds=0"), now).is_err());
        assert!(parse_query(Some("sinceTime=nope"), now).is_err());
        assert_eq!(parse_query(None, now).unwrap(), LogQuery::default());
    }

    #[test]
    fn tail_since_limit_and_timestamps() {
        let b = buf_with(10);
        assert_eq!(render_all(&b, LogQuery::default()).lines().count(), 10);
        let tail = render_all(
            &b,
            LogQuery {
                tail_lines: Some(3),
                ..Default::default()
            },
        );
        assert_eq!(tail, "line 8\nline 9\nline 10\n");
        assert_eq!(
            render_all(
                &b,
                LogQuery {
                    tail_lines: Some(0),
                    ..Default::default()
                }
            ),
            ""
        );
        // since keeps lines at or after the instant
        let since = render_all(
            &b,
            LogQuery {
                since: Some(t(7000)),
                ..Default::default()
            },
        );
        assert_eq!(since, "line 8\nline 9\nline 10\n");
        // tail first, then since (kubelet order)
        let both = render_all(
            &b,
            LogQuery {
                since: Some(t(8000)),
                tail_lines: Some(4),
                ..Default::default()
            },
        );
        assert_eq!(both, "line 9\nline 10\n");
        let limited = render_all(
            &b,
            LogQuery {
                limit_bytes: Some(10),
                ..Default::default()
            },
        );
        assert_eq!(limited, "line 1\nlin");
        let ts = render_all(
            &b,
            LogQuery {
                timestamps: true,
                tail_lines: Some(1),
                ..Default::default()
            },
        );
        assert_eq!(ts, "2027-01-15T08:00:09.000000000Z line 10\n");
    }

    #[test]
    fn buffer_cap_drops_oldest_and_followers_skip() {
        let b = LogBuffer::new(20);
        for i in 0..10 {
            b.push_now(format!("line {i}"));
        }
        let chunk = b.read_from(0, usize::MAX);
        assert_eq!(chunk.lines.len(), 3);
        assert_eq!(chunk.next_seq, 10);
        assert!(!chunk.closed);
        b.close();
        assert!(b.read_from(10, 10).closed);
        b.push_now("after close");
        assert!(b.read_from(10, 10).lines.is_empty());
    }

    #[test]
    fn validate_like_kubelet() {
        let mut s = CStatus::new("main", "img", "ContainerCreating");
        assert_eq!(
            validate_log_status(Some(&s), "main", "p", false).unwrap_err(),
            "container \"main\" in pod \"p\" is waiting to start: ContainerCreating"
        );
        s.state = CState::waiting("ImagePullBackOff", None);
        assert!(validate_log_status(Some(&s), "main", "p", false)
            .unwrap_err()
            .ends_with("trying and failing to pull image"));
        assert_eq!(
            validate_log_status(Some(&s), "main", "p", true).unwrap_err(),
            "previous terminated container \"main\" in pod \"p\" not found"
        );
        s.container_id = Some("c1".into());
        s.state = CState::Running { started_at: t(0) };
        assert_eq!(
            validate_log_status(Some(&s), "main", "p", false).unwrap(),
            LogTarget::ContainerId("c1".into())
        );
        s.last_state = Some(Terminated {
            exit_code: 1,
            reason: "Error".into(),
            message: None,
            started_at: None,
            finished_at: t(0),
            container_id: Some("c0".into()),
        });
        assert_eq!(
            validate_log_status(Some(&s), "main", "p", true).unwrap(),
            LogTarget::ContainerId("c0".into())
        );
        s.state = CState::waiting("CrashLoopBackOff", None);
        assert_eq!(
            validate_log_status(Some(&s), "main", "p", false).unwrap(),
            LogTarget::ContainerId("c0".into())
        );
        assert!(validate_log_status(None, "main", "p", false)
            .unwrap_err()
            .contains("is not available"));
    }

    #[test]
    fn registry_keeps_two_attempts_and_removes_by_uid() {
        let r = LogRegistry::default();
        let p = r.register("ns", "pod", "u1", &["main".to_string()]);
        let c = p.containers["main"].clone();
        let a = c.new_attempt("a", 100);
        c.new_attempt("b", 100);
        c.new_attempt("c", 100);
        assert!(a.is_closed());
        assert!(c.attempt("a").is_none() && c.attempt("b").is_some());
        r.remove("ns", "pod", "other");
        assert!(r.get("ns", "pod").is_some());
        r.remove("ns", "pod", "u1");
        assert!(r.get("ns", "pod").is_none());
        assert_eq!(r.len(), 0);
    }
}
