"""Print python-slugify / prefect-kubernetes results for inputs given as JSON lines on stdin.

Each line: ["default"|"name"|"key"|"value"|"tag"|"raw:<max>:<lower>:<pattern>", text].
"""
import json
import sys

from slugify import slugify
from prefect_kubernetes.utilities import _slugify_label_key, _slugify_label_value, _slugify_name

for line in sys.stdin:
    kind, text = json.loads(line)
    if kind == "default":
        out = slugify(text)
    elif kind == "name":
        out = _slugify_name(text)
    elif kind == "key":
        out = _slugify_label_key(text)
    elif kind == "value":
        out = _slugify_label_value(text)
    elif kind == "tag":
        out = slugify(text, lowercase=False, max_length=128, regex_pattern=r"[^a-zA-Z0-9_.-]+")
    else:
        _, max_length, lower, pattern = kind.split(":", 3)
        out = slugify(text, max_length=int(max_length), lowercase=lower == "1", regex_pattern=pattern)
    print(json.dumps([kind, text, out], ensure_ascii=True))
