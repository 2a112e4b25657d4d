//! Python's `repr()` and `str()` of JSON values, so messages and templated text read as Prefect's do.

use serde_json::Value;
use std::fmt::Write;

/// Python's `repr(value)`: `'text'`, `1`, `True`, `None`, `{'k': [1, 2]}`.
pub fn python_repr(value: &Value) -> String {
    let mut out = String::new();
    write_repr(&mut out, value);
    out
}

/// Python's `str(value)`: strings as they are, everything else as `repr`.
///
/// This is what Prefect's templating inserts where a placeholder sits inside other text.
pub fn python_str(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => python_repr(other),
    }
}

fn write_repr(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("None"),
        Value::Bool(true) => out.push_str("True"),
        Value::Bool(false) => out.push_str("False"),
        Value::Number(number) => match (number.as_i64(), number.as_u64(), number.as_f64()) {
            (Some(int), _, _) => {
                let _ = write!(out, "{int}");
            }
            (None, Some(uint), _) => {
                let _ = write!(out, "{uint}");
            }
            (None, None, Some(float)) => out.push_str(&python_float_repr(float)),
            _ => out.push_str(&number.to_string()),
        },
        Value::String(text) => write_str_repr(out, text),
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push_str(", ");
                }
                write_repr(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (index, (key, item)) in map.iter().enumerate() {
                if index > 0 {
                    out.push_str(", ");
                }
                write_str_repr(out, key);
                out.push_str(": ");
                write_repr(out, item);
            }
            out.push('}');
        }
    }
}

/// Python prints floats in their shortest round-trip form, switching to exponent notation
/// below 1e-4 and from 1e16 on, and always shows a fractional part otherwise (`1.0`).
fn python_float_repr(float: f64) -> String {
    if float.is_nan() {
        return "nan".into();
    }
    if float.is_infinite() {
        return if float > 0.0 { "inf" } else { "-inf" }.into();
    }
    if float == 0.0 {
        return if float.is_sign_negative() {
            "-0.0"
        } else {
            "0.0"
        }
        .into();
    }
    let scientific = format!("{float:e}");
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    if !(-4..16).contains(&exponent) {
        let sign = if exponent < 0 { '-' } else { '+' };
        return format!("{mantissa}e{sign}{:02}", exponent.abs());
    }
    let plain = format!("{float}");
    if plain.contains('.') {
        plain
    } else {
        format!("{plain}.0")
    }
}

fn write_str_repr(out: &mut String, text: &str) {
    // Python picks double quotes only when that avoids escaping a single quote.
    let quote = if text.contains('\'') && !text.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for character in text.chars() {
        match character {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if !is_printable(c) => {
                let code = c as u32;
                let _ = if code <= 0xff {
                    write!(out, "\\x{code:02x}")
                } else if code <= 0xffff {
                    write!(out, "\\u{code:04x}")
                } else {
                    write!(out, "\\U{code:08x}")
                };
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// An approximation of Python's `str.isprintable` good for error messages: control
/// characters, separators other than the space, format characters and private use are escaped.
fn is_printable(character: char) -> bool {
    let code = character as u32;
    !matches!(code,
        0x00..=0x1f | 0x7f..=0xa0 | 0xad | 0x1680 | 0x180e | 0x2000..=0x200f | 0x2028..=0x202f
        | 0x205f..=0x206f | 0x3000 | 0xd800..=0xf8ff | 0xfeff | 0xfff9..=0xfffb
        | 0xf0000..=0x10ffff)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scalars_read_as_python_prints_them() {
        assert_eq!(python_repr(&json!(null)), "None");
        assert_eq!(python_repr(&json!(true)), "True");
        assert_eq!(python_repr(&json!(false)), "False");
        assert_eq!(python_repr(&json!(1)), "1");
        assert_eq!(python_repr(&json!(-7)), "-7");
        assert_eq!(python_repr(&json!(1.0)), "1.0");
        assert_eq!(python_repr(&json!(0.1)), "0.1");
        assert_eq!(python_repr(&json!(1e16)), "1e+16");
        assert_eq!(python_repr(&json!(1.5e-5)), "1.5e-05");
        assert_eq!(python_repr(&json!(123456.75)), "123456.75");
    }

    #[test]
    fn strings_pick_quotes_and_escape_like_python() {
        assert_eq!(python_repr(&json!("batch/v1")), "'batch/v1'");
        assert_eq!(python_repr(&json!("it's")), "\"it's\"");
        assert_eq!(python_repr(&json!("both ' and \"")), "'both \\' and \"'");
        assert_eq!(python_repr(&json!("a\\b\nc\u{1}")), "'a\\\\b\\nc\\x01'");
        assert_eq!(python_repr(&json!("Ünï")), "'Ünï'");
    }

    #[test]
    fn containers_use_python_syntax() {
        assert_eq!(
            python_repr(&json!([{"name": "prefect-job"}])),
            "[{'name': 'prefect-job'}]"
        );
        assert_eq!(
            python_repr(&json!({"a": [1, null], "b": {}})),
            "{'a': [1, None], 'b': {}}"
        );
    }

    #[test]
    fn str_leaves_strings_bare() {
        assert_eq!(python_str(&json!("x")), "x");
        assert_eq!(python_str(&json!(5)), "5");
        assert_eq!(python_str(&json!(null)), "None");
        assert_eq!(python_str(&json!({"k": "v"})), "{'k': 'v'}");
    }
}
