//! Secrets the worker creates: for the credentials of a pool's runs (the Prefect API key), and
//! one per Job for its plain environment (`..._WORKER_STORE_ENV_AS_SECRET`).

use crate::k8s::cluster::Cluster;
use crate::k8s::error::{K8sError, Result};
use crate::k8s::jobs::CreatedJob;
use crate::manifest::credentials::SecretToCreate;
use crate::manifest::env_secret::EnvSecret;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::Api;

/// Label of everything the worker creates besides Jobs.
const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "prefect");
/// The flow run a Secret belongs to.
const FLOW_RUN_ID_LABEL: &str = "prefect.io/flow-run-id";

/// Creates the Secret `name` holding `value` under `key` unless it exists; `Ok(true)` when this
/// call created it. Secret names carry a digest of their value, so an existing one already
/// holds the same value: one request, and nothing overwritten that a running pod may need.
pub async fn ensure_secret(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
    key: &str,
    value: &str,
) -> Result<bool> {
    use k8s_openapi::api::core::v1::Secret;
    use k8s_openapi::ByteString;
    use std::collections::BTreeMap;

    let secrets: Api<Secret> = Api::namespaced(cluster.client(), namespace);
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([(MANAGED_BY.0.into(), MANAGED_BY.1.into())])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            key.to_owned(),
            ByteString(value.as_bytes().to_vec()),
        )])),
        ..Default::default()
    };
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(error) => Err(K8sError::from_kube(
            error,
            "create",
            &format!("secret '{name}' in namespace '{namespace}'"),
        )),
    }
}

/// Deletes the Secret `name`; `Ok(false)` when it did not exist.
pub async fn delete_secret(cluster: &Cluster, namespace: &str, name: &str) -> Result<bool> {
    use k8s_openapi::api::core::v1::Secret;
    let secrets: Api<Secret> = Api::namespaced(cluster.client(), namespace);
    match secrets.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
        Err(error) => Err(K8sError::from_kube(
            error,
            "delete",
            &format!("secret '{name}' in namespace '{namespace}'"),
        )),
    }
}

/// Creates the Secret holding one run's plain environment (before its Job, which reads it).
pub async fn create_env_secret(
    cluster: &Cluster,
    namespace: &str,
    flow_run_id: &str,
    secret: &EnvSecret,
) -> Result<()> {
    use k8s_openapi::api::core::v1::Secret;
    use std::collections::BTreeMap;

    let secrets: Api<Secret> = Api::namespaced(cluster.client(), namespace);
    let object = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(secret.name.clone()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([
                (MANAGED_BY.0.into(), MANAGED_BY.1.into()),
                (FLOW_RUN_ID_LABEL.into(), flow_run_id.to_owned()),
            ])),
            ..Default::default()
        },
        string_data: Some(secret.data.clone()),
        ..Default::default()
    };
    secrets
        .create(&PostParams::default(), &object)
        .await
        .map(|_| ())
        .map_err(|error| {
            K8sError::from_kube(
                error,
                "create",
                &format!("secret '{}' in namespace '{namespace}'", secret.name),
            )
        })
}

/// Makes the Job the owner of the Secret `name`, so Kubernetes' garbage collector deletes the
/// Secret with the Job (its TTL, a deletion by hand or by the worker).
pub async fn give_secret_to_job(cluster: &Cluster, name: &str, job: &CreatedJob) -> Result<()> {
    use k8s_openapi::api::core::v1::Secret;

    let secrets: Api<Secret> = Api::namespaced(cluster.client(), &job.namespace);
    let owner = serde_json::json!({"metadata": {"ownerReferences": [{
        "apiVersion": "batch/v1",
        "kind": "Job",
        "name": job.name,
        "uid": job.uid,
    }]}});
    secrets
        .patch(name, &PatchParams::default(), &Patch::Merge(&owner))
        .await
        .map(|_| ())
        .map_err(|error| {
            K8sError::from_kube(
                error,
                "patch",
                &format!("secret '{name}' in namespace '{}'", job.namespace),
            )
        })
}

/// The API-key Secrets this worker process created on one cluster, and how many runs whose Job
/// may still be created reference each.
///
/// They outlive the worker: a pod that starts or retries later still needs its key, and their
/// names come from the pool and the key, so a restarted worker reuses them instead of adding
/// more. Only a Secret whose every run had its Job refused is deleted, so a refused run leaves
/// nothing behind.
#[derive(Default)]
pub struct CreatedSecrets {
    /// `(namespace, name)` -> runs referencing it.
    users: std::sync::Mutex<std::collections::HashMap<(String, String), usize>>,
    /// Held across a create or delete call, so a second run of the same Secret waits for the
    /// first to know whether this process created it.
    changing: tokio::sync::Mutex<()>,
}

/// A run's claim on a Secret this process created; give it back with [`CreatedSecrets::release`]
/// when the run's Job is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretClaim {
    /// The Secret's namespace.
    pub namespace: String,
    /// The Secret's name.
    pub name: String,
}

impl CreatedSecrets {
    fn users(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<(String, String), usize>> {
        // Each update is one insert, increment or remove: a poisoned map is still whole.
        self.users
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Makes sure the Secret exists; returns a claim when this process created it (now or for
    /// an earlier run), None when someone else did.
    pub async fn ensure(
        &self,
        cluster: &Cluster,
        namespace: &str,
        secret: &SecretToCreate,
    ) -> Result<Option<SecretClaim>> {
        let _changing = self.changing.lock().await;
        let key = (namespace.to_owned(), secret.reference.name.clone());
        let created = ensure_secret(
            cluster,
            namespace,
            &secret.reference.name,
            &secret.reference.key,
            &secret.value,
        )
        .await?;
        let mut users = self.users();
        match users.get_mut(&key) {
            Some(count) => *count += 1,
            None if created => {
                users.insert(key, 1);
            }
            None => return Ok(None),
        }
        Ok(Some(SecretClaim {
            namespace: namespace.to_owned(),
            name: secret.reference.name.clone(),
        }))
    }

    /// A run whose Job was refused gives its claim back; the last claim deletes the Secret.
    /// A failure to delete is returned for the run's log: the run itself failed already.
    pub async fn release(&self, cluster: &Cluster, claim: SecretClaim) -> Result<()> {
        let _changing = self.changing.lock().await;
        let key = (claim.namespace, claim.name);
        {
            let mut users = self.users();
            match users.get_mut(&key) {
                Some(count) if *count > 1 => {
                    *count -= 1;
                    return Ok(());
                }
                Some(_) => {
                    users.remove(&key);
                }
                None => return Ok(()),
            }
        }
        delete_secret(cluster, &key.0, &key.1).await.map(|_| ())
    }

    /// `(namespace, name)` of every Secret this process created and still counts.
    pub fn names(&self) -> Vec<(String, String)> {
        let mut names: Vec<_> = self.users().keys().cloned().collect();
        names.sort();
        names
    }

    /// Forgets every Secret (worker shutdown); the Secrets themselves stay.
    pub fn forget(&self) {
        self.users().clear();
    }
}
