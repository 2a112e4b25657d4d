//! The printer of the flow runs' log lines ([`printer`]) writing to Python's `sys.stdout`.

use std::sync::OnceLock;

use prefect_kubernetes_rs_core::k8s::logs::LogSink;
use prefect_kubernetes_rs_core::k8s::printer::{self, Written};
use pyo3::prelude::*;

use crate::interpreter_exit;

static PRINTER: OnceLock<LogSink> = OnceLock::new();

/// The queue of the printer thread, started on first use.
pub fn log_sink() -> PyResult<LogSink> {
    if let Some(sink) = PRINTER.get() {
        return Ok(sink.clone());
    }
    let sink = printer::start_printer("prefect-k8s-stdout", write_batch).map_err(|error| {
        pyo3::exceptions::PyRuntimeError::new_err(format!(
            "cannot start the thread that prints the flow runs' logs: {error}"
        ))
    })?;
    // Two first runs at once: the loser's thread ends with its unused queue.
    Ok(PRINTER.get_or_init(|| sink).clone())
}

fn write_batch(text: &str) -> Written {
    let Some(_call) = interpreter_exit::python_call() else {
        interpreter_exit::stop_this_thread();
    };
    match Python::attach(|py| write_to_stdout(py, text)) {
        Ok(()) => Written::Done,
        Err(error) => Written::Failed(error.to_string()),
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
