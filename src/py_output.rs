//! The flow runs' log lines, printed on Python's `sys.stdout` by one thread for all runs.
//!
//! With a thousand runs each printing a line now and then, handing every line to asyncio cost
//! a Python wake-up, a write and a flush per line: most of the worker's CPU. Here the log
//! readers of every run put their lines into one queue ([`log_sink`]); a printer thread writes
//! whatever gathered within [`GATHER_WINDOW`] as one `write` and one `flush`. Lines of a run
//! stay in order, and a run reports its end only after its last line was written
//! ([`LogSink::wait_printed`]).
//!
//! The printer is a thread of its own, not a tokio task: a stdout nobody reads blocks it, and
//! through the bounded queue slows the log readers down, without stalling the runtime.

use std::sync::OnceLock;
use std::time::Duration;

use pyo3::prelude::*;
use tokio::sync::{mpsc, oneshot};

use crate::interpreter_exit;
use crate::k8s::logs::{LogChunk, LogSink};

/// How long the first line of a batch may wait for others to join it.
const GATHER_WINDOW: Duration = Duration::from_millis(25);
/// A batch is written at this size without waiting further.
const BATCH_BYTES: usize = 256 * 1024;
/// Chunks of lines (one log read each) queued before the log readers wait.
const QUEUE_CHUNKS: usize = 256;

static PRINTER: OnceLock<LogSink> = OnceLock::new();

/// The queue of the printer thread, started on first use.
pub fn log_sink() -> LogSink {
    PRINTER
        .get_or_init(|| {
            let (sender, queue) = mpsc::channel(QUEUE_CHUNKS);
            std::thread::Builder::new()
                .name("prefect-k8s-stdout".into())
                .spawn(move || print_batches(queue))
                .expect("cannot start the thread that prints the flow runs' logs");
            LogSink::new(sender)
        })
        .clone()
}

fn print_batches(mut queue: mpsc::Receiver<LogChunk>) {
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
            let Some(_call) = interpreter_exit::python_call() else {
                interpreter_exit::stop_this_thread();
            };
            // Lines that cannot be written are dropped (the runs go on); warned once per
            // outage, not per batch.
            match Python::attach(|py| write_to_stdout(py, &text)) {
                Ok(()) => warned = false,
                Err(error) if !warned => {
                    log::warn!("cannot print the flow runs' logs on stdout: {error}");
                    warned = true;
                }
                Err(_) => {}
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

/// Looks `sys.stdout` up at each write: programs and tests replace it.
fn write_to_stdout(py: Python<'_>, text: &str) -> PyResult<()> {
    let stdout = py.import("sys")?.getattr("stdout")?;
    if stdout.is_none() {
        return Ok(()); // pythonw and daemons without a console
    }
    stdout.call_method1("write", (text,))?;
    stdout.call_method0("flush")?;
    Ok(())
}
