//! Reading the upstream from a kubeconfig, and writing kubeconfigs that point at the proxy.

use std::path::Path;

use anyhow::{Context, Result};
use kube::config::{KubeConfigOptions, Kubeconfig};
use rustls::pki_types::CertificateDer;
use serde_json::Value;

/// What the proxy takes from the upstream kubeconfig's current context.
pub struct Upstream {
    pub server: String,
    pub roots: Option<Vec<CertificateDer<'static>>>,
    pub insecure: bool,
    pub token: Option<String>,
}

pub async fn read_upstream(path: &Path) -> Result<Upstream> {
    let kc = Kubeconfig::read_from(path)
        .with_context(|| format!("reading kubeconfig {}", path.display()))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("loading kubeconfig {}", path.display()))?;
    // The token is a secret string; its serde form is the plain value.
    let auth = serde_json::to_value(&cfg.auth_info).unwrap_or(Value::Null);
    let token = match auth.get("token").and_then(Value::as_str) {
        Some(t) => Some(t.to_string()),
        None => match &cfg.auth_info.token_file {
            Some(f) => Some(
                std::fs::read_to_string(f)
                    .with_context(|| format!("reading token file {f}"))?
                    .trim()
                    .to_string(),
            ),
            None => None,
        },
    };
    let mut server = cfg.cluster_url.to_string();
    while server.ends_with('/') {
        server.pop();
    }
    Ok(Upstream {
        server,
        roots: cfg
            .root_cert
            .map(|certs| certs.into_iter().map(CertificateDer::from).collect()),
        insecure: cfg.accept_invalid_certs,
        token,
    })
}

/// Remove `null`s (serde writes every unset optional field) so the file stays readable for
/// every client.
fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, v| !v.is_null());
            m.values_mut().for_each(strip_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// Copy kubeconfig `src` to `dst` with every cluster's server set to `server`; trust
/// `ca_pem` when the proxy serves HTTPS. Users and contexts are kept as they are, so the
/// client sends the same credentials through the proxy. Written as JSON, which kubectl,
/// kube-rs and the Python clients all read as YAML.
pub fn rewrite(src: &Path, dst: &Path, server: &str, ca_pem: Option<&str>) -> Result<()> {
    let mut kc = Kubeconfig::read_from(src)
        .with_context(|| format!("reading kubeconfig {}", src.display()))?;
    for named in &mut kc.clusters {
        if let Some(c) = named.cluster.as_mut() {
            c.server = Some(server.to_string());
            c.certificate_authority = None;
            c.certificate_authority_data = ca_pem.map(|p| crate::tls::base64(p.as_bytes()));
            c.insecure_skip_tls_verify = None;
            c.tls_server_name = None;
            c.proxy_url = None;
        }
    }
    let mut v = serde_json::to_value(&kc)?;
    strip_nulls(&mut v);
    if v.get("apiVersion").is_none() {
        v["apiVersion"] = "v1".into();
    }
    if v.get("kind").is_none() {
        v["kind"] = "Config".into();
    }
    let text = serde_json::to_string_pretty(&v)?;
    let tmp = dst.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, dst).with_context(|| format!("writing {}", dst.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KC: &str = r#"apiVersion: v1
kind: Config
clusters:
- name: pkr
  cluster:
    server: https://127.0.0.1:6443
    certificate-authority-data: AAAA
contexts:
- name: pkr
  context:
    cluster: pkr
    user: admin
    namespace: default
current-context: pkr
users:
- name: admin
  user:
    token: secret-token
"#;

    #[test]
    fn rewrite_keeps_user_and_points_at_proxy() {
        let dir = std::env::temp_dir().join(format!("pkr-fp-kc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("in");
        let dst = dir.join("out");
        std::fs::write(&src, KC).unwrap();
        rewrite(&src, &dst, "http://127.0.0.1:1234", None).unwrap();
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&dst).unwrap()).unwrap();
        assert_eq!(
            v["clusters"][0]["cluster"]["server"],
            "http://127.0.0.1:1234"
        );
        assert!(v["clusters"][0]["cluster"]
            .get("certificate-authority-data")
            .is_none());
        assert_eq!(v["users"][0]["user"]["token"], "secret-token");
        assert_eq!(v["current-context"], "pkr");
        assert_eq!(v["contexts"][0]["context"]["namespace"], "default");
        // kube itself reads it back.
        let back = Kubeconfig::read_from(&dst).unwrap();
        assert_eq!(
            back.clusters[0].cluster.as_ref().unwrap().server.as_deref(),
            Some("http://127.0.0.1:1234")
        );

        rewrite(&src, &dst, "https://127.0.0.1:1234", Some("PEM")).unwrap();
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&dst).unwrap()).unwrap();
        assert_eq!(
            v["clusters"][0]["cluster"]["certificate-authority-data"],
            "UEVN"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
