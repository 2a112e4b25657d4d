//! Following the flow container's log: every line once, in order, across dropped streams.
//!
//! Lines are requested with timestamps. After a dropped stream the follower asks again from the
//! last timestamp it printed, floored to the second (`sinceTime` has second precision), and
//! skips what it already printed: lines older than that timestamp, and as many lines with that
//! very timestamp as it has already seen.

use crate::k8s::error::K8sError;
use futures::AsyncBufReadExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::LogParams;
use kube::Api;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// How long a stream may stay silent after the container ended before we stop waiting for its
/// end and read what is left instead (a dead connection otherwise hangs forever).
const DRAIN_GRACE: Duration = Duration::from_secs(5);
/// How long the last read of an ended container's log keeps trying through API failures.
const FINAL_READ_PATIENCE: Duration = Duration::from_secs(120);
/// Lines handed over at once, so the printer is woken per batch, not per line.
const BATCH_LINES: usize = 256;

/// What goes into the queue of log lines shared by every run in the process.
#[derive(Debug)]
pub enum LogChunk {
    /// Lines of one pod, in order, each without its line end.
    Lines(Vec<String>),
    /// Answered once every chunk queued before it was printed.
    Printed(oneshot::Sender<()>),
}

/// The sending end of the shared log queue: the runs' log readers put their lines straight in
/// (no hop through the run's own event channel), in the order they were read.
#[derive(Debug, Clone)]
pub struct LogSink(mpsc::Sender<LogChunk>);

impl LogSink {
    pub fn new(queue: mpsc::Sender<LogChunk>) -> Self {
        LogSink(queue)
    }

    /// Queues lines; waits while the queue is full (a slow reader of the output slows the
    /// log streams, nothing is dropped). False when nobody prints any more.
    pub async fn send_lines(&self, lines: Vec<String>) -> bool {
        self.0.send(LogChunk::Lines(lines)).await.is_ok()
    }

    /// Waits until every line queued before this call was printed.
    pub async fn wait_printed(&self) {
        let (printed, was_printed) = oneshot::channel();
        if self.0.send(LogChunk::Printed(printed)).await.is_ok() {
            let _ = was_printed.await;
        }
    }
}

/// Where a follower stands: the last timestamp printed and how many lines carried it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogCursor {
    last: Option<(Timestamp, String)>,
    seen_at_last: usize,
}

impl LogCursor {
    /// Decides whether a `<timestamp> <text>` line is new. Within one stream, lines with the
    /// same timestamp are all new; `skip_budget` counts the repeats a resumed stream replays.
    fn accept(&mut self, stamp: Timestamp, raw_stamp: &str, skip_budget: &mut usize) -> bool {
        match &self.last {
            Some((last, _)) if stamp < *last => false,
            Some((last, _)) if stamp == *last => {
                if *skip_budget > 0 {
                    *skip_budget -= 1;
                    false
                } else {
                    self.seen_at_last += 1;
                    true
                }
            }
            _ => {
                self.last = Some((stamp, raw_stamp.to_owned()));
                self.seen_at_last = 1;
                true
            }
        }
    }

    /// A cursor that takes only lines written after `start` (a run followed from the middle).
    pub fn starting_at(start: Timestamp) -> Self {
        LogCursor {
            last: Some((start, start.to_string())),
            seen_at_last: 0,
        }
    }

    /// `sinceTime` for a resumed stream: the last timestamp floored to the second.
    fn since(&self) -> Option<Timestamp> {
        self.last
            .as_ref()
            .and_then(|(stamp, _)| Timestamp::from_second(stamp.as_second()).ok())
    }
}

/// Splits a timestamped log line into its time and its text.
pub fn split_timestamp(line: &str) -> Option<(Timestamp, &str, &str)> {
    let (stamp, text) = line.split_once(' ').unwrap_or((line, ""));
    let parsed: Timestamp = stamp.parse().ok()?;
    Some((parsed, stamp, text))
}

/// Follows `container` of `pod` and sends its lines in batches until the container has ended
/// (`ended` turns true) and everything it wrote was read; with `since`, only the lines
/// written after it.
pub async fn follow_container_log(
    pods: Api<Pod>,
    pod: String,
    container: String,
    since: Option<Timestamp>,
    mut ended: watch::Receiver<bool>,
    lines: LogSink,
) -> Result<(), K8sError> {
    let mut cursor = since.map(LogCursor::starting_at).unwrap_or_default();
    let mut failures = 0u32;
    let mut failing_since: Option<tokio::time::Instant> = None;
    let mut refusal_said = false;
    loop {
        let finished = *ended.borrow();
        let params = LogParams {
            container: Some(container.clone()),
            follow: !finished,
            timestamps: true,
            since_time: cursor.since(),
            ..LogParams::default()
        };
        let mut skip_budget = cursor.seen_at_last;
        match pods.log_stream(&pod, &params).await {
            Ok(stream) => {
                failures = 0;
                failing_since = None;
                let outcome = read_stream(
                    stream,
                    &mut cursor,
                    &mut skip_budget,
                    &mut ended,
                    finished,
                    &lines,
                )
                .await;
                match outcome {
                    StreamEnd::NobodyPrints => return Ok(()),
                    StreamEnd::Complete if finished => return Ok(()),
                    // The server ends a followed stream when the container ends, usually a
                    // moment before the pod watch says so. Wait for that, so the next request
                    // is the one final read rather than another follow that ends at once; a
                    // container still running after the grace had its stream closed (e.g. an
                    // API server restart) and is followed again from the cursor.
                    StreamEnd::Complete => {
                        let _ =
                            tokio::time::timeout(DRAIN_GRACE, ended.wait_for(|ended| *ended)).await;
                    }
                    // A cut, or a stream silent after the container ended: read again from the
                    // cursor.
                    StreamEnd::Interrupted | StreamEnd::Stalled => {}
                }
            }
            Err(error) => {
                let error = K8sError::from_kube(error, "read", &format!("log of pod '{pod}'"));
                failures += 1;
                let failing_for = failing_since
                    .get_or_insert_with(tokio::time::Instant::now)
                    .elapsed();
                // A container that has not started yet answers 400; one that is gone with its pod, 404.
                // Once the container has ended: a 404 (the pod is gone) or repeated 400s (its
                // log is not available) are final; an API server that is away (5xx, 429,
                // connection errors) is waited for, as the log is still there to read.
                let no_such_log = error.status_code() == Some(400) && failures > 3;
                // Refused (RBAC, a revoked token): said at once, not taken for a log that is
                // not there yet; once the container has ended, waiting longer reads nothing.
                let refused = matches!(error.status_code(), Some(401 | 403));
                if refused && !refusal_said {
                    log::warn!(
                        "the API server refuses to give the log of pod '{pod}' ({error}): the \
                         worker's identity needs get on pods/log in the namespace"
                    );
                    refusal_said = true;
                }
                if finished
                    && (no_such_log
                        || refused
                        || error.status_code() == Some(404)
                        || failing_for > FINAL_READ_PATIENCE)
                {
                    return Err(error);
                }
                log::debug!("log stream of pod '{pod}' not available yet: {error}");
                let pause = Duration::from_millis(200 * u64::from(failures.min(10)));
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = ended.changed() => {}
                }
            }
        }
    }
}

/// The last `lines` lines `container` of `pod` wrote, each with its time (RFC 3339) when the
/// kubelet gives one; with `previous`, those of the container before its last restart.
pub async fn container_log_tail(
    pods: &Api<Pod>,
    pod: &str,
    container: &str,
    lines: i64,
    previous: bool,
) -> Result<Vec<(Option<String>, String)>, K8sError> {
    let params = LogParams {
        container: Some(container.to_owned()),
        timestamps: true,
        tail_lines: Some(lines),
        previous,
        ..LogParams::default()
    };
    let text = pods
        .logs(pod, &params)
        .await
        .map_err(|error| K8sError::from_kube(error, "read", &format!("log of pod '{pod}'")))?;
    Ok(text
        .lines()
        .map(|line| match split_timestamp(line) {
            Some((_, stamp, text)) => (Some(stamp.to_owned()), text.to_owned()),
            None => (None, line.to_owned()),
        })
        .collect())
}

enum StreamEnd {
    /// The server ended the stream.
    Complete,
    /// The connection failed.
    Interrupted,
    /// The container ended but the stream stayed silent: probably a dead connection.
    Stalled,
    /// The shared log queue is closed (the process is exiting).
    NobodyPrints,
}

async fn read_stream(
    stream: impl futures::AsyncBufRead + Unpin,
    cursor: &mut LogCursor,
    skip_budget: &mut usize,
    ended: &mut watch::Receiver<bool>,
    already_finished: bool,
    lines: &LogSink,
) -> StreamEnd {
    let mut reader = stream;
    // Bytes of a line whose end has not arrived yet.
    let mut partial: Vec<u8> = Vec::new();
    let mut container_ended = already_finished;
    loop {
        // One network chunk at a time: its complete lines go to Python as one batch.
        let chunk = if container_ended {
            match tokio::time::timeout(DRAIN_GRACE, reader.fill_buf()).await {
                Ok(chunk) => chunk.map(<[u8]>::to_vec),
                Err(_) => return StreamEnd::Stalled,
            }
        } else {
            tokio::select! {
                chunk = reader.fill_buf() => chunk.map(<[u8]>::to_vec),
                _ = ended.wait_for(|ended| *ended) => {
                    container_ended = true;
                    continue;
                }
            }
        };
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(_) => return StreamEnd::Interrupted,
        };
        if chunk.is_empty() {
            // A cut mid-line leaves `partial`: the resumed stream sends that line again.
            return StreamEnd::Complete;
        }
        reader.consume_unpin(chunk.len());
        let mut batch = Vec::new();
        let mut rest = chunk.as_slice();
        while let Some(newline) = rest.iter().position(|byte| *byte == b'\n') {
            partial.extend_from_slice(&rest[..newline]);
            rest = &rest[newline + 1..];
            let text = String::from_utf8_lossy(&partial);
            if let Some((stamp, raw_stamp, message)) = split_timestamp(&text) {
                if cursor.accept(stamp, raw_stamp, skip_budget) {
                    batch.push(message.trim_end_matches('\r').to_owned());
                }
            }
            partial.clear();
            if batch.len() >= BATCH_LINES && !flush(&mut batch, lines).await {
                return StreamEnd::NobodyPrints;
            }
        }
        partial.extend_from_slice(rest);
        if !flush(&mut batch, lines).await {
            return StreamEnd::NobodyPrints;
        }
    }
}

/// Hands the batch over; false when nobody prints any more.
async fn flush(batch: &mut Vec<String>, lines: &LogSink) -> bool {
    batch.is_empty() || lines.send_lines(std::mem::take(batch)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn timestamps_split_from_text() {
        let (time, raw, text) =
            split_timestamp("2026-11-27T03:30:00.123456789Z hello world").unwrap();
        assert_eq!(time, stamp("2026-11-27T03:30:00.123456789Z"));
        assert_eq!(raw, "2026-11-27T03:30:00.123456789Z");
        assert_eq!(text, "hello world");
        assert_eq!(split_timestamp("2026-11-27T03:30:00Z").unwrap().2, "");
        assert!(split_timestamp("not a time").is_none());
    }

    #[test]
    fn resumed_stream_skips_exactly_what_was_printed() {
        let mut cursor = LogCursor::default();
        let mut budget = 0;
        let a = "2026-11-27T03:30:00.100Z";
        let b = "2026-11-27T03:30:00.200Z";
        assert!(cursor.accept(stamp(a), a, &mut budget));
        assert!(cursor.accept(stamp(b), b, &mut budget));
        assert!(
            cursor.accept(stamp(b), b, &mut budget),
            "two lines may share a timestamp"
        );
        assert_eq!(
            cursor.since(),
            Some(stamp("2026-11-27T03:30:00Z")),
            "floored to the second"
        );

        // The resumed stream replays from 03:30:00: a, b, b, then a new b and c.
        let mut budget = cursor.seen_at_last;
        assert!(!cursor.accept(stamp(a), a, &mut budget));
        assert!(!cursor.accept(stamp(b), b, &mut budget));
        assert!(!cursor.accept(stamp(b), b, &mut budget));
        assert!(
            cursor.accept(stamp(b), b, &mut budget),
            "a third line with the same time is new"
        );
        let c = "2026-11-27T03:30:01Z";
        assert!(cursor.accept(stamp(c), c, &mut budget));
    }
}
