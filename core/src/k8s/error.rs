//! Errors of the Kubernetes layer: reaching a cluster, creating, reading and deleting Jobs.

use thiserror::Error;

/// Result alias for the Kubernetes layer.
pub type Result<T, E = K8sError> = std::result::Result<T, E>;

/// What can go wrong between the worker and a Kubernetes API server.
///
/// Every message names where the cluster configuration came from, or the object involved, and
/// never contains a secret value.
#[derive(Debug, Clone, Error)]
pub enum K8sError {
    /// The cluster configuration could not be read or used.
    #[error("cannot use the Kubernetes configuration from {source_name}: {reason}")]
    Config {
        /// Where the configuration came from (work pool block, in-cluster, kubeconfig file).
        source_name: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The API server refused or failed a request.
    #[error("{verb} {what} failed: {reason}: {message}")]
    Api {
        /// The operation, e.g. `create job`.
        verb: String,
        /// The object, e.g. `in namespace 'data'`.
        what: String,
        /// HTTP status code.
        code: u16,
        /// Kubernetes' reason (`Forbidden`, `NotFound`, ...).
        reason: String,
        /// Kubernetes' message.
        message: String,
    },

    /// The request failed on the way (connection reset, timeout) so its effect is unknown.
    #[error("{verb} {what} failed in transit: {reason}")]
    Transport {
        /// The operation.
        verb: String,
        /// The object.
        what: String,
        /// What happened.
        reason: String,
    },

    /// A response that could not be understood.
    #[error("unexpected answer to {verb} {what}: {reason}")]
    Unexpected {
        /// The operation.
        verb: String,
        /// The object.
        what: String,
        /// What was wrong with it.
        reason: String,
    },
}

impl K8sError {
    /// HTTP status of an API error, if that is what this is.
    pub fn status_code(&self) -> Option<u16> {
        match self {
            K8sError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether the request may or may not have taken effect (the server may have acted on it):
    /// a timeout, a reset connection or a server-side error.
    pub fn is_ambiguous(&self) -> bool {
        match self {
            K8sError::Transport { .. } => true,
            K8sError::Api { code, .. } => *code >= 500 || *code == 408,
            _ => false,
        }
    }

    /// Whether trying again could succeed: ambiguous failures and throttling.
    pub fn is_retryable(&self) -> bool {
        self.is_ambiguous() || self.status_code() == Some(429)
    }

    /// Classifies a kube-rs error for the operation `verb` on `what`.
    pub fn from_kube(error: kube::Error, verb: &str, what: &str) -> Self {
        match error {
            kube::Error::Api(status) => K8sError::Api {
                verb: verb.into(),
                what: what.into(),
                code: status.code,
                reason: if status.reason.is_empty() {
                    default_reason(status.code).into()
                } else {
                    status.reason.clone()
                },
                message: status.message.clone(),
            },
            kube::Error::SerdeError(error) => K8sError::Unexpected {
                verb: verb.into(),
                what: what.into(),
                reason: error.to_string(),
            },
            other => K8sError::Transport {
                verb: verb.into(),
                what: what.into(),
                reason: with_tls_hint(describe_chain(&other)),
            },
        }
    }
}

/// Adds what to do to a TLS failure: rustls' own words ("received corrupt message of type
/// InvalidContentType") do not tell a user that the server speaks no TLS or that the
/// kubeconfig's CA is wrong. Recognised by text: the rustls error sits behind an `io::Error`,
/// whose `source()` skips it, so it cannot be downcast from the chain.
fn with_tls_hint(reason: String) -> String {
    let hint = if reason.contains("InvalidContentType") {
        "the server did not answer with TLS: point the kubeconfig's server URL at the API \
         server's https address and port"
    } else if reason.contains("not valid for name") {
        "the server's certificate is not valid for the host name the worker connects to: use \
         a name the certificate lists in the kubeconfig's server URL (or tls-server-name)"
    } else if reason.contains("invalid peer certificate") {
        "the server's certificate does not verify against the kubeconfig's \
         certificate-authority(-data), or the system's CAs when it names none: set the \
         cluster's CA (insecure-skip-tls-verify: true turns verification off)"
    } else {
        return reason;
    };
    format!("{reason}; hint: {hint}")
}

fn default_reason(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        409 => "Conflict",
        410 => "Gone",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "Error",
    }
}

/// An error and its causes on one line, so a user sees "connection refused" and not only
/// "service error".
pub fn describe_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_failures_say_what_to_do() {
        let plain = with_tls_hint(
            "ServiceError: client error (Connect): received corrupt message of type \
             InvalidContentType"
                .into(),
        );
        assert!(plain.ends_with(
            "; hint: the server did not answer with TLS: point the kubeconfig's server URL at \
             the API server's https address and port"
        ));
        let issuer =
            with_tls_hint("client error (Connect): invalid peer certificate: UnknownIssuer".into());
        assert!(issuer.contains("UnknownIssuer; hint: the server's certificate does not verify"));
        assert!(issuer.contains("insecure-skip-tls-verify: true"));
        let name = with_tls_hint(
            "invalid peer certificate: certificate not valid for name \"x.example\"".into(),
        );
        assert!(name.contains("hint: the server's certificate is not valid for the host name"));
        assert_eq!(
            with_tls_hint("tcp connect error: Connection refused (os error 111)".into()),
            "tcp connect error: Connection refused (os error 111)"
        );
    }
}
