//! Dump the Rust crates' view of the data that gen_tables.py compares against Python.
//!
//! Writes `<dir>/rust_unidecode.jsonl` (unidecode crate, every BMP codepoint) and
//! `<dir>/rust_nfkd.jsonl` (unicode-normalization NFKD + combining class, non-trivial only).
use std::io::Write;
use unicode_normalization::char::canonical_combining_class;
use unicode_normalization::UnicodeNormalization;

fn main() {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).expect("usage: dump_rust_tables DIR"));
    let mut trans = std::io::BufWriter::new(std::fs::File::create(dir.join("rust_unidecode.jsonl")).unwrap());
    for cp in 1..0x10000u32 {
        if let Some(ch) = char::from_u32(cp) {
            writeln!(trans, "{}", serde_json::json!([cp, unidecode::unidecode_char(ch)])).unwrap();
        }
    }
    let mut nfkd = std::io::BufWriter::new(std::fs::File::create(dir.join("rust_nfkd.jsonl")).unwrap());
    for cp in 0..0x110000u32 {
        if let Some(ch) = char::from_u32(cp) {
            let s = ch.to_string();
            let d: String = s.nfkd().collect();
            let ccc = canonical_combining_class(ch);
            if d != s || ccc != 0 {
                writeln!(nfkd, "{}", serde_json::json!([cp, d, ccc])).unwrap();
            }
        }
    }
}
