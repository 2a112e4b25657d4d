//! Keeping the Prefect credentials out of a Job manifest: `PREFECT_API_KEY` and
//! `PREFECT_API_AUTH_STRING` become references to Kubernetes Secrets when the worker's settings
//! say so, and the API key's own Secret is named here when the worker is to create it.

use crate::manifest::slug::slugify_name;
use crate::manifest::validate::prefect_container_mut;
use serde_json::{json, Value};

/// The environment variable holding the Prefect API key.
pub const API_KEY_ENV: &str = "PREFECT_API_KEY";
/// The environment variable holding the Prefect API auth string (self-hosted servers).
pub const AUTH_STRING_ENV: &str = "PREFECT_API_AUTH_STRING";
/// The key under which a Secret the worker creates holds the API key, and the key read from a
/// user's Secret when the settings name none.
pub const DEFAULT_SECRET_KEY: &str = "value";

/// A key of a Kubernetes Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretKeyRef {
    /// The Secret's name.
    pub name: String,
    /// The key inside it.
    pub key: String,
}

/// What the worker's settings say about credentials (`PREFECT_INTEGRATIONS_KUBERNETES_WORKER_*`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CredentialSettings {
    /// An existing Secret holding the API key (`api_key_secret_name` / `_key`).
    pub api_key_secret: Option<SecretKeyRef>,
    /// The work pool's name when the worker is to create a Secret for the API key itself
    /// (`create_secret_for_api_key`); the Secret is named after the pool and the key.
    pub create_api_key_secret_for_pool: Option<String>,
    /// An existing Secret holding the auth string (`api_auth_string_secret_name` / `_key`).
    pub auth_string_secret: Option<SecretKeyRef>,
}

impl CredentialSettings {
    /// The settings as the worker reads them, with their defaults applied: an API-key Secret
    /// without a key is read under [`DEFAULT_SECRET_KEY`] (prefect-kubernetes 0.8 ignored such
    /// a Secret); an auth-string Secret needs both its name and its key (as in 0.8); empty
    /// strings count as unset.
    pub fn from_worker_settings(
        api_key_secret_name: Option<String>,
        api_key_secret_key: Option<String>,
        create_api_key_secret_for_pool: Option<String>,
        api_auth_string_secret_name: Option<String>,
        api_auth_string_secret_key: Option<String>,
    ) -> Self {
        let set = |value: Option<String>| value.filter(|text| !text.is_empty());
        CredentialSettings {
            api_key_secret: set(api_key_secret_name).map(|name| SecretKeyRef {
                name,
                key: set(api_key_secret_key).unwrap_or_else(|| DEFAULT_SECRET_KEY.into()),
            }),
            create_api_key_secret_for_pool: set(create_api_key_secret_for_pool),
            auth_string_secret: match (
                set(api_auth_string_secret_name),
                set(api_auth_string_secret_key),
            ) {
                (Some(name), Some(key)) => Some(SecretKeyRef { name, key }),
                _ => None,
            },
        }
    }
}

/// A Secret the worker must make sure exists before the Job that references it is created.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretToCreate {
    /// Where the Secret goes and under which key.
    pub reference: SecretKeyRef,
    /// The value it holds (the API key: never printed).
    pub value: String,
}

impl std::fmt::Debug for SecretToCreate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretToCreate")
            .field("reference", &self.reference)
            .field("value", &"<redacted>")
            .finish()
    }
}

/// What [`reference_credentials`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CredentialsOutcome {
    /// The API key's Secret, when the worker is to create it.
    pub secret_to_create: Option<SecretToCreate>,
    /// Warnings for the flow run's log (a credential left in plain text).
    pub warnings: Vec<String>,
}

/// `prefect-<pool>-api-key-<first 10 hex digits of the key's SHA-256>`: one Secret per pool and
/// key, whichever worker of the pool (and however many restarts) created it; a new key gets a
/// new name, so an existing Secret of that name always holds the same value.
pub fn api_key_secret_name(work_pool_name: &str, api_key: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, api_key.as_bytes());
    let hex: String = digest.as_ref()[..5]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    let pool = slugify_name(work_pool_name).unwrap_or_else(|| "pool".into());
    format!("prefect-{pool}-api-key-{hex}")
}

/// Rewrites the env of a prepared manifest's `prefect-job` container so that credentials are
/// read from Secrets where the settings ask for it.
pub fn keep_credentials_out(
    manifest: &mut Value,
    settings: &CredentialSettings,
) -> CredentialsOutcome {
    match prefect_container_mut(manifest).and_then(|container| container.get_mut("env")) {
        Some(Value::Array(entries)) => reference_credentials(entries, settings),
        _ => CredentialsOutcome::default(),
    }
}

/// Rewrites the container env `entries` so that credentials are read from Secrets where the
/// settings ask for it.
pub fn reference_credentials(
    entries: &mut [Value],
    settings: &CredentialSettings,
) -> CredentialsOutcome {
    let mut outcome = CredentialsOutcome::default();
    let mut api_key_secret = settings.api_key_secret.clone();
    if api_key_secret.is_none() {
        if let (Some(pool), Some(api_key)) = (
            settings.create_api_key_secret_for_pool.as_deref(),
            plain_value(entries, API_KEY_ENV),
        ) {
            let reference = SecretKeyRef {
                name: api_key_secret_name(pool, &api_key),
                key: DEFAULT_SECRET_KEY.into(),
            };
            outcome.secret_to_create = Some(SecretToCreate {
                reference: reference.clone(),
                value: api_key,
            });
            api_key_secret = Some(reference);
        }
    }
    if let Some(secret) = &api_key_secret {
        reference_secret(entries, API_KEY_ENV, secret);
    }
    match &settings.auth_string_secret {
        Some(secret) => reference_secret(entries, AUTH_STRING_ENV, secret),
        None if plain_value(entries, AUTH_STRING_ENV).is_some() => outcome.warnings.push(
            "PREFECT_API_AUTH_STRING is written into the Job manifest in plain text. Set \
             PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_AUTH_STRING_SECRET_NAME and _KEY to \
             read it from a Kubernetes Secret instead."
                .into(),
        ),
        None => {}
    }
    outcome
}

/// The first non-empty plain value of the variable `name`.
fn plain_value(entries: &[Value], name: &str) -> Option<String> {
    entries.iter().find_map(|entry| {
        if entry.get("name").and_then(Value::as_str) != Some(name) {
            return None;
        }
        entry
            .get("value")
            .and_then(Value::as_str)
            .filter(|value| !value.is_empty())
            .map(str::to_owned)
    })
}

/// Makes every entry named `name` read its value from `secret`.
fn reference_secret(entries: &mut [Value], name: &str, secret: &SecretKeyRef) {
    for entry in entries
        .iter_mut()
        .filter(|entry| entry.get("name").and_then(Value::as_str) == Some(name))
    {
        *entry = json!({
            "name": name,
            "valueFrom": {"secretKeyRef": {"name": secret.name, "key": secret.key}},
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_get_their_defaults_here() {
        let some = |text: &str| Some(text.to_owned());
        let settings = CredentialSettings::from_worker_settings(
            some("api"),
            None,
            some(""),
            some("auth"),
            None,
        );
        assert_eq!(
            settings,
            CredentialSettings {
                api_key_secret: Some(SecretKeyRef {
                    name: "api".into(),
                    key: DEFAULT_SECRET_KEY.into()
                }),
                create_api_key_secret_for_pool: None,
                auth_string_secret: None,
            }
        );
        let settings = CredentialSettings::from_worker_settings(
            some(""),
            some("k"),
            some("pool"),
            some("auth"),
            some("token"),
        );
        assert_eq!(settings.api_key_secret, None);
        assert_eq!(settings.create_api_key_secret_for_pool, some("pool"));
        assert_eq!(
            settings.auth_string_secret,
            Some(SecretKeyRef {
                name: "auth".into(),
                key: "token".into()
            })
        );
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<Value> {
        pairs
            .iter()
            .map(|(name, value)| json!({"name": name, "value": value}))
            .collect()
    }

    fn secret(name: &str, key: &str) -> SecretKeyRef {
        SecretKeyRef {
            name: name.into(),
            key: key.into(),
        }
    }

    #[test]
    fn the_api_key_secret_is_named_after_the_pool_and_the_keys_digest() {
        // sha256("pnu_abc") starts with 1792ab77b3. The name must not change between
        // versions: a restarted worker finds the Secret an older one created.
        let name = api_key_secret_name("My Pool", "pnu_abc");
        assert_eq!(name, "prefect-my-pool-api-key-1792ab77b3");
        assert_ne!(name, api_key_secret_name("My Pool", "pnu_abd"));
        assert!(api_key_secret_name("!!!", "k").starts_with("prefect-pool-api-key-"));
    }

    #[test]
    fn a_created_secret_replaces_the_plain_api_key() {
        let mut entries = env(&[("A", "1"), (API_KEY_ENV, "pnu_secret")]);
        let settings = CredentialSettings {
            create_api_key_secret_for_pool: Some("pool".into()),
            ..Default::default()
        };
        let outcome = reference_credentials(&mut entries, &settings);
        let created = outcome.secret_to_create.expect("a Secret to create");
        assert_eq!(created.value, "pnu_secret");
        assert_eq!(created.reference.key, "value");
        assert_eq!(entries[0], json!({"name": "A", "value": "1"}));
        assert_eq!(
            entries[1],
            json!({"name": API_KEY_ENV, "valueFrom": {"secretKeyRef": {
                "name": created.reference.name, "key": "value"}}})
        );
        assert!(!format!("{created:?}").contains("pnu_secret"));
    }

    #[test]
    fn the_manifest_reads_the_key_from_its_secret() {
        let mut manifest = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "sidecar", "env": [{"name": API_KEY_ENV, "value": "sidecar's own"}]},
            {"name": "prefect-job", "env": [{"name": API_KEY_ENV, "value": "pnu_x"}]},
        ]}}}});
        let settings = CredentialSettings {
            create_api_key_secret_for_pool: Some("pool".into()),
            ..Default::default()
        };
        let outcome = keep_credentials_out(&mut manifest, &settings);
        let secret = outcome.secret_to_create.expect("a Secret");
        let containers = &manifest["spec"]["template"]["spec"]["containers"];
        assert_eq!(
            containers[1]["env"][0]["valueFrom"]["secretKeyRef"]["name"],
            json!(secret.reference.name)
        );
        assert!(!containers[1].to_string().contains("pnu_x"));
        assert_eq!(
            containers[0]["env"][0]["value"], "sidecar's own",
            "only the flow's container"
        );
    }

    #[test]
    fn a_named_secret_wins_and_nothing_is_created() {
        let mut entries = env(&[(API_KEY_ENV, "pnu_secret"), (AUTH_STRING_ENV, "u:p")]);
        let settings = CredentialSettings {
            api_key_secret: Some(secret("mine", "k")),
            create_api_key_secret_for_pool: Some("pool".into()),
            auth_string_secret: Some(secret("auth", "a")),
        };
        let outcome = reference_credentials(&mut entries, &settings);
        assert_eq!(outcome, CredentialsOutcome::default());
        assert_eq!(entries[0]["valueFrom"]["secretKeyRef"]["name"], "mine");
        assert_eq!(entries[1]["valueFrom"]["secretKeyRef"]["key"], "a");
    }

    #[test]
    fn a_plain_auth_string_is_warned_about_and_no_key_means_no_secret() {
        let mut entries = env(&[(AUTH_STRING_ENV, "u:p"), (API_KEY_ENV, "")]);
        let settings = CredentialSettings {
            create_api_key_secret_for_pool: Some("pool".into()),
            ..Default::default()
        };
        let outcome = reference_credentials(&mut entries, &settings);
        assert!(outcome.secret_to_create.is_none());
        assert_eq!(outcome.warnings.len(), 1);
        assert!(outcome.warnings[0].contains("plain text"));
        assert_eq!(entries, env(&[(AUTH_STRING_ENV, "u:p"), (API_KEY_ENV, "")]));
    }
}
