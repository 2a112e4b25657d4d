//! Prefect's `{{ placeholder }}` templating, rule for rule as `prefect.utilities.templating.apply_values`.
//!
//! - A string that is exactly one standard placeholder becomes the value itself, of any JSON
//!   type (including null); a missing value removes the dict key or list item holding it.
//! - Placeholders inside other text are replaced by Python's `str()` of the value; missing ones
//!   by nothing; `{{ $NAME }}` reads the worker's environment.
//! - `{{ prefect.blocks.* }}` and `{{ prefect.variables.* }}` are left for the Python layer,
//!   which resolves them through the Prefect API.

use crate::manifest::python_text::python_str;
use regex::Regex;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::sync::LazyLock;

/// Prefect's placeholder pattern: `{{`, optional whitespace, a name of word characters, dots,
/// dashes, brackets and `$`, optional whitespace, `}}`.
static PLACEHOLDER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\{\{\s*([\w\.\-\[\]$]+)\s*\}\}").expect("placeholder pattern"));

const BLOCK_PREFIX: &str = "prefect.blocks.";
const VARIABLE_PREFIX: &str = "prefect.variables.";
const ENV_PREFIX: char = '$';

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PlaceholderKind {
    Standard,
    Block,
    Variable,
    Environment,
}

fn kind_of(name: &str) -> PlaceholderKind {
    if name.starts_with(BLOCK_PREFIX) {
        PlaceholderKind::Block
    } else if name.starts_with(VARIABLE_PREFIX) {
        PlaceholderKind::Variable
    } else if name.starts_with(ENV_PREFIX) {
        PlaceholderKind::Environment
    } else {
        PlaceholderKind::Standard
    }
}

/// Where `{{ $NAME }}` placeholders are looked up; the process environment in production.
pub trait EnvironmentLookup {
    /// The value of the environment variable, if set.
    fn get(&self, name: &str) -> Option<String>;
}

/// Reads placeholders like `{{ $HOME }}` from the worker process's environment, as Prefect does.
pub struct ProcessEnvironment;

impl EnvironmentLookup for ProcessEnvironment {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl<F: Fn(&str) -> Option<String>> EnvironmentLookup for F {
    fn get(&self, name: &str) -> Option<String> {
        self(name)
    }
}

/// Applies `values` to every placeholder in `template`.
///
/// Returns `None` where Prefect returns `NotSet`: the template was a single placeholder whose
/// value is missing. Inside mappings and lists such entries are dropped.
pub fn apply_values(
    template: &Value,
    values: &Map<String, Value>,
    environment: &dyn EnvironmentLookup,
) -> Option<Value> {
    match template {
        Value::String(text) => apply_to_string(text, values, environment),
        Value::Object(map) => {
            let mut rendered = Map::with_capacity(map.len());
            for (key, item) in map {
                if let Some(value) = apply_values(item, values, environment) {
                    rendered.insert(key.clone(), value);
                }
            }
            Some(Value::Object(rendered))
        }
        Value::Array(items) => Some(Value::Array(
            items
                .iter()
                .filter_map(|item| apply_values(item, values, environment))
                .collect(),
        )),
        other => Some(other.clone()),
    }
}

/// Whether anything in `value` still holds a placeholder only the Prefect API can resolve
/// (blocks, variables) or a `$ref` block reference, so Python knows whether to call it at all.
pub fn needs_api_resolution(value: &Value) -> bool {
    match value {
        Value::String(text) => PLACEHOLDER.captures_iter(text).any(|captures| {
            matches!(
                kind_of(&captures[1]),
                PlaceholderKind::Block | PlaceholderKind::Variable
            )
        }),
        Value::Object(map) => map.contains_key("$ref") || map.values().any(needs_api_resolution),
        Value::Array(items) => items.iter().any(needs_api_resolution),
        _ => false,
    }
}

/// Whether `text` holds any placeholder at all.
pub fn has_placeholder(text: &str) -> bool {
    PLACEHOLDER.is_match(text)
}

fn apply_to_string(
    text: &str,
    values: &Map<String, Value>,
    environment: &dyn EnvironmentLookup,
) -> Option<Value> {
    // Prefect collects the placeholders as a set: repeats of one placeholder count once.
    let mut placeholders: Vec<(&str, &str)> = Vec::new();
    for captures in PLACEHOLDER.captures_iter(text) {
        let full = captures.get(0).expect("whole match").as_str();
        let name = captures.get(1).expect("name group").as_str();
        if !placeholders.iter().any(|(seen, _)| *seen == full) {
            placeholders.push((full, name));
        }
    }
    match placeholders.as_slice() {
        [] => return Some(Value::String(text.to_owned())),
        [(full, name)] if *full == text && kind_of(name) == PlaceholderKind::Standard => {
            return lookup_path(values, name).map(Cow::into_owned);
        }
        _ => {}
    }
    let rendered = PLACEHOLDER.replace_all(text, |captures: &regex::Captures<'_>| {
        let full = &captures[0];
        let name = &captures[1];
        match kind_of(name) {
            PlaceholderKind::Standard => lookup_path(values, name)
                .map(|value| python_str(&value))
                .unwrap_or_default(),
            PlaceholderKind::Environment => environment
                .get(name.trim_start_matches(ENV_PREFIX))
                .unwrap_or_default(),
            PlaceholderKind::Block | PlaceholderKind::Variable => full.to_owned(),
        }
    });
    Some(Value::String(rendered.into_owned()))
}

/// Prefect's `get_from_dict`: a dotted path where `[i]` and bare integers index lists
/// (negative indices count from the end) and strings by character.
fn lookup_path<'a>(values: &'a Map<String, Value>, path: &str) -> Option<Cow<'a, Value>> {
    let normalised = path.replace('[', ".").replace(']', "");
    let mut segments = normalised.split('.');
    let mut current = Cow::Borrowed(values.get(segments.next()?)?);
    for segment in segments {
        current = match current {
            Cow::Borrowed(Value::Object(map)) => Cow::Borrowed(map.get(segment)?),
            Cow::Borrowed(Value::Array(items)) => {
                Cow::Borrowed(&items[python_index(parse_python_int(segment)?, items.len())?])
            }
            Cow::Borrowed(Value::String(text)) => character_at(text, segment)?,
            Cow::Owned(Value::String(text)) => character_at(&text, segment)?,
            _ => return None,
        };
    }
    Some(current)
}

fn character_at<'a>(text: &str, segment: &str) -> Option<Cow<'a, Value>> {
    let characters: Vec<char> = text.chars().collect();
    let index = python_index(parse_python_int(segment)?, characters.len())?;
    Some(Cow::Owned(Value::String(characters[index].to_string())))
}

fn python_index(index: i64, len: usize) -> Option<usize> {
    let len = i64::try_from(len).ok()?;
    let resolved = if index < 0 { len + index } else { index };
    (0..len).contains(&resolved).then_some(resolved as usize)
}

/// Python's `int(text)` for the forms a placeholder name can contain: digits with single
/// underscores between them and an optional leading minus.
fn parse_python_int(text: &str) -> Option<i64> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    if digits.is_empty()
        || digits.starts_with('_')
        || digits.ends_with('_')
        || digits.contains("__")
        || !digits.chars().all(|c| c.is_ascii_digit() || c == '_')
    {
        return None;
    }
    let value: i64 = digits.replace('_', "").parse().ok()?;
    Some(if negative { -value } else { value })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn no_environment(_: &str) -> Option<String> {
        None
    }

    fn render(template: Value, values: Value) -> Option<Value> {
        let Value::Object(values) = values else {
            panic!("values must be a mapping")
        };
        apply_values(&template, &values, &no_environment)
    }

    #[test]
    fn whole_string_placeholder_keeps_the_value_type() {
        let values =
            json!({"n": 5, "d": {"k": "v"}, "l": [1, 2], "none": null, "b": true, "f": 1.5});
        assert_eq!(render(json!("{{ n }}"), values.clone()), Some(json!(5)));
        assert_eq!(
            render(json!("{{d}}"), values.clone()),
            Some(json!({"k": "v"}))
        );
        assert_eq!(
            render(json!("{{  l  }}"), values.clone()),
            Some(json!([1, 2]))
        );
        assert_eq!(
            render(json!("{{ none }}"), values.clone()),
            Some(Value::Null)
        );
        assert_eq!(render(json!("{{ b }}"), values.clone()), Some(json!(true)));
        assert_eq!(render(json!("{{ f }}"), values), Some(json!(1.5)));
    }

    #[test]
    fn missing_whole_placeholder_removes_the_key_or_item() {
        let values = json!({"n": 5});
        assert_eq!(render(json!("{{ nope }}"), values.clone()), None);
        assert_eq!(
            render(
                json!({"a": "{{ nope }}", "b": ["{{ n }}", "{{ nope }}", "lit"]}),
                values.clone()
            ),
            Some(json!({"b": [5, "lit"]}))
        );
        // The mapping that held only a missing placeholder stays, empty.
        assert_eq!(
            render(json!({"only": "{{ nope }}"}), values),
            Some(json!({}))
        );
    }

    #[test]
    fn embedded_placeholders_become_python_text() {
        let values = json!({"n": 5, "none": null, "b": false, "d": {"k": "v"}, "s": "x"});
        assert_eq!(
            render(
                json!("x-{{ n }}-{{ nope }}-{{ none }}-{{ b }}"),
                values.clone()
            ),
            Some(json!("x-5--None-False"))
        );
        assert_eq!(
            render(json!("{{ d }}!"), values.clone()),
            Some(json!("{'k': 'v'}!"))
        );
        assert_eq!(render(json!("{{ name }}-"), json!({})), Some(json!("-")));
        assert_eq!(render(json!("{{ s }}{{ s }}"), values), Some(json!("xx")));
    }

    #[test]
    fn inserted_values_are_not_rendered_again() {
        let values = json!({"a": "{{ b }}", "b": "no"});
        assert_eq!(
            render(json!("<{{ a }}>"), values.clone()),
            Some(json!("<{{ b }}>"))
        );
        assert_eq!(render(json!("{{ a }}"), values), Some(json!("{{ b }}")));
    }

    #[test]
    fn dotted_and_indexed_paths_reach_into_values() {
        let values = json!({"d": {"k": "v", "list": [10, 20, 30]}, "s": "hello"});
        assert_eq!(render(json!("{{ d.k }}"), values.clone()), Some(json!("v")));
        assert_eq!(
            render(json!("{{ d.list[1] }}"), values.clone()),
            Some(json!(20))
        );
        assert_eq!(
            render(json!("{{ d.list.2 }}"), values.clone()),
            Some(json!(30))
        );
        assert_eq!(
            render(json!("{{ d.list[-1] }}"), values.clone()),
            Some(json!(30))
        );
        assert_eq!(render(json!("{{ d.list[7] }}"), values.clone()), None);
        assert_eq!(render(json!("{{ s.1 }}"), values.clone()), Some(json!("e")));
        assert_eq!(render(json!("{{ d.k.x }}"), values), None);
    }

    #[test]
    fn environment_placeholders_read_the_worker_environment_as_text() {
        let environment = |name: &str| (name == "HOME").then(|| "/root".to_string());
        let values = Map::new();
        assert_eq!(
            apply_values(&json!("{{ $HOME }}"), &values, &environment),
            Some(json!("/root"))
        );
        assert_eq!(
            apply_values(&json!("p={{ $HOME }}/x"), &values, &environment),
            Some(json!("p=/root/x"))
        );
        assert_eq!(
            apply_values(&json!("{{ $UNSET_VAR }}"), &values, &environment),
            Some(json!(""))
        );
    }

    #[test]
    fn api_placeholders_are_left_for_python() {
        let values = json!({"n": 1});
        let template = json!({"a": "{{ prefect.blocks.secret.x }}", "b": "p-{{ prefect.variables.v }}-{{ n }}"});
        let rendered = render(template, values).expect("rendered");
        assert_eq!(
            rendered,
            json!({"a": "{{ prefect.blocks.secret.x }}", "b": "p-{{ prefect.variables.v }}-1"})
        );
        assert!(needs_api_resolution(&rendered));
        assert!(needs_api_resolution(
            &json!({"c": {"$ref": {"block_document_id": "x"}}})
        ));
        assert!(!needs_api_resolution(&json!({"a": ["{{ x }}", 1, null]})));
    }

    #[test]
    fn scalars_and_plain_text_pass_through() {
        let values = json!({});
        for literal in [
            json!(1),
            json!(2.5),
            json!(true),
            json!(null),
            json!("no placeholders {{ }}"),
            json!("{{ a b }}"),
        ] {
            assert_eq!(render(literal.clone(), values.clone()), Some(literal));
        }
    }

    #[test]
    fn placeholder_names_follow_prefect_pattern() {
        let values = json!({"a-b": 1, "x$": 2, "ü": 3});
        assert_eq!(render(json!("{{ a-b }}"), values.clone()), Some(json!(1)));
        assert_eq!(render(json!("{{ x$ }}"), values.clone()), Some(json!(2)));
        assert_eq!(render(json!("{{ ü }}"), values), Some(json!(3)));
    }
}
