//! Reaching a cluster: one client per distinct configuration, kept for the worker's lifetime.

use crate::k8s::error::{describe_chain, K8sError, Result};
use crate::k8s::observer::{Bystander, ObserveOptions, Sightings};
use crate::k8s::secrets::CreatedSecrets;
use crate::k8s::watch::NamespaceWatch;
use k8s_openapi::api::core::v1::Namespace;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;
// A panic elsewhere must not make every later run panic too: the maps behind these locks stay
// consistent (each update is one insert or remove), so a poisoned lock is used as it is.
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::OnceCell;

/// Where the cluster configuration comes from, in the order the worker tries them.
#[derive(Debug, Clone)]
pub enum ClusterSource {
    /// The work pool's `cluster_config` block: a whole kubeconfig and an optional context.
    Kubeconfig {
        /// The kubeconfig document as data.
        config: Value,
        /// The context to use; the kubeconfig's current context when absent.
        context: Option<String>,
    },
    /// The in-cluster service account when running in a pod, else the default kubeconfig
    /// (`KUBECONFIG`, `~/.kube/config`).
    Automatic,
}

impl ClusterSource {
    /// A key that is equal for equal configurations, so each one gets one client.
    fn cache_key(&self) -> String {
        match self {
            ClusterSource::Kubeconfig { config, context } => {
                format!("kubeconfig:{}:{}", context.as_deref().unwrap_or(""), config)
            }
            ClusterSource::Automatic => "automatic".into(),
        }
    }
}

/// A connected cluster: its client, its shared watchers and what is read from it once.
pub struct Cluster {
    client: Client,
    source_name: String,
    server: String,
    uid: OnceCell<std::result::Result<String, String>>,
    namespaces: Mutex<HashMap<String, Arc<NamespaceWatch>>>,
    created_secrets: CreatedSecrets,
    bystander: Arc<Bystander>,
}

impl Cluster {
    /// The kube-rs client (cheap to clone).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Where the configuration came from, for messages.
    pub fn source_name(&self) -> &str {
        &self.source_name
    }

    /// The API server URL, for messages.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The uid of the `kube-system` namespace, read once; `Err(reason)` when it cannot be read
    /// (typically 403: the worker's service account may not read namespaces).
    pub async fn uid(&self) -> std::result::Result<String, String> {
        self.uid
            .get_or_init(|| async {
                let namespaces: Api<Namespace> = Api::all(self.client.clone());
                match namespaces.get("kube-system").await {
                    Ok(namespace) => namespace
                        .metadata
                        .uid
                        .ok_or_else(|| "kube-system has no uid".to_string()),
                    Err(error) => {
                        Err(K8sError::from_kube(error, "get", "namespace kube-system").to_string())
                    }
                }
            })
            .await
            .clone()
    }

    /// The uid (or why it cannot be read) if [`Cluster::uid`] already read it: a run after the
    /// first needs no await to learn it.
    pub fn known_uid(&self) -> Option<std::result::Result<String, String>> {
        self.uid.get().cloned()
    }

    /// The shared job and pod watchers of `namespace`, started on first use.
    pub fn namespace(self: &Arc<Self>, namespace: &str) -> Arc<NamespaceWatch> {
        let mut namespaces = self
            .namespaces
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        namespaces
            .entry(namespace.to_owned())
            .or_insert_with(|| {
                NamespaceWatch::start(self.client.clone(), namespace, self.bystander.clone())
            })
            .clone()
    }

    /// Reports what happens to Prefect Jobs nobody in this process follows, in `namespaces`
    /// (whose watchers this starts) and in every namespace watched later for a run. Replaces
    /// an earlier observation. Costs no request beyond the watches the runs share.
    pub fn observe(self: &Arc<Self>, namespaces: &[String], options: ObserveOptions) -> Sightings {
        let sightings = self.bystander.observe(options);
        for namespace in namespaces {
            self.namespace(namespace);
        }
        sightings
    }

    /// The API-key Secrets this process created on this cluster.
    pub fn created_secrets(&self) -> &CreatedSecrets {
        &self.created_secrets
    }

    /// The shared watchers of `namespace` if something started them.
    pub fn watched_namespace(&self, namespace: &str) -> Option<Arc<NamespaceWatch>> {
        self.namespaces
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(namespace)
            .cloned()
    }

    /// Stops every watcher of this cluster (worker shutdown).
    pub fn close(&self) {
        self.bystander.stop();
        self.created_secrets.forget();
        let namespaces = std::mem::take(
            &mut *self
                .namespaces
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for watch in namespaces.values() {
            watch.stop();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.close();
    }
}

/// The clients of one worker, one per distinct cluster configuration.
#[derive(Default)]
pub struct ClusterRegistry {
    clusters: tokio::sync::Mutex<HashMap<String, Arc<Cluster>>>,
    tcp_keepalive: bool,
}

impl ClusterRegistry {
    /// A registry whose connections use TCP keepalive ([`TCP_KEEPALIVE`]) when asked (the
    /// `add_tcp_keepalive` setting).
    pub fn new(tcp_keepalive: bool) -> Self {
        ClusterRegistry {
            clusters: tokio::sync::Mutex::default(),
            tcp_keepalive,
        }
    }

    /// The cluster for `source`, connecting on first use. Exec credential plugins therefore run
    /// once per configuration, and tokens are refreshed by the client as they expire.
    pub async fn connect(&self, source: ClusterSource) -> Result<Arc<Cluster>> {
        let key = source.cache_key();
        let mut clusters = self.clusters.lock().await;
        if let Some(cluster) = clusters.get(&key) {
            return Ok(cluster.clone());
        }
        let cluster = Arc::new(connect(source, self.tcp_keepalive).await?);
        clusters.insert(key, cluster.clone());
        Ok(cluster)
    }

    /// The cluster of `source` if it is connected already and the registry is not busy
    /// connecting another: the common case of every run after the first, without an await.
    pub fn connected(&self, source: &ClusterSource) -> Option<Arc<Cluster>> {
        self.clusters
            .try_lock()
            .ok()?
            .get(&source.cache_key())
            .cloned()
    }

    /// Stops every watcher and forgets every client.
    pub async fn close(&self) {
        let clusters = std::mem::take(&mut *self.clusters.lock().await);
        for cluster in clusters.values() {
            cluster.close();
        }
    }
}

/// TCP keepalive on the API server connections, as the Python worker sets it: the first probe
/// after 30 s of silence, then every 6 s, and the connection is given up after 6 unanswered
/// probes. Load balancers drop idle flows (Azure after 4 minutes, AWS NLB after 350 s) without
/// a reset: without probes a quiet log stream or watch would hang on a dead connection.
pub const TCP_KEEPALIVE: (Duration, Duration, u32) =
    (Duration::from_secs(30), Duration::from_secs(6), 6);

/// How long sent data may stay unacknowledged before the kernel gives the connection up
/// (`TCP_USER_TIMEOUT`): the same 66 s as the probes. Keepalive only probes a connection with
/// nothing in flight; a request written onto a pooled connection the load balancer already
/// dropped would otherwise wait for the kernel's retransmissions, about 15 minutes.
pub const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30 + 6 * 6);

async fn connect(source: ClusterSource, tcp_keepalive: bool) -> Result<Cluster> {
    let (mut config, source_name) = load_config(&source).await?;
    // Retries are the worker's own business: kube's default layer would resend a create after
    // a 503/504 whose effect is unknown, and could make a second Job for one flow run.
    config.default_retry = false;
    // Log streams of quiet flows may be idle for hours; a read timeout would cut them.
    // Watches carry their own server-side timeout.
    config.read_timeout = None;
    let server = config.cluster_url.to_string();
    // kube-rs runs an exec credential plugin here, and its error does not name the command.
    let exec_command = config
        .auth_info
        .exec
        .as_ref()
        .and_then(|exec| exec.command.clone());
    let client = build_client(config, tcp_keepalive).map_err(|error| K8sError::Config {
        source_name: source_name.clone(),
        reason: auth_failure(&error, exec_command.as_deref()),
    })?;
    Ok(Cluster {
        client,
        source_name,
        server,
        uid: OnceCell::new(),
        namespaces: Mutex::new(HashMap::new()),
        created_secrets: CreatedSecrets::default(),
        bystander: Arc::default(),
    })
}

/// The client of `config`: kube's own, or, with keepalive, the same layers over a connector
/// whose sockets probe idle connections and give up unacknowledged data as soon. (kube builds
/// its connector where no setting reaches it; a proxy in the kubeconfig keeps kube's own path,
/// which reports proxies as unsupported.)
fn build_client(config: Config, tcp_keepalive: bool) -> kube::Result<Client> {
    use hyper_util::client::legacy::connect::HttpConnector;
    use kube::client::{Body, ClientBuilder, ConfigExt};
    use tower::{BoxError, ServiceBuilder};

    if !tcp_keepalive || config.proxy_url.is_some() {
        return Client::try_from(config);
    }
    let (idle, interval, retries) = TCP_KEEPALIVE;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_keepalive(Some(idle));
    http.set_keepalive_interval(Some(interval));
    http.set_keepalive_retries(Some(retries));
    http.set_tcp_user_timeout(Some(TCP_USER_TIMEOUT));
    let https = config.rustls_https_connector_with_connector(http)?;
    let mut connector = hyper_timeout::TimeoutConnector::new(https);
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    connector.set_reset_reader_on_write(config.reset_reader_on_write);
    let http_client: hyper_util::client::legacy::Client<_, Body> =
        hyper_util::client::legacy::Builder::new(hyper_util::rt::TokioExecutor::new())
            .build(connector);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(BoxError::from)
        .service(http_client);
    Ok(ClientBuilder::new(service, config.default_namespace.clone()).build())
}

/// Why a client could not be built; an exec credential plugin's failure names its command.
fn auth_failure(error: &kube::Error, exec_command: Option<&str>) -> String {
    match (error, exec_command) {
        (kube::Error::Auth(_), Some(command)) => format!(
            "{} (the kubeconfig user's exec credential plugin is '{command}': is it installed \
             and on the worker's PATH?)",
            describe_chain(error)
        ),
        _ => describe_chain(error),
    }
}

async fn load_config(source: &ClusterSource) -> Result<(Config, String)> {
    match source {
        ClusterSource::Kubeconfig { config, context } => {
            let name = "the work pool's cluster_config block".to_string();
            let kubeconfig: Kubeconfig =
                serde_json::from_value(config.clone()).map_err(|error| K8sError::Config {
                    source_name: name.clone(),
                    reason: format!("it is not a kubeconfig: {error}"),
                })?;
            let options = KubeConfigOptions {
                context: context.clone(),
                ..KubeConfigOptions::default()
            };
            let config = Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|error| K8sError::Config {
                    source_name: name.clone(),
                    reason: describe_chain(&error),
                })?;
            Ok((config, name))
        }
        ClusterSource::Automatic => match Config::incluster() {
            Ok(config) => Ok((config, "the in-cluster service account".into())),
            Err(_) => {
                let name = match std::env::var("KUBECONFIG") {
                    Ok(path) if !path.is_empty() => format!("the kubeconfig {path} (KUBECONFIG)"),
                    _ => "the default kubeconfig (~/.kube/config)".into(),
                };
                let config = Config::from_kubeconfig(&KubeConfigOptions::default())
                    .await
                    .map_err(|error| K8sError::Config {
                        source_name: name.clone(),
                        reason: format!(
                            "{}; not running in a cluster either (no service account token)",
                            describe_chain(&error)
                        ),
                    })?;
                Ok((config, name))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn a_missing_exec_credential_plugin_is_named() {
        let kubeconfig = json!({
            "apiVersion": "v1", "kind": "Config", "current-context": "c",
            "clusters": [{"name": "k", "cluster": {"server": "https://127.0.0.1:1"}}],
            "users": [{"name": "u", "user": {"exec": {
                "apiVersion": "client.authentication.k8s.io/v1beta1",
                "command": "no-such-credential-helper"}}}],
            "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
        });
        let source = ClusterSource::Kubeconfig {
            config: kubeconfig,
            context: None,
        };
        let error = connect(source, true).await.err().expect("must be refused");
        let text = error.to_string();
        assert!(
            text.starts_with(
                "cannot use the Kubernetes configuration from the work pool's cluster_config block"
            ),
            "{text}"
        );
        assert!(
            text.contains("exec credential plugin is 'no-such-credential-helper'"),
            "{text}"
        );
    }
}
