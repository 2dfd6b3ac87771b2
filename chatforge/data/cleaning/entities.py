"""HTML character references left in text that is not HTML (``&#xff0c;``, ``&amp;nbsp;``, ``&rdquo;``).

Crawled text keeps them when a CMS escaped a field twice (``&amp;#xff0c;`` shows as ``&#xff0c;`` in the
browser), when a feed or an export escaped it once and nothing decoded it, or when the line also holds a
literal ``<``: ftfy's ``unescape_html="auto"``, which normalize_text relies on, leaves every entity of such a
line alone (ftfy's fix_text docs, https://ftfy.readthedocs.io/en/latest/config.html). So this runs first,
before normalisation, and decodes only well-formed references: ``&`` + a name html5 knows or a code point,
and the closing ``;`` (``html.unescape`` alone also decodes ``&para`` in ``?a=1&para=2``). A twice-escaped
reference takes two passes; the loop stops when a pass decodes nothing. A reference to a control character
or to nothing html5 knows stays as written.
"""

from __future__ import annotations

import html
import re
from html.entities import html5
import unicodedata
from collections import Counter

ENTITY = re.compile(r"&(?:#[xX][0-9a-fA-F]{1,6}|#[0-9]{1,7}|[A-Za-z][A-Za-z0-9]{1,31});")
MAX_PASSES = 3                     # &amp;amp;#xff0c; is the worst seen in the wild: three escapes deep
COUNT_KEY = "entities"


def _decode(match: re.Match) -> str:
    ref = match.group(0)
    if ref[1] != "#" and ref[1:] not in html5:          # html.unescape would decode "&notanentity;" as "¬anentity;"
        return ref
    char = html.unescape(ref)
    if not char or char == "\ufffd" or any(unicodedata.category(c) in ("Cc", "Cs") and c not in "\t\n" for c in char):
        return ref
    return char


def unescape_entities(text: str, counts: Counter | None = None) -> str:
    """``text`` with its HTML character references decoded; ``counts[COUNT_KEY]`` gets how many were."""
    if "&" not in text:
        return text
    for _ in range(MAX_PASSES):
        decoded = 0

        def decode(match: re.Match) -> str:
            nonlocal decoded
            out = _decode(match)
            decoded += out != match.group(0)
            return out

        text = ENTITY.sub(decode, text)
        if counts is not None and decoded:
            counts[COUNT_KEY] += decoded
        if not decoded:
            break
    return text
