//! The flow runs' log lines, written out by one thread for all runs.
//!
//! With a thousand runs each printing a line now and then, handing every line to the output on
//! its own cost a write and a flush per line (in the worker, also a Python wake-up): most of
//! the worker's CPU. Here the log readers of every run put their lines into one queue (a
//! [`LogSink`]); a printer thread writes whatever gathered within [`GATHER_WINDOW`] as one write.
//! Lines of a run stay in order, and a run reports its end only after its last line was
//! written ([`LogSink::wait_printed`]).
//!
//! The printer is a thread of its own, not a tokio task: an output nobody reads blocks it, and
//! through the bounded queue slows the log readers down, without stalling the runtime.

use crate::k8s::logs::{LogChunk, LogSink};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How long the first line of a batch may wait for others to join it.
pub const GATHER_WINDOW: Duration = Duration::from_millis(25);
/// A batch is written at this size without waiting further.
pub const BATCH_BYTES: usize = 256 * 1024;
/// Chunks of lines (one log read each) queued before the log readers wait.
const QUEUE_CHUNKS: usize = 256;

/// What became of one write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// The text was written.
    Done,
    /// It could not be; the lines are dropped and the runs go on.
    Failed(String),
}

/// Starts the printer thread, which hands each batch of lines to `write`, and returns its queue.
/// (`write` may end the thread itself, e.g. when the process is exiting.)
pub fn start_printer<W>(thread_name: &str, write: W) -> std::io::Result<LogSink>
where
    W: FnMut(&str) -> Written + Send + 'static,
{
    let (sender, queue) = mpsc::channel(QUEUE_CHUNKS);
    std::thread::Builder::new()
        .name(thread_name.into())
        .spawn(move || print_batches(queue, write))?;
    Ok(LogSink::new(sender))
}

fn print_batches<W: FnMut(&str) -> Written>(mut queue: mpsc::Receiver<LogChunk>, mut write: W) {
    let mut text = String::new();
    let mut waiting = Vec::new();
    let mut warned = false;
    while let Some(first) = queue.blocking_recv() {
        gather(first, &mut text, &mut waiting);
        let mut waited = false;
        while text.len() < BATCH_BYTES {
            match queue.try_recv() {
                Ok(next) => gather(next, &mut text, &mut waiting),
                Err(mpsc::error::TryRecvError::Empty) if !waited && !text.is_empty() => {
                    std::thread::sleep(GATHER_WINDOW);
                    waited = true;
                }
                Err(_) => break,
            }
        }
        if !text.is_empty() {
            match write(&text) {
                Written::Done => warned = false,
                // Warned once per outage, not per batch.
                Written::Failed(error) if !warned => {
                    log::warn!("cannot print the flow runs' logs: {error}");
                    warned = true;
                }
                Written::Failed(_) => {}
            }
            text.clear();
        }
        for printed in waiting.drain(..) {
            let _ = printed.send(());
        }
    }
}

fn gather(item: LogChunk, text: &mut String, waiting: &mut Vec<oneshot::Sender<()>>) {
    match item {
        LogChunk::Lines(lines) => {
            for line in lines {
                text.push_str(&line);
                text.push('\n');
            }
        }
        LogChunk::Printed(printed) => waiting.push(printed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[tokio::test]
    async fn lines_arrive_in_order_in_few_writes_and_the_end_waits_for_them() {
        let writes = Arc::new(Mutex::new(Vec::<String>::new()));
        let seen = writes.clone();
        let sink = start_printer("test-printer", move |text| {
            seen.lock().unwrap().push(text.to_owned());
            Written::Done
        })
        .unwrap();
        for n in 0..100 {
            assert!(sink.send_lines(vec![format!("line {n}")]).await);
        }
        sink.wait_printed().await;
        let writes = writes.lock().unwrap();
        let all: String = writes.concat();
        let expected: String = (0..100).map(|n| format!("line {n}\n")).collect();
        assert_eq!(all, expected);
        assert!(writes.len() < 10, "{} writes for 100 lines", writes.len());
    }

    #[tokio::test]
    async fn a_failing_output_drops_lines_but_never_blocks_the_runs() {
        let sink = start_printer("test-printer", |_| Written::Failed("closed".into())).unwrap();
        assert!(sink.send_lines(vec!["lost".into()]).await);
        sink.wait_printed().await;
    }
}
