//! Node registration (create or update), the Ready heartbeat, and the nodes a node autoscaler
//! adds.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Utc;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{json, Value};

use crate::ctx::Ctx;
use crate::events::{ObjRef, Source, Type};
use crate::status::ts;

pub const KUBELET_VERSION: &str = "v1.20.2";

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn machine_id() -> String {
    std::fs::read_to_string("/etc/machine-id")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "0".repeat(32))
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("PRETTY_NAME=")
                    .map(|v| v.trim_matches('"').to_string())
            })
        })
        .unwrap_or_else(|| "Linux".into())
}

fn conditions(now: &str, since: &str) -> Value {
    let c = |t: &str, status: &str, reason: &str, message: &str| {
        json!({"type": t, "status": status, "lastHeartbeatTime": now,
               "lastTransitionTime": since, "reason": reason, "message": message})
    };
    json!([
        c(
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available"
        ),
        c(
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure"
        ),
        c(
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available"
        ),
        c(
            "Ready",
            "True",
            "KubeletReady",
            "kubelet is posting ready status"
        ),
    ])
}

/// What the kubelet's own node offers the scheduler: room for the soak's and the benchmark's
/// thousands of pods (none of which requests resources), but not for a pod that asks for more
/// than a large machine has.
const NODE_CAPACITY: (&str, &str, &str) = ("64", "256Gi", "5000");
/// A node the autoscaler adds is larger, so a pod that asked for more than the first node has
/// fits there (as the autoscaler picks a node group whose machines fit the pod).
const SCALED_NODE_CAPACITY: (&str, &str, &str) = ("512", "4Ti", "5000");

fn node_status(name: &str, capacity: (&str, &str, &str), port: u16, since: &str) -> Value {
    let now = ts(&Utc::now());
    let (cpu, memory, pods) = capacity;
    let res = json!({"cpu": cpu, "memory": memory, "pods": pods, "ephemeral-storage": "100Gi"});
    json!({
        "capacity": res,
        "allocatable": res,
        "conditions": conditions(&now, since),
        "addresses": [
            {"type": "InternalIP", "address": "127.0.0.1"},
            {"type": "Hostname", "address": name},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
        "nodeInfo": {
            "machineID": machine_id(),
            "systemUUID": machine_id(),
            "bootID": boot_id(),
            "kernelVersion": kernel(),
            "osImage": os_image(),
            "containerRuntimeVersion": "containerd://fake-kubelet",
            "kubeletVersion": KUBELET_VERSION,
            "kubeProxyVersion": KUBELET_VERSION,
            "operatingSystem": "linux",
            "architecture": arch(),
        },
    })
}

/// Creates the kubelet's own Node (or takes over an existing one), writes its full status and
/// its Lease.
pub async fn register(ctx: &Arc<Ctx>, port: u16) -> anyhow::Result<()> {
    let uid = register_node(ctx, &ctx.node, &BTreeMap::new(), NODE_CAPACITY, port).await?;
    if let Err(e) = renew_lease(ctx, uid.as_deref()).await {
        tracing::warn!(error = %e, "node lease");
    }
    Ok(())
}

/// The node a node autoscaler adds for a pod the scheduler found no room for: its labels are
/// the pod's nodeSelector (the node group's labels, as Karpenter or a matching
/// cluster-autoscaler group would give it) and it is larger than the first node. Returns its
/// name once it is registered and Ready, without taints, so the scheduler's next attempt binds
/// the pod there. It gets no heartbeat: no node lifecycle controller runs on the testbed.
pub async fn add_scaled_node(
    ctx: &Arc<Ctx>,
    node_selector: &BTreeMap<String, String>,
) -> anyhow::Result<String> {
    let name = format!("{}-scaled-{}", ctx.node, ctx.random_hex(5));
    let port = ctx.port.get().copied().unwrap_or_default();
    // Played before registering, so a pod the scheduler binds at once finds its kubelet.
    ctx.add_node(name.clone());
    register_node(ctx, &name, node_selector, SCALED_NODE_CAPACITY, port).await?;
    Ok(name)
}

async fn register_node(
    ctx: &Arc<Ctx>,
    name: &str,
    extra_labels: &BTreeMap<String, String>,
    capacity: (&str, &str, &str),
    port: u16,
) -> anyhow::Result<Option<String>> {
    let api: Api<Node> = Api::all(ctx.client.clone());
    let mut labels: BTreeMap<String, String> = extra_labels.clone();
    for (key, value) in [
        ("kubernetes.io/hostname", name),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", arch()),
        ("beta.kubernetes.io/os", "linux"),
        ("beta.kubernetes.io/arch", arch()),
        ("testbed.prefect.io/fake-kubelet", "true"),
    ] {
        labels.insert(key.to_string(), value.to_string());
    }
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
            },
        },
        "spec": {},
    }))?;
    let uid = match api.create(&PostParams::default(), &node).await {
        Ok(n) => {
            tracing::info!(node = %name, "node created");
            n.metadata.uid
        }
        Err(kube::Error::Api(s)) if s.code == 409 => {
            // update labels of the existing node, keep anything else
            let meta = json!({"metadata": {"labels": node.metadata.labels}});
            let n = api
                .patch(name, &PatchParams::default(), &Patch::Merge(&meta))
                .await?;
            tracing::info!(node = %name, "node exists; taking it over");
            n.metadata.uid
        }
        Err(e) => return Err(e.into()),
    };
    let since = ts(&Utc::now());
    let body = json!({"status": node_status(name, capacity, port, &since)});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&body))
        .await?;
    // The apiserver's TaintNodesByCondition admission adds node.kubernetes.io/not-ready at
    // create; the node lifecycle controller (not run on the testbed) would drop it once Ready.
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"taints": null}})),
    )
    .await?;
    let obj = ObjRef {
        kind: "Node",
        namespace: String::new(),
        name: name.to_string(),
        uid: uid.clone().unwrap_or_else(|| name.to_string()),
    };
    ctx.events.emit(
        &obj,
        None,
        Type::Normal,
        "Starting",
        "Starting kubelet.",
        Source::Kubelet,
    );
    ctx.events.emit(
        &obj,
        None,
        Type::Normal,
        "NodeReady",
        &format!("Node {name} status is now: NodeReady"),
        Source::Kubelet,
    );
    Ok(uid)
}

fn micro_time() -> String {
    Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Creates or renews the node's Lease in `kube-node-lease` (what `kubectl describe node` shows).
async fn renew_lease(ctx: &Ctx, node_uid: Option<&str>) -> anyhow::Result<()> {
    let api: Api<Lease> = Api::namespaced(ctx.client.clone(), "kube-node-lease");
    let patch = json!({"spec": {"holderIdentity": ctx.node, "renewTime": micro_time()}});
    match api
        .patch(&ctx.node, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => {
            let mut meta = json!({"name": ctx.node, "namespace": "kube-node-lease"});
            if let Some(uid) = node_uid {
                meta["ownerReferences"] =
                    json!([{"apiVersion": "v1", "kind": "Node", "name": ctx.node, "uid": uid}]);
            }
            let lease: Lease = serde_json::from_value(json!({
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": meta,
                "spec": {"holderIdentity": ctx.node, "leaseDurationSeconds": 40,
                         "renewTime": micro_time()},
            }))?;
            api.create(&PostParams::default(), &lease).await?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Refreshes `lastHeartbeatTime` of the conditions; re-registers if the node was deleted.
pub async fn heartbeat(ctx: Arc<Ctx>, port: u16) {
    let api: Api<Node> = Api::all(ctx.client.clone());
    let mut since = ts(&Utc::now());
    loop {
        tokio::time::sleep(ctx.opts.heartbeat).await;
        let now = ts(&Utc::now());
        let body = json!({"status": {"conditions": conditions(&now, &since)}});
        match api
            .patch_status(&ctx.node, &PatchParams::default(), &Patch::Merge(&body))
            .await
        {
            Ok(n) => {
                if let Err(e) = renew_lease(&ctx, n.metadata.uid.as_deref()).await {
                    tracing::debug!(error = %e, "renewing node lease failed");
                }
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {
                tracing::warn!("node was deleted; registering again");
                if let Err(e) = register(&ctx, port).await {
                    tracing::warn!(error = %e, "re-registering node failed");
                }
                since = ts(&Utc::now());
            }
            Err(e) => tracing::warn!(error = %e, "node heartbeat failed"),
        }
    }
}

pub async fn delete(ctx: &Ctx) {
    let api: Api<Node> = Api::all(ctx.client.clone());
    match api.delete(&ctx.node, &DeleteParams::default()).await {
        Ok(_) => tracing::info!(node = %ctx.node, "node deleted"),
        Err(e) => tracing::warn!(error = %e, "deleting node failed"),
    }
}
