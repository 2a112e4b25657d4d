//! The manifest core: Prefect templating, Job manifest validation and per-run preparation.
//! Pure data in, pure data out; no Python and no Kubernetes client here.

pub mod credentials;
pub mod defaults;
pub mod env_secret;
pub mod error;
pub mod patches;
pub mod prepare;
pub mod python_text;
pub mod shell_words;
pub mod slug;
pub mod template;
pub mod validate;

pub use defaults::{
    base_job_manifest, default_job_manifest_template, DEFAULT_COMMAND, PREFECT_CONTAINER,
};
pub use error::{ManifestError, Result};
pub use patches::{apply_job_manifest_patches, JOB_MANIFEST_PATCHES};
pub use prepare::{prepare_job_manifest, RunSettings};
pub use template::{apply_values, needs_api_resolution, ProcessEnvironment};
pub use validate::validate_job_manifest;
