//! Errors of the manifest core: templating, validation and preparation.

use thiserror::Error;

/// Result alias for the manifest core.
pub type Result<T, E = ManifestError> = std::result::Result<T, E>;

/// Everything that can be wrong with a job template, a job manifest or the values fed into them.
///
/// Messages are what a user reads in a pydantic validation error or a crashed flow run, so each
/// names the offending field and, where it helps, what to do about it.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ManifestError {
    /// The manifest lacks attributes every Prefect Kubernetes Job needs (JSON pointer paths).
    #[error("Job is missing required attributes at the following paths: {}", .0.join(", "))]
    MissingAttributes(Vec<String>),

    /// The manifest sets attributes to values a Prefect Kubernetes Job cannot run with.
    /// Each entry reads `<path> must have value <python repr>`.
    #[error("Job has incompatible values for the following attributes: {}", .0.join(", "))]
    IncompatibleValues(Vec<String>),

    /// More than one container carries the name the worker needs to find its own container by.
    #[error("Job has {count} containers named 'prefect-job' at /spec/template/spec/containers; keep exactly one, the container that runs the flow")]
    DuplicatePrefectContainer {
        /// How many containers share the name.
        count: usize,
    },

    /// One of a deployment's `job_manifest_patches` cannot be read or applied.
    #[error("job_manifest_patches[{index}] ({op} {path}): {reason}")]
    InvalidPatch {
        /// The operation's position in the list.
        index: usize,
        /// Its `op` as given (`?` when it has none).
        op: String,
        /// Its `path` as given (`?` when it has none).
        path: String,
        /// What is wrong, and what would be right.
        reason: String,
    },

    /// `job_manifest_patches` is not a list.
    #[error(
        "job_manifest_patches must be a list of JSON Patch (RFC 6902) operations, got {found}"
    )]
    PatchesNotAList {
        /// The JSON type that was found instead.
        found: &'static str,
    },

    /// A value that must be a JSON object (mapping) is something else.
    #[error("{what} must be a mapping, got {found}")]
    NotAMapping {
        /// The field, in the user's words.
        what: String,
        /// The JSON type that was found instead.
        found: &'static str,
    },

    /// A label or annotation that must be text is something else (null, a list, a mapping).
    #[error("{what} must be text, got {found}")]
    NotText {
        /// The field, in the user's words.
        what: String,
        /// The JSON type that was found instead.
        found: &'static str,
    },

    /// The manifest has no container named `prefect-job` to put the flow run in.
    #[error("Job has no container named 'prefect-job' at /spec/template/spec/containers; the worker runs the flow in that container")]
    NoPrefectContainer,

    /// An environment variable entry cannot be used.
    #[error("invalid entry {entry} in the job's env: {reason}")]
    InvalidEnvEntry {
        /// The entry as the user wrote it (Python syntax).
        entry: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The container command/args cannot be turned into an argument list.
    #[error("invalid command {command:?} for the 'prefect-job' container: {source}")]
    InvalidCommand {
        /// The command text as the user wrote it.
        command: String,
        /// Why it could not be split into words.
        #[source]
        source: crate::manifest::shell_words::ShellWordsError,
    },

    /// The container's `args` is neither a string nor a list.
    #[error("Invalid job manifest template: 'command' must be a string or list, got {found}")]
    InvalidCommandType {
        /// The JSON type that was found.
        found: &'static str,
    },

    /// A label or annotation key, or a label value, stays invalid for Kubernetes even after slugifying it.
    #[error("{what} {original:?} cannot be made a valid Kubernetes {kind} (it becomes {slug:?}); {hint}")]
    InvalidMetadata {
        /// Which key or value, in the user's words (e.g. `label 'team' value`).
        what: String,
        /// `label key`, `label value` or `annotation key`.
        kind: &'static str,
        /// The text as given.
        original: String,
        /// What slugifying made of it.
        slug: String,
        /// What the user can do.
        hint: &'static str,
    },
}

/// The JSON type name of a value, for error messages.
pub fn json_type_name(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "a mapping",
    }
}
