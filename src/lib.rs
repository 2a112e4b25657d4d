//! `prefect_kubernetes_rs._core`: the native half of the `kubernetes-rs` Prefect worker.
//!
//! This file only registers the module. Each binding converts its arguments, calls one domain
//! function and converts the result; the logic lives in [`manifest`].

mod interpreter_exit;
pub mod k8s;
pub mod manifest;
mod py_k8s;
mod py_output;
mod python_errors;

use manifest::{ManifestError, RunSettings};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use python_errors::{conversion_error, manifest_error};
use serde_json::{Map, Value};

fn to_value(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Value> {
    pythonize::depythonize(obj).map_err(|error| conversion_error(obj.py(), what, error))
}

fn to_map(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Map<String, Value>> {
    match to_value(obj, what)? {
        Value::Object(map) => Ok(map),
        other => Err(manifest_error(
            obj.py(),
            ManifestError::NotAMapping {
                what: what.into(),
                found: manifest::error::json_type_name(&other),
            },
        )),
    }
}

fn to_py<'py>(py: Python<'py>, value: &Value) -> PyResult<Bound<'py, PyAny>> {
    pythonize::pythonize(py, value).map_err(|error| conversion_error(py, "result", error))
}

/// Renders a job configuration template with job variables, by Prefect's placeholder rules;
/// returns `(rendered, needs_api_resolution)`, the latter telling whether block references or
/// `prefect.*` placeholders remain for the Prefect API (saves a second pass over the data).
#[pyfunction]
fn render_template<'py>(
    py: Python<'py>,
    template: &Bound<'py, PyAny>,
    values: &Bound<'py, PyDict>,
) -> PyResult<(Bound<'py, PyAny>, bool)> {
    let template = to_value(template, "the job template")?;
    let values = to_map(values.as_any(), "the job variables")?;
    match manifest::apply_values(&template, &values, &manifest::ProcessEnvironment) {
        Some(rendered) => Ok((
            to_py(py, &rendered)?,
            manifest::needs_api_resolution(&rendered),
        )),
        None => Ok((py.None().into_bound(py), false)),
    }
}

/// Validates a rendered Job manifest; returns it with the metadata defaults filled in.
#[pyfunction]
fn validate_job_manifest<'py>(
    py: Python<'py>,
    job_manifest: &Bound<'py, PyAny>,
    namespace: &str,
) -> PyResult<Bound<'py, PyAny>> {
    let mut job_manifest = to_value(job_manifest, "job_manifest")?;
    manifest::validate_job_manifest(&mut job_manifest, namespace)
        .map_err(|error| manifest_error(py, error))?;
    to_py(py, &job_manifest)
}

/// Prepares a validated manifest for one flow run; returns `(manifest, env)`.
#[pyfunction]
#[pyo3(signature = (job_manifest, env, env_references, labels, annotations, name, default_image, api_dns_name=None))]
#[allow(clippy::too_many_arguments)]
fn prepare_job_manifest<'py>(
    py: Python<'py>,
    job_manifest: &Bound<'py, PyAny>,
    env: &Bound<'py, PyAny>,
    env_references: &Bound<'py, PyAny>,
    labels: &Bound<'py, PyAny>,
    annotations: &Bound<'py, PyAny>,
    name: Option<String>,
    default_image: String,
    api_dns_name: Option<String>,
) -> PyResult<Bound<'py, PyTuple>> {
    let mut job_manifest = to_value(job_manifest, "job_manifest")?;
    let env_references = match to_value(env_references, "env")? {
        Value::Array(items) => items,
        Value::Null => Vec::new(),
        other => {
            return Err(manifest_error(
                py,
                ManifestError::NotAMapping {
                    what: "env".into(),
                    found: manifest::error::json_type_name(&other),
                },
            ))
        }
    };
    let run = RunSettings {
        env: to_map(env, "env")?,
        env_references,
        labels: to_map(labels, "labels")?,
        annotations: to_map(annotations, "annotations")?,
        name,
        default_image,
        api_dns_name,
    };
    let env = manifest::prepare_job_manifest(&mut job_manifest, &run)
        .map_err(|error| manifest_error(py, error))?;
    PyTuple::new(py, [to_py(py, &job_manifest)?, to_py(py, &env)?])
}

/// How many runs this process is following right now.
#[pyfunction]
fn active_followers() -> usize {
    k8s::run::active_followers()
}

/// The default Job manifest template of the `kubernetes-rs` work pool type.
#[pyfunction]
fn default_job_manifest_template(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    to_py(py, &manifest::default_job_manifest_template())
}

/// Slug for a Job's generateName stem (lowercase, at most 45 characters), or None.
#[pyfunction]
fn slugify_name(name: &str) -> Option<String> {
    manifest::slug::slugify_name(name)
}

/// Slug for a Kubernetes label key (optional prefix, name of at most 63 characters).
#[pyfunction]
fn slugify_label_key(key: &str) -> String {
    manifest::slug::slugify_label_key(key)
}

/// Slug for a Kubernetes label value (at most 63 characters, case kept).
#[pyfunction]
fn slugify_label_value(value: &str) -> String {
    manifest::slug::slugify_label_value(value)
}

/// Splits a command into words as a POSIX shell would (Python's `shlex.split`).
#[pyfunction]
fn split_command(py: Python<'_>, command: &str) -> PyResult<Vec<String>> {
    manifest::shell_words::split_shell_words(command).map_err(|source| {
        manifest_error(
            py,
            ManifestError::InvalidCommand {
                command: command.to_owned(),
                source,
            },
        )
    })
}

#[pymodule]
fn _core(module: &Bound<'_, PyModule>) -> PyResult<()> {
    // Rust's log records (kube-rs, the watchers) go to Python's `logging`, under the Rust
    // module path (e.g. `prefect_kubernetes_rs._core.k8s.watch`... see pyo3-log).
    let _ = pyo3_log::try_init();
    interpreter_exit::install_runtime();
    interpreter_exit::register(module)?;
    module.add("__version__", env!("CARGO_PKG_VERSION"))?;
    module.add_class::<py_k8s::KubernetesClients>()?;
    module.add_class::<py_k8s::ClusterHandle>()?;
    module.add_class::<py_k8s::RunWatch>()?;
    module.add_class::<py_k8s::RunEvents>()?;
    module.add_function(wrap_pyfunction!(render_template, module)?)?;
    module.add_function(wrap_pyfunction!(validate_job_manifest, module)?)?;
    module.add_function(wrap_pyfunction!(prepare_job_manifest, module)?)?;
    module.add_function(wrap_pyfunction!(default_job_manifest_template, module)?)?;
    module.add_function(wrap_pyfunction!(slugify_name, module)?)?;
    module.add_function(wrap_pyfunction!(slugify_label_key, module)?)?;
    module.add_function(wrap_pyfunction!(slugify_label_value, module)?)?;
    module.add_function(wrap_pyfunction!(split_command, module)?)?;
    module.add_function(wrap_pyfunction!(active_followers, module)?)?;
    Ok(())
}
