//! Prepares a validated Job manifest for one flow run: environment, labels, annotations,
//! image, command and name, as the current Python worker does, always in the `prefect-job`
//! container.

use crate::manifest::defaults::DEFAULT_COMMAND;
use crate::manifest::error::{json_type_name, ManifestError, Result};
use crate::manifest::python_text::python_str;
use crate::manifest::shell_words::split_shell_words;
use crate::manifest::slug::{slugify_label_key, slugify_label_value, slugify_name};
use crate::manifest::template::has_placeholder;
use crate::manifest::validate::prefect_container_mut;
use serde_json::{Map, Value};

/// The variable that tells `prefect flow-run execute` what to do when its pod gets SIGTERM.
pub const SIGTERM_BEHAVIOR_ENV: &str = "PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR";

/// The Job name stem when neither the run nor the template gives one that slugifies to
/// anything (the Python worker's; by chance also the flow container's name).
const FALLBACK_NAME_STEM: &str = "prefect-job";

/// The longest generateName we emit, leaving Kubernetes room for its random suffix within the
/// 63 characters a Job name may have (its pods' `job-name` label must hold it).
const GENERATE_NAME_MAX: usize = 58;

/// What a flow run contributes to its Job, as computed by the Prefect side of the worker.
#[derive(Debug, Clone, Default)]
pub struct RunSettings {
    /// The environment after Prefect's merge (settings, flow-run id, attribution, and the `env`
    /// job variable when it is a mapping), as `name -> value`.
    pub env: Map<String, Value>,
    /// The `env` job variable when it is a list of Kubernetes env entries (Prefect's merge
    /// leaves such a list out): its plain values join [`RunSettings::env`], its entries that
    /// reference other objects (`valueFrom`) are kept as they are, after the plain values.
    pub env_list: Option<Vec<Value>>,
    /// Labels for the Job and its pod (Prefect's plus the user's), not yet slugified.
    pub labels: Map<String, Value>,
    /// Annotations for the Job and its pod, keys not yet slugified.
    pub annotations: Map<String, Value>,
    /// The run's infrastructure name (job variable `name`, else the flow run's name).
    pub name: Option<String>,
    /// Image used when the template leaves the container's image out.
    pub default_image: String,
    /// Host name that replaces `localhost`/`127.0.0.1` in `PREFECT_API_URL`, when set.
    pub api_dns_name: Option<String>,
}

/// Prepares `manifest` in place for one flow run; returns the final environment (a mapping, or
/// a list when `valueFrom` entries are present), which the configuration keeps as its `env`.
///
/// The credentials in it stay as they are here: they are moved into Secrets when the run
/// starts ([`crate::manifest::credentials`]), by the worker whose pool names the Secret.
pub fn prepare_job_manifest(manifest: &mut Value, run: &RunSettings) -> Result<Value> {
    let mut env = run.env.clone();
    let mut env_references = Vec::new();
    if let Some(entries) = &run.env_list {
        split_env_list(entries, &mut env, &mut env_references);
    }
    if let Some(dns_name) = run.api_dns_name.as_deref().filter(|name| !name.is_empty()) {
        rewrite_api_url(&mut env, dns_name);
    }
    let mut env_entries = if env_references.is_empty() {
        EnvForm::Mapping(env)
    } else {
        let mut entries = mapping_to_entries(&env);
        entries.extend(env_references);
        EnvForm::List(entries)
    };
    configure_eviction_handling(manifest, &mut env_entries);
    populate_env(manifest, &env_entries)?;
    slugify_job_labels(manifest, &run.labels)?;
    slugify_job_annotations(manifest, &run.annotations)?;
    populate_image(manifest, &run.default_image)?;
    populate_command(manifest)?;
    populate_generate_name(manifest, run.name.as_deref());
    propagate_labels_to_pod(manifest, &run.labels)?;
    propagate_annotations_to_pod(manifest)?;
    Ok(match env_entries {
        EnvForm::Mapping(map) => Value::Object(map),
        EnvForm::List(items) => Value::Array(items),
    })
}

/// Splits a list-form `env` job variable as the Python worker does: entries with a `name` and
/// a `value` join the mapping (a null value removes the variable, as in Prefect's merge);
/// entries with `valueFrom` are kept aside.
fn split_env_list(entries: &[Value], env: &mut Map<String, Value>, references: &mut Vec<Value>) {
    for entry in entries {
        if entry.get("valueFrom").is_some() {
            references.push(entry.clone());
        }
        if let (Some(name), Some(value)) = (entry.get("name"), entry.get("value")) {
            let name = python_str(name);
            if value.is_null() {
                env.remove(&name);
            } else {
                env.insert(name, value.clone());
            }
        }
    }
}

enum EnvForm {
    Mapping(Map<String, Value>),
    List(Vec<Value>),
}

fn mapping_to_entries(env: &Map<String, Value>) -> Vec<Value> {
    env.iter()
        .map(|(name, value)| {
            let mut entry = Map::with_capacity(2);
            entry.insert("name".into(), Value::String(name.clone()));
            entry.insert("value".into(), value.clone());
            Value::Object(entry)
        })
        .collect()
}

fn rewrite_api_url(env: &mut Map<String, Value>, dns_name: &str) {
    if let Some(Value::String(url)) = env.get_mut("PREFECT_API_URL") {
        *url = url
            .replace("localhost", dns_name)
            .replace("127.0.0.1", dns_name);
    }
}

/// With `backoffLimit: 0` Kubernetes will not retry an evicted pod, so the run reschedules
/// itself on SIGTERM (unless the user chose a behaviour); with retries, Kubernetes owns the
/// run and the process must relinquish it.
fn configure_eviction_handling(manifest: &Value, env: &mut EnvForm) {
    let no_retries = manifest
        .pointer("/spec/backoffLimit")
        .is_some_and(|limit| match limit {
            Value::Number(number) => number.as_f64() == Some(0.0),
            Value::Bool(flag) => !flag,
            _ => false,
        });
    let behaviour = if no_retries {
        "reschedule"
    } else {
        "relinquish"
    };
    match env {
        EnvForm::Mapping(map) => {
            let user_choice = map.get(SIGTERM_BEHAVIOR_ENV).is_some_and(is_truthy);
            if !no_retries || !user_choice {
                map.insert(SIGTERM_BEHAVIOR_ENV.into(), Value::String(behaviour.into()));
            }
        }
        EnvForm::List(entries) => {
            let named = |entry: &Value| {
                entry.get("name").and_then(Value::as_str) == Some(SIGTERM_BEHAVIOR_ENV)
            };
            if no_retries {
                if entries.iter().any(named) {
                    return;
                }
            } else {
                entries.retain(|entry| !named(entry));
            }
            entries.push(serde_json::json!({"name": SIGTERM_BEHAVIOR_ENV, "value": behaviour}));
        }
    }
}

fn is_truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(flag) => *flag,
        Value::Number(number) => number.as_f64() != Some(0.0),
        Value::String(text) => !text.is_empty(),
        Value::Array(items) => !items.is_empty(),
        Value::Object(map) => !map.is_empty(),
    }
}

/// Kubernetes wants `env` as a list of entries. A template that hard-codes a list keeps its
/// entries after Prefect's, except those Prefect sets itself (Prefect's values win).
fn populate_env(manifest: &mut Value, env: &EnvForm) -> Result<()> {
    let prefect_entries = match env {
        EnvForm::Mapping(map) => mapping_to_entries(map),
        EnvForm::List(items) => items.clone(),
    };
    let mut prefect_names = Vec::with_capacity(prefect_entries.len());
    for entry in &prefect_entries {
        let name = entry.get("name").and_then(Value::as_str).ok_or_else(|| {
            ManifestError::InvalidEnvEntry {
                entry: crate::manifest::python_text::python_repr(entry),
                reason: "every entry needs a 'name'".into(),
            }
        })?;
        prefect_names.push(name.to_owned());
    }
    let container = prefect_container_mut(manifest).ok_or(ManifestError::NoPrefectContainer)?;
    let merged = match container.get("env") {
        Some(Value::Array(template_entries)) => {
            let mut merged = prefect_entries;
            merged.extend(
                template_entries
                    .iter()
                    .filter(|entry| {
                        entry
                            .get("name")
                            .and_then(Value::as_str)
                            .is_none_or(|name| !prefect_names.iter().any(|n| n == name))
                    })
                    .cloned(),
            );
            merged
        }
        _ => prefect_entries,
    };
    container.insert("env".into(), Value::Array(merged));
    Ok(())
}

fn metadata_mut<'a>(
    object: &'a mut Value,
    pointer: &str,
    what: &str,
) -> Result<&'a mut Map<String, Value>> {
    let found = object
        .pointer(pointer)
        .map(json_type_name)
        .unwrap_or("nothing");
    object
        .pointer_mut(pointer)
        .and_then(Value::as_object_mut)
        .ok_or_else(|| ManifestError::NotAMapping {
            what: what.into(),
            found,
        })
}

/// A mapping inside metadata (`labels`, `annotations`); absent or null reads as empty.
fn metadata_section(
    metadata: &Map<String, Value>,
    key: &str,
    what: &str,
) -> Result<Map<String, Value>> {
    match metadata.get(key) {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(map)) => Ok(map.clone()),
        Some(other) => Err(ManifestError::NotAMapping {
            what: what.into(),
            found: json_type_name(other),
        }),
    }
}

fn merged(base: Map<String, Value>, overrides: &Map<String, Value>) -> Map<String, Value> {
    let mut merged = base;
    for (key, value) in overrides {
        merged.insert(key.clone(), value.clone());
    }
    merged
}

fn slugified_labels(labels: &Map<String, Value>) -> Result<Map<String, Value>> {
    let mut slugged = Map::with_capacity(labels.len());
    for (key, value) in labels {
        let text = metadata_text(value, || format!("label {key:?} value"))?;
        let key_slug = checked_label_key(key, "label key")?;
        let value_slug = slugify_label_value(&text);
        if !is_valid_label_value(&value_slug) {
            return Err(ManifestError::InvalidMetadata {
                what: format!("label {key:?} value"),
                kind: "label value",
                original: text,
                slug: value_slug,
                hint: "use at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
            });
        }
        slugged.insert(key_slug, Value::String(value_slug));
    }
    Ok(slugged)
}

fn metadata_text(value: &Value, what: impl Fn() -> String) -> Result<String> {
    match value {
        Value::String(text) => Ok(text.clone()),
        Value::Number(_) | Value::Bool(_) => Ok(python_str(value)),
        other => Err(ManifestError::NotText {
            what: what(),
            found: json_type_name(other),
        }),
    }
}

/// Slugifies a label or annotation key; the prefix part is also lowercased, since Kubernetes
/// accepts only lowercase DNS names there (the Python worker keeps its case and the Job is refused).
fn checked_label_key(key: &str, kind: &'static str) -> Result<String> {
    let mut slug = slugify_label_key(key);
    if let Some(slash) = slug.find('/') {
        slug[..slash].make_ascii_lowercase();
    }
    if is_valid_label_key(&slug) {
        Ok(slug)
    } else {
        Err(ManifestError::InvalidMetadata {
            what: kind.to_owned(),
            kind,
            original: key.to_owned(),
            slug,
            hint: "use an optional DNS-subdomain prefix and '/', then at most 63 letters, digits, '-', '_' or '.'",
        })
    }
}

fn slugify_job_labels(manifest: &mut Value, labels: &Map<String, Value>) -> Result<()> {
    let metadata = metadata_mut(manifest, "/metadata", "metadata")?;
    let all = merged(
        metadata_section(metadata, "labels", "metadata.labels")?,
        labels,
    );
    metadata.insert("labels".into(), Value::Object(slugified_labels(&all)?));
    Ok(())
}

fn slugified_annotations(annotations: &Map<String, Value>) -> Result<Map<String, Value>> {
    let mut slugged = Map::with_capacity(annotations.len());
    for (key, value) in annotations {
        slugged.insert(checked_label_key(key, "annotation key")?, value.clone());
    }
    Ok(slugged)
}

fn slugify_job_annotations(manifest: &mut Value, annotations: &Map<String, Value>) -> Result<()> {
    let metadata = metadata_mut(manifest, "/metadata", "metadata")?;
    let all = merged(
        metadata_section(metadata, "annotations", "metadata.annotations")?,
        annotations,
    );
    metadata.insert(
        "annotations".into(),
        Value::Object(slugified_annotations(&all)?),
    );
    Ok(())
}

/// A missing image gets the Prefect image; so does an explicit null or empty one (the Python
/// worker sends those to Kubernetes, which refuses the Job).
fn populate_image(manifest: &mut Value, default_image: &str) -> Result<()> {
    let container = prefect_container_mut(manifest).ok_or(ManifestError::NoPrefectContainer)?;
    let unset = match container.get("image") {
        None | Some(Value::Null) => true,
        Some(Value::String(image)) => image.is_empty(),
        Some(_) => false,
    };
    if unset {
        container.insert("image".into(), Value::String(default_image.to_owned()));
    }
    Ok(())
}

/// The command becomes the container's `args` as POSIX shell words, so the image's
/// entrypoint stays in charge.
fn populate_command(manifest: &mut Value) -> Result<()> {
    let container = prefect_container_mut(manifest).ok_or(ManifestError::NoPrefectContainer)?;
    let command = match container.get("args") {
        None | Some(Value::Null) => DEFAULT_COMMAND,
        Some(Value::String(command)) => command.as_str(),
        Some(Value::Array(_)) => return Ok(()),
        Some(other) => {
            return Err(ManifestError::InvalidCommandType {
                found: json_type_name(other),
            })
        }
    };
    let words = split_shell_words(command).map_err(|source| ManifestError::InvalidCommand {
        command: command.to_owned(),
        source,
    })?;
    container.insert(
        "args".into(),
        Value::Array(words.into_iter().map(Value::String).collect()),
    );
    Ok(())
}

/// Fills `metadata.generateName` from the run's name when the template left it empty, and
/// (unlike the Python worker) also slugifies one the user supplied that Kubernetes would refuse.
fn populate_generate_name(manifest: &mut Value, name: Option<&str>) {
    let Some(metadata) = manifest.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    let current = match metadata.get("generateName") {
        Some(Value::String(text)) => text.as_str(),
        _ => "",
    };
    let needs_run_name =
        current.is_empty() || current == "-" || current == "None-" || has_placeholder(current);
    let generate_name = if needs_run_name {
        let slug = name
            .and_then(slugify_name)
            .unwrap_or_else(|| FALLBACK_NAME_STEM.into());
        format!("{slug}-")
    } else if is_valid_generate_name(current) {
        return;
    } else {
        let (stem, dash) = match current.strip_suffix('-') {
            Some(stem) => (stem, "-"),
            None => (current, ""),
        };
        match slugify_name(stem) {
            Some(slug) => format!("{slug}{dash}"),
            None => format!("{FALLBACK_NAME_STEM}-"),
        }
    };
    metadata.insert("generateName".into(), Value::String(generate_name));
}

fn propagate_labels_to_pod(manifest: &mut Value, labels: &Map<String, Value>) -> Result<()> {
    let pod_metadata = pod_metadata_mut(manifest)?;
    let all = merged(
        metadata_section(pod_metadata, "labels", "spec.template.metadata.labels")?,
        labels,
    );
    pod_metadata.insert("labels".into(), Value::Object(slugified_labels(&all)?));
    Ok(())
}

fn propagate_annotations_to_pod(manifest: &mut Value) -> Result<()> {
    let job_annotations = match manifest.pointer("/metadata/annotations") {
        Some(Value::Object(map)) if !map.is_empty() => map.clone(),
        _ => return Ok(()),
    };
    let pod_metadata = pod_metadata_mut(manifest)?;
    let all = merged(
        metadata_section(
            pod_metadata,
            "annotations",
            "spec.template.metadata.annotations",
        )?,
        &job_annotations,
    );
    pod_metadata.insert("annotations".into(), Value::Object(all));
    Ok(())
}

fn pod_metadata_mut(manifest: &mut Value) -> Result<&mut Map<String, Value>> {
    let template = metadata_mut(manifest, "/spec/template", "spec.template")?;
    let metadata = template
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if metadata.is_null() {
        *metadata = Value::Object(Map::new());
    }
    let found = json_type_name(metadata);
    metadata
        .as_object_mut()
        .ok_or_else(|| ManifestError::NotAMapping {
            what: "spec.template.metadata".into(),
            found,
        })
}

/// Kubernetes label value: empty, or at most 63 characters of `[A-Za-z0-9_.-]` that start and
/// end with a letter or digit.
pub fn is_valid_label_value(value: &str) -> bool {
    value.is_empty() || is_valid_label_name(value)
}

fn is_valid_label_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Kubernetes label/annotation key: an optional DNS-subdomain prefix and `/`, then a name.
pub fn is_valid_label_key(key: &str) -> bool {
    match key.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_valid_label_name(name),
        None => is_valid_label_name(key),
    }
}

/// Kubernetes' `IsDNS1123Subdomain`: at most 253 characters in all, dot-separated parts of
/// lowercase letters, digits and inner '-'. Unlike a DNS label, a part has no length limit of
/// its own (the v1.20 API server accepts a 253-character prefix without dots).
fn is_dns_subdomain(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 253
        && text.split('.').all(|part| {
            let bytes = part.as_bytes();
            !bytes.is_empty()
                && is_lower_alnum(bytes[0])
                && is_lower_alnum(bytes[bytes.len() - 1])
                && bytes.iter().all(|b| is_lower_alnum(*b) || *b == b'-')
        })
}

fn is_lower_alnum(byte: u8) -> bool {
    byte.is_ascii_lowercase() || byte.is_ascii_digit()
}

fn is_valid_generate_name(text: &str) -> bool {
    let bytes = text.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= GENERATE_NAME_MAX
        && is_lower_alnum(bytes[0])
        && bytes.iter().all(|b| is_lower_alnum(*b) || *b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::defaults::base_job_manifest;
    use crate::manifest::validate::validate_job_manifest;
    use serde_json::json;

    const IMAGE: &str = "prefecthq/prefect:3.9.1-python3.11";

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("not a mapping: {other}"),
        }
    }

    fn run(env: Value) -> RunSettings {
        RunSettings {
            env: object(env),
            labels: object(
                json!({"prefect.io/flow-run-id": "1234", "prefect.io/flow-run-name": "Happy Cat"}),
            ),
            name: Some("happy-cat".into()),
            default_image: IMAGE.into(),
            ..RunSettings::default()
        }
    }

    fn validated(manifest: Value) -> Value {
        let mut manifest = manifest;
        validate_job_manifest(&mut manifest, "default").expect("valid manifest");
        manifest
    }

    fn prepared(manifest: Value, run: &RunSettings) -> (Value, Value) {
        let mut manifest = validated(manifest);
        let env = prepare_job_manifest(&mut manifest, run).expect("prepared");
        (manifest, env)
    }

    fn container(manifest: &Value) -> &Value {
        manifest["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "prefect-job")
            .unwrap()
    }

    fn with_backoff(limit: Value) -> Value {
        let mut manifest = base_job_manifest();
        manifest["spec"]["backoffLimit"] = limit;
        manifest
    }

    #[test]
    fn env_mapping_becomes_entries_in_order() {
        let (manifest, _) = prepared(base_job_manifest(), &run(json!({"B": "2", "A": "1"})));
        assert_eq!(
            container(&manifest)["env"],
            json!([{"name": "B", "value": "2"}, {"name": "A", "value": "1"},
                   {"name": SIGTERM_BEHAVIOR_ENV, "value": "relinquish"}])
        );
    }

    #[test]
    fn a_list_env_variable_joins_its_plain_values_and_keeps_its_references() {
        let mut settings = run(json!({"A": "from prefect", "GONE": "x"}));
        settings.env_list = Some(vec![
            json!({"name": "A", "value": "mine"}),
            json!({"name": "GONE", "value": null}),
            json!({"name": "NO_VALUE"}),
            json!({"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}),
        ]);
        let (_, env) = prepared(with_backoff(json!(2)), &settings);
        assert_eq!(
            env,
            json!([
                {"name": "A", "value": "mine"},
                {"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
                {"name": SIGTERM_BEHAVIOR_ENV, "value": "relinquish"}
            ])
        );
    }

    #[test]
    fn value_from_entries_follow_the_plain_values() {
        let mut settings = run(json!({"A": "1"}));
        settings.env_list = Some(vec![
            json!({"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}),
        ]);
        let (manifest, env) = prepared(with_backoff(json!(2)), &settings);
        let expected = json!([
            {"name": "A", "value": "1"},
            {"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
            {"name": SIGTERM_BEHAVIOR_ENV, "value": "relinquish"}
        ]);
        assert_eq!(container(&manifest)["env"], expected);
        assert_eq!(env, expected, "the configuration keeps the list form");
    }

    #[test]
    fn hard_coded_template_env_keeps_its_unique_entries_after_prefects() {
        let mut manifest = base_job_manifest();
        manifest["spec"]["template"]["spec"]["containers"][0]["env"] = json!([
            {"name": "A", "value": "template"},
            {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}
        ]);
        let (manifest, _) = prepared(manifest, &run(json!({"A": "prefect"})));
        assert_eq!(
            container(&manifest)["env"],
            json!([
                {"name": "A", "value": "prefect"},
                {"name": SIGTERM_BEHAVIOR_ENV, "value": "relinquish"},
                {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}
            ])
        );
    }

    #[test]
    fn no_retries_means_reschedule_unless_the_user_chose() {
        let (_, env) = prepared(with_backoff(json!(0)), &run(json!({})));
        assert_eq!(env[SIGTERM_BEHAVIOR_ENV], json!("reschedule"));
        let (_, env) = prepared(
            with_backoff(json!(0)),
            &run(json!({SIGTERM_BEHAVIOR_ENV: "relinquish"})),
        );
        assert_eq!(env[SIGTERM_BEHAVIOR_ENV], json!("relinquish"));
        let (_, env) = prepared(
            with_backoff(json!(0)),
            &run(json!({SIGTERM_BEHAVIOR_ENV: ""})),
        );
        assert_eq!(
            env[SIGTERM_BEHAVIOR_ENV],
            json!("reschedule"),
            "an empty value is no choice"
        );
    }

    #[test]
    fn retries_or_no_limit_mean_relinquish_even_over_the_users_value() {
        for manifest in [with_backoff(json!(3)), base_job_manifest()] {
            let (_, env) = prepared(manifest, &run(json!({SIGTERM_BEHAVIOR_ENV: "reschedule"})));
            assert_eq!(env[SIGTERM_BEHAVIOR_ENV], json!("relinquish"));
        }
    }

    #[test]
    fn eviction_env_in_list_form() {
        let reference = json!({"name": SIGTERM_BEHAVIOR_ENV, "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}});
        let mut settings = run(json!({}));
        settings.env_list = Some(vec![reference.clone()]);
        let (_, env) = prepared(with_backoff(json!(0)), &settings);
        assert_eq!(
            env,
            json!([reference]),
            "the user's valueFrom choice stands"
        );
        let (_, env) = prepared(with_backoff(json!(1)), &settings);
        assert_eq!(
            env,
            json!([{"name": SIGTERM_BEHAVIOR_ENV, "value": "relinquish"}])
        );
    }

    #[test]
    fn api_url_points_at_the_dns_name_when_set() {
        let mut settings = run(json!({"PREFECT_API_URL": "http://localhost:4200/api"}));
        settings.api_dns_name = Some("host.docker.internal".into());
        let (_, env) = prepared(base_job_manifest(), &settings);
        assert_eq!(
            env["PREFECT_API_URL"],
            json!("http://host.docker.internal:4200/api")
        );
        let settings = run(json!({"PREFECT_API_URL": "http://127.0.0.1:4200/api"}));
        let (_, env) = prepared(base_job_manifest(), &settings);
        assert_eq!(env["PREFECT_API_URL"], json!("http://127.0.0.1:4200/api"));
    }

    #[test]
    fn labels_merge_slugify_and_reach_the_pod() {
        let mut manifest = base_job_manifest();
        manifest["metadata"]["labels"] =
            json!({"team": "Data Eng", "prefect.io/flow-run-name": "old"});
        manifest["spec"]["template"]["metadata"] =
            json!({"labels": {"sidecar.istio.io/inject": "false"}});
        let (manifest, _) = prepared(manifest, &run(json!({})));
        assert_eq!(
            manifest["metadata"]["labels"],
            json!({"team": "Data-Eng", "prefect.io/flow-run-name": "Happy-Cat", "prefect.io/flow-run-id": "1234"})
        );
        assert_eq!(
            manifest["spec"]["template"]["metadata"]["labels"],
            json!({"sidecar.istio.io/inject": "false", "prefect.io/flow-run-id": "1234", "prefect.io/flow-run-name": "Happy-Cat"}),
            "the pod gets the run's labels, not the Job's hard-coded ones"
        );
    }

    #[test]
    fn label_values_that_cannot_be_made_valid_are_refused() {
        let mut settings = run(json!({}));
        settings.labels.insert("team".into(), json!("!!!"));
        let mut manifest = validated(base_job_manifest());
        let message = prepare_job_manifest(&mut manifest, &settings)
            .unwrap_err()
            .to_string();
        assert!(
            message.starts_with(
                "label \"team\" value \"!!!\" cannot be made a valid Kubernetes label value"
            ),
            "{message}"
        );
        settings.labels.insert("team".into(), json!(null));
        let message = prepare_job_manifest(&mut validated(base_job_manifest()), &settings)
            .unwrap_err()
            .to_string();
        assert_eq!(message, "label \"team\" value must be text, got null");
    }

    #[test]
    fn label_key_prefixes_are_lowercased_for_kubernetes() {
        let mut settings = run(json!({}));
        settings.labels = object(json!({"Example.COM/Team": "a"}));
        let (manifest, _) = prepared(base_job_manifest(), &settings);
        assert_eq!(
            manifest["metadata"]["labels"],
            json!({"example.com/Team": "a"})
        );
    }

    #[test]
    fn a_key_prefix_may_have_253_characters_without_dots_as_kubernetes_allows() {
        let prefix = "a".repeat(253);
        let mut settings = run(json!({}));
        settings.labels = object(json!({format!("{prefix}/team"): "a"}));
        settings.annotations = object(json!({format!("{prefix}/note"): "b"}));
        let (manifest, _) = prepared(base_job_manifest(), &settings);
        assert_eq!(
            manifest["metadata"]["labels"][format!("{prefix}/team")],
            "a"
        );
        assert_eq!(
            manifest["metadata"]["annotations"][format!("{prefix}/note")],
            "b"
        );
        assert!(!is_valid_label_key(&format!("{}/team", "a".repeat(254))));
        assert!(!is_valid_label_key("-a/team"));
    }

    #[test]
    fn numeric_label_values_become_text() {
        let mut settings = run(json!({}));
        settings.labels = object(json!({"version": 2}));
        let (manifest, _) = prepared(base_job_manifest(), &settings);
        assert_eq!(manifest["metadata"]["labels"]["version"], json!("2"));
    }

    #[test]
    fn annotations_keep_values_and_reach_the_pod_only_when_present() {
        let (manifest, _) = prepared(base_job_manifest(), &run(json!({})));
        assert_eq!(manifest["metadata"]["annotations"], json!({}));
        assert!(manifest["spec"]["template"]["metadata"]
            .get("annotations")
            .is_none());

        let mut settings = run(json!({}));
        settings.annotations = object(json!({"my key": "Free text: kept!"}));
        let mut template = base_job_manifest();
        template["spec"]["template"]["metadata"] =
            json!({"annotations": {"pod-only": "1", "my-key": "pod"}});
        let (manifest, _) = prepared(template, &settings);
        assert_eq!(
            manifest["metadata"]["annotations"],
            json!({"my-key": "Free text: kept!"})
        );
        assert_eq!(
            manifest["spec"]["template"]["metadata"]["annotations"],
            json!({"pod-only": "1", "my-key": "Free text: kept!"})
        );
    }

    #[test]
    fn image_defaults_when_absent_null_or_empty() {
        for image in [None, Some(json!(null)), Some(json!(""))] {
            let mut manifest = base_job_manifest();
            if let Some(image) = image {
                manifest["spec"]["template"]["spec"]["containers"][0]["image"] = image;
            }
            let (manifest, _) = prepared(manifest, &run(json!({})));
            assert_eq!(container(&manifest)["image"], json!(IMAGE));
        }
        let mut manifest = base_job_manifest();
        manifest["spec"]["template"]["spec"]["containers"][0]["image"] = json!("mine:1");
        let (manifest, _) = prepared(manifest, &run(json!({})));
        assert_eq!(container(&manifest)["image"], json!("mine:1"));
    }

    #[test]
    fn command_becomes_shell_words_in_args() {
        let (manifest, _) = prepared(base_job_manifest(), &run(json!({})));
        assert_eq!(
            container(&manifest)["args"],
            json!(["prefect", "flow-run", "execute"])
        );
        assert!(
            container(&manifest).get("command").is_none(),
            "the image entrypoint stays"
        );

        let mut manifest = base_job_manifest();
        manifest["spec"]["template"]["spec"]["containers"][0]["args"] =
            json!("python -c 'print(\"a b\")'");
        let (manifest, _) = prepared(manifest, &run(json!({})));
        assert_eq!(
            container(&manifest)["args"],
            json!(["python", "-c", "print(\"a b\")"])
        );

        let mut manifest = base_job_manifest();
        manifest["spec"]["template"]["spec"]["containers"][0]["args"] = json!(["keep", "as is"]);
        let (manifest, _) = prepared(manifest, &run(json!({})));
        assert_eq!(container(&manifest)["args"], json!(["keep", "as is"]));
    }

    #[test]
    fn bad_commands_are_refused_with_the_reason() {
        let mut manifest = base_job_manifest();
        manifest["spec"]["template"]["spec"]["containers"][0]["args"] = json!("echo 'unclosed");
        let message = prepare_job_manifest(&mut validated(manifest), &run(json!({})))
            .unwrap_err()
            .to_string();
        assert!(
            message
                .starts_with("invalid command \"echo 'unclosed\" for the 'prefect-job' container"),
            "{message}"
        );

        let mut manifest = base_job_manifest();
        manifest["spec"]["template"]["spec"]["containers"][0]["args"] = json!(5);
        let message = prepare_job_manifest(&mut validated(manifest), &run(json!({})))
            .unwrap_err()
            .to_string();
        assert_eq!(
            message,
            "Invalid job manifest template: 'command' must be a string or list, got a number"
        );
    }

    #[test]
    fn generate_name_comes_from_the_run_name_when_the_template_leaves_it_open() {
        for open in [
            None,
            Some("-"),
            Some("None-"),
            Some("{{ name }}-"),
            Some(""),
        ] {
            let mut manifest = base_job_manifest();
            if let Some(open) = open {
                manifest["metadata"]["generateName"] = json!(open);
            }
            let (manifest, _) = prepared(manifest, &run(json!({})));
            assert_eq!(
                manifest["metadata"]["generateName"],
                json!("happy-cat-"),
                "{open:?}"
            );
        }
        let mut settings = run(json!({}));
        settings.name = Some("!!!".into());
        let (manifest, _) = prepared(base_job_manifest(), &settings);
        assert_eq!(manifest["metadata"]["generateName"], json!("prefect-job-"));
    }

    #[test]
    fn user_supplied_generate_names_are_made_valid() {
        let mut manifest = base_job_manifest();
        manifest["metadata"]["generateName"] = json!("My Job_Name.v2!-");
        let (manifest, _) = prepared(manifest, &run(json!({})));
        assert_eq!(
            manifest["metadata"]["generateName"],
            json!("my-job-name-v2-")
        );

        let mut manifest = base_job_manifest();
        manifest["metadata"]["generateName"] = json!("already-valid-");
        let (manifest, _) = prepared(manifest, &run(json!({})));
        assert_eq!(
            manifest["metadata"]["generateName"],
            json!("already-valid-")
        );
    }

    #[test]
    fn every_edit_targets_the_prefect_container_not_the_first() {
        let mut manifest = base_job_manifest();
        manifest["spec"]["template"]["spec"]["containers"] =
            json!([{"name": "sidecar", "image": "proxy:1"}, {"name": "prefect-job"}]);
        let (manifest, _) = prepared(manifest, &run(json!({"A": "1"})));
        let containers = &manifest["spec"]["template"]["spec"]["containers"];
        assert_eq!(
            containers[0],
            json!({"name": "sidecar", "image": "proxy:1"})
        );
        assert_eq!(containers[1]["image"], json!(IMAGE));
        assert_eq!(
            containers[1]["args"],
            json!(["prefect", "flow-run", "execute"])
        );
        assert_eq!(containers[1]["env"][0], json!({"name": "A", "value": "1"}));
    }

    #[test]
    fn env_entries_without_names_are_refused() {
        let mut settings = run(json!({}));
        settings.env_list = Some(vec![
            json!({"valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}),
        ]);
        let message = prepare_job_manifest(&mut validated(base_job_manifest()), &settings)
            .unwrap_err()
            .to_string();
        assert_eq!(
            message,
            "invalid entry {'valueFrom': {'secretKeyRef': {'name': 's', 'key': 'k'}}} in the job's env: \
             every entry needs a 'name'"
        );
    }
}
