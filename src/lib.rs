//! `prefect_kubernetes_rs._core`: the Python extension of the `kubernetes-rs` Prefect worker.
//!
//! This crate only binds: each binding checks and converts its arguments, calls one function
//! of the core crate (`prefect-kubernetes-rs-core`) and converts the result. The manifest
//! bindings are here; the Kubernetes ones in `py_k8s.rs`.

mod interpreter_exit;
mod py_k8s;
mod py_observer;
mod py_output;
mod python_errors;

use prefect_kubernetes_rs_core::k8s::{jobs, run};
use prefect_kubernetes_rs_core::manifest::{self, ManifestError, RunSettings};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyFloat, PyTuple};
use python_errors::{conversion_error, manifest_error, manifest_error_text};
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

/// The job variables as JSON; a value that cannot be JSON (an integer beyond 64 bits, say) is
/// refused naming its variable.
fn job_variables(values: &Bound<'_, PyDict>) -> PyResult<Map<String, Value>> {
    let mut map = Map::with_capacity(values.len());
    for (key, value) in values.iter() {
        let name = key.str()?.to_string();
        // JSON has no NaN or infinity; converted, they would silently become null.
        if let Ok(number) = value.cast::<PyFloat>() {
            if !number.value().is_finite() {
                return Err(manifest_error_text(
                    values.py(),
                    format!(
                        "job variable {name:?} cannot be used: {} is not a finite number",
                        number.value()
                    ),
                ));
            }
        }
        let value = pythonize::depythonize::<Value>(&value).map_err(|error| {
            manifest_error_text(
                values.py(),
                format!(
                    "job variable {name:?} cannot be used: {error} (numbers must fit in 64 bits); \
                     set it to a value in the range its work pool schema gives"
                ),
            )
        })?;
        map.insert(name, value);
    }
    Ok(map)
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
    let values = job_variables(values)?;
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

/// Applies a deployment's `job_manifest_patches` (RFC 6902 operations) to a rendered manifest;
/// returns the patched manifest.
#[pyfunction]
fn apply_job_manifest_patches<'py>(
    py: Python<'py>,
    job_manifest: &Bound<'py, PyAny>,
    patches: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let mut job_manifest = to_value(job_manifest, "job_manifest")?;
    let patches = to_value(patches, manifest::JOB_MANIFEST_PATCHES)?;
    manifest::apply_job_manifest_patches(&mut job_manifest, &patches)
        .map_err(|error| manifest_error(py, error))?;
    to_py(py, &job_manifest)
}

/// Prepares a validated manifest for one flow run; returns `(manifest, env)`. `env` is the
/// environment after Prefect's merge; `env_list` the `env` job variable when it is a list of
/// Kubernetes entries.
#[pyfunction]
#[pyo3(signature = (job_manifest, *, env, env_list, labels, annotations, name, default_image, api_dns_name))]
#[allow(clippy::too_many_arguments)]
fn prepare_job_manifest<'py>(
    py: Python<'py>,
    job_manifest: &Bound<'py, PyAny>,
    env: &Bound<'py, PyAny>,
    env_list: Option<&Bound<'py, PyAny>>,
    labels: &Bound<'py, PyAny>,
    annotations: &Bound<'py, PyAny>,
    name: Option<String>,
    default_image: String,
    api_dns_name: Option<String>,
) -> PyResult<Bound<'py, PyTuple>> {
    let mut job_manifest = to_value(job_manifest, "job_manifest")?;
    let env_list = match env_list.map(|list| to_value(list, "env")).transpose()? {
        None => None,
        Some(Value::Array(items)) => Some(items),
        Some(other) => {
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
        env_list,
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

/// Slug for a Kubernetes label value (at most 63 characters, case kept).
#[pyfunction]
fn slugify_label_value(value: &str) -> String {
    manifest::slug::slugify_label_value(value)
}

#[pymodule]
fn _core(module: &Bound<'_, PyModule>) -> PyResult<()> {
    // Rust's log records (kube-rs, the watchers) go to Python's `logging`, under the Rust
    // module path (e.g. `prefect_kubernetes_rs_core::k8s::watch`; see pyo3-log).
    let _ = pyo3_log::try_init();
    interpreter_exit::install_runtime();
    interpreter_exit::register(module)?;
    module.add("__version__", env!("CARGO_PKG_VERSION"))?;
    module.add_class::<py_k8s::KubernetesClients>()?;
    module.add_class::<py_k8s::ClusterHandle>()?;
    module.add_class::<py_k8s::WatchStats>()?;
    module.add_class::<py_k8s::StartedRun>()?;
    module.add_class::<py_k8s::RunEvents>()?;
    module.add_class::<py_k8s::RunMessage>()?;
    module.add_class::<py_k8s::PodPhaseChange>()?;
    module.add_class::<py_k8s::InfrastructureWaiting>()?;
    module.add_class::<py_k8s::RunFinished>()?;
    module.add_class::<py_observer::Sightings>()?;
    module.add_class::<py_observer::UnfollowedJobEnded>()?;
    module.add_class::<py_observer::UnfollowedPodChange>()?;
    module.add_class::<py_observer::JobsMissed>()?;
    module.add_class::<py_observer::RunExamination>()?;
    // The defaults and limits of the job variables and settings, defined once, in the core.
    let constants: [(&str, u64); 8] = [
        (
            "DEFAULT_POD_WATCH_TIMEOUT_SECONDS",
            run::DEFAULT_POD_WATCH_TIMEOUT_SECONDS,
        ),
        ("MAX_WATCH_TIMEOUT_SECONDS", run::MAX_WATCH_TIMEOUT_SECONDS),
        (
            "DEFAULT_CREATE_ATTEMPTS",
            jobs::DEFAULT_CREATE_ATTEMPTS.into(),
        ),
        (
            "DEFAULT_CREATE_DELAY_SECONDS",
            jobs::DEFAULT_CREATE_DELAY_SECONDS,
        ),
        (
            "DEFAULT_CREATE_JITTER_MIN_SECONDS",
            jobs::DEFAULT_CREATE_JITTER_MIN_SECONDS,
        ),
        (
            "DEFAULT_CREATE_JITTER_MAX_SECONDS",
            jobs::DEFAULT_CREATE_JITTER_MAX_SECONDS,
        ),
        ("MAX_CREATE_ATTEMPTS", jobs::MAX_CREATE_ATTEMPTS.into()),
        ("MAX_CREATE_PAUSE_SECONDS", jobs::MAX_CREATE_PAUSE_SECONDS),
    ];
    for (name, value) in constants {
        module.add(name, value)?;
    }
    module.add("PREFECT_CONTAINER", manifest::PREFECT_CONTAINER)?;
    module.add_function(wrap_pyfunction!(render_template, module)?)?;
    module.add_function(wrap_pyfunction!(validate_job_manifest, module)?)?;
    module.add_function(wrap_pyfunction!(apply_job_manifest_patches, module)?)?;
    module.add("JOB_MANIFEST_PATCHES", manifest::JOB_MANIFEST_PATCHES)?;
    module.add_function(wrap_pyfunction!(prepare_job_manifest, module)?)?;
    module.add_function(wrap_pyfunction!(default_job_manifest_template, module)?)?;
    module.add_function(wrap_pyfunction!(slugify_name, module)?)?;
    module.add_function(wrap_pyfunction!(slugify_label_value, module)?)?;
    module.add_function(wrap_pyfunction!(py_k8s::active_followers, module)?)?;
    module.add_function(wrap_pyfunction!(py_k8s::parse_infrastructure_pid, module)?)?;
    module.add("MAX_LOG_TAIL_LINES", py_k8s::MAX_LOG_TAIL_LINES)?;
    Ok(())
}
