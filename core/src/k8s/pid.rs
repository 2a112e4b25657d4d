//! A flow run's infrastructure pid: `<cluster uid>:<namespace>:<job>`, or `<namespace>:<job>`
//! when the cluster's uid is unknown. Prefect stores it with the run and hands it back to
//! cancel the run, possibly to another worker process.

use crate::manifest::python_text::python_repr;
use serde_json::Value;
use std::fmt;
use std::str::FromStr;

/// Where a flow run's Job lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfrastructurePid {
    /// The uid of the cluster's `kube-system` namespace (or the configured cluster uid).
    pub cluster_uid: Option<String>,
    /// The Job's namespace.
    pub namespace: String,
    /// The Job's name.
    pub job_name: String,
}

impl fmt::Display for InfrastructurePid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.cluster_uid {
            Some(uid) => write!(f, "{uid}:{}:{}", self.namespace, self.job_name),
            None => write!(f, "{}:{}", self.namespace, self.job_name),
        }
    }
}

/// A pid that is neither of the two forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Invalid infrastructure pid {}: expected '<cluster uid>:<namespace>:<job>' or '<namespace>:<job>'.", python_repr(&Value::String(.0.clone())))]
pub struct InvalidPid(pub String);

impl FromStr for InfrastructurePid {
    type Err = InvalidPid;

    fn from_str(text: &str) -> Result<Self, InvalidPid> {
        let parts: Vec<&str> = text.split(':').collect();
        let (cluster_uid, namespace, job_name) = match parts.as_slice() {
            [uid, namespace, job] => (Some(*uid), *namespace, *job),
            [namespace, job] => (None, *namespace, *job),
            _ => return Err(InvalidPid(text.to_owned())),
        };
        Ok(InfrastructurePid {
            cluster_uid: cluster_uid.filter(|uid| !uid.is_empty()).map(str::to_owned),
            namespace: namespace.to_owned(),
            job_name: job_name.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_round_trip() {
        for text in ["0a1b-uid:data:flow-abcde", "data:flow-abcde"] {
            let pid: InfrastructurePid = text.parse().unwrap();
            assert_eq!(pid.to_string(), text);
        }
        let pid: InfrastructurePid = "u:ns:job".parse().unwrap();
        assert_eq!(pid.cluster_uid.as_deref(), Some("u"));
        assert_eq!(
            (pid.namespace.as_str(), pid.job_name.as_str()),
            ("ns", "job")
        );
    }

    #[test]
    fn other_shapes_are_refused_with_both_forms_named() {
        for text in ["job", "a:b:c:d", ""] {
            let error = text.parse::<InfrastructurePid>().unwrap_err();
            assert_eq!(
                error.to_string(),
                format!(
                    "Invalid infrastructure pid '{text}': expected '<cluster uid>:<namespace>:<job>' or '<namespace>:<job>'."
                )
            );
        }
    }
}
