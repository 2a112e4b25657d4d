"""Dump text_unidecode's per-codepoint table (BMP) as JSON lines for comparison."""
import json, sys, unicodedata
from text_unidecode import unidecode
out = open(sys.argv[1], "w")
for cp in range(1, 0x10000):
    if 0xD800 <= cp <= 0xDFFF:
        continue
    ch = chr(cp)
    out.write(json.dumps([cp, unidecode(ch), unicodedata.category(ch)]) + "\n")
