"""Generate core/tests/slug_corpus.json: inputs with python-slugify / prefect-kubernetes 0.8.0 outputs.

Run with the prefect venv's Python: `.venv/bin/python tools/slug-tables/gen_corpus.py`.
Each entry holds the input and the expected results of prefect-kubernetes'
`_slugify_name` (`name`, null for None), `_slugify_label_key` (`key`),
`_slugify_label_value` (`value`), prefect's image-tag slugify call (`tag`) and
python-slugify's defaults (`default`). The corpus is deterministic (fixed seed).
"""
import json
import pathlib
import random
import unicodedata
from html.entities import name2codepoint

import slugify as slugify_pkg
from slugify import slugify
from prefect_kubernetes.utilities import _slugify_label_key, _slugify_label_value, _slugify_name

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
rng = random.Random(20240601)


def image_tag(text):
    # The call in prefect.utilities.dockerutils.get_prefect_image_name.
    return slugify(text, lowercase=False, max_length=128, regex_pattern=r"[^a-zA-Z0-9_.-]+")


HAND = [
    # Quotes.
    "it's", "it''''s", "'quoted'", "it\u2019s", "it&#39;s", "\"double\"", "1',2", "1&#39;,2", "''", "a'b'c",
    "O'Reilly's flow", "`backtick`", "\u2018single\u2019 \u201cdouble\u201d",
    # Transliteration.
    "Ünïcödé", "straße", "Ελληνικά", "Русский текст", "日本語", "北京", "한국어", "Œuvre æther",
    "Ｆｕｌｌｗｉｄｔｈ", "ﬁnance", "x²", "rocket 🚀 launch", "🚀🚀", "a🚀b", "a\u0378b", "a\u0080b", "a\u03f7b",
    "a\u03f4b", "Ǆemal", "ĳssel", "Ⅻ", "①②③", "𝐀𝐁𝐂 math", "ｶﾀｶﾅ", "ΑΣ ΌΡΟΣ", "ς σ Σ",
    "Ünïcödé/Ünïcödé", "Ꭰ Cherokee", "ὈΔΥΣΣΕΎΣ", "Ⓐⓑ", "™ ℠ ©", "€100 £50 ¥30",
    "Ąćęłńóśźż", "Čeština ěščřžýáíé", "Türkçe ığüşöç İ", "Tiếng Việt", "Français: garçon, élève, où",
    "Español: niño, ¿qué?", "Português: ação", "Dansk: æøå", "Íslenska: þ ð", "Română: ș ț",
    "Українська: їжак ґ є", "Српски: ђ ћ џ", "Հայերեն", "ქართული", "עברית", "العربية", "हिन्दी",
    "ภาษาไทย", "中文 简体 繁體", "ひらがな カタカナ 漢字", "조선말", "Ελληνικά 日本語 Русский",
    "\u00a0nbsp\u00a0", "zero\u200bwidth", "tab\there", "new\nline", "cr\rlf", "\u0000nul", "a\u0301",
    "e\u0301\u0327", "\ufeffbom", "\ufffd", "\uffff", "\ue000private", "a\U0001e030b", "\U0001ccd6 outlined",
    "a\u0897\u0301b", "\U000e0041tag", "\U0010ffff",
    # Entities.
    "a &amp; b", "&lt;tag&gt;", "caf&eacute;", "&eacute;t&eacute;", "&AElig;", "&sup2;", "&frac12;",
    "&AMP;", "&amp", "&notaname;", "&&amp;;", "&amp;amp;", "&#65;&#66;", "&#0065;", "&#x;&#;", "&#38;amp;",
    "a&#55296;b", "&#65313;", "&#0;", "&#1114111;z", "&#65;&#1114112;", "&amp;#66;", "&#x41;&#x62;",
    "&#x00041;", "&#X41;", "&#xFF21;", "&#x110000;&#x41;", "&#x10FFFF;&#x41;", "&#38;#x42;", "&#x&#1633;;",
    "&#x&#1633;&#1633;;A", "&#xD800;x", "&#xg;", "&#1633;,&#1634;", "1,&#1633;", "&#8217;", "&thetasym;x",
    "&thetasymx;", "&#128640;", "&nbsp;space&nbsp;", "&quot;quoted&quot;", "&apos;", "&#39;&#39;",
    "&#x1E030;", "&#12354;", "&#x65e5;&#x672c;", "&#" + "0" * 4298 + "65;", "&#" + "0" * 4299 + "65;",
    "&#x" + "0" * 5000 + "41;", "&&&&&;;;;", "&#&#&#;", "&#x&#x&#x;",
    # Numbers with commas.
    "1,000", "1,000,000 items", "a,b", "1,,2", "1, 2", ",1,", "１,２", "v1,2,3", "3,14", "1,a,2",
    "version 2,5,1", "99,999,999,999", ",,,", "1,", ",1",
    # Dashes, punctuation, edges.
    "", "---", "  hello   world  ", "a--b", "a - b", "-a-", "!!!a!!!b!!!", "a\u0000b", "___", "...",
    "_.-", "-_.", "._-a-_.", "a_b.c-d", "__init__.py", ".hidden", "trailing.", "_leading", "$$$",
    "$@*^$@", "a/b", "/", "//", "/x", "x/", "a/b/c", "$@*^$@/name", "prefix/$@*^", "abc/", "/abc/",
    "my_prefix.io/x", "_pre_/_name_", "ünï/cödé", "prefect.io/flow-name", "Prefect.IO/Flow_Name",
    "prefect.io/", "example.com/My Label", "a.b.c/d_e_f", "k8s.io/app.kubernetes.io/name",
    "-.-/-.-", "日本/語", "🚀/🚀", "&amp;/&lt;", "a b c/d e f",
    # Realistic prefect inputs.
    "My Flow Run", "flow_run.v1", "hello-world-flow", "etl-pipeline/daily-run",
    "3.9.1-python3.11", "3.9.1-python3.11-conda", "sha-abc1234-python3.12", "_Dev+Build_",
    "3.9.1+dev.12.gabcdef-python3.11", "daring-coyote", "flow-run-7f3a2c4e-1b2d-4f5e-9a8b-0c1d2e3f4a5b",
    "Extract, Transform & Load", "deploy: prod (us-east-1)", "user@example.com", "C:\\Users\\flow",
    "https://example.com/path?q=1&x=2", "key=value;other=thing", "[bracketed] {braced} <angled>",
]


def rand_ascii(n):
    return "".join(chr(rng.randrange(0x20, 0x7F)) for _ in range(n))


def rand_bmp_char():
    while True:
        cp = rng.randrange(0x80, 0x10000)
        if not 0xD800 <= cp <= 0xDFFF:
            return chr(cp)


def rand_any_char():
    while True:
        cp = rng.randrange(0x80, 0x110000)
        if not 0xD800 <= cp <= 0xDFFF:
            return chr(cp)


def corpus():
    inputs = list(HAND)
    # ASCII punctuation soup.
    punct = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~ "
    for _ in range(60):
        n = rng.randrange(1, 30)
        inputs.append("".join(rng.choice(punct + "aZ09") for _ in range(n)))
    for _ in range(30):
        inputs.append(rand_ascii(rng.randrange(1, 50)))
    # Scripts: words from ranges, mixed with ASCII.
    blocks = [
        (0x00C0, 0x024F), (0x0370, 0x03FF), (0x0400, 0x04FF), (0x1E00, 0x1EFF), (0x1F00, 0x1FFF),
        (0x3040, 0x30FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0x0590, 0x06FF), (0x0900, 0x0DFF),
        (0x0E00, 0x0E7F), (0x2000, 0x2BFF), (0xFB00, 0xFFEF), (0x3100, 0x33FF), (0xF900, 0xFAFF),
    ]
    for lo, hi in blocks:
        for _ in range(8):
            word = "".join(chr(rng.randrange(lo, hi + 1)) for _ in range(rng.randrange(1, 8)))
            inputs.append(rng.choice(["", "Flow ", "x-"]) + word + rng.choice(["", " run", "_v1", "."]))
    # Whole-BMP random samples to cover the transliteration table broadly.
    for _ in range(60):
        inputs.append("".join(rand_bmp_char() for _ in range(rng.randrange(1, 12))))
    for _ in range(20):
        inputs.append("".join(rand_any_char() for _ in range(rng.randrange(1, 8))))
    # Named entities (all of them, a few per input) and numeric references.
    names = sorted(name2codepoint)
    for i in range(0, len(names), 6):
        inputs.append(" ".join("&%s;" % n for n in names[i:i + 6]))
    for _ in range(20):
        cp = rng.choice([rng.randrange(0, 0x80), rng.randrange(0x80, 0x10000), rng.randrange(0, 0x110000)])
        inputs.append("x&#%d;y&#x%x;z" % (cp, rng.randrange(0, 0x110000)))
    # Numbers with commas.
    for _ in range(15):
        inputs.append(",".join(str(rng.randrange(0, 1000)) for _ in range(rng.randrange(2, 5))) + rng.choice(["", " units", ",", "a"]))
    # Long strings around the 45/63/128/253 cut points.
    for length in [44, 45, 46, 62, 63, 64, 65, 127, 128, 129, 252, 253, 254, 300, 400]:
        word = "abcdefghij"
        s = (word + rng.choice([" ", "_", ".", "-", "!"])) * (length // 11 + 1)
        inputs.append(s[:length])
        inputs.append("x" * (length - 1) + rng.choice(["_", ".", "-", " "]) + "tail")
        inputs.append("pre.fix" * (length // 7) + "/" + "Na_me." * (length // 6))
        inputs.append("Ünïcödé " * (length // 8 + 1))
    for _ in range(10):
        inputs.append("日本語" * rng.randrange(5, 40))
    # Leading/trailing punctuation.
    for _ in range(25):
        edge = "".join(rng.choice("_-.!/ '") for _ in range(rng.randrange(1, 5)))
        mid = rng.choice(["name", "Flow Name", "a/b", "日本", "x_y.z"])
        inputs.append(edge + mid + edge[::-1])
    seen = set()
    out = []
    for s in inputs:
        if s in seen:
            continue
        seen.add(s)
        out.append({
            "input": s,
            "name": _slugify_name(s),
            "key": _slugify_label_key(s),
            "value": _slugify_label_value(s),
            "tag": image_tag(s),
            "default": slugify(s),
        })
    return out


if __name__ == "__main__":
    entries = corpus()
    meta = {
        "generator": "tools/slug-tables/gen_corpus.py",
        "python_slugify": slugify_pkg.__version__,
        "unicode": unicodedata.unidata_version,
        "entries": entries,
    }
    path = ROOT / "core" / "tests" / "slug_corpus.json"
    path.parent.mkdir(exist_ok=True)
    with open(path, "w") as f:
        json.dump(meta, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(len(entries), "entries ->", path)
