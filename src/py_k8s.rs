//! Python bindings of the Kubernetes layer: awaitables and an async iterator over a run's events.
//!
//! Each binding converts its arguments, calls one domain function on the tokio runtime and
//! converts the result. No Python work happens inside the futures; results are turned into
//! Python objects once the GIL is taken back.

use crate::k8s::jobs::{self, CreatedJob, RetryPolicy};
use crate::k8s::run::{follow_run, FollowOptions, Level, RunEvent};
use crate::k8s::watch::RunSubscription;
use crate::k8s::{Cluster, ClusterRegistry, ClusterSource};
use crate::py_output::log_sink;
use crate::python_errors::k8s_error;
use pyo3::exceptions::{PyRuntimeError, PyStopAsyncIteration};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use pyo3_async_runtimes::tokio::future_into_py;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// Events handed to Python per `__anext__` at most.
const EVENTS_PER_BATCH: usize = 64;
/// How long a batch waits for more events after its first. One watch event often makes
/// several run events (a phase change and a message) a moment apart; each batch costs an
/// asyncio wake-up, and a message shown a few milliseconds later costs nobody anything. The
/// run's end is never held back.
const EVENT_GATHER_WINDOW: Duration = Duration::from_millis(50);

/// All clients of one worker; closing it stops every shared watcher.
#[pyclass(frozen, module = "prefect_kubernetes_rs._core")]
pub struct KubernetesClients {
    registry: Arc<ClusterRegistry>,
}

#[pymethods]
impl KubernetesClients {
    #[new]
    fn new() -> Self {
        KubernetesClients {
            registry: Arc::new(ClusterRegistry::default()),
        }
    }

    /// Connects to the cluster of a kubeconfig (mapping) and context, or, without one, to the
    /// in-cluster service account else the default kubeconfig. Cached per configuration.
    #[pyo3(signature = (kubeconfig=None, context=None))]
    fn connect<'py>(
        &self,
        py: Python<'py>,
        kubeconfig: Option<&Bound<'py, PyAny>>,
        context: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let source = cluster_source(py, kubeconfig, context)?;
        let registry = self.registry.clone();
        future_into_py(py, async move {
            let cluster = registry.connect(source).await.map_err(k8s_error)?;
            Ok(ClusterHandle { cluster })
        })
    }

    /// The cluster of this kubeconfig and context if it is connected already, else None (then
    /// `connect`). Spares every run after the first an await.
    #[pyo3(signature = (kubeconfig=None, context=None))]
    fn connected<'py>(
        &self,
        py: Python<'py>,
        kubeconfig: Option<&Bound<'py, PyAny>>,
        context: Option<String>,
    ) -> PyResult<Option<ClusterHandle>> {
        let source = cluster_source(py, kubeconfig, context)?;
        Ok(self
            .registry
            .connected(&source)
            .map(|cluster| ClusterHandle { cluster }))
    }

    /// Stops every watcher of every cluster and forgets the clients.
    fn close<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let registry = self.registry.clone();
        future_into_py(py, async move {
            registry.close().await;
            Ok(())
        })
    }
}

/// One connected cluster.
#[pyclass(frozen, module = "prefect_kubernetes_rs._core")]
pub struct ClusterHandle {
    cluster: Arc<Cluster>,
}

fn created_job_dict<'py>(py: Python<'py>, job: &CreatedJob) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("name", &job.name)?;
    dict.set_item("namespace", &job.namespace)?;
    dict.set_item("uid", &job.uid)?;
    dict.set_item("adopted", job.adopted)?;
    dict.set_item("attempts", job.attempts)?;
    Ok(dict)
}

/// A created Job, converted to a dict once the GIL is held.
struct CreatedJobResult(Option<CreatedJob>);

impl<'py> IntoPyObject<'py> for CreatedJobResult {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Self::Output> {
        match self.0 {
            Some(job) => Ok(created_job_dict(py, &job)?.into_any()),
            None => Ok(py.None().into_bound(py)),
        }
    }
}

#[pymethods]
impl ClusterHandle {
    /// Where the configuration came from (for messages).
    #[getter]
    fn source_name(&self) -> String {
        self.cluster.source_name().to_owned()
    }

    /// The API server's URL.
    #[getter]
    fn server(&self) -> String {
        self.cluster.server().to_owned()
    }

    /// Subscribes to the Jobs and pods of a flow run in a namespace (before creating its Job).
    fn watch_run<'py>(
        &self,
        py: Python<'py>,
        namespace: String,
        flow_run_id: String,
    ) -> PyResult<Bound<'py, PyAny>> {
        let cluster = self.cluster.clone();
        future_into_py(py, async move {
            let subscription = cluster
                .namespace(&namespace)
                .subscribe(&flow_run_id)
                .await
                .map_err(k8s_error)?;
            Ok(RunWatch {
                cluster,
                subscription: Mutex::new(Some(subscription)),
            })
        })
    }

    /// Creates a Job from a prepared manifest; returns `{name, namespace, uid, adopted, attempts}`.
    #[pyo3(signature = (namespace, manifest, flow_run_id, max_attempts=3, delay_seconds=1.0, jitter_min_seconds=0.0, jitter_max_seconds=3.0))]
    #[allow(clippy::too_many_arguments)]
    fn create_job<'py>(
        &self,
        py: Python<'py>,
        namespace: String,
        manifest: &Bound<'py, PyAny>,
        flow_run_id: String,
        max_attempts: u32,
        delay_seconds: f64,
        jitter_min_seconds: f64,
        jitter_max_seconds: f64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let manifest: Value = pythonize::depythonize(manifest)
            .map_err(|error| crate::python_errors::conversion_error(py, "job_manifest", error))?;
        let retry = RetryPolicy {
            max_attempts,
            delay: seconds(delay_seconds),
            jitter_min: seconds(jitter_min_seconds),
            jitter_max: seconds(jitter_max_seconds.max(jitter_min_seconds)),
        };
        let cluster = self.cluster.clone();
        future_into_py(py, async move {
            let job = jobs::create_job(&cluster, &namespace, &manifest, &flow_run_id, &retry)
                .await
                .map_err(k8s_error)?;
            Ok(CreatedJobResult(Some(job)))
        })
    }

    /// The newest live Job of a flow run, or None.
    fn find_run_job<'py>(
        &self,
        py: Python<'py>,
        namespace: String,
        flow_run_id: String,
    ) -> PyResult<Bound<'py, PyAny>> {
        let cluster = self.cluster.clone();
        future_into_py(py, async move {
            let job = jobs::find_run_job(&cluster, &namespace, &flow_run_id)
                .await
                .map_err(k8s_error)?;
            Ok(CreatedJobResult(job))
        })
    }

    /// Deletes a Job with Foreground propagation; False when it did not exist.
    #[pyo3(signature = (namespace, name, grace_seconds=None))]
    fn delete_job<'py>(
        &self,
        py: Python<'py>,
        namespace: String,
        name: String,
        grace_seconds: Option<u32>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let cluster = self.cluster.clone();
        future_into_py(py, async move {
            jobs::delete_job(&cluster, &namespace, &name, grace_seconds)
                .await
                .map_err(k8s_error)
        })
    }

    /// Creates the Secret `name` holding `value` under `key` unless it exists; True when created.
    fn ensure_secret<'py>(
        &self,
        py: Python<'py>,
        namespace: String,
        name: String,
        key: String,
        value: String,
    ) -> PyResult<Bound<'py, PyAny>> {
        let cluster = self.cluster.clone();
        future_into_py(py, async move {
            jobs::ensure_secret(&cluster, &namespace, &name, &key, &value)
                .await
                .map_err(k8s_error)
        })
    }

    /// Deletes the Secret `name`; False when it did not exist.
    fn delete_secret<'py>(
        &self,
        py: Python<'py>,
        namespace: String,
        name: String,
    ) -> PyResult<Bound<'py, PyAny>> {
        let cluster = self.cluster.clone();
        future_into_py(py, async move {
            jobs::delete_secret(&cluster, &namespace, &name)
                .await
                .map_err(k8s_error)
        })
    }

    /// `(uid, None)` with the kube-system namespace's uid, or `(None, reason)`; read once.
    fn cluster_uid<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let cluster = self.cluster.clone();
        future_into_py(py, async move {
            Ok(match cluster.uid().await {
                Ok(uid) => (Some(uid), None),
                Err(reason) => (None, Some(reason)),
            })
        })
    }

    /// `(uid, None)` or `(None, reason)` if `cluster_uid` was read already, else None.
    fn known_cluster_uid(&self) -> Option<(Option<String>, Option<String>)> {
        self.cluster.known_uid().map(|known| match known {
            Ok(uid) => (Some(uid), None),
            Err(reason) => (None, Some(reason)),
        })
    }

    /// The shared watchers of a namespace: `{job_watches_opened, pod_watches_opened,
    /// resyncs, subscribed_runs}`.
    fn watch_stats<'py>(&self, py: Python<'py>, namespace: &str) -> PyResult<Bound<'py, PyDict>> {
        use std::sync::atomic::Ordering::Relaxed;
        let watch = self.cluster.namespace(namespace);
        let (jobs, pods) = watch.stats();
        let dict = PyDict::new(py);
        dict.set_item("job_watches_opened", jobs.watches_opened.load(Relaxed))?;
        dict.set_item("pod_watches_opened", pods.watches_opened.load(Relaxed))?;
        dict.set_item(
            "resyncs",
            jobs.resyncs.load(Relaxed) + pods.resyncs.load(Relaxed),
        )?;
        dict.set_item("subscribed_runs", watch.subscribed_runs())?;
        Ok(dict)
    }
}

fn seconds(value: f64) -> Duration {
    Duration::from_secs_f64(value.max(0.0))
}

/// A run's subscription to the shared watchers.
#[pyclass(frozen, module = "prefect_kubernetes_rs._core")]
pub struct RunWatch {
    cluster: Arc<Cluster>,
    subscription: Mutex<Option<RunSubscription>>,
}

#[pymethods]
impl RunWatch {
    /// Follows the Job `job_name` to its end; an async iterator of event batches (lists of
    /// dicts) whose last event has `kind == "finished"`. Log lines go to the shared printer
    /// (`py_output`), which has written them all when `finished` arrives.
    #[pyo3(signature = (job_name, pod_watch_timeout_seconds=60.0, job_watch_timeout_seconds=None, stream_output=true))]
    fn follow(
        &self,
        job_name: String,
        pod_watch_timeout_seconds: f64,
        job_watch_timeout_seconds: Option<f64>,
        stream_output: bool,
    ) -> PyResult<RunEvents> {
        let subscription = self
            .subscription
            .lock()
            .expect("subscription lock")
            .take()
            .ok_or_else(|| {
                PyRuntimeError::new_err("this run is already being followed or was closed")
            })?;
        let options = FollowOptions {
            pod_watch_timeout: seconds(pod_watch_timeout_seconds),
            job_watch_timeout: job_watch_timeout_seconds.map(seconds),
            stream_output,
        };
        let (run_events, rx) = mpsc::channel(256);
        let cluster = self.cluster.clone();
        let task = pyo3_async_runtimes::tokio::get_runtime().spawn(follow_run(
            cluster,
            subscription,
            job_name,
            options,
            run_events,
            log_sink(),
        ));
        Ok(RunEvents {
            receiver: Arc::new(tokio::sync::Mutex::new(rx)),
            task,
        })
    }

    /// Drops the subscription without following (e.g. the create call failed).
    fn close(&self) {
        self.subscription.lock().expect("subscription lock").take();
    }
}

/// The events of one followed run, as an async iterator of batches.
#[pyclass(frozen, module = "prefect_kubernetes_rs._core")]
pub struct RunEvents {
    receiver: Arc<tokio::sync::Mutex<mpsc::Receiver<RunEvent>>>,
    task: tokio::task::JoinHandle<()>,
}

/// A batch of events, converted to dicts once the GIL is held.
struct EventBatch(Vec<RunEvent>);

impl<'py> IntoPyObject<'py> for EventBatch {
    type Target = PyList;
    type Output = Bound<'py, PyList>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Self::Output> {
        let list = PyList::empty(py);
        for event in self.0 {
            let dict = PyDict::new(py);
            match event {
                RunEvent::Message(level, text) => {
                    dict.set_item("kind", "message")?;
                    dict.set_item(
                        "level",
                        match level {
                            Level::Info => "info",
                            Level::Warning => "warning",
                            Level::Error => "error",
                        },
                    )?;
                    dict.set_item("text", text)?;
                }
                RunEvent::Pod(change) => {
                    dict.set_item("kind", "pod")?;
                    dict.set_item("name", change.name)?;
                    dict.set_item("uid", change.uid)?;
                    dict.set_item("phase", change.phase)?;
                    dict.set_item("evicted", change.evicted)?;
                    dict.set_item("reason", change.reason)?;
                }
                RunEvent::Finished(outcome) => {
                    dict.set_item("kind", "finished")?;
                    dict.set_item("exit_code", outcome.exit_code)?;
                    dict.set_item("message", outcome.message)?;
                    dict.set_item("evicted", outcome.evicted)?;
                }
            }
            list.append(dict)?;
        }
        Ok(list)
    }
}

#[pymethods]
impl RunEvents {
    fn __aiter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __anext__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let receiver = self.receiver.clone();
        future_into_py(py, async move {
            let mut receiver = receiver.lock().await;
            let Some(first) = receiver.recv().await else {
                return Err(PyStopAsyncIteration::new_err(()));
            };
            let mut batch = vec![first];
            let gather_until = tokio::time::Instant::now() + EVENT_GATHER_WINDOW;
            while batch.len() < EVENTS_PER_BATCH
                && !matches!(batch.last(), Some(RunEvent::Finished(_)))
            {
                match tokio::time::timeout_at(gather_until, receiver.recv()).await {
                    Ok(Some(event)) => batch.push(event),
                    Ok(None) | Err(_) => break,
                }
            }
            Ok(EventBatch(batch))
        })
    }

    /// Stops following; the Job is left as it is.
    fn close(&self) {
        self.task.abort();
    }
}

impl Drop for RunEvents {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Where a cluster's configuration comes from: a kubeconfig (dict) and context, or, without
/// one, the in-cluster service account else the default kubeconfig.
fn cluster_source(
    py: Python<'_>,
    kubeconfig: Option<&Bound<'_, PyAny>>,
    context: Option<String>,
) -> PyResult<ClusterSource> {
    Ok(match kubeconfig {
        Some(config) if !config.is_none() => ClusterSource::Kubeconfig {
            config: pythonize::depythonize::<Value>(config).map_err(|error| {
                crate::python_errors::conversion_error(py, "cluster_config", error)
            })?,
            context,
        },
        _ => ClusterSource::Automatic,
    })
}
