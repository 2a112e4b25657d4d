//! Compare deunicode and unidecode crates against text_unidecode's table per codepoint.
use std::collections::BTreeMap;
use std::io::BufRead;

fn block(cp: u32) -> &'static str {
    match cp {
        0x0000..=0x007F => "ascii",
        0x0080..=0x024F => "latin",
        0x0250..=0x02FF => "ipa/modifiers",
        0x0300..=0x036F => "combining",
        0x0370..=0x03FF => "greek",
        0x0400..=0x052F => "cyrillic",
        0x0530..=0x058F => "armenian",
        0x0590..=0x05FF => "hebrew",
        0x0600..=0x06FF => "arabic",
        0x0900..=0x0DFF => "indic",
        0x0E00..=0x0E7F => "thai",
        0x1E00..=0x1EFF => "latin-ext-additional",
        0x1F00..=0x1FFF => "greek-ext",
        0x2000..=0x206F => "punct",
        0x2070..=0x209F => "super/sub",
        0x20A0..=0x20CF => "currency",
        0x2100..=0x214F => "letterlike",
        0x2150..=0x218F => "number forms",
        0x2190..=0x2BFF => "symbols",
        0x3000..=0x303F => "cjk punct",
        0x3040..=0x30FF => "kana",
        0x3100..=0x33FF => "cjk misc",
        0x3400..=0x4DBF => "cjk ext a",
        0x4E00..=0x9FFF => "cjk",
        0xAC00..=0xD7AF => "hangul",
        0xE000..=0xF8FF => "private",
        0xF900..=0xFAFF => "cjk compat",
        0xFB00..=0xFDFF => "presentation",
        0xFE00..=0xFFFF => "halfwidth/specials",
        _ => "other",
    }
}

fn main() {
    let path = std::env::args().nth(1).unwrap();
    let f = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    let mut stats: BTreeMap<&str, [usize; 3]> = BTreeMap::new();
    let verbose: Option<String> = std::env::args().nth(2);
    for line in f.lines() {
        let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        let cp = v[0].as_u64().unwrap() as u32;
        let want = v[1].as_str().unwrap();
        let ch = char::from_u32(cp).unwrap();
        let s = ch.to_string();
        let de = deunicode::deunicode_with_tofu(&s, "");
        let un = unidecode::unidecode(&s);
        let e = stats.entry(block(cp)).or_default();
        e[0] += 1;
        if de != want {
            e[1] += 1;
        }
        if un != want {
            e[2] += 1;
        }
        if let Some(b) = &verbose {
            if block(cp) == b && (de != want || un != want) {
                println!("U+{cp:04X} {ch:?} py={want:?} deunicode={de:?} unidecode={un:?}");
            }
        }
    }
    for (k, [n, d, u]) in stats {
        println!("{k:22} n={n:6} deunicode_diff={d:6} unidecode_diff={u:6}");
    }
}
