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
