//! The one place where Rust errors become Python exceptions.
//!
//! The exception classes live in `prefect_kubernetes_rs.exceptions` so users can import and
//! catch them without touching the native module; they are looked up only when an error occurs.

use crate::manifest::ManifestError;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

const EXCEPTIONS_MODULE: &str = "prefect_kubernetes_rs.exceptions";

/// Raises a manifest problem as `prefect_kubernetes_rs.exceptions.ManifestError`, a
/// `ValueError`, so pydantic reports it as a validation error of the job configuration.
pub fn manifest_error(py: Python<'_>, error: ManifestError) -> PyErr {
    raise_as(py, "ManifestError", error.to_string())
}

/// A value Python handed over that is not JSON-compatible data.
pub fn conversion_error(py: Python<'_>, what: &str, error: pythonize::PythonizeError) -> PyErr {
    raise_as(
        py,
        "ManifestError",
        format!("{what} must be JSON-compatible data: {error}"),
    )
}

fn raise_as(py: Python<'_>, class_name: &str, message: String) -> PyErr {
    let class = py
        .import(EXCEPTIONS_MODULE)
        .and_then(|module| module.getattr(class_name));
    match class {
        Ok(class) => PyErr::from_value(match class.call1((message.clone(),)) {
            Ok(instance) => instance,
            Err(error) => return error,
        }),
        // Only when the package's Python half is broken; keep the message all the same.
        Err(_) => PyValueError::new_err(message),
    }
}

/// Raises a Kubernetes problem as the matching `prefect_kubernetes_rs.exceptions` class, with
/// the API's status code, reason and message as attributes for the worker's error mapping.
pub fn k8s_error(error: crate::k8s::K8sError) -> PyErr {
    use crate::k8s::K8sError;
    Python::attach(|py| {
        let class_name = match &error {
            K8sError::Config { .. } => "ClusterConfigError",
            K8sError::Unreachable { .. } | K8sError::Transport { .. } => "ClusterUnreachableError",
            K8sError::Api { .. } | K8sError::Unexpected { .. } => "KubernetesApiError",
        };
        let raised = raise_as(py, class_name, error.to_string());
        let value = raised.value(py);
        // Attributes are best effort: the message above already says everything.
        let _ = match &error {
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
    })
}
