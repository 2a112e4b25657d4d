//! The Kubernetes layer: clients, Job creation and deletion, shared watchers, log streams and
//! following a flow run's Job to its outcome. No Python here.

pub mod cluster;
pub mod error;
pub mod events;
pub mod jobs;
pub mod logs;
pub mod memory;
pub mod observer;
pub mod pid;
pub mod printer;
pub mod run;
pub mod secrets;
pub mod watch;
pub mod watched;

pub use cluster::{Cluster, ClusterRegistry, ClusterSource};
pub use error::{K8sError, Result};
