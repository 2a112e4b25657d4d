//! Checks every entry of the python-slugify / prefect-kubernetes oracle corpus.

use prefect_kubernetes_rs_core::manifest::slug::{
    slugify, slugify_image_tag, slugify_label_key, slugify_label_value, slugify_name,
    SlugifyOptions,
};

#[test]
fn corpus_matches_python_oracle() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/slug_corpus.json");
    let text = std::fs::read_to_string(path).expect("corpus fixture is readable");
    let corpus: serde_json::Value = serde_json::from_str(&text).expect("corpus is valid json");
    let entries = corpus["entries"].as_array().expect("corpus has entries");
    assert!(entries.len() >= 300, "corpus too small: {}", entries.len());

    let mut mismatches = Vec::new();
    let mut differing_entries = 0;
    for entry in entries {
        let before = mismatches.len();
        let input = entry["input"].as_str().expect("input is a string");
        let expect = |field: &str| entry[field].as_str().map(str::to_owned);
        let checks = [
            ("name", slugify_name(input), expect("name")),
            ("key", Some(slugify_label_key(input)), expect("key")),
            ("value", Some(slugify_label_value(input)), expect("value")),
            ("tag", Some(slugify_image_tag(input)), expect("tag")),
            (
                "default",
                Some(slugify(input, &SlugifyOptions::default())),
                expect("default"),
            ),
        ];
        for (field, got, want) in checks {
            if got != want {
                mismatches.push(format!("{field} {input:?}: got {got:?}, python {want:?}"));
            }
        }
        if mismatches.len() > before {
            differing_entries += 1;
        }
    }
    assert!(
        mismatches.is_empty(),
        "{differing_entries} of {} entries differ ({} checks):\n{}",
        entries.len(),
        mismatches.len(),
        mismatches.join("\n")
    );
}
