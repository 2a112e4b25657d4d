//! Python classes of runs nobody follows: what the bystander reports, where a run's Job
//! stands, and the pieces of a crashed run's log. (`ClusterHandle` in `py_k8s` has the calls.)

use crate::py_k8s::{next_or_stop, PodPhaseChange};
use prefect_kubernetes_rs_core::k8s::observer::{Sighting, Sightings as CoreSightings};
use prefect_kubernetes_rs_core::k8s::run::{JobEnd, RunExamination as CoreExamination};
use pyo3::prelude::*;
use pyo3::types::PyList;
use std::collections::BTreeMap;
use std::sync::Arc;

/// `("failed", reason)` or `("deleted", None)`; the success is `("complete", None)`.
fn end_parts(end: &JobEnd) -> (&'static str, Option<String>) {
    match end {
        JobEnd::Complete => ("complete", None),
        JobEnd::Failed(reason) => ("failed", Some(reason.clone())),
        JobEnd::Deleted => ("deleted", None),
    }
}

/// A Prefect Job that nobody in this process follows failed, or was deleted before it
/// succeeded.
#[pyclass(frozen, get_all, module = "prefect_kubernetes_rs._core")]
pub struct UnfollowedJobEnded {
    namespace: String,
    flow_run_id: String,
    job_name: String,
    /// When the Job was created (RFC 3339), if known.
    created: Option<String>,
    /// `failed` or `deleted`.
    end: &'static str,
    /// Kubernetes' reason for a failure (`BackoffLimitExceeded`, `DeadlineExceeded`, ...).
    end_reason: Option<String>,
}

/// A pod of a run nobody in this process follows changed phase.
#[pyclass(frozen, get_all, module = "prefect_kubernetes_rs._core")]
pub struct UnfollowedPodChange {
    namespace: String,
    flow_run_id: String,
    /// The pod's `prefect.io/...` labels.
    labels: BTreeMap<String, String>,
    /// The change, as a followed run's.
    change: Py<PodPhaseChange>,
}

/// The Job watch of a namespace lost its place (410 Gone) and started again from "now": a
/// Job nobody follows may have ended unseen.
#[pyclass(frozen, get_all, module = "prefect_kubernetes_rs._core")]
pub struct JobsMissed {
    namespace: String,
}

/// What the bystander reports, as an async iterator of batches.
#[pyclass(frozen, module = "prefect_kubernetes_rs._core")]
pub struct Sightings {
    pub stream: Arc<CoreSightings>,
}

struct SightingBatch(Vec<Sighting>);

impl<'py> IntoPyObject<'py> for SightingBatch {
    type Target = PyList;
    type Output = Bound<'py, PyList>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Self::Output> {
        let list = PyList::empty(py);
        for sighting in self.0 {
            match sighting {
                Sighting::JobEnded(ended) => {
                    let (end, end_reason) = end_parts(&ended.end);
                    list.append(UnfollowedJobEnded {
                        namespace: ended.namespace,
                        flow_run_id: ended.flow_run_id,
                        job_name: ended.job_name,
                        created: ended.created,
                        end,
                        end_reason,
                    })?
                }
                Sighting::PodChanged(changed) => list.append(UnfollowedPodChange {
                    namespace: changed.namespace,
                    flow_run_id: changed.flow_run_id,
                    labels: changed.labels,
                    change: Py::new(py, PodPhaseChange::from(changed.change))?,
                })?,
                Sighting::JobsMissed { namespace } => list.append(JobsMissed { namespace })?,
            }
        }
        Ok(list)
    }
}

#[pymethods]
impl Sightings {
    fn __aiter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __anext__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let stream = self.stream.clone();
        next_or_stop(
            py,
            async move { stream.next_batch().await.map(SightingBatch) },
        )
    }
}

/// Where one run's Job stands.
#[pyclass(frozen, get_all, module = "prefect_kubernetes_rs._core")]
pub struct RunExamination {
    flow_run_id: String,
    job_name: String,
    /// The Job exists.
    found: bool,
    /// `complete`, `failed`, `deleted` (not found), or None while it runs or waits.
    end: Option<&'static str>,
    /// Kubernetes' reason for a failure.
    end_reason: Option<String>,
    /// The flow container's exit code once the Job ended (-1 when there is none).
    exit_code: Option<i32>,
    /// What happened, in words, when it is not a plain exit.
    message: Option<String>,
    /// The pod that ended the Job was evicted.
    evicted: bool,
    /// The pod that ended the Job, when one is left.
    pod_name: Option<String>,
    /// Why that pod ended: `OOMKilled`, `Evicted`, `Error`, ...
    pod_reason: Option<String>,
    /// Another Job of the flow run is running or succeeded.
    other_job_alive: bool,
}

impl From<CoreExamination> for RunExamination {
    fn from(examination: CoreExamination) -> Self {
        let (end, end_reason) = match &examination.end {
            Some(end) => {
                let (end, reason) = end_parts(end);
                (Some(end), reason)
            }
            None => (None, None),
        };
        let outcome = examination.outcome;
        let pod = examination.ended_pod;
        RunExamination {
            flow_run_id: examination.flow_run_id,
            job_name: examination.job_name,
            found: examination.found,
            end,
            end_reason,
            exit_code: outcome.as_ref().map(|outcome| outcome.exit_code),
            message: outcome.as_ref().and_then(|outcome| outcome.message.clone()),
            evicted: outcome.is_some_and(|outcome| outcome.evicted),
            pod_name: pod.as_ref().map(|pod| pod.name.clone()),
            pod_reason: pod.and_then(|pod| pod.reason),
            other_job_alive: examination.other_job_alive,
        }
    }
}
