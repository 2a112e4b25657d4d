//! Checks a rendered Job manifest against the attributes every Prefect flow-run Job needs.
//!
//! As the Python worker does (`JsonPatch.from_diff(manifest, base)`), the check is the RFC 6902
//! difference from the manifest to the base manifest: an `add` is a missing attribute, a
//! `replace` an incompatible value, a `remove` something the user added and keeps. The messages
//! keep the Python worker's wording, so users and their tooling see the same text. One
//! deliberate difference: the flow's container is found by its name `prefect-job` wherever it
//! sits among the containers (sidecars may come first): it is compared as if it came first,
//! and two containers with that name are refused instead of silently editing the first one.
//! Python's jsonpatch also pairs a removed value with an equal added one into a `move`, which
//! lets a manifest without `completions` pass when another attribute happens to be 1; here a
//! missing attribute is missing.

use std::borrow::Cow;

use crate::manifest::defaults::{base_job_manifest, PREFECT_CONTAINER};
use crate::manifest::error::{json_type_name, ManifestError, Result};
use crate::manifest::python_text::python_repr;
use json_patch::PatchOperation;
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

    let mut missing = Vec::new();
    let mut incompatible = Vec::new();
    let compared = with_prefect_container_first(manifest);
    for operation in json_patch::diff(&compared, &base_job_manifest()).iter() {
        match operation {
            PatchOperation::Add(add) => missing.push(add.path.to_string()),
            PatchOperation::Replace(replace) => incompatible.push(format!(
                "{} must have value {}",
                replace.path,
                python_repr(&replace.value)
            )),
            // What the user has beyond the base is theirs to keep; a diff has no other ops.
            _ => {}
        }
    }
    if !missing.is_empty() {
        missing.sort();
        return Err(ManifestError::MissingAttributes(missing));
    }
    if !incompatible.is_empty() {
        incompatible.sort();
        return Err(ManifestError::IncompatibleValues(incompatible));
    }
    let count = prefect_container_count(manifest);
    if count > 1 {
        return Err(ManifestError::DuplicatePrefectContainer { count });
    }
    Ok(())
}

/// The manifest as the difference sees it: the first container named `prefect-job` moved to
/// the front, where the base manifest has it. Copied only when it is not there already; when
/// no container has the name, the first one is compared (and reported on), as the Python
/// worker does.
fn with_prefect_container_first(manifest: &Value) -> Cow<'_, Value> {
    let position = manifest
        .pointer(CONTAINERS_POINTER)
        .and_then(Value::as_array)
        .and_then(|containers| containers.iter().position(is_prefect_container));
    match position {
        None | Some(0) => Cow::Borrowed(manifest),
        Some(index) => {
            let mut moved = manifest.clone();
            if let Some(containers) = moved
                .pointer_mut(CONTAINERS_POINTER)
                .and_then(Value::as_array_mut)
            {
                let container = containers.remove(index);
                containers.insert(0, container);
            }
            Cow::Owned(moved)
        }
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
    fn numbers_compare_as_the_python_workers_json_patch_does() {
        // `JsonPatch.from_diff` compares scalars by their JSON text: 1.0 and true are not 1.
        for (value, text) in [(json!(1.0), "1"), (json!(true), "1"), (json!("1"), "1")] {
            let mut manifest = base_job_manifest();
            manifest["spec"]["template"]["spec"]["completions"] = value;
            assert!(
                error_of(manifest).ends_with(&format!(
                    "/spec/template/spec/completions must have value {text}"
                )),
                "{text}"
            );
        }
    }

    #[test]
    fn the_users_container_order_is_kept() {
        let containers = json!([{"name": "sidecar", "image": "s"}, {"name": "prefect-job"}]);
        let mut manifest = with_containers(containers.clone());
        validate_job_manifest(&mut manifest, "default").expect("valid");
        assert_eq!(
            manifest["spec"]["template"]["spec"]["containers"],
            containers
        );
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
