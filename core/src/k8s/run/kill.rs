//! Cancelling a flow run: deleting the Job its infrastructure pid names, after checking that
//! the pid points at this worker's cluster and namespace.

use crate::k8s::cluster::Cluster;
use crate::k8s::error::K8sError;
use crate::k8s::jobs::delete_job;
use crate::k8s::pid::{InfrastructurePid, InvalidPid};
use crate::manifest::python_text::python_repr;
use serde_json::Value;

/// Why a run's Job was not deleted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KillError {
    /// The pid is neither of the two forms.
    #[error(transparent)]
    InvalidPid(#[from] InvalidPid),
    /// The Job lives in another namespace or on another cluster than this configuration's.
    #[error("{0}")]
    Elsewhere(String),
    /// There is no such Job (any more).
    #[error("{0}")]
    NotFound(String),
    /// The API server refused the deletion, or could not be reached.
    #[error("{message}")]
    Failed {
        /// What to tell the user.
        message: String,
        /// What happened.
        #[source]
        cause: Box<K8sError>,
    },
}

fn quoted(text: &str) -> String {
    python_repr(&Value::String(text.to_owned()))
}

/// Where `pid` says the Job is, if that is this configuration's namespace; checked before
/// connecting, so a pid of another namespace costs no request.
pub fn parse_pid_for(pid: &str, namespace: &str) -> Result<InfrastructurePid, KillError> {
    let pid: InfrastructurePid = pid.parse()?;
    if pid.namespace != namespace {
        return Err(KillError::Elsewhere(format!(
            "Unable to kill job {}: it runs in namespace {} but this worker's configuration for \
             the flow run uses namespace {}.",
            quoted(&pid.job_name),
            quoted(&pid.namespace),
            quoted(namespace)
        )));
    }
    Ok(pid)
}

/// Deletes the Job of `pid` with `grace_seconds` for its pods, unless the pid names another
/// cluster than this one (by `configured_uid`, else the `kube-system` namespace's uid; when
/// neither is known the pid is trusted).
pub async fn kill_run(
    cluster: &Cluster,
    pid: &InfrastructurePid,
    grace_seconds: Option<u32>,
    configured_uid: Option<&str>,
) -> Result<(), KillError> {
    let job = quoted(&pid.job_name);
    if let Some(pid_uid) = &pid.cluster_uid {
        let current = match configured_uid.filter(|uid| !uid.is_empty()) {
            Some(uid) => Some(uid.to_owned()),
            None => cluster.uid().await.ok(),
        };
        if current.is_some_and(|current| &current != pid_uid) {
            return Err(KillError::Elsewhere(format!(
                "Unable to kill job {job}: it runs on another cluster than this worker's (the \
                 cluster uids differ)."
            )));
        }
    }
    match delete_job(cluster, &pid.namespace, &pid.job_name, grace_seconds).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(KillError::NotFound(format!(
            "Unable to kill job {job}: it was not found in namespace {}.",
            quoted(&pid.namespace)
        ))),
        Err(cause) => Err(KillError::Failed {
            message: format!("Unable to kill job {job}: {cause}"),
            cause: Box::new(cause),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_of_another_namespace_is_refused_before_any_request() {
        let error = parse_pid_for("uid:data:flow-x", "default").unwrap_err();
        assert_eq!(
            error.to_string(),
            "Unable to kill job 'flow-x': it runs in namespace 'data' but this worker's \
             configuration for the flow run uses namespace 'default'."
        );
        assert!(matches!(
            parse_pid_for("nonsense", "default"),
            Err(KillError::InvalidPid(_))
        ));
        assert_eq!(
            parse_pid_for("default:flow-x", "default").unwrap().job_name,
            "flow-x"
        );
    }
}
