//! The flow runs' log lines, printed on Python's `sys.stdout` by one thread for all runs.
//!
//! With a thousand runs each printing a line now and then, handing every line to asyncio cost
//! a Python wake-up, a write and a flush per line: most of the worker's CPU. Here each run's
//! lines go into one queue; a printer thread writes whatever gathered within
//! [`GATHER_WINDOW`] as one `write` and one `flush`. Lines of a run stay in order, and a run's
//! end is reported only after its last line was written ([`route_run_events`]).
//!
//! The printer is a thread of its own, not a tokio task: a stdout nobody reads blocks it, and
//! through the bounded queue slows the log readers down, without stalling the runtime.

use std::sync::OnceLock;
use std::time::Duration;

use pyo3::prelude::*;
use tokio::sync::{mpsc, oneshot};

use crate::interpreter_exit;
use crate::k8s::run::RunEvent;

/// How long the first line of a batch may wait for others to join it.
const GATHER_WINDOW: Duration = Duration::from_millis(25);
/// A batch is written at this size without waiting further.
const BATCH_BYTES: usize = 256 * 1024;
/// Chunks of lines (one log read each) queued before the log readers wait.
const QUEUE_CHUNKS: usize = 256;

enum Printable {
    Lines(Vec<String>),
    /// Answered once everything queued before it was written.
    Written(oneshot::Sender<()>),
}

static PRINTER: OnceLock<mpsc::Sender<Printable>> = OnceLock::new();

fn printer() -> &'static mpsc::Sender<Printable> {
    PRINTER.get_or_init(|| {
        let (sender, queue) = mpsc::channel(QUEUE_CHUNKS);
        std::thread::Builder::new()
            .name("prefect-k8s-stdout".into())
            .spawn(move || print_batches(queue))
            .expect("cannot start the thread that prints the flow runs' logs");
        sender
    })
}

/// Sends a run's events on to `to_python`, except its log lines, which go to the printer; the
/// run's end is passed on once the printer wrote every line before it.
pub async fn route_run_events(
    mut from_run: mpsc::Receiver<RunEvent>,
    to_python: mpsc::Sender<RunEvent>,
) {
    let printer = printer();
    while let Some(event) = from_run.recv().await {
        match event {
            RunEvent::Log(lines) => {
                // The printer lives as long as the process; a failed send means it is exiting.
                let _ = printer.send(Printable::Lines(lines)).await;
            }
            RunEvent::Finished(_) => {
                let (written, was_written) = oneshot::channel();
                if printer.send(Printable::Written(written)).await.is_ok() {
                    let _ = was_written.await;
                }
                let _ = to_python.send(event).await;
                return;
            }
            other => {
                if to_python.send(other).await.is_err() {
                    return;
                }
            }
        }
    }
}

fn print_batches(mut queue: mpsc::Receiver<Printable>) {
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
            if let Err(error) = Python::attach(|py| write_to_stdout(py, &text)) {
                if !warned {
                    log::warn!("cannot print the flow runs' logs on stdout: {error}");
                    warned = true;
                }
            }
            text.clear();
        }
        for written in waiting.drain(..) {
            let _ = written.send(());
        }
    }
}

fn gather(item: Printable, text: &mut String, waiting: &mut Vec<oneshot::Sender<()>>) {
    match item {
        Printable::Lines(lines) => {
            for line in lines {
                text.push_str(&line);
                text.push('\n');
            }
        }
        Printable::Written(written) => waiting.push(written),
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
