//! Per-deployment RFC 6902 patches of the rendered Job manifest (`job_manifest_patches`).
//!
//! A work pool whose template declares the job variable `job_manifest_patches` lets each
//! deployment change its Job with JSON Patch operations (a toleration, a volume, a node
//! selector) instead of needing a work pool of its own. The default template does not declare
//! it: the template decides what deployments may change, so pool admins opt in. The patches are
//! applied to the rendered manifest before validation, so no patch can take away what a flow
//! run's Job needs; all of them or none apply.

use crate::manifest::error::{json_type_name, ManifestError, Result};
use json_patch::{PatchErrorKind, PatchOperation};
use serde_json::Value;

/// The job variable (and job configuration key) that holds a deployment's patches.
pub const JOB_MANIFEST_PATCHES: &str = "job_manifest_patches";

/// Applies `patches` (a list of RFC 6902 operations, or null for none) to `manifest`.
///
/// On any failure the manifest is left as it was and the error names the operation by its
/// index, `op` and `path`.
pub fn apply_job_manifest_patches(manifest: &mut Value, patches: &Value) -> Result<()> {
    let items = match patches {
        Value::Null => return Ok(()),
        Value::Array(items) => items,
        other => {
            return Err(ManifestError::PatchesNotAList {
                found: json_type_name(other),
            })
        }
    };
    let operations = items
        .iter()
        .enumerate()
        .map(|(index, item)| parse_operation(index, item))
        .collect::<Result<Vec<_>>>()?;
    json_patch::patch(manifest, &operations).map_err(|error| {
        let operation = &operations[error.operation];
        ManifestError::InvalidPatch {
            index: error.operation,
            op: op_name(operation).to_owned(),
            path: operation_path(operation),
            reason: why_it_failed(operation, &error.kind),
        }
    })
}

fn parse_operation(index: usize, item: &Value) -> Result<PatchOperation> {
    let text_of = |key: &str| match item.get(key) {
        Some(Value::String(text)) => text.clone(),
        Some(other) => other.to_string(),
        None => "?".to_owned(),
    };
    let invalid = |reason: String| ManifestError::InvalidPatch {
        index,
        op: text_of("op"),
        path: text_of("path"),
        reason,
    };
    if !item.is_object() {
        return Err(invalid(format!(
            "an operation must be a mapping such as {{\"op\": \"add\", \"path\": \
             \"/spec/template/spec/nodeSelector\", \"value\": {{...}}}}, got {}",
            json_type_name(item)
        )));
    }
    serde_json::from_value(item.clone()).map_err(|error| {
        invalid(format!(
            "not a JSON Patch (RFC 6902) operation: {error} (op is one of add, remove, \
             replace, move, copy, test; path and from are JSON pointers such as \
             /spec/template/spec/tolerations/-)"
        ))
    })
}

fn op_name(operation: &PatchOperation) -> &'static str {
    match operation {
        PatchOperation::Add(_) => "add",
        PatchOperation::Remove(_) => "remove",
        PatchOperation::Replace(_) => "replace",
        PatchOperation::Move(_) => "move",
        PatchOperation::Copy(_) => "copy",
        PatchOperation::Test(_) => "test",
    }
}

fn operation_path(operation: &PatchOperation) -> String {
    match operation {
        PatchOperation::Add(op) => op.path.to_string(),
        PatchOperation::Remove(op) => op.path.to_string(),
        PatchOperation::Replace(op) => op.path.to_string(),
        PatchOperation::Move(op) => op.path.to_string(),
        PatchOperation::Copy(op) => op.path.to_string(),
        PatchOperation::Test(op) => op.path.to_string(),
    }
}

/// What went wrong, in terms of the rendered manifest the user cannot see directly.
fn why_it_failed(operation: &PatchOperation, kind: &PatchErrorKind) -> String {
    match (operation, kind) {
        (PatchOperation::Add(_), PatchErrorKind::InvalidPointer) => {
            "the rendered Job manifest has nothing to add it to: the parent of the path must \
             exist (add the parent first), and a list index must be at most the list's length \
             (`-` appends)"
                .to_owned()
        }
        (_, PatchErrorKind::InvalidPointer) => {
            "the rendered Job manifest has nothing at that path".to_owned()
        }
        (PatchOperation::Move(op), PatchErrorKind::InvalidFromPointer) => {
            format!(
                "the rendered Job manifest has nothing at the from path {}",
                op.from
            )
        }
        (PatchOperation::Copy(op), PatchErrorKind::InvalidFromPointer) => {
            format!(
                "the rendered Job manifest has nothing at the from path {}",
                op.from
            )
        }
        (_, PatchErrorKind::TestFailed) => {
            "the value at that path is not the one the test expects".to_owned()
        }
        (_, kind) => kind.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::defaults::base_job_manifest;
    use serde_json::json;

    fn patched(patches: Value) -> Result<Value> {
        let mut manifest = base_job_manifest();
        apply_job_manifest_patches(&mut manifest, &patches)?;
        Ok(manifest)
    }

    fn error_of(patches: Value) -> String {
        patched(patches).expect_err("must be refused").to_string()
    }

    #[test]
    fn a_toleration_a_volume_and_a_node_selector_land_in_the_pod_spec() {
        let manifest = patched(json!([
            {"op": "add", "path": "/spec/template/spec/tolerations", "value": [
                {"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]},
            {"op": "add", "path": "/spec/template/spec/volumes", "value": [
                {"name": "data", "emptyDir": {}}]},
            {"op": "add", "path": "/spec/template/spec/containers/0/volumeMounts", "value": [
                {"name": "data", "mountPath": "/data"}]},
            {"op": "add", "path": "/spec/template/spec/nodeSelector", "value": {"pool": "gpu"}},
        ]))
        .expect("applies");
        let pod = &manifest["spec"]["template"]["spec"];
        assert_eq!(pod["tolerations"][0]["key"], json!("gpu"));
        assert_eq!(pod["volumes"][0]["name"], json!("data"));
        assert_eq!(
            pod["containers"][0]["volumeMounts"][0]["mountPath"],
            json!("/data")
        );
        assert_eq!(pod["nodeSelector"], json!({"pool": "gpu"}));
    }

    #[test]
    fn null_and_an_empty_list_change_nothing() {
        assert_eq!(patched(Value::Null).unwrap(), base_job_manifest());
        assert_eq!(patched(json!([])).unwrap(), base_job_manifest());
    }

    #[test]
    fn a_failing_operation_is_named_by_index_op_and_path_and_nothing_applies() {
        let mut manifest = base_job_manifest();
        let error = apply_job_manifest_patches(
            &mut manifest,
            &json!([
                {"op": "add", "path": "/spec/activeDeadlineSeconds", "value": 60},
                {"op": "remove", "path": "/spec/template/spec/tolerations"},
            ]),
        )
        .expect_err("the second operation has nothing to remove");
        assert_eq!(
            error.to_string(),
            "job_manifest_patches[1] (remove /spec/template/spec/tolerations): the rendered Job \
             manifest has nothing at that path"
        );
        assert_eq!(manifest, base_job_manifest(), "all or nothing");
    }

    #[test]
    fn an_add_under_a_missing_parent_says_to_add_the_parent() {
        let message = error_of(json!([
            {"op": "add", "path": "/spec/template/spec/affinity/nodeAffinity", "value": {}}
        ]));
        assert!(
            message.starts_with(
                "job_manifest_patches[0] (add /spec/template/spec/affinity/nodeAffinity): the \
                 rendered Job manifest has nothing to add it to"
            ),
            "{message}"
        );
    }

    #[test]
    fn a_failed_test_and_a_missing_from_are_named() {
        assert_eq!(
            error_of(json!([{"op": "test", "path": "/kind", "value": "CronJob"}])),
            "job_manifest_patches[0] (test /kind): the value at that path is not the one the \
             test expects"
        );
        assert_eq!(
            error_of(json!([{"op": "copy", "from": "/nope", "path": "/spec/x"}])),
            "job_manifest_patches[0] (copy /spec/x): the rendered Job manifest has nothing at \
             the from path /nope"
        );
    }

    #[test]
    fn what_is_not_an_operation_is_named_with_what_would_be() {
        let message = error_of(json!([{"op": "delete", "path": "/spec"}]));
        assert!(
            message.starts_with("job_manifest_patches[0] (delete /spec): not a JSON Patch"),
            "{message}"
        );
        assert!(message.contains("op is one of add, remove"), "{message}");
        let message = error_of(json!([{"op": "add", "path": "/spec/x"}]));
        assert!(message.contains("missing field `value`"), "{message}");
        let message = error_of(json!([{"op": "add", "path": "spec", "value": 1}]));
        assert!(message.starts_with("job_manifest_patches[0] (add spec): not a JSON Patch"));
        let message = error_of(json!(["add /spec/x 1"]));
        assert!(
            message.starts_with("job_manifest_patches[0] (? ?): an operation must be a mapping"),
            "{message}"
        );
        assert_eq!(
            error_of(json!({"op": "add"})),
            "job_manifest_patches must be a list of JSON Patch (RFC 6902) operations, got a \
             mapping"
        );
    }
}
