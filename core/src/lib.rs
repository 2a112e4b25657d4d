//! The core of the `kubernetes-rs` Prefect worker, with no Python in its dependency tree.
//!
//! - [`manifest`]: Prefect templating, Job manifest validation and per-run preparation; pure
//!   data in, pure data out.
//! - [`k8s`]: the Kubernetes layer: clients, Jobs and Secrets, shared watchers, log streams,
//!   and a run's whole lifecycle from subscription to outcome.
//!
//! The extension crate at the repository root (`_core`) binds this to Python and does nothing
//! else; `cargo test -p prefect-kubernetes-rs-core` covers everything here without Python.

pub mod k8s;
pub mod manifest;
