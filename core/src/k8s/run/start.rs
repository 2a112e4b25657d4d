//! Starting a flow run: subscribe to its Job's events, store its credentials, create its Job
//! (with retries, adopting a Job an earlier attempt created), name its pid and follow it.
//!
//! This is the one way a run starts. The order is the point: the subscription comes before the
//! Job exists, so none of its events can be missed; the Secrets come before the Job that
//! references them; a Job the API refused takes its Secrets with it; and a Job that exists
//! owns its env Secret, so Kubernetes deletes the two together.

use super::follower::follow_run;
use super::stream::RunEventStream;
use super::FollowOptions;
use crate::k8s::cluster::Cluster;
use crate::k8s::error::K8sError;
use crate::k8s::jobs::{create_job, CreatedJob, RetryPolicy};
use crate::k8s::logs::LogSink;
use crate::k8s::pid::InfrastructurePid;
use crate::k8s::secrets::{create_env_secret, delete_secret, give_secret_to_job};
use crate::manifest::credentials::{keep_credentials_out, CredentialSettings};
use crate::manifest::env_secret::{env_secret_name, move_plain_env_to_secret, EnvSecret};
use crate::manifest::python_text::python_repr;
use serde_json::Value;
use std::sync::Arc;

/// Kubernetes stores an object in one etcd request, 1.5 MiB at most by default; above about
/// 1 MiB a refused Job is most likely refused for its size, whatever the API server says.
const LARGE_MANIFEST_BYTES: usize = 1024 * 1024;

/// Everything one run needs to start, from its job configuration and the worker's settings.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// The Job's namespace.
    pub namespace: String,
    /// The flow run's id (the Job's `prefect.io/flow-run-id` label).
    pub flow_run_id: String,
    /// The prepared Job manifest.
    pub manifest: Value,
    /// Which credentials the Job reads from Secrets instead of its manifest.
    pub credentials: CredentialSettings,
    /// How the create call is retried.
    pub create_retry: RetryPolicy,
    /// Move the flow container's plain env values into a Secret of the Job's own
    /// (`..._WORKER_STORE_ENV_AS_SECRET`).
    pub store_env_as_secret: bool,
    /// The cluster uid from the settings; when None the `kube-system` namespace's uid is read.
    pub cluster_uid: Option<String>,
    /// How the run is followed once its Job exists.
    pub follow: FollowOptions,
}

/// A run whose Job exists and is being followed.
pub struct StartedRun {
    /// The Job.
    pub job: CreatedJob,
    /// Where the Job lives, for Prefect.
    pub pid: InfrastructurePid,
    /// Why the pid has no cluster uid, when it has none.
    pub cluster_uid_unknown: Option<String>,
    /// Warnings for the flow run's log (a credential left in plain text in the manifest).
    pub warnings: Vec<String>,
    /// What happens to the run from here on; the last event is its outcome.
    pub events: RunEventStream,
}

/// Why a run did not start. The message is the whole story for the flow run's log: what
/// failed, the API's answer, and a hint where the cause is a usual one.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StartError {
    /// The API server refused: the run cannot start as configured.
    #[error("{message}")]
    Refused {
        /// What to tell the user.
        message: String,
        /// The API's answer.
        #[source]
        cause: K8sError,
    },
    /// The API server did not answer, or answered with something unusable: the run may start
    /// later.
    #[error("{message}")]
    Unavailable {
        /// What to tell the user.
        message: String,
        /// What happened.
        #[source]
        cause: K8sError,
    },
}

impl StartError {
    /// The Kubernetes error behind it.
    pub fn cause(&self) -> &K8sError {
        match self {
            StartError::Refused { cause, .. } | StartError::Unavailable { cause, .. } => cause,
        }
    }
}

/// Starts a run: see the module's documentation. A failure before the Job exists leaves
/// nothing behind (no subscription, no Secret this run alone needed).
pub async fn start_run(
    cluster: Arc<Cluster>,
    request: RunRequest,
    log_sink: LogSink,
) -> Result<StartedRun, StartError> {
    let RunRequest {
        namespace,
        flow_run_id,
        mut manifest,
        credentials,
        create_retry,
        store_env_as_secret,
        cluster_uid,
        follow,
    } = request;
    let subscription = cluster
        .namespace(&namespace)
        .subscribe(&flow_run_id)
        .await
        .map_err(|error| watch_failure(error, &namespace, &cluster))?;
    let secrets = cluster.created_secrets();
    let mut credentials = keep_credentials_out(&mut manifest, &credentials);
    // After the credentials: a key they turned into a Secret reference stays a reference.
    let env_secret = if store_env_as_secret {
        let name = env_secret_name(&manifest, &random_suffix());
        move_plain_env_to_secret(&mut manifest, &name)
    } else {
        None
    };
    if let Some(secret) = &env_secret {
        create_env_secret(&cluster, &namespace, &flow_run_id, secret)
            .await
            .map_err(|error| {
                secret_failure(error, SecretContent::Environment, &secret.name, &namespace)
            })?;
    }
    let claim = match &credentials.secret_to_create {
        Some(secret) => match secrets.ensure(&cluster, &namespace, secret).await {
            Ok(claim) => claim,
            Err(error) => {
                let failure = secret_failure(
                    error,
                    SecretContent::ApiKey,
                    &secret.reference.name,
                    &namespace,
                );
                return Err(without_env_secret(failure, &cluster, &namespace, &env_secret).await);
            }
        },
        None => None,
    };
    let job = match create_job(&cluster, &namespace, &manifest, &flow_run_id, &create_retry).await {
        Ok(job) => job,
        Err(error) => {
            let mut failure = creation_failure(error, &manifest, &namespace, &cluster);
            // The API refused the Job: nothing of this run may stay behind. (After a failure
            // whose effect is unknown the Job may exist; its API-key Secret, shared with the
            // pool's other runs, stays.)
            if let (StartError::Refused { message, cause }, Some(claim)) = (&failure, claim) {
                if let Err(error) = secrets.release(&cluster, claim).await {
                    failure = StartError::Refused {
                        message: format!(
                            "{message} (and its API-key Secret could not be deleted: {error})"
                        ),
                        cause: cause.clone(),
                    };
                }
            }
            // The env Secret is this run's alone: no Job of the run is known to read it.
            return Err(without_env_secret(failure, &cluster, &namespace, &env_secret).await);
        }
    };
    drop(manifest);
    if let Some(secret) = &env_secret {
        if let Err(error) = give_secret_to_job(&cluster, &secret.name, &job).await {
            credentials.warnings.push(format!(
                "The Secret '{}' holding the Job's environment could not be given to Job '{}' \
                 ({error}), so it will not be deleted with the Job: delete it when the Job is \
                 gone. (The worker needs 'patch' on secrets.)",
                secret.name, job.name
            ));
        }
    }
    let (cluster_uid, cluster_uid_unknown) = match cluster_uid.filter(|uid| !uid.is_empty()) {
        Some(uid) => (Some(uid), None),
        None => match cluster.uid().await {
            Ok(uid) => (Some(uid), None),
            Err(reason) => (None, Some(reason)),
        },
    };
    let pid = InfrastructurePid {
        cluster_uid,
        namespace: job.namespace.clone(),
        job_name: job.name.clone(),
    };
    let events = RunEventStream::spawn(|sender| {
        follow_run(
            cluster,
            subscription,
            job.name.clone(),
            follow,
            sender,
            log_sink,
        )
    });
    Ok(StartedRun {
        job,
        pid,
        cluster_uid_unknown,
        warnings: credentials.warnings,
        events,
    })
}

/// Deletes the run's env Secret after its start failed; a failure to delete joins the message.
async fn without_env_secret(
    failure: StartError,
    cluster: &Cluster,
    namespace: &str,
    env_secret: &Option<EnvSecret>,
) -> StartError {
    let Some(secret) = env_secret else {
        return failure;
    };
    match delete_secret(cluster, namespace, &secret.name).await {
        Ok(_) => failure,
        Err(error) => {
            let note = format!(
                " (and the Secret '{}' holding its environment could not be deleted: {error})",
                secret.name
            );
            match failure {
                StartError::Refused { message, cause } => StartError::Refused {
                    message: message + &note,
                    cause,
                },
                StartError::Unavailable { message, cause } => StartError::Unavailable {
                    message: message + &note,
                    cause,
                },
            }
        }
    }
}

/// Eight random hex digits: what makes a run's env Secret name its own.
fn random_suffix() -> String {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut bytes = [0u8; 4];
    // The system's generator does not fail on Linux; zeros would still make a valid name.
    let _ = SystemRandom::new().fill(&mut bytes);
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn quoted(text: &str) -> String {
    python_repr(&Value::String(text.to_owned()))
}

/// The API server did not accept the credentials of `source_name`.
pub fn credentials_hint(source_name: &str) -> String {
    format!(
        "The API server did not accept the credentials from {source_name}: renew the token or \
         certificate of its user, or fix its auth settings."
    )
}

fn missing_namespace_hint(namespace: &str) -> String {
    format!(
        "Create the namespace {} or point the work pool at an existing one.",
        quoted(namespace)
    )
}

fn with_hint(message: String, hint: Option<String>) -> String {
    match hint {
        Some(hint) => format!("{message}. Hint: {hint}"),
        None => message,
    }
}

/// Subscribing to the run's Jobs and pods failed.
pub fn watch_failure(error: K8sError, namespace: &str, cluster: &Cluster) -> StartError {
    match &error {
        K8sError::Api {
            code,
            reason,
            message,
            ..
        } => {
            let hint = if *code == 401 {
                credentials_hint(cluster.source_name())
            } else {
                "the worker needs get, list and watch on jobs and pods (and pods/log) there.".into()
            };
            StartError::Refused {
                message: format!(
                    "Unable to watch Kubernetes jobs and pods in namespace {}: {reason}: {message}. \
                     Hint: {hint}",
                    quoted(namespace)
                ),
                cause: error,
            }
        }
        _ => StartError::Unavailable {
            message: format!(
                "Unable to reach the Kubernetes API server {} (configured by {}): {error}",
                cluster.server(),
                cluster.source_name()
            ),
            cause: error,
        },
    }
}

/// What a Secret the worker creates for a run holds, in the user's words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretContent {
    /// The pool's Prefect API key (`..._CREATE_SECRET_FOR_API_KEY`).
    ApiKey,
    /// The flow container's environment (`..._STORE_ENV_AS_SECRET`).
    Environment,
}

impl SecretContent {
    fn what(self) -> &'static str {
        match self {
            SecretContent::ApiKey => "the Prefect API key",
            SecretContent::Environment => "the Job's environment",
        }
    }

    fn forbidden_hint(self) -> &'static str {
        match self {
            SecretContent::ApiKey => {
                "The worker's Kubernetes identity needs create on secrets there, or set \
                 PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_KEY_SECRET_NAME to a Secret that \
                 holds the key."
            }
            SecretContent::Environment => {
                "The worker's Kubernetes identity needs create, patch and delete on secrets \
                 there, or unset PREFECT_INTEGRATIONS_KUBERNETES_WORKER_STORE_ENV_AS_SECRET."
            }
        }
    }
}

/// Storing `content` in its Secret failed.
pub fn secret_failure(
    error: K8sError,
    content: SecretContent,
    name: &str,
    namespace: &str,
) -> StartError {
    match &error {
        K8sError::Api {
            code,
            reason,
            message: api_message,
            ..
        } => {
            let message = format!(
                "Unable to store {} in Secret {} in namespace {}: {reason}: {api_message}",
                content.what(),
                quoted(name),
                quoted(namespace)
            );
            let hint = match code {
                403 => Some(content.forbidden_hint().to_owned()),
                404 if api_message.contains(namespace) => Some(missing_namespace_hint(namespace)),
                _ => None,
            };
            StartError::Refused {
                message: with_hint(message, hint),
                cause: error,
            }
        }
        _ => StartError::Unavailable {
            message: format!(
                "Unable to store {} in Secret {}: {error}",
                content.what(),
                quoted(name)
            ),
            cause: error,
        },
    }
}

/// Creating the Job failed (after its retries): the Python worker's wording, with hints for the
/// usual causes.
pub fn creation_failure(
    error: K8sError,
    manifest: &Value,
    namespace: &str,
    cluster: &Cluster,
) -> StartError {
    creation_failure_from(
        error,
        manifest,
        namespace,
        cluster.source_name(),
        cluster.server(),
    )
}

fn creation_failure_from(
    error: K8sError,
    manifest: &Value,
    namespace: &str,
    source_name: &str,
    server: &str,
) -> StartError {
    let K8sError::Api {
        code,
        reason,
        message: api_message,
        ..
    } = &error
    else {
        return StartError::Unavailable {
            message: format!(
                "Unable to create Kubernetes job: {error} (cluster {server}, configured by \
                 {source_name})"
            ),
            cause: error,
        };
    };
    let message = format!("Unable to create Kubernetes job: {reason}: {api_message}");
    let text = format!("{reason} {api_message}").to_lowercase();
    let hint = if text.contains("quota") || text.contains("exceeded") {
        Some("The namespace's resource quota is used up or too small for this Job.".to_owned())
    } else if *code == 401 {
        Some(credentials_hint(source_name))
    } else if *code == 403 || text.contains("forbidden") {
        Some(
            "The worker's Kubernetes identity lacks the RBAC permission to create Jobs here."
                .to_owned(),
        )
    } else if *code == 404 && api_message.contains(namespace) {
        Some(missing_namespace_hint(namespace))
    } else {
        let size = serde_json::to_vec(manifest).map_or(0, |bytes| bytes.len());
        (size > LARGE_MANIFEST_BYTES).then(|| {
            format!(
                "The Job manifest is {:.1} MiB; Kubernetes stores objects of at most about \
                 1.5 MiB. Move large env values into a ConfigMap or Secret and reference them \
                 (valueFrom).",
                size as f64 / 1024.0 / 1024.0
            )
        })
    };
    StartError::Refused {
        message: with_hint(message, hint),
        cause: error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn api_error(code: u16, reason: &str, message: &str) -> K8sError {
        K8sError::Api {
            verb: "create".into(),
            what: "job".into(),
            code,
            reason: reason.into(),
            message: message.into(),
        }
    }

    fn created(error: K8sError, manifest: &Value, source: &str) -> String {
        creation_failure_from(error, manifest, "default", source, "https://k8s").to_string()
    }

    /// Was `tests/test_bad_input.py::test_refusals_get_the_hint_for_their_cause`, with the
    /// same assertions, when these messages were composed in Python.
    #[test]
    fn test_refusals_get_the_hint_for_their_cause() {
        let small = json!({"kind": "Job"});
        let large = json!({"env": (0..1200)
            .map(|i| json!({"name": format!("VAR_{i}"), "value": "x".repeat(1024)}))
            .collect::<Vec<_>>()});
        let source = "the work pool's cluster_config block";
        let unauthorized = created(
            api_error(401, "Unauthorized", "Unauthorized"),
            &small,
            source,
        );
        assert!(unauthorized.ends_with(
            "Hint: The API server did not accept the credentials from the work pool's \
             cluster_config block: renew the token or certificate of its user, or fix its auth \
             settings."
        ));
        let invalid = || api_error(422, "Invalid", "Job.batch \"x\" is invalid");
        assert_eq!(
            created(invalid(), &small, source),
            "Unable to create Kubernetes job: Invalid: Job.batch \"x\" is invalid"
        );
        assert!(created(invalid(), &large, source).contains("Hint: The Job manifest is 1.2 MiB"));

        let forbidden = || api_error(403, "Forbidden", "secrets \"s\" is forbidden");
        assert!(secret_failure(forbidden(), SecretContent::ApiKey, "s", "d")
            .to_string()
            .contains("needs create on secrets there"));
        let other = || api_error(500, "InternalError", "boom");
        assert_eq!(
            secret_failure(other(), SecretContent::ApiKey, "s", "d").to_string(),
            "Unable to store the Prefect API key in Secret 's' in namespace 'd': InternalError: boom"
        );
        // The environment's Secret is named for what it holds, with its own way out.
        let environment = secret_failure(forbidden(), SecretContent::Environment, "j-env-1", "d");
        assert!(environment
            .to_string()
            .starts_with("Unable to store the Job's environment in Secret 'j-env-1'"));
        assert!(environment
            .to_string()
            .contains("or unset PREFECT_INTEGRATIONS_KUBERNETES_WORKER_STORE_ENV_AS_SECRET"));
    }

    #[test]
    fn quota_rbac_and_missing_namespaces_get_their_hints() {
        let small = json!({});
        let quota = created(
            api_error(403, "Forbidden", "exceeded quota: compute"),
            &small,
            "s",
        );
        assert!(quota.ends_with(
            "Hint: The namespace's resource quota is used up or too small for this Job."
        ));
        let rbac = created(
            api_error(403, "Forbidden", "jobs is forbidden"),
            &small,
            "s",
        );
        assert!(rbac.contains("lacks the RBAC permission"));
        let missing = created(
            api_error(404, "NotFound", "namespaces \"default\" not found"),
            &small,
            "s",
        );
        assert!(missing.ends_with(
            "Hint: Create the namespace 'default' or point the work pool at an existing one."
        ));
        let transit = K8sError::Transport {
            verb: "create".into(),
            what: "job".into(),
            reason: "connection reset".into(),
        };
        assert!(matches!(
            creation_failure_from(transit, &small, "default", "s", "https://k8s"),
            StartError::Unavailable { .. }
        ));
    }
}
