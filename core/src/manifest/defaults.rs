//! The default job manifest template and the base manifest every Job is checked against.

use serde_json::{json, Value};

/// The name of the container that runs the flow; every edit the worker makes targets it.
pub const PREFECT_CONTAINER: &str = "prefect-job";

/// The command a flow-run container runs when the template does not set one.
pub const DEFAULT_COMMAND: &str = "prefect flow-run execute";

/// The Job manifest template of the `kubernetes-rs` work pool type.
///
/// It is the union of both generations of the Python worker: the seed's fields plus the current
/// worker's annotations and resource requests/limits, so a pool template copied from a
/// `kubernetes` pool renders the same here.
pub fn default_job_manifest_template() -> Value {
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "annotations": "{{ annotations }}",
            "labels": "{{ labels }}",
            "namespace": "{{ namespace }}",
            "generateName": "{{ name }}-"
        },
        "spec": {
            "backoffLimit": "{{ backoff_limit }}",
            "ttlSecondsAfterFinished": "{{ finished_job_ttl }}",
            "template": {
                "spec": {
                    "parallelism": 1,
                    "completions": 1,
                    "restartPolicy": "Never",
                    "serviceAccountName": "{{ service_account_name }}",
                    "containers": [{
                        "name": PREFECT_CONTAINER,
                        "env": "{{ env }}",
                        "image": "{{ image }}",
                        "imagePullPolicy": "{{ image_pull_policy }}",
                        "args": "{{ command }}",
                        "resources": {
                            "limits": {"cpu": "{{ cpu_limit }}", "memory": "{{ memory_limit }}"},
                            "requests": {"cpu": "{{ cpu_request }}", "memory": "{{ memory_request }}"}
                        }
                    }]
                }
            }
        }
    })
}

/// The attributes and values a manifest must have for the worker to run a flow in it.
pub fn base_job_manifest() -> Value {
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"annotations": {}, "labels": {}},
        "spec": {
            "template": {
                "spec": {
                    "parallelism": 1,
                    "completions": 1,
                    "restartPolicy": "Never",
                    "containers": [{"name": PREFECT_CONTAINER}]
                }
            }
        }
    })
}
