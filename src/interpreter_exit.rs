//! Keeps the Rust threads out of Python once the interpreter starts to exit.
//!
//! Rust threads call into Python on their own: log records go to Python's `logging`
//! (pyo3-log), finished futures are handed to asyncio (pyo3-async-runtimes) and the printer
//! writes the runs' log lines to `sys.stdout` (`py_output`). A thread that attaches while the
//! interpreter finalizes kills the process (`Fatal Python error: PyGILState_Release ...
//! finalizing`, SIGABRT) after the user's program has already ended well. Python runs `atexit`
//! callbacks before it starts finalizing, so the callback registered here closes the door: no
//! new log records reach Python, every tokio worker that goes idle or wakes up from then on
//! stops for good, the printer asks for a [`PythonCall`] and is refused, and the callback
//! waits (without the GIL, so a thread inside Python can finish) until no thread is busy.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pyo3::prelude::*;

/// How long the exit callback waits for busy threads; they finish within milliseconds
/// once logging is off, this only bounds a pathological case.
const BUSY_THREADS_PATIENCE: Duration = Duration::from_secs(2);

/// Threads of the runtime that drives the Kubernetes I/O (see [`install_runtime`]).
const RUNTIME_WORKER_THREADS: usize = 1;

static EXITING: AtomicBool = AtomicBool::new(false);
/// Threads that may call into Python right now: tokio workers between an unpark and the next
/// park, and holders of a [`PythonCall`].
static BUSY: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Whether this worker thread counted itself in [`BUSY`].
    static COUNTED_BUSY: Cell<bool> = const { Cell::new(false) };
}

/// The runtime every binding uses, with the hooks that let the exit callback stop it.
pub fn install_runtime() {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        // The core waits on the network almost all the time: one thread has ample headroom
        // (1000 runs in flight keep it a few percent busy), and a single thread has no
        // wake-ups between idle workers, which cost more CPU than the work itself did with
        // one worker per core. tokio's own TOKIO_WORKER_THREADS still overrides this.
        builder.worker_threads(RUNTIME_WORKER_THREADS);
    }
    builder
        .enable_all()
        .on_thread_unpark(|| match python_call() {
            // Counted busy until the next park: the thread may call into Python meanwhile.
            Some(busy) => {
                std::mem::forget(busy);
                COUNTED_BUSY.with(|counted| counted.set(true));
            }
            None => stop_this_thread(),
        })
        .on_thread_park(|| {
            if COUNTED_BUSY.with(|counted| counted.replace(false)) {
                BUSY.fetch_sub(1, Ordering::SeqCst);
            }
            if EXITING.load(Ordering::SeqCst) {
                stop_this_thread();
            }
        });
    pyo3_async_runtimes::tokio::init(builder);
}

/// Permission for a thread outside the runtime to call into Python; `None` once the interpreter
/// is exiting. The exit callback waits until every permission is dropped.
pub struct PythonCall(());

/// Asks for a [`PythonCall`]. Counting comes before the check, so either this thread sees the
/// exit or the exit callback sees this thread.
pub fn python_call() -> Option<PythonCall> {
    BUSY.fetch_add(1, Ordering::SeqCst);
    if EXITING.load(Ordering::SeqCst) {
        BUSY.fetch_sub(1, Ordering::SeqCst);
        return None;
    }
    Some(PythonCall(()))
}

impl Drop for PythonCall {
    fn drop(&mut self) {
        BUSY.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Parks this thread for the rest of the process; it holds no Python state and the process is
/// about to end.
pub fn stop_this_thread() -> ! {
    loop {
        std::thread::park();
    }
}

/// Registered with `atexit` when the module loads; runs before the interpreter finalizes.
#[pyfunction]
pub fn stop_runtime_before_exit(py: Python<'_>) {
    // Log macros check the global level before calling the logger: nothing new reaches pyo3-log.
    log::set_max_level(log::LevelFilter::Off);
    EXITING.store(true, Ordering::SeqCst);
    py.detach(|| {
        let started = Instant::now();
        while BUSY.load(Ordering::SeqCst) > 0 && started.elapsed() < BUSY_THREADS_PATIENCE {
            std::thread::sleep(Duration::from_millis(1));
        }
    });
}

/// Registers [`stop_runtime_before_exit`] with Python's `atexit`.
pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    let callback = wrap_pyfunction!(stop_runtime_before_exit, module)?;
    module
        .py()
        .import("atexit")?
        .call_method1("register", (callback,))?;
    Ok(())
}
