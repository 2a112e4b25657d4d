"""Print Rust test-table rows of Python's shlex.split(s) (posix=True) for embedding in shell_words.rs."""
import shlex

CASES = [
    "", "   ", "\t\r\n", "a", "a b  c", "  leading and trailing  ", "tab\tsep\nnl\rcr",
    "vt\x0bff\x0c", "nbsp\u00a0inside", "#not a comment", "a #b", "echo 'single quoted'",
    "echo \"double quoted\"", "'' \"\"", "a''b", "'a'\"b\"c", "''", "\"\"", "x '' y",
    "'it''s'", "'a\\b'", "'a\\'", "\"a\\\"b\"", "\"a\\\\b\"", "\"a\\nb\"", "\"a\\'b\"", "\"a\\$b\"",
    "a\\ b", "a\\\\b", "\\'quoted\\'", "\\\"", "\\#", "\\n", "a\\\nb", "\"a\\\nb\"", "\\ ",
    "--flag=\"value with spaces\"", "python -m prefect.engine", "sh -c 'echo \"$HOME\"'",
    "a\"b c\"d", "a'b c'd", "\"'\"", "'\"'", "日本語 'Ελληνικά' \"🚀\"", "a\x00b", "a|b>c&&d;e",
    "$(cmd) `cmd` ${var}", "'multi\nline'", "\"tab\there\"", "x\\", "'unclosed", "\"unclosed",
    "a \"b 'c", "\"escaped at end\\", "ok 'fine' \"then", "'\\", "\\\\", "\"\\\\\"", "\"\\\"\"",
    "a\\'b", "\"\\a\\b\\c\"", "'\\\\'", "a\\\tb",
]


def rust_str(s):
    out = []
    for ch in s:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif 0x20 <= ord(ch) < 0x7F or (ord(ch) >= 0x80 and ch.isprintable()):
            out.append(ch)
        else:
            out.append("\\u{%x}" % ord(ch))
    return '"' + "".join(out) + '"'


assert len(CASES) >= 40
for s in CASES:
    try:
        words = shlex.split(s)
        expected = "Ok(&[%s])" % ", ".join(rust_str(w) for w in words)
    except ValueError as e:
        # Python's two messages: "No closing quotation" and "No escaped character".
        expected = "Err(Unclosed)" if "quotation" in str(e) else "Err(Dangling)"
    print("(%s, %s)," % (rust_str(s), expected))
