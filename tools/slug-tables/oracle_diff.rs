//! Dev tool: compare this crate with Python on JSON lines `[kind, input, expected]` from stdin.
//!
//! Kinds: `name`, `key`, `value`, `tag`, `default` (python-slugify outputs, `null` for
//! `None`) and `shlex` (a word list, or `null` for a `ValueError`). Prints differences and
//! a `N passed, M failed` summary. Used with `tools/slug-tables/fuzz_oracle.py`.
use std::io::BufRead;

use prefect_kubernetes_rs_core::manifest::shell_words::split_shell_words;
use prefect_kubernetes_rs_core::manifest::slug::{
    slugify, slugify_image_tag, slugify_label_key, slugify_label_value, slugify_name,
    SlugifyOptions,
};

fn main() {
    let (mut passed, mut failed) = (0usize, 0usize);
    for line in std::io::stdin().lock().lines() {
        let line = line.expect("stdin is readable");
        let v: serde_json::Value = serde_json::from_str(&line).expect("line is json");
        let kind = v[0].as_str().expect("kind");
        let input = v[1].as_str().expect("input");
        let got = match kind {
            "name" => serde_json::json!(slugify_name(input)),
            "key" => serde_json::json!(slugify_label_key(input)),
            "value" => serde_json::json!(slugify_label_value(input)),
            "tag" => serde_json::json!(slugify_image_tag(input)),
            "default" => serde_json::json!(slugify(input, &SlugifyOptions::default())),
            "shlex" => serde_json::json!(split_shell_words(input).ok()),
            other => panic!("unknown kind {other}"),
        };
        if got == v[2] {
            passed += 1;
        } else {
            failed += 1;
            println!("{kind} {input:?}: got {got}, python {}", v[2]);
        }
    }
    println!("{passed} passed, {failed} failed");
}
