//! Python bindings of the Kubernetes layer: clients, one call that starts a run, its events as
//! an async iterator of typed batches, and the call that cancels a run.
//!
//! Each binding checks and converts its arguments, calls one core function on the tokio
//! runtime and converts the result. No Python work happens inside the futures; results become
//! Python objects once the GIL is taken back.

use crate::py_observer;
use crate::py_output::log_sink;
use crate::python_errors::{conversion_error, k8s_error, kill_error, start_error};
use prefect_kubernetes_rs_core::k8s::jobs::RetryPolicy;
use prefect_kubernetes_rs_core::k8s::observer::ObserveOptions;
use prefect_kubernetes_rs_core::k8s::pid::InfrastructurePid;
use prefect_kubernetes_rs_core::k8s::run::{
    self, crashed_run_log_tail, examine_runs, follow_existing_run, kill_run, parse_pid_for,
    start_run, FollowOptions, KillError, Level, RunEvent, RunEventStream, RunRequest, RunToExamine,
    MAX_WATCH_TIMEOUT_SECONDS,
};
use prefect_kubernetes_rs_core::k8s::{jobs, Cluster, ClusterRegistry, ClusterSource};
use prefect_kubernetes_rs_core::manifest::credentials::CredentialSettings;
use pyo3::exceptions::{PyStopAsyncIteration, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyList;
use pyo3_async_runtimes::tokio::future_into_py;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// All clients of one worker; closing it stops every shared watcher.
#[pyclass(frozen, module = "prefect_kubernetes_rs._core")]
pub struct KubernetesClients {
    registry: Arc<ClusterRegistry>,
}

#[pymethods]
impl KubernetesClients {
    /// `tcp_keepalive`: probe idle API connections (the `add_tcp_keepalive` setting), so a
    /// load balancer that drops them silently cannot leave a watch or log stream hanging.
    #[new]
    #[pyo3(signature = (*, tcp_keepalive))]
    fn new(tcp_keepalive: bool) -> Self {
        KubernetesClients {
            registry: Arc::new(ClusterRegistry::new(tcp_keepalive)),
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

/// The shared watchers of one namespace.
#[pyclass(frozen, get_all, module = "prefect_kubernetes_rs._core")]
pub struct WatchStats {
    job_watches_opened: u64,
    pod_watches_opened: u64,
    resyncs: u64,
    subscribed_runs: usize,
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

    /// Starts a flow run: subscribes to its Job's events, stores the API key (and with
    /// `store_env_as_secret` the flow container's plain env) in Secrets when the settings say
    /// so, creates the Job (retrying, adopting one an earlier attempt made),
    /// names its pid and follows it. Returns a `StartedRun`.
    #[pyo3(signature = (
        *, namespace, flow_run_id, manifest, pod_watch_timeout_seconds,
        job_watch_timeout_seconds, stream_output, create_attempts, create_delay_seconds,
        create_jitter_min_seconds, create_jitter_max_seconds, cluster_uid,
        api_key_secret_name, api_key_secret_key, create_api_key_secret_for_pool,
        api_auth_string_secret_name, api_auth_string_secret_key, store_env_as_secret,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn start_run<'py>(
        &self,
        py: Python<'py>,
        namespace: String,
        flow_run_id: String,
        manifest: &Bound<'py, PyAny>,
        pod_watch_timeout_seconds: f64,
        job_watch_timeout_seconds: Option<f64>,
        stream_output: bool,
        create_attempts: i64,
        create_delay_seconds: f64,
        create_jitter_min_seconds: f64,
        create_jitter_max_seconds: f64,
        cluster_uid: Option<String>,
        api_key_secret_name: Option<String>,
        api_key_secret_key: Option<String>,
        create_api_key_secret_for_pool: Option<String>,
        api_auth_string_secret_name: Option<String>,
        api_auth_string_secret_key: Option<String>,
        store_env_as_secret: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let manifest: Value = pythonize::depythonize(manifest)
            .map_err(|error| conversion_error(py, "job_manifest", error))?;
        let pause_limit = jobs::MAX_CREATE_PAUSE_SECONDS as f64;
        let follow = follow_options(
            pod_watch_timeout_seconds,
            job_watch_timeout_seconds,
            stream_output,
        )?;
        let jitter_min = seconds(
            "create_job_retry.jitter_min_seconds",
            create_jitter_min_seconds,
            pause_limit,
        )?;
        let create_retry = RetryPolicy {
            max_attempts: attempts(create_attempts)?,
            delay: seconds(
                "create_job_retry.delay_seconds",
                create_delay_seconds,
                pause_limit,
            )?,
            jitter_min,
            jitter_max: seconds(
                "create_job_retry.jitter_max_seconds",
                create_jitter_max_seconds,
                pause_limit,
            )?
            .max(jitter_min),
        };
        let credentials = CredentialSettings::from_worker_settings(
            api_key_secret_name,
            api_key_secret_key,
            create_api_key_secret_for_pool,
            api_auth_string_secret_name,
            api_auth_string_secret_key,
        );
        let request = RunRequest {
            namespace,
            flow_run_id,
            manifest,
            credentials,
            create_retry,
            store_env_as_secret,
            cluster_uid,
            follow,
        };
        let sink = log_sink()?;
        let cluster = self.cluster.clone();
        future_into_py(py, async move {
            let started = start_run(cluster, request, sink)
                .await
                .map_err(start_error)?;
            Ok(StartedRun {
                job_name: started.job.name,
                namespace: started.job.namespace,
                uid: started.job.uid,
                adopted: started.job.adopted,
                attempts: started.job.attempts,
                pid: started.pid.to_string(),
                cluster_uid_unknown: started.cluster_uid_unknown,
                warnings: started.warnings,
                events: Arc::new(started.events),
            })
        })
    }

    /// Deletes the Job of the infrastructure pid `pid` (Foreground, `grace_seconds` for its
    /// pods) after checking that it lives in `namespace` on this cluster; returns the Job's
    /// `(namespace, name)`.
    #[pyo3(signature = (pid, *, namespace, grace_seconds, cluster_uid))]
    fn kill_run<'py>(
        &self,
        py: Python<'py>,
        pid: &str,
        namespace: &str,
        grace_seconds: Option<i64>,
        cluster_uid: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let pid = parse_pid_for(pid, namespace).map_err(kill_error)?;
        let grace_seconds = grace_seconds
            .map(|grace| {
                u32::try_from(grace).map_err(|_| {
                    PyValueError::new_err(format!(
                        "grace_seconds must be a whole number of seconds from 0 to {}, got {grace}",
                        u32::MAX
                    ))
                })
            })
            .transpose()?;
        let cluster = self.cluster.clone();
        future_into_py(py, async move {
            kill_run(&cluster, &pid, grace_seconds, cluster_uid.as_deref())
                .await
                .map_err(kill_error)?;
            Ok((pid.namespace, pid.job_name))
        })
    }

    /// Reports the Prefect Jobs nobody in this process follows that fail, or are deleted
    /// before they succeed, in `namespaces` (whose watchers this starts) and in every
    /// namespace watched later for a run; objects must carry every `(label, value)` of
    /// `label_filters`; with `pod_events`, each phase change of their pods too. Returns
    /// `Sightings`, an async iterator of batches of `UnfollowedJobEnded` and
    /// `UnfollowedPodChange`. Replaces an earlier observation of this cluster.
    #[pyo3(signature = (*, namespaces, label_filters, pod_events))]
    fn observe<'py>(
        &self,
        py: Python<'py>,
        namespaces: Vec<String>,
        label_filters: Vec<(String, String)>,
        pod_events: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let cluster = self.cluster.clone();
        let options = ObserveOptions {
            label_filters,
            pod_events,
        };
        // The watchers are tasks of the runtime: started from inside it.
        future_into_py(py, async move {
            let sightings = cluster.observe(&namespaces, options);
            Ok(py_observer::Sightings {
                stream: Arc::new(sightings),
            })
        })
    }

    /// Starts the shared watchers of `namespaces` (if not yet running): an observed cluster
    /// then also reports the runs nobody follows there.
    fn watch_namespaces<'py>(
        &self,
        py: Python<'py>,
        namespaces: Vec<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let cluster = self.cluster.clone();
        future_into_py(py, async move {
            for namespace in &namespaces {
                cluster.namespace(namespace);
            }
            Ok(())
        })
    }

    /// Where the Jobs of `runs` (`(flow_run_id, job_name)` pairs) in `namespace` stand, read
    /// by flow-run label, 50 runs per request: a list of `RunExamination`.
    #[pyo3(signature = (*, namespace, runs))]
    fn examine_runs<'py>(
        &self,
        py: Python<'py>,
        namespace: String,
        runs: Vec<(String, String)>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let runs: Vec<RunToExamine> = runs
            .into_iter()
            .map(|(flow_run_id, job_name)| RunToExamine {
                flow_run_id,
                job_name,
            })
            .collect();
        let cluster = self.cluster.clone();
        future_into_py(py, async move {
            let examinations = examine_runs(&cluster, &namespace, &runs)
                .await
                .map_err(k8s_error)?;
            Ok(examinations
                .into_iter()
                .map(py_observer::RunExamination::from)
                .collect::<Vec<_>>())
        })
    }

    /// Follows the Job of a run this process did not start (it was in flight when the worker
    /// started): its pod start, the lines its log gets from now on, its end. Returns `RunEvents`.
    #[pyo3(signature = (
        *, namespace, flow_run_id, job_name, pod_watch_timeout_seconds,
        job_watch_timeout_seconds, stream_output,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn follow_existing_run<'py>(
        &self,
        py: Python<'py>,
        namespace: String,
        flow_run_id: String,
        job_name: String,
        pod_watch_timeout_seconds: f64,
        job_watch_timeout_seconds: Option<f64>,
        stream_output: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let options = follow_options(
            pod_watch_timeout_seconds,
            job_watch_timeout_seconds,
            stream_output,
        )?;
        let sink = log_sink()?;
        let cluster = self.cluster.clone();
        future_into_py(py, async move {
            let stream =
                follow_existing_run(cluster, &namespace, &flow_run_id, job_name, options, sink)
                    .await
                    .map_err(k8s_error)?;
            Ok(RunEvents {
                stream: Arc::new(stream),
            })
        })
    }

    /// The last `lines` lines of the flow container of the pod that ended the run's Job (the
    /// previous container's after a restart), as `(time or None, text)` pairs; empty when no
    /// pod is left.
    #[pyo3(signature = (*, namespace, flow_run_id, job_name, lines))]
    fn crashed_run_log_tail<'py>(
        &self,
        py: Python<'py>,
        namespace: String,
        flow_run_id: String,
        job_name: String,
        lines: i64,
    ) -> PyResult<Bound<'py, PyAny>> {
        if !(1..=MAX_LOG_TAIL_LINES).contains(&lines) {
            return Err(PyValueError::new_err(format!(
                "lines must be from 1 to {MAX_LOG_TAIL_LINES}, got {lines}"
            )));
        }
        let run = RunToExamine {
            flow_run_id,
            job_name,
        };
        let cluster = self.cluster.clone();
        future_into_py(py, async move {
            crashed_run_log_tail(&cluster, &namespace, &run, lines)
                .await
                .map_err(k8s_error)
        })
    }

    /// The cluster's uid (of its `kube-system` namespace), or None when it cannot be read.
    fn uid<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let cluster = self.cluster.clone();
        future_into_py(py, async move { Ok(cluster.uid().await.ok()) })
    }

    /// `(namespace, name)` of the API-key Secrets this process created on this cluster.
    fn created_secrets(&self) -> Vec<(String, String)> {
        self.cluster.created_secrets().names()
    }

    /// The shared watchers of a namespace, or None when nothing watches it (this starts none).
    fn watch_stats(&self, namespace: &str) -> Option<WatchStats> {
        use std::sync::atomic::Ordering::Relaxed;
        let watch = self.cluster.watched_namespace(namespace)?;
        let (jobs, pods) = watch.stats();
        Some(WatchStats {
            job_watches_opened: jobs.watches_opened.load(Relaxed),
            pod_watches_opened: pods.watches_opened.load(Relaxed),
            resyncs: jobs.resyncs.load(Relaxed) + pods.resyncs.load(Relaxed),
            subscribed_runs: watch.subscribed_runs(),
        })
    }
}

/// The longest crashed-run log tail that may be asked for.
pub const MAX_LOG_TAIL_LINES: i64 = 100_000;

/// How a run is followed, from the job configuration's fields, each checked.
fn follow_options(
    pod_watch_timeout_seconds: f64,
    job_watch_timeout_seconds: Option<f64>,
    stream_output: bool,
) -> PyResult<FollowOptions> {
    let watch_limit = MAX_WATCH_TIMEOUT_SECONDS as f64;
    Ok(FollowOptions {
        pod_watch_timeout: seconds(
            "pod_watch_timeout_seconds",
            pod_watch_timeout_seconds,
            watch_limit,
        )?,
        job_watch_timeout: job_watch_timeout_seconds
            .map(|value| seconds("job_watch_timeout_seconds", value, watch_limit))
            .transpose()?,
        stream_output,
        log_since: None,
    })
}

/// An infrastructure pid's parts: `(cluster uid or None, namespace, job name)`; raises
/// `InvalidPidError` for anything else.
#[pyfunction]
pub fn parse_infrastructure_pid(pid: &str) -> PyResult<(Option<String>, String, String)> {
    let pid: InfrastructurePid = pid
        .parse()
        .map_err(|error| kill_error(KillError::InvalidPid(error)))?;
    Ok((pid.cluster_uid, pid.namespace, pid.job_name))
}

/// `value` seconds as a Duration, or a ValueError naming `name` and the accepted range.
fn seconds(name: &str, value: f64, max: f64) -> PyResult<Duration> {
    if !(0.0..=max).contains(&value) {
        return Err(PyValueError::new_err(format!(
            "{name} must be a number of seconds from 0 to {max}, got {value}"
        )));
    }
    Duration::try_from_secs_f64(value).map_err(|error| {
        PyValueError::new_err(format!(
            "{name} cannot be used as a duration ({value}): {error}"
        ))
    })
}

fn attempts(value: i64) -> PyResult<u32> {
    let max = jobs::MAX_CREATE_ATTEMPTS;
    u32::try_from(value)
        .ok()
        .filter(|attempts| (1..=max).contains(attempts))
        .ok_or_else(|| {
            PyValueError::new_err(format!(
                "create_job_retry.max_retries must be from 1 to {max}, got {value}"
            ))
        })
}

/// A run whose Job exists and is being followed.
#[pyclass(frozen, module = "prefect_kubernetes_rs._core")]
pub struct StartedRun {
    /// The Job's name.
    #[pyo3(get)]
    job_name: String,
    /// The Job's namespace.
    #[pyo3(get)]
    namespace: String,
    /// The Job's uid.
    #[pyo3(get)]
    uid: String,
    /// An earlier attempt had created the Job; this one found it.
    #[pyo3(get)]
    adopted: bool,
    /// Create calls made.
    #[pyo3(get)]
    attempts: u32,
    /// The infrastructure pid for Prefect.
    #[pyo3(get)]
    pid: String,
    /// Why the pid has no cluster uid, when it has none.
    #[pyo3(get)]
    cluster_uid_unknown: Option<String>,
    /// Warnings for the flow run's log.
    #[pyo3(get)]
    warnings: Vec<String>,
    events: Arc<RunEventStream>,
}

#[pymethods]
impl StartedRun {
    /// The run's events: an async iterator of batches; the last event is a `RunFinished`.
    #[getter]
    fn events(&self) -> RunEvents {
        RunEvents {
            stream: self.events.clone(),
        }
    }
}

/// A message for the flow run's log.
#[pyclass(frozen, get_all, module = "prefect_kubernetes_rs._core")]
pub struct RunMessage {
    /// `info`, `warning` or `error`.
    level: &'static str,
    /// The text.
    text: String,
}

/// The run waits for its infrastructure (pod Pending, Job suspended).
#[pyclass(frozen, get_all, module = "prefect_kubernetes_rs._core")]
pub struct InfrastructureWaiting {
    /// Why, as a sentence for the flow run's state message.
    why: String,
}

/// A pod of the run changed phase.
#[pyclass(frozen, get_all, module = "prefect_kubernetes_rs._core")]
pub struct PodPhaseChange {
    name: String,
    uid: String,
    phase: String,
    evicted: bool,
    reason: Option<String>,
    /// How often the flow container was restarted.
    restart_count: i32,
}

impl From<run::PodPhaseChange> for PodPhaseChange {
    fn from(change: run::PodPhaseChange) -> Self {
        PodPhaseChange {
            name: change.name,
            uid: change.uid,
            phase: change.phase,
            evicted: change.evicted,
            reason: change.reason,
            restart_count: change.restart_count,
        }
    }
}

/// The run's end: the flow container's exit code (-1 when there is none) and what happened.
#[pyclass(frozen, get_all, module = "prefect_kubernetes_rs._core")]
pub struct RunFinished {
    exit_code: i32,
    message: Option<String>,
    evicted: bool,
}

/// The events of one followed run, as an async iterator of batches.
#[pyclass(frozen, module = "prefect_kubernetes_rs._core")]
pub struct RunEvents {
    stream: Arc<RunEventStream>,
}

/// A batch of events, converted once the GIL is held.
struct EventBatch(Vec<RunEvent>);

impl<'py> IntoPyObject<'py> for EventBatch {
    type Target = PyList;
    type Output = Bound<'py, PyList>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Self::Output> {
        let list = PyList::empty(py);
        for event in self.0 {
            match event {
                RunEvent::Message(level, text) => list.append(RunMessage {
                    level: match level {
                        Level::Info => "info",
                        Level::Warning => "warning",
                        Level::Error => "error",
                    },
                    text,
                })?,
                RunEvent::Pod(change) => list.append(PodPhaseChange::from(change))?,
                RunEvent::Waiting(why) => list.append(InfrastructureWaiting { why })?,
                RunEvent::Finished(outcome) => list.append(RunFinished {
                    exit_code: outcome.exit_code,
                    message: outcome.message,
                    evicted: outcome.evicted,
                })?,
            }
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
        let stream = self.stream.clone();
        next_or_stop(py, async move { stream.next_batch().await.map(EventBatch) })
    }

    /// Stops following; the Job is left as it is.
    fn close(&self) {
        self.stream.close();
    }
}

/// The awaitable an async iterator's `__anext__` returns: `next`'s item, converted once the GIL
/// is held, or StopAsyncIteration when `next` gives None.
pub fn next_or_stop<'py, T>(
    py: Python<'py>,
    next: impl std::future::Future<Output = Option<T>> + Send + 'static,
) -> PyResult<Bound<'py, PyAny>>
where
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    future_into_py(py, async move {
        next.await.ok_or_else(|| PyStopAsyncIteration::new_err(()))
    })
}

/// How many runs this process is following right now.
#[pyfunction]
pub fn active_followers() -> usize {
    run::active_followers()
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
            config: pythonize::depythonize::<Value>(config)
                .map_err(|error| conversion_error(py, "cluster_config", error))?,
            context,
        },
        _ => ClusterSource::Automatic,
    })
}
