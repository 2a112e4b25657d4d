"""Emit random differential cases for examples/oracle_diff.rs.

Usage: .venv/bin/python tools/slug-tables/fuzz_oracle.py [N] [SEED] | cargo run -q --example oracle_diff
"""
import json
import random
import shlex
import sys

from slugify import slugify
from prefect_kubernetes.utilities import _slugify_label_key, _slugify_label_value, _slugify_name

n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
rng = random.Random(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
SLUG_ALPHABET = list("&#;x0123456789aAfFzZ',-_./ \x00!$") + ["&amp;", "&eacute;", "&#39;", "&#x41;", "&#1633;", "é", "Ä", "ß", "١", "Ａ", "日", "🚀", "\u0301", "\u03f7", "\u2019", "\U0001e030"]
SHLEX_ALPHABET = list("ab \t\n\r'\"\\#$\x0b") + ["日", "🚀"]


def rand_char():
    while True:
        cp = rng.choice([rng.randrange(0x80, 0x800), rng.randrange(0x800, 0x10000), rng.randrange(0x10000, 0x110000)])
        if not 0xD800 <= cp <= 0xDFFF:
            return chr(cp)


def emit(kind, text, out):
    print(json.dumps([kind, text, out]))


for _ in range(n):
    length = rng.randrange(0, 70)
    text = "".join(rng.choice(SLUG_ALPHABET) if rng.random() < 0.8 else rand_char() for _ in range(length))
    emit("name", text, _slugify_name(text))
    emit("key", text, _slugify_label_key(text))
    emit("value", text, _slugify_label_value(text))
    emit("tag", text, slugify(text, lowercase=False, max_length=128, regex_pattern=r"[^a-zA-Z0-9_.-]+"))
    emit("default", text, slugify(text))
    sh = "".join(rng.choice(SHLEX_ALPHABET) for _ in range(rng.randrange(0, 20)))
    try:
        words = shlex.split(sh)
    except ValueError:
        words = None
    emit("shlex", sh, words)
