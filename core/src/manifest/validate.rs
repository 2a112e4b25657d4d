//! Checks a rendered Job manifest against the attributes every Prefect flow-run Job needs.
//!
//! The messages keep the Python worker's wording, so users and their tooling see the same
//! text. One deliberate difference: the flow's container is found by its name `prefect-job`
//! wherever it sits among the containers (sidecars may come first), and two containers with
//! that name are refused instead of silently editing the first one.

use crate::manifest::defaults::{base_job_manifest, PREFECT_CONTAINER};
use crate::manifest::error::{json_type_name, ManifestError, Result};
use crate::manifest::python_text::python_repr;
use serde_json::{Map, Value};

const CONTAINERS_POINTER: &str = "/spec/template/spec/containers";

/// Validates `manifest` in place, first filling in what the Python worker fills in:
/// `metadata`, `metadata.annotations`, `metadata.labels`, and `metadata.namespace` from the
/// configuration's `namespace`.
pub fn validate_job_manifest(manifest: &mut Value, namespace: &str) -> Result<()> {
    let Value::Object(root) = manifest else {
        return Err(ManifestError::NotAMapping {
            what: "job_manifest".into(),
            found: json_type_name(manifest),
        });
    };
    let metadata = root
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(metadata) = metadata {
        metadata
            .entry("annotations")
            .or_insert_with(|| Value::Object(Map::new()));
        metadata
            .entry("labels")
            .or_insert_with(|| Value::Object(Map::new()));
        metadata
            .entry("namespace")
            .or_insert_with(|| Value::String(namespace.to_owned()));
    }

    let mut report = Report::default();
    compare(
        manifest,
        &base_job_manifest(),
        &mut String::new(),
        &mut report,
    );
    if !report.missing.is_empty() {
        report.missing.sort();
        return Err(ManifestError::MissingAttributes(report.missing));
    }
    if !report.incompatible.is_empty() {
        report.incompatible.sort();
        return Err(ManifestError::IncompatibleValues(report.incompatible));
    }
    let count = prefect_container_count(manifest);
    if count > 1 {
        return Err(ManifestError::DuplicatePrefectContainer { count });
    }
    Ok(())
}

#[derive(Default)]
struct Report {
    missing: Vec<String>,
    incompatible: Vec<String>,
}

/// Walks the base manifest: an attribute absent from the user's manifest is missing, one that
/// differs is incompatible; anything the user adds beyond the base is theirs to keep.
fn compare(actual: &Value, required: &Value, path: &mut String, report: &mut Report) {
    match (actual, required) {
        (Value::Object(actual), Value::Object(required)) => {
            for (key, required_value) in required {
                let len = path.len();
                path.push('/');
                path.push_str(&escape_pointer(key));
                match actual.get(key) {
                    None => report.missing.push(path.clone()),
                    Some(actual_value) => compare(actual_value, required_value, path, report),
                }
                path.truncate(len);
            }
        }
        (Value::Array(actual), Value::Array(required)) if path == CONTAINERS_POINTER => {
            compare_containers(actual, required, path, report);
        }
        (Value::Array(actual), Value::Array(required)) => {
            for (index, required_value) in required.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("/{index}"));
                match actual.get(index) {
                    None => report.missing.push(path.clone()),
                    Some(actual_value) => compare(actual_value, required_value, path, report),
                }
                path.truncate(len);
            }
        }
        (actual, required) if python_equal(actual, required) => {}
        (_, required) => report
            .incompatible
            .push(format!("{path} must have value {}", python_repr(required))),
    }
}

/// The flow container may sit anywhere in the list; when none is named `prefect-job`, report
/// on the first container as the Python worker does.
fn compare_containers(actual: &[Value], required: &[Value], path: &str, report: &mut Report) {
    if actual.iter().any(is_prefect_container) {
        return;
    }
    let Some(required_first) = required.first() else {
        return;
    };
    match actual.first() {
        None => report.missing.push(format!("{path}/0")),
        Some(Value::Object(first)) if !first.contains_key("name") => {
            report.missing.push(format!("{path}/0/name"))
        }
        Some(Value::Object(_)) => report.incompatible.push(format!(
            "{path}/0/name must have value {}",
            python_repr(&Value::String(PREFECT_CONTAINER.into()))
        )),
        Some(_) => report.incompatible.push(format!(
            "{path}/0 must have value {}",
            python_repr(required_first)
        )),
    }
}

fn is_prefect_container(container: &Value) -> bool {
    container.get("name").and_then(Value::as_str) == Some(PREFECT_CONTAINER)
}

fn prefect_container_count(manifest: &Value) -> usize {
    manifest
        .pointer(CONTAINERS_POINTER)
        .and_then(Value::as_array)
        .map_or(0, |containers| {
            containers
                .iter()
                .filter(|c| is_prefect_container(c))
                .count()
        })
}

/// The flow's container, found by name; validation has made sure there is exactly one.
pub fn prefect_container_mut(manifest: &mut Value) -> Option<&mut Map<String, Value>> {
    manifest
        .pointer_mut(CONTAINERS_POINTER)?
        .as_array_mut()?
        .iter_mut()
        .find(|container| is_prefect_container(container))?
        .as_object_mut()
}

/// Python's `==` on JSON data: `1 == 1.0 == True`, containers compared element by element.
fn python_equal(left: &Value, right: &Value) -> bool {
    match (left, right) {
        (Value::Array(left), Value::Array(right)) => {
            left.len() == right.len() && left.iter().zip(right).all(|(l, r)| python_equal(l, r))
        }
        (Value::Object(left), Value::Object(right)) => {
            left.len() == right.len()
                && left
                    .iter()
                    .all(|(key, l)| right.get(key).is_some_and(|r| python_equal(l, r)))
        }
        _ => match (as_python_number(left), as_python_number(right)) {
            (Some(l), Some(r)) => l == r,
            _ => left == right,
        },
    }
}

fn as_python_number(value: &Value) -> Option<f64> {
    match value {
        Value::Bool(flag) => Some(f64::from(u8::from(*flag))),
        Value::Number(number) => number.as_f64(),
        _ => None,
    }
}

fn escape_pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn error_of(mut manifest: Value) -> String {
        validate_job_manifest(&mut manifest, "default")
            .expect_err("must be refused")
            .to_string()
    }

    fn with_containers(containers: Value) -> Value {
        let mut manifest = base_job_manifest();
        manifest["spec"]["template"]["spec"]["containers"] = containers;
        manifest
    }

    #[test]
    fn base_manifest_passes_and_gets_metadata_defaults() {
        let mut manifest = base_job_manifest();
        manifest["metadata"] = json!({});
        validate_job_manifest(&mut manifest, "team-a").expect("valid");
        assert_eq!(
            manifest["metadata"],
            json!({"annotations": {}, "labels": {}, "namespace": "team-a"})
        );
    }

    #[test]
    fn namespace_in_the_manifest_is_kept() {
        let mut manifest = base_job_manifest();
        manifest["metadata"]["namespace"] = json!("mine");
        validate_job_manifest(&mut manifest, "other").expect("valid");
        assert_eq!(manifest["metadata"]["namespace"], json!("mine"));
    }

    #[test]
    fn missing_attributes_are_listed_sorted_at_their_highest_level() {
        assert_eq!(
            error_of(json!({})),
            "Job is missing required attributes at the following paths: /apiVersion, /kind, /spec"
        );
        let mut manifest = base_job_manifest();
        manifest["spec"]["template"]["spec"] = json!({});
        assert_eq!(
            error_of(manifest),
            "Job is missing required attributes at the following paths: /spec/template/spec/completions, \
             /spec/template/spec/containers, /spec/template/spec/parallelism, /spec/template/spec/restartPolicy"
        );
    }

    #[test]
    fn incompatible_values_name_the_required_value_in_python_syntax() {
        let mut manifest = base_job_manifest();
        manifest["apiVersion"] = json!("v1");
        manifest["kind"] = json!("JobbledyJunk");
        assert_eq!(
            error_of(manifest),
            "Job has incompatible values for the following attributes: /apiVersion must have value 'batch/v1', \
             /kind must have value 'Job'"
        );
        let mut manifest = base_job_manifest();
        manifest["spec"]["template"]["spec"]["parallelism"] = json!(2);
        manifest["spec"]["template"]["spec"]["restartPolicy"] = json!("OnFailure");
        assert_eq!(
            error_of(manifest),
            "Job has incompatible values for the following attributes: /spec/template/spec/parallelism must have \
             value 1, /spec/template/spec/restartPolicy must have value 'Never'"
        );
    }

    #[test]
    fn missing_wins_over_incompatible() {
        let manifest = json!({"apiVersion": "v1", "kind": "Job"});
        assert_eq!(
            error_of(manifest),
            "Job is missing required attributes at the following paths: /spec"
        );
    }

    #[test]
    fn numbers_compare_as_python_does() {
        let mut manifest = base_job_manifest();
        manifest["spec"]["template"]["spec"]["completions"] = json!(1.0);
        validate_job_manifest(&mut manifest, "default").expect("1.0 == 1 in Python");
        manifest["spec"]["template"]["spec"]["parallelism"] = json!("1");
        assert!(error_of(manifest).ends_with("/spec/template/spec/parallelism must have value 1"));
    }

    #[test]
    fn prefect_container_is_found_anywhere_in_the_list() {
        for containers in [
            json!([{"name": "sidecar"}, {"name": "prefect-job"}]),
            json!([{"name": "a", "image": "b"}, {"name": "c"}, {"name": "prefect-job", "image": "x"}]),
        ] {
            let mut manifest = with_containers(containers);
            validate_job_manifest(&mut manifest, "default").expect("valid");
            assert!(prefect_container_mut(&mut manifest).is_some());
        }
    }

    #[test]
    fn containers_without_the_prefect_container_are_refused() {
        assert_eq!(
            error_of(with_containers(json!([{"name": "sidecar"}]))),
            "Job has incompatible values for the following attributes: /spec/template/spec/containers/0/name \
             must have value 'prefect-job'"
        );
        assert_eq!(
            error_of(with_containers(json!([]))),
            "Job is missing required attributes at the following paths: /spec/template/spec/containers/0"
        );
        assert_eq!(
            error_of(with_containers(json!([{"image": "x"}]))),
            "Job is missing required attributes at the following paths: /spec/template/spec/containers/0/name"
        );
        assert_eq!(
            error_of(with_containers(json!("{{ containers }}"))),
            "Job has incompatible values for the following attributes: /spec/template/spec/containers must have \
             value [{'name': 'prefect-job'}]"
        );
        assert_eq!(
            error_of(with_containers(json!(["prefect-job"]))),
            "Job has incompatible values for the following attributes: /spec/template/spec/containers/0 must have \
             value {'name': 'prefect-job'}"
        );
    }

    #[test]
    fn two_prefect_containers_are_refused() {
        let message = error_of(with_containers(
            json!([{"name": "prefect-job"}, {"name": "prefect-job"}]),
        ));
        assert!(
            message.contains("2 containers named 'prefect-job'"),
            "{message}"
        );
    }

    #[test]
    fn metadata_that_is_not_a_mapping_is_refused_clearly() {
        let mut manifest = base_job_manifest();
        manifest["metadata"] = json!("x");
        assert_eq!(
            error_of(manifest),
            "Job has incompatible values for the following attributes: /metadata must have value \
             {'annotations': {}, 'labels': {}}"
        );
    }

    #[test]
    fn a_manifest_that_is_not_a_mapping_is_refused() {
        assert_eq!(
            error_of(json!(["Job"])),
            "job_manifest must be a mapping, got a list"
        );
    }

    #[test]
    fn extra_user_content_is_kept() {
        let mut manifest = base_job_manifest();
        manifest["spec"]["activeDeadlineSeconds"] = json!(60);
        manifest["spec"]["template"]["spec"]["containers"][0]["image"] = json!("x");
        validate_job_manifest(&mut manifest, "default").expect("valid");
        assert_eq!(manifest["spec"]["activeDeadlineSeconds"], json!(60));
    }
}
