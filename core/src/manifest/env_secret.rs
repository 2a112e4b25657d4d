//! Keeping a Job's plain environment out of its manifest (`..._WORKER_STORE_ENV_AS_SECRET`):
//! the `prefect-job` container's literal env values move into a Secret of their own, which the
//! container reads with `envFrom`. Anyone who may read Jobs then no longer reads the values.
//!
//! Only what means the same from a Secret moves. An entry stays in `env` when:
//! - it is not a plain `value` (a `valueFrom` reference already keeps its value elsewhere);
//! - its value refers to another variable (`$(NAME)`): the kubelet expands references in `env`
//!   only, a Secret's value would reach the process literally;
//! - its name occurs more than once (the order of the repeats decides which one wins, and that
//!   order exists only in `env`);
//! - its name is not a valid Secret key (`[-._a-zA-Z0-9]+`).
//!
//! The kubelet builds the environment from `envFrom` first, then `env`, so the entries that
//! stay (references to moved ones included) see the moved values as before; the Secret comes
//! last in `envFrom`, so its values still win over other `envFrom` sources, as `env` did.

use crate::manifest::validate::prefect_container_mut;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};

/// The Secret that holds a Job's plain environment.
#[derive(Clone, PartialEq, Eq)]
pub struct EnvSecret {
    /// The Secret's name.
    pub name: String,
    /// Variable name to value (never printed: values may be credentials).
    pub data: BTreeMap<String, String>,
}

impl std::fmt::Debug for EnvSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvSecret")
            .field("name", &self.name)
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// `<the Job's generateName or name, without its trailing '-'>-env-<suffix>`: recognisably the
/// Job's, and unique per run through `suffix` (random, from the caller).
pub fn env_secret_name(manifest: &Value, suffix: &str) -> String {
    let metadata = &manifest["metadata"];
    let base = metadata["generateName"]
        .as_str()
        .or_else(|| metadata["name"].as_str())
        .map(|name| name.trim_end_matches('-'))
        .filter(|name| !name.is_empty())
        .unwrap_or("prefect-job");
    format!("{base}-env-{suffix}")
}

/// Moves the literal env values of the manifest's `prefect-job` container into a Secret named
/// `secret_name` (see the module's rules) and makes the container read it through `envFrom`.
/// None, and the manifest unchanged, when no value moves.
pub fn move_plain_env_to_secret(manifest: &mut Value, secret_name: &str) -> Option<EnvSecret> {
    let container = prefect_container_mut(manifest)?;
    let Some(Value::Array(entries)) = container.get_mut("env") else {
        return None;
    };
    let mut occurrences: HashMap<String, usize> = HashMap::new();
    for entry in entries.iter() {
        if let Some(name) = entry.get("name").and_then(Value::as_str) {
            *occurrences.entry(name.to_owned()).or_default() += 1;
        }
    }
    let mut data = BTreeMap::new();
    entries.retain(|entry| match movable(entry, &occurrences) {
        Some((name, value)) => {
            data.insert(name.to_owned(), value.to_owned());
            false
        }
        None => true,
    });
    if data.is_empty() {
        return None;
    }
    if entries.is_empty() {
        container.remove("env");
    }
    let reference = json!({"secretRef": {"name": secret_name}});
    match container.get_mut("envFrom") {
        Some(Value::Array(sources)) => sources.push(reference),
        _ => {
            container.insert("envFrom".into(), json!([reference]));
        }
    }
    Some(EnvSecret {
        name: secret_name.to_owned(),
        data,
    })
}

/// The name and value of an entry that means the same from a Secret.
fn movable<'a>(
    entry: &'a Value,
    occurrences: &HashMap<String, usize>,
) -> Option<(&'a str, &'a str)> {
    let object = entry.as_object()?;
    if object.contains_key("valueFrom") {
        return None;
    }
    let name = object.get("name")?.as_str()?;
    let value = object.get("value")?.as_str()?;
    let single = occurrences.get(name) == Some(&1);
    (single && is_secret_key(name) && !value.contains("$(")).then_some((name, value))
}

/// Kubernetes' rule for the keys of a Secret's data.
fn is_secret_key(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(env: Value) -> Value {
        json!({
            "metadata": {"generateName": "gentle-ox-"},
            "spec": {"template": {"spec": {"containers": [
                {"name": "sidecar", "env": [{"name": "SIDE", "value": "stays"}]},
                {"name": "prefect-job", "env": env},
            ]}}},
        })
    }

    fn flow_container(manifest: &Value) -> &Value {
        &manifest["spec"]["template"]["spec"]["containers"][1]
    }

    #[test]
    fn plain_values_move_and_the_container_reads_them_from_the_secret() {
        let mut job = manifest(json!([
            {"name": "PREFECT_API_URL", "value": "http://prefect:4200/api"},
            {"name": "PREFECT__FLOW_RUN_ID", "value": "1234"},
            {"name": "PREFECT_API_KEY", "valueFrom": {"secretKeyRef": {"name": "k", "key": "value"}}},
        ]));
        let secret = move_plain_env_to_secret(&mut job, "gentle-ox-env-0a1b2c3d").unwrap();
        assert_eq!(secret.name, "gentle-ox-env-0a1b2c3d");
        assert_eq!(
            secret.data,
            BTreeMap::from([
                ("PREFECT_API_URL".into(), "http://prefect:4200/api".into()),
                ("PREFECT__FLOW_RUN_ID".into(), "1234".into()),
            ])
        );
        let container = flow_container(&job);
        assert_eq!(
            container["env"],
            json!([{"name": "PREFECT_API_KEY", "valueFrom": {"secretKeyRef": {"name": "k", "key": "value"}}}])
        );
        assert_eq!(
            container["envFrom"],
            json!([{"secretRef": {"name": "gentle-ox-env-0a1b2c3d"}}])
        );
        // Other containers are not the flow's: left alone.
        assert_eq!(
            job["spec"]["template"]["spec"]["containers"][0]["env"],
            json!([{"name": "SIDE", "value": "stays"}])
        );
    }

    #[test]
    fn what_would_mean_something_else_from_a_secret_stays() {
        let mut job = manifest(json!([
            {"name": "HOME_BIN", "value": "$(HOME)/bin"},
            {"name": "TWICE", "value": "first"},
            {"name": "TWICE", "value": "second"},
            {"name": "EMPTY"},
            {"name": "MOVES", "value": "yes"},
        ]));
        let secret = move_plain_env_to_secret(&mut job, "s").unwrap();
        assert_eq!(
            secret.data,
            BTreeMap::from([("MOVES".into(), "yes".into())])
        );
        assert_eq!(
            flow_container(&job)["env"],
            json!([
                {"name": "HOME_BIN", "value": "$(HOME)/bin"},
                {"name": "TWICE", "value": "first"},
                {"name": "TWICE", "value": "second"},
                {"name": "EMPTY"},
            ])
        );
    }

    #[test]
    fn the_secret_comes_after_the_templates_own_env_from_sources() {
        let mut job = manifest(json!([{"name": "A", "value": "1"}]));
        job["spec"]["template"]["spec"]["containers"][1]["envFrom"] =
            json!([{"configMapRef": {"name": "team-settings"}}]);
        move_plain_env_to_secret(&mut job, "s").unwrap();
        let container = flow_container(&job);
        assert_eq!(
            container["envFrom"],
            json!([{"configMapRef": {"name": "team-settings"}}, {"secretRef": {"name": "s"}}])
        );
        assert!(
            container.get("env").is_none(),
            "an env left empty is removed"
        );
    }

    #[test]
    fn nothing_to_move_changes_nothing() {
        let mut job = manifest(json!([{"name": "A", "value": "$(B)"}]));
        let before = job.clone();
        assert!(move_plain_env_to_secret(&mut job, "s").is_none());
        assert_eq!(job, before);
    }

    #[test]
    fn the_secret_is_named_after_the_job() {
        let suffix = "0a1b2c3d";
        assert_eq!(
            env_secret_name(&json!({"metadata": {"generateName": "gentle-ox-"}}), suffix),
            "gentle-ox-env-0a1b2c3d"
        );
        assert_eq!(
            env_secret_name(&json!({"metadata": {"name": "my-job"}}), suffix),
            "my-job-env-0a1b2c3d"
        );
        assert_eq!(
            env_secret_name(&json!({"metadata": {}}), suffix),
            "prefect-job-env-0a1b2c3d"
        );
    }

    #[test]
    fn values_never_show_in_debug_output() {
        let secret = EnvSecret {
            name: "s".into(),
            data: BTreeMap::from([("PREFECT_API_KEY".into(), "pnu_secret".into())]),
        };
        let shown = format!("{secret:?}");
        assert!(shown.contains("PREFECT_API_KEY") && !shown.contains("pnu_secret"));
    }
}
