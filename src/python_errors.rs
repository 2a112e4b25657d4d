//! The one place where Rust errors become Python exceptions.
//!
//! The exception classes live in `prefect_kubernetes_rs.exceptions` (users import and catch
//! them without touching the native module, and `ManifestError` must also be a `ValueError`);
//! they are looked up once, on first use, and raised with structured attributes.

use prefect_kubernetes_rs_core::k8s::run::{KillError, StartError};
use prefect_kubernetes_rs_core::k8s::K8sError;
use prefect_kubernetes_rs_core::manifest::ManifestError;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

const EXCEPTIONS_MODULE: &str = "prefect_kubernetes_rs.exceptions";

/// The exception classes of `prefect_kubernetes_rs.exceptions` this module raises.
#[derive(Clone, Copy)]
enum Class {
    Manifest,
    ClusterConfig,
    ClusterUnreachable,
    KubernetesApi,
    InvalidPid,
    JobElsewhere,
    JobNotFound,
}

impl Class {
    const ALL: [Class; 7] = [
        Class::Manifest,
        Class::ClusterConfig,
        Class::ClusterUnreachable,
        Class::KubernetesApi,
        Class::InvalidPid,
        Class::JobElsewhere,
        Class::JobNotFound,
    ];

    fn name(self) -> &'static str {
        match self {
            Class::Manifest => "ManifestError",
            Class::ClusterConfig => "ClusterConfigError",
            Class::ClusterUnreachable => "ClusterUnreachableError",
            Class::KubernetesApi => "KubernetesApiError",
            Class::InvalidPid => "InvalidPidError",
            Class::JobElsewhere => "JobElsewhereError",
            Class::JobNotFound => "JobNotFoundError",
        }
    }
}

static CLASSES: PyOnceLock<Vec<Py<PyType>>> = PyOnceLock::new();

fn class(py: Python<'_>, which: Class) -> PyResult<Bound<'_, PyType>> {
    let classes = CLASSES.get_or_try_init(py, || -> PyResult<_> {
        let module = py.import(EXCEPTIONS_MODULE)?;
        Class::ALL
            .iter()
            .map(|class| {
                Ok(module
                    .getattr(class.name())?
                    .cast_into::<PyType>()?
                    .unbind())
            })
            .collect()
    })?;
    Ok(classes[which as usize].bind(py).clone())
}

fn raise(py: Python<'_>, which: Class, message: String) -> PyErr {
    match class(py, which).and_then(|class| class.call1((message.clone(),))) {
        Ok(instance) => PyErr::from_value(instance),
        // Only when the package's Python half is broken; keep the message all the same.
        Err(_) => PyValueError::new_err(message),
    }
}

/// Raises a manifest problem as `ManifestError`, a `ValueError`, so pydantic reports it as a
/// validation error of the job configuration.
pub fn manifest_error(py: Python<'_>, error: ManifestError) -> PyErr {
    raise(py, Class::Manifest, error.to_string())
}

/// A manifest problem found by the bindings themselves, in their own words.
pub fn manifest_error_text(py: Python<'_>, message: String) -> PyErr {
    raise(py, Class::Manifest, message)
}

/// A value Python handed over that is not JSON-compatible data.
pub fn conversion_error(py: Python<'_>, what: &str, error: pythonize::PythonizeError) -> PyErr {
    raise(
        py,
        Class::Manifest,
        format!("{what} must be JSON-compatible data: {error}"),
    )
}

/// Raises `message` as the class `error` calls for, with the API's status code, reason and
/// message as attributes when it is an API error.
fn raise_k8s(py: Python<'_>, error: &K8sError, message: String) -> PyErr {
    let which = match error {
        K8sError::Config { .. } => Class::ClusterConfig,
        K8sError::Transport { .. } => Class::ClusterUnreachable,
        K8sError::Api { .. } | K8sError::Unexpected { .. } => Class::KubernetesApi,
    };
    let raised = raise(py, which, message);
    let value = raised.value(py);
    // Attributes are best effort: the message already says everything.
    let _ = match error {
        K8sError::Config { source_name, .. } => value.setattr("source_name", source_name),
        K8sError::Api {
            code,
            reason,
            message,
            ..
        } => value
            .setattr("status_code", code)
            .and_then(|()| value.setattr("reason", reason))
            .and_then(|()| value.setattr("api_message", message)),
        _ => Ok(()),
    };
    raised
}

/// Raises a Kubernetes problem as the matching exception class.
pub fn k8s_error(error: K8sError) -> PyErr {
    Python::attach(|py| raise_k8s(py, &error, error.to_string()))
}

/// Raises why a run did not start: an API refusal as `KubernetesApiError`, an API server that
/// did not answer as `ClusterUnreachableError`; the message is the whole story.
pub fn start_error(error: StartError) -> PyErr {
    Python::attach(|py| match &error {
        StartError::Refused { cause, .. } => {
            let raised = raise_k8s(py, cause, error.to_string());
            // A refusal is an API answer even when the cause is a Secret's.
            if !matches!(cause, K8sError::Api { .. }) {
                return raise(py, Class::KubernetesApi, error.to_string());
            }
            raised
        }
        StartError::Unavailable { .. } => raise(py, Class::ClusterUnreachable, error.to_string()),
    })
}

/// Raises why a run's Job was not deleted.
pub fn kill_error(error: KillError) -> PyErr {
    Python::attach(|py| match &error {
        KillError::InvalidPid(_) => raise(py, Class::InvalidPid, error.to_string()),
        KillError::Elsewhere(_) => raise(py, Class::JobElsewhere, error.to_string()),
        KillError::NotFound(_) => raise(py, Class::JobNotFound, error.to_string()),
        KillError::Failed { cause, .. } => raise_k8s(py, cause, error.to_string()),
    })
}
