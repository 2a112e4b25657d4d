//! Kubernetes-safe slugs that reproduce python-slugify as called by prefect-kubernetes 0.8.0.
//!
//! The pipeline mirrors python-slugify 9.1.3's legacy `slugify()` step for step, with
//! text-unidecode 1.3 as the transliteration backend (prefect installs no `Unidecode`, so
//! python-slugify falls back to it) and Python 3.11's Unicode 14 normalization data:
//!
//! 1. runs of `'` become `-`;
//! 2. NFKD, then per-character ASCII transliteration;
//! 3. HTML named, decimal (`&#65;`) and hex (`&#x41;`) references are decoded, in that
//!    order and *after* transliteration, so decoded characters are not transliterated;
//! 4. NFKD again, optional lowercasing, remaining `'` dropped, `,` between digits dropped;
//! 5. every run of disallowed characters becomes `-`, dash runs collapse, edge dashes go;
//! 6. with a maximum length, the slug is cut and trailing dashes stripped again.

mod html_entities;
mod tables;

use unicode_normalization::UnicodeNormalization;

use html_entities::{MAX_NAME_LEN, NAMED_ENTITIES};
use tables::{DECIMAL_DIGIT_ZEROS, NFKD_INERT_RANGES, TRANSLIT_OVERRIDES};

/// Longest slug prefect-kubernetes uses for object names, leaving room for `generateName`.
pub const NAME_MAX_LENGTH: usize = 45;
/// Longest Kubernetes label value, and longest name part of a label key.
pub const LABEL_MAX_LENGTH: usize = 63;
/// Longest Kubernetes label key prefix (a DNS subdomain).
pub const LABEL_PREFIX_MAX_LENGTH: usize = 253;
/// Longest Docker image tag.
pub const IMAGE_TAG_MAX_LENGTH: usize = 128;

/// Characters a label key or value may not start or end with.
const LABEL_EDGE_CHARS: &[char] = &['_', '-', '.'];

/// Python's `int()` refuses decimal strings with more digits than this (the default of
/// `sys.set_int_max_str_digits`, leading zeros included), which makes python-slugify skip
/// every decimal reference in the text.
const PYTHON_INT_MAX_STR_DIGITS: usize = 4300;

/// Stand-in for a lone surrogate decoded from `&#55296;`-style references: Python keeps the
/// surrogate, which a Rust `String` cannot hold; U+FFFD behaves identically in every later
/// step (no decomposition, no case, not a digit, always disallowed).
const SURROGATE_STAND_IN: char = '\u{FFFD}';

/// The disallowed-character classes of the regexes prefect and prefect-kubernetes pass.
///
/// Every variant allows only ASCII characters, which is what lets the pipeline treat
/// lowercasing and digit detection in ASCII terms without changing any result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CharClass {
    /// `[^-a-zA-Z0-9]+`: python-slugify's default and prefect-kubernetes' name pattern
    /// (`[^a-zA-Z0-9-]+`).
    NotAlnumDash,
    /// `[^a-zA-Z0-9-_.]+`: label values, label key names and Docker image tags.
    NotAlnumDashUnderscoreDot,
    /// `[^a-zA-Z0-9-\.]+`: label key prefixes (no underscore).
    NotAlnumDashDot,
}

impl CharClass {
    /// Whether `c` is matched by this class, i.e. must be replaced by a dash.
    pub fn is_disallowed(self, c: char) -> bool {
        let allowed = c.is_ascii_alphanumeric()
            || c == '-'
            || match self {
                CharClass::NotAlnumDash => false,
                CharClass::NotAlnumDashUnderscoreDot => c == '_' || c == '.',
                CharClass::NotAlnumDashDot => c == '.',
            };
        !allowed
    }
}

/// The python-slugify parameters prefect and prefect-kubernetes vary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlugifyOptions {
    /// Maximum slug length in characters; 0 means unlimited.
    pub max_length: usize,
    /// Whether to lowercase (python-slugify's `lowercase`).
    pub lowercase: bool,
    /// Characters to replace with dashes (python-slugify's `regex_pattern`).
    pub disallowed: CharClass,
}

impl Default for SlugifyOptions {
    /// python-slugify's own defaults: unlimited, lowercased, `[^-a-zA-Z0-9]+`.
    fn default() -> Self {
        Self {
            max_length: 0,
            lowercase: true,
            disallowed: CharClass::NotAlnumDash,
        }
    }
}

/// Slugify `text` exactly as python-slugify's legacy `slugify()` does for these options.
pub fn slugify(text: &str, opts: &SlugifyOptions) -> String {
    // Each step borrows its input when it has nothing to change, so ASCII text without
    // quotes or `&` is never copied before `clean`.
    let dashed = replace_quote_runs(text);
    let decomposed = nfkd(&dashed);
    let ascii = transliterate(&decomposed);
    let decoded = decode_entities(&ascii);
    let text = nfkd(&decoded);
    let mut slug = clean(&text, opts.disallowed, opts.lowercase);
    if opts.max_length > 0 && slug.len() >= opts.max_length {
        // `clean` emits only allowed characters, all ASCII, so a byte cut is a char cut.
        slug.truncate(opts.max_length);
        let kept = slug.trim_end_matches('-').len();
        slug.truncate(kept);
    }
    slug
}

/// Slug for a Kubernetes object name, or `None` when nothing survives.
///
/// Matches prefect-kubernetes' `_slugify_name`: lowercased, `[^a-zA-Z0-9-]` replaced, at
/// most 45 characters.
pub fn slugify_name(name: &str) -> Option<String> {
    let slug = slugify(
        name,
        &SlugifyOptions {
            max_length: NAME_MAX_LENGTH,
            lowercase: true,
            disallowed: CharClass::NotAlnumDash,
        },
    );
    (!slug.is_empty()).then_some(slug)
}

/// Slug for a Kubernetes label key, preserving case.
///
/// Matches prefect-kubernetes' `_slugify_label_key`: the key splits at its first `/` into
/// prefix (max 253, no `_`) and name (max 63); each part is stripped of edge `_-.` and falls
/// back to its original text when empty, so Kubernetes reports the invalid key. An empty
/// prefix (`/x`) is dropped entirely.
pub fn slugify_label_key(key: &str) -> String {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let name_slug = label_part(name, LABEL_MAX_LENGTH, CharClass::NotAlnumDashUnderscoreDot);
    match prefix {
        // Python tests the prefix for truthiness, so `""` behaves like no prefix at all.
        Some(prefix) if !prefix.is_empty() => {
            let prefix_slug =
                label_part(prefix, LABEL_PREFIX_MAX_LENGTH, CharClass::NotAlnumDashDot);
            format!("{prefix_slug}/{name_slug}")
        }
        _ => name_slug,
    }
}

/// Slug for a Kubernetes label value, preserving case.
///
/// Matches prefect-kubernetes' `_slugify_label_value`: `[^a-zA-Z0-9-_.]` replaced, cut to 63
/// characters, then stripped of edge `_-.` (so the result can be shorter than 63), falling
/// back to the original value when empty.
pub fn slugify_label_value(value: &str) -> String {
    label_part(
        value,
        LABEL_MAX_LENGTH,
        CharClass::NotAlnumDashUnderscoreDot,
    )
}

/// Slug for a Docker image tag, preserving case.
///
/// Matches the `slugify` call in prefect's `get_prefect_image_name`, applied to the composed
/// tag text (e.g. `3.9.1-python3.11-conda`): `[^a-zA-Z0-9_.-]` replaced, at most 128
/// characters, no edge stripping beyond dashes and no fallback.
pub fn slugify_image_tag(tag: &str) -> String {
    slugify(
        tag,
        &SlugifyOptions {
            max_length: IMAGE_TAG_MAX_LENGTH,
            lowercase: false,
            disallowed: CharClass::NotAlnumDashUnderscoreDot,
        },
    )
}

/// One label key part or value: case-preserving slug, edge-stripped, original if empty.
fn label_part(text: &str, max_length: usize, disallowed: CharClass) -> String {
    let slug = slugify(
        text,
        &SlugifyOptions {
            max_length,
            lowercase: false,
            disallowed,
        },
    );
    let trimmed = slug.trim_matches(LABEL_EDGE_CHARS);
    if trimmed.is_empty() {
        text.to_owned()
    } else if trimmed.len() == slug.len() {
        slug
    } else {
        trimmed.to_owned()
    }
}

/// Step 1: every run of apostrophes becomes a single dash.
fn replace_quote_runs(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains('\'') {
        return text.into();
    }
    let mut out = String::with_capacity(text.len());
    let mut in_run = false;
    for c in text.chars() {
        if c == '\'' {
            if !in_run {
                out.push('-');
            }
            in_run = true;
        } else {
            out.push(c);
            in_run = false;
        }
    }
    out.into()
}

/// NFKD as Python 3.11 (Unicode 14) computes it.
///
/// Characters assigned after Unicode 14 that newer data decomposes or marks as combining are
/// passed through untouched; since Python sees them as starters, normalizing the stretches
/// between them separately reproduces its canonical ordering too.
fn nfkd(text: &str) -> std::borrow::Cow<'_, str> {
    if text.is_ascii() {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + text.len() / 2);
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if !c.is_ascii() && is_nfkd_inert(c) {
            out.extend(text[start..i].nfkd());
            out.push(c);
            start = i + c.len_utf8();
        }
    }
    out.extend(text[start..].nfkd());
    out.into()
}

/// Whether `c` is one of the post-Unicode-14 characters `nfkd` must leave alone.
fn is_nfkd_inert(c: char) -> bool {
    NFKD_INERT_RANGES
        .binary_search_by(|&(lo, hi)| {
            if hi < c {
                std::cmp::Ordering::Less
            } else if lo > c {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

/// Step 2b: text-unidecode 1.3's per-character table, via the `unidecode` crate plus the
/// few entries where the two tables disagree. Astral characters map to nothing, as in
/// text-unidecode, whose table stops at U+FFFF.
fn transliterate(text: &str) -> std::borrow::Cow<'_, str> {
    if text.is_ascii() {
        return text.into();
    }
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else if (c as u32) <= 0xFFFF {
            let ascii = match TRANSLIT_OVERRIDES.binary_search_by(|&(k, _)| k.cmp(&c)) {
                Ok(i) => TRANSLIT_OVERRIDES[i].1,
                Err(_) => unidecode::unidecode_char(c),
            };
            out.push_str(ascii);
        }
    }
    out.into()
}

/// Step 3: named, then decimal, then hex references, each pass over the previous one's
/// output, so `&amp;#65;` becomes `A`.
fn decode_entities(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains('&') {
        return text.into();
    }
    let named = decode_named(text);
    let decimal = decode_numeric(&named, NumericBase::Decimal).unwrap_or(named);
    let hex = decode_numeric(&decimal, NumericBase::Hex).unwrap_or(decimal);
    hex.into()
}

/// `&name;` for the 252 names of Python's `html.entities.name2codepoint` (case-sensitive).
fn decode_named(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'&' {
            // Names are ASCII alphanumerics, so a match is exactly `&` + name + the next `;`.
            let rest = &bytes[i + 1..];
            let name_len = rest
                .iter()
                .take(MAX_NAME_LEN + 1)
                .position(|&b| !b.is_ascii_alphanumeric());
            if let Some(n) = name_len.filter(|&n| n > 0 && rest[n] == b';') {
                // The bytes are ASCII alphanumerics, so this slice is on char boundaries.
                let name = &text[i + 1..i + 1 + n];
                if let Ok(k) = NAMED_ENTITIES.binary_search_by(|&(k, _)| k.cmp(name)) {
                    out.push_str(&text[copied..i]);
                    out.push(NAMED_ENTITIES[k].1);
                    i += n + 2;
                    copied = i;
                    continue;
                }
            }
        }
        i += 1;
    }
    out.push_str(&text[copied..]);
    out
}

#[derive(Clone, Copy)]
enum NumericBase {
    Decimal,
    Hex,
}

/// `&#digits;` or `&#xhex;`, or `None` when python-slugify would leave the text unchanged.
///
/// python-slugify runs each kind as one `re.sub` whose callback raises on an out-of-range
/// value (`chr()` past U+10FFFF, or `int()` past 4300 decimal digits) and swallows the error,
/// so one bad reference cancels every reference of that kind in the text. Digits are
/// Unicode decimal digits because Python's `\d` and `int()` accept them (`&#x&#1633;;` is
/// `chr(1)`).
fn decode_numeric(text: &str, base: NumericBase) -> Option<String> {
    let opener = match base {
        NumericBase::Decimal => "&#",
        NumericBase::Hex => "&#x",
    };
    if !text.contains(opener) {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut search = 0;
    while let Some(found) = text[search..].find(opener) {
        let start = search + found;
        let digits_start = start + opener.len();
        let mut value: u32 = 0;
        let mut count = 0usize;
        let mut end = None;
        for (off, c) in text[digits_start..].char_indices() {
            let digit = match (base, decimal_digit_value(c)) {
                (_, Some(d)) => d,
                (NumericBase::Hex, None) if c.is_ascii_hexdigit() => {
                    c.to_digit(16).unwrap_or_default()
                }
                _ => {
                    if c == ';' && count > 0 {
                        end = Some(digits_start + off);
                    }
                    break;
                }
            };
            count += 1;
            let radix = match base {
                NumericBase::Decimal => 10,
                NumericBase::Hex => 16,
            };
            // Saturate just past the last code point; any such value fails the whole pass.
            value = value
                .saturating_mul(radix)
                .saturating_add(digit)
                .min(0x11_0000);
        }
        let Some(end) = end else {
            search = start + 1;
            continue;
        };
        let too_many_digits =
            matches!(base, NumericBase::Decimal) && count > PYTHON_INT_MAX_STR_DIGITS;
        if too_many_digits || value > 0x10_FFFF {
            return None;
        }
        out.push_str(&text[copied..start]);
        out.push(char::from_u32(value).unwrap_or(SURROGATE_STAND_IN));
        search = end + 1;
        copied = search;
    }
    out.push_str(&text[copied..]);
    Some(out)
}

/// Value of a Unicode decimal digit (general category Nd), as Python's `\d` sees it.
fn decimal_digit_value(c: char) -> Option<u32> {
    if c.is_ascii() {
        return c.to_digit(10);
    }
    // Nd characters come in runs of ten starting at a zero, so the nearest zero at or
    // below `c` tells both membership and value.
    let i = match DECIMAL_DIGIT_ZEROS.binary_search(&c) {
        Ok(i) => i,
        Err(0) => return None,
        Err(i) => i - 1,
    };
    let offset = c as u32 - DECIMAL_DIGIT_ZEROS[i] as u32;
    (offset < 10).then_some(offset)
}

/// Steps 4 and 5: lowercase, drop `'`, drop `,` between digits, dash out disallowed runs,
/// collapse and strip dashes, in one pass.
///
/// Python's `str.lower()` is full Unicode lowercasing, but after NFKD no non-ASCII character
/// lowercases to anything containing ASCII, and every class disallows all non-ASCII, so
/// lowercasing only what is emitted gives the same slug.
fn clean(text: &str, disallowed: CharClass, lowercase: bool) -> String {
    let mut out = String::with_capacity(text.len());
    let mut pending_dash = false;
    // Python removes quotes first, so the digit test sees the quote-free neighbours.
    let mut chars = text.chars().filter(|&c| c != '\'').peekable();
    let mut prev: Option<char> = None;
    while let Some(c) = chars.next() {
        let is_digit = |c: Option<char>| c.and_then(decimal_digit_value).is_some();
        let number_comma = c == ',' && is_digit(prev) && is_digit(chars.peek().copied());
        prev = Some(c);
        if number_comma {
            continue;
        }
        if c == '-' || disallowed.is_disallowed(c) {
            pending_dash = true;
        } else {
            if pending_dash && !out.is_empty() {
                out.push('-');
            }
            pending_dash = false;
            out.push(if lowercase { c.to_ascii_lowercase() } else { c });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(max_length: usize, lowercase: bool, disallowed: CharClass) -> SlugifyOptions {
        SlugifyOptions {
            max_length,
            lowercase,
            disallowed,
        }
    }

    fn check_default(cases: &[(&str, &str)]) {
        for &(input, want) in cases {
            assert_eq!(
                slugify(input, &SlugifyOptions::default()),
                want,
                "input {input:?}"
            );
        }
    }

    #[test]
    fn char_classes_allow_exactly_the_python_sets() {
        let allowed = |class: CharClass| -> String {
            (0u8..=127)
                .map(char::from)
                .filter(|&c| !class.is_disallowed(c))
                .collect()
        };
        let alnum = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        let sorted = |s: &str| {
            let mut v: Vec<char> = s.chars().collect();
            v.sort_unstable();
            v.into_iter().collect::<String>()
        };
        assert_eq!(
            allowed(CharClass::NotAlnumDash),
            sorted(&format!("-{alnum}"))
        );
        assert_eq!(
            allowed(CharClass::NotAlnumDashUnderscoreDot),
            sorted(&format!("-._{alnum}"))
        );
        assert_eq!(
            allowed(CharClass::NotAlnumDashDot),
            sorted(&format!("-.{alnum}"))
        );
        for class in [
            CharClass::NotAlnumDash,
            CharClass::NotAlnumDashUnderscoreDot,
            CharClass::NotAlnumDashDot,
        ] {
            for c in ['é', 'ß', 'Ａ', '١', '\u{212A}', '日', '😀'] {
                assert!(class.is_disallowed(c), "{class:?} {c:?}");
            }
        }
    }

    #[test]
    fn quotes_become_dashes_before_and_vanish_after_transliteration() {
        check_default(&[
            ("it's", "it-s"),
            ("it''''s", "it-s"),
            ("'quoted'", "quoted"),
            // U+2019 transliterates to `'`, which the second pass drops without a dash.
            ("it\u{2019}s", "its"),
            // `&#39;` decodes to `'` after the first pass, so it is dropped as well.
            ("it&#39;s", "its"),
            ("\"double\"", "double"),
        ]);
    }

    #[test]
    fn transliteration_follows_text_unidecode() {
        check_default(&[
            ("Ünïcödé", "unicode"),
            ("straße", "strasse"),
            ("Ελληνικά", "ellenika"),
            ("Русский текст", "russkii-tekst"),
            ("日本語", "ri-ben-yu"),
            ("北京", "bei-jing"),
            ("한국어", "hangugeo"),
            ("Œuvre æther", "oeuvre-aether"),
            ("Ｆｕｌｌｗｉｄｔｈ", "fullwidth"),
            ("ﬁnance", "finance"),
            ("x²", "x2"),
            // Astral characters (emoji) are past text-unidecode's table: they vanish.
            ("rocket 🚀 launch", "rocket-launch"),
            ("🚀🚀", ""),
            ("a🚀b", "ab"),
            // Characters text-unidecode lacks become `[?]`, hence a dash.
            ("a\u{0378}b", "a-b"),
            // C1 controls map to nothing in text-unidecode but to cp1252 in the crate.
            ("a\u{80}b", "ab"),
            // Greek Ϸ is `[?]` in text-unidecode but `Sh` in the unidecode crate.
            ("a\u{3F7}b", "a-b"),
        ]);
    }

    #[test]
    fn transliteration_preserves_case_when_asked() {
        let o = opts(0, false, CharClass::NotAlnumDashUnderscoreDot);
        assert_eq!(slugify("Ünïcödé", &o), "Unicode");
        assert_eq!(slugify("Ελληνικά", &o), "Ellenika");
        assert_eq!(slugify("日本語", &o), "Ri-Ben-Yu");
        assert_eq!(slugify("MyFlow_Name.v2", &o), "MyFlow_Name.v2");
    }

    #[test]
    fn named_entities_decode_after_transliteration() {
        check_default(&[
            ("a &amp; b", "a-b"),
            ("&lt;tag&gt;", "tag"),
            // Decoded after transliteration, é is then NFKD-split and its accent dashed.
            ("caf&eacute;", "cafe"),
            ("&eacute;t&eacute;", "e-te"),
            ("&AElig;", ""),
            ("&sup2;", "2"),
            ("&frac12;", "1-2"),
            // Names are case-sensitive and need the `;`.
            ("&AMP;", "amp"),
            ("&amp", "amp"),
            ("&notaname;", "notaname"),
            ("&&amp;;", ""),
            ("&amp;amp;", "amp"),
        ]);
    }

    #[test]
    fn decimal_references_decode() {
        check_default(&[
            ("&#65;&#66;", "ab"),
            ("&#0065;", "a"),
            ("&#x;&#;", "x"),
            ("&#38;amp;", "amp"),
            ("a&#55296;b", "a-b"),
            ("&#65313;", "a"),
            ("&#0;", ""),
            ("&#1114111;z", "z"),
            // One out-of-range reference cancels every decimal reference in the text.
            ("&#65;&#1114112;", "65-1114112"),
            // An `&amp;` turned into `&#...;` is decoded by the later pass.
            ("&amp;#66;", "b"),
        ]);
        let long_ok = format!("&#{}65;", "0".repeat(PYTHON_INT_MAX_STR_DIGITS - 2));
        assert_eq!(slugify(&long_ok, &SlugifyOptions::default()), "a");
        let long_bad = format!("&#{}65;", "0".repeat(PYTHON_INT_MAX_STR_DIGITS - 1));
        assert_eq!(
            slugify(&long_bad, &SlugifyOptions::default()),
            format!("{}65", "0".repeat(PYTHON_INT_MAX_STR_DIGITS - 1))
        );
    }

    #[test]
    fn hex_references_decode() {
        check_default(&[
            ("&#x41;&#x62;", "ab"),
            ("&#x00041;", "a"),
            // Only lowercase `x` is recognised by python-slugify's legacy pattern.
            ("&#X41;", "x41"),
            ("&#xFF21;", "a"),
            ("&#x110000;&#x41;", "x110000-x41"),
            ("&#x10FFFF;&#x41;", "a"),
            ("&#38;#x42;", "b"),
            ("&#x&#1633;;", ""),
            ("&#x&#1633;&#1633;;A", "a"),
            ("&#xD800;x", "x"),
            ("&#xg;", "xg"),
        ]);
        let long = format!("&#x{}41;", "0".repeat(10_000));
        assert_eq!(slugify(&long, &SlugifyOptions::default()), "a");
    }

    #[test]
    fn number_commas_are_removed_between_digits_only() {
        check_default(&[
            ("1,000", "1000"),
            ("1,000,000 items", "1000000-items"),
            ("a,b", "a-b"),
            ("1,,2", "1-2"),
            ("1, 2", "1-2"),
            (",1,", "1"),
            // The first quote pass has already turned `'` into a dash here.
            ("1',2", "1-2"),
            ("1&#39;,2", "12"),
            ("１,２", "12"),
            ("v1,2,3", "v123"),
        ]);
    }

    #[test]
    fn dash_runs_collapse_and_edges_strip() {
        check_default(&[
            ("", ""),
            ("---", ""),
            ("  hello   world  ", "hello-world"),
            ("a--b", "a-b"),
            ("a - b", "a-b"),
            ("-a-", "a"),
            ("!!!a!!!b!!!", "a-b"),
            ("a\u{0}b", "a-b"),
        ]);
    }

    #[test]
    fn truncation_cuts_then_strips_trailing_dashes() {
        let o = |n| opts(n, false, CharClass::NotAlnumDash);
        assert_eq!(slugify("abcdef", &o(3)), "abc");
        assert_eq!(slugify("ab-cdef", &o(3)), "ab");
        assert_eq!(slugify("abc", &o(3)), "abc");
        assert_eq!(slugify("ab", &o(3)), "ab");
        assert_eq!(slugify("a---------b", &o(2)), "a");
        assert_eq!(slugify("abcdef", &o(0)), "abcdef");
        assert_eq!(slugify("ÆÆÆ", &o(3)), "AEA");
    }

    #[test]
    fn names_are_lowercased_limited_to_45_and_none_when_empty() {
        let cases: &[(&str, Option<&str>)] = &[
            ("My Flow Run", Some("my-flow-run")),
            ("flow_run.v1", Some("flow-run-v1")),
            ("Ünïcödé", Some("unicode")),
            ("!!!", None),
            ("", None),
            ("🚀", None),
            (
                &"x".repeat(50),
                Some("xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"),
            ),
            // The cut lands after a dash plus one letter: nothing to strip.
            (
                "abcdefghij abcdefghij abcdefghij abcdefghij abcdefghij",
                Some("abcdefghij-abcdefghij-abcdefghij-abcdefghij-a"),
            ),
            // Here the 45th character is the dash, which the strip after the cut removes.
            (
                "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqr tail",
                Some("abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqr"),
            ),
        ];
        for &(input, want) in cases {
            assert_eq!(slugify_name(input).as_deref(), want, "input {input:?}");
        }
    }

    #[test]
    fn label_values_keep_case_strip_edges_and_fall_back() {
        let long = format!("{}_.-xyz", "a".repeat(60));
        let cases: &[(&str, &str)] = &[
            ("My_Value.v1", "My_Value.v1"),
            ("_leading.trailing-", "leading.trailing"),
            ("hello world", "hello-world"),
            ("Ünïcödé", "Unicode"),
            ("$$$", "$$$"),
            ("___", "___"),
            ("", ""),
            ("🚀", "🚀"),
            ("3.9.1", "3.9.1"),
            // Cut at 63 leaves `aaa…a_.-`, whose edge characters are then stripped too.
            (&long, &long[..60]),
        ];
        for &(input, want) in cases {
            assert_eq!(slugify_label_value(input), want, "input {input:?}");
        }
        assert_eq!(slugify_label_value(&"b".repeat(100)), "b".repeat(63));
    }

    #[test]
    fn label_keys_split_on_first_slash() {
        let cases: &[(&str, &str)] = &[
            ("prefect.io/flow-name", "prefect.io/flow-name"),
            ("Prefect.IO/Flow_Name", "Prefect.IO/Flow_Name"),
            ("no-prefix", "no-prefix"),
            // An empty prefix is falsy in Python: the slash disappears.
            ("/x", "x"),
            ("a/b/c", "a/b-c"),
            ("$@*^$@/name", "$@*^$@/name"),
            ("prefix/$@*^", "prefix/$@*^"),
            ("abc/", "abc/"),
            ("/", ""),
            ("", ""),
            ("my_prefix.io/x", "my-prefix.io/x"),
            ("_pre_/_name_", "pre/name"),
            ("ünï/cödé", "uni/code"),
        ];
        for &(input, want) in cases {
            assert_eq!(slugify_label_key(input), want, "input {input:?}");
        }
        let long_prefix = format!("{}.io/{}", "p".repeat(300), "n".repeat(100));
        assert_eq!(
            slugify_label_key(&long_prefix),
            format!("{}/{}", "p".repeat(253), "n".repeat(63))
        );
    }

    #[test]
    fn image_tags_keep_dots_underscores_and_case() {
        assert_eq!(slugify_image_tag("3.9.1-python3.11"), "3.9.1-python3.11");
        assert_eq!(
            slugify_image_tag("3.9.1-python3.11-conda"),
            "3.9.1-python3.11-conda"
        );
        assert_eq!(
            slugify_image_tag("sha-abc1234-python3.12"),
            "sha-abc1234-python3.12"
        );
        assert_eq!(slugify_image_tag("_Dev+Build_"), "_Dev-Build_");
        assert_eq!(slugify_image_tag(&"v".repeat(200)), "v".repeat(128));
    }

    #[test]
    fn nfkd_leaves_post_unicode_14_characters_alone() {
        // U+1E030 (Unicode 15) decomposes to Cyrillic `а` today; Python 3.11 sees an
        // unassigned astral character, which text-unidecode drops.
        check_default(&[("a\u{1E030}b", "ab"), ("&#x1E030;", "")]);
        assert!(is_nfkd_inert('\u{1E030}'));
        assert!(!is_nfkd_inert('é'));
    }

    #[test]
    fn decimal_digit_values_cover_unicode_nd() {
        assert_eq!(decimal_digit_value('7'), Some(7));
        assert_eq!(decimal_digit_value('\u{0661}'), Some(1));
        assert_eq!(decimal_digit_value('\u{FF19}'), Some(9));
        assert_eq!(decimal_digit_value('\u{1D7CE}'), Some(0));
        assert_eq!(decimal_digit_value('²'), None);
        assert_eq!(decimal_digit_value('a'), None);
        assert_eq!(decimal_digit_value('\u{0}'), None);
    }

    #[test]
    fn tables_are_sorted_for_binary_search() {
        assert!(NAMED_ENTITIES.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(TRANSLIT_OVERRIDES.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(DECIMAL_DIGIT_ZEROS.windows(2).all(|w| w[0] < w[1]));
        assert!(NFKD_INERT_RANGES
            .windows(2)
            .all(|w| w[0].0 <= w[0].1 && w[0].1 < w[1].0));
        assert!(NAMED_ENTITIES.iter().all(|(n, _)| n.len() <= MAX_NAME_LEN));
    }

    #[test]
    fn outputs_stay_within_limits_and_alphabets() {
        let inputs = [
            "Hello, World!",
            "&#x1F600;&amp;&#1633;,&#1634;",
            "ＡＢＣ 日本語 Ελληνικά",
            "a'b\"c`d~e",
        ];
        for input in inputs {
            let name = slugify_name(input).unwrap_or_default();
            assert!(name.len() <= NAME_MAX_LENGTH);
            assert!(name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
            let value = slugify_label_value(input);
            assert!(value.chars().count() <= LABEL_MAX_LENGTH || value == input);
        }
    }

    /// Deterministic xorshift so the fuzz cases are reproducible without a rand crate.
    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn long_inputs_are_handled_in_linear_time() {
        let pieces = [
            "&#", "1", "&#x", "f", "&amp", ";", "'", ",", "日", "é", "🚀", "&",
        ];
        let long: String = (0..200_000).map(|i| pieces[i * 7 % pieces.len()]).collect();
        let value = slugify_label_value(&long);
        assert!(value.len() <= LABEL_MAX_LENGTH || value == long);
        let digits = format!("&#{}", "9".repeat(1_000_000));
        assert_eq!(slugify_label_value(&digits), "9".repeat(LABEL_MAX_LENGTH));
        assert_eq!(slugify_name(&"&".repeat(1_000_000)), None);
    }

    #[test]
    fn never_panics_on_arbitrary_text() {
        let alphabet: Vec<char> =
            "&#;x0123456789abcdefABCDEF',-_./ \u{0}é١Ａ日🚀\u{1E030}\u{0301}\u{FFFD}ϴ"
                .chars()
                .collect();
        let mut state = 0x9E37_79B9_7F4A_7C15_u64;
        for _ in 0..20_000 {
            let len = (xorshift(&mut state) % 40) as usize;
            let text: String = (0..len)
                .map(|_| {
                    let r = xorshift(&mut state);
                    if r % 4 == 0 {
                        // Arbitrary scalar values, including unassigned and private-use ones.
                        char::from_u32((r >> 8) as u32 % 0x11_0000).unwrap_or('?')
                    } else {
                        alphabet[(r >> 8) as usize % alphabet.len()]
                    }
                })
                .collect();
            let _ = slugify_name(&text);
            let _ = slugify_label_key(&text);
            let _ = slugify_label_value(&text);
            let _ = slugify_image_tag(&text);
            let bytes: Vec<u8> = (0..len).map(|_| xorshift(&mut state) as u8).collect();
            let lossy = String::from_utf8_lossy(&bytes);
            let _ = slugify_label_key(&lossy);
            let _ = slugify(&lossy, &SlugifyOptions::default());
        }
    }
}
