"""Text normalisation before any filter: HTML to main text, Unicode repair, NFKC, whitespace.

NFKC folds full-width Latin letters and digits to ASCII (so PII patterns match ``１３８...``),
and keeps CJK characters; full-width CJK punctuation (，。！？：；（）) is kept as it is, as datatrove's
FTFYFormatter does with ``fix_character_width=False``; ftfy repairs mojibake. HTML pages go through trafilatura, which
keeps the main text and drops most navigation (favour_precision, as FineWeb does).
"""

from __future__ import annotations

import re
import unicodedata

_HTML_SNIFF = re.compile(r"(?is)^\s*(?:<!doctype html|<html|<head|<body)|</(?:p|div|body|html)>")
_SPACES = re.compile(r"[ \t\u00a0\u3000\u2000-\u200b]+")
_BLANK_LINES = re.compile(r"\n{3,}")
# Full-width punctuation that NFKC would fold to ASCII but Chinese text should keep.
_CJK_PUNCT = re.compile(r"([\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65])")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")
_LATIN = re.compile(r"[A-Za-z]")


def looks_like_html(text: str, source: str = "") -> bool:
    return source.lower().endswith((".html", ".htm")) or bool(_HTML_SNIFF.search(text[:5000]))


def html_to_text(html: str) -> str:
    """Main text of a page ('' when trafilatura finds none; broken HTML is parsed leniently), led by the
    article's headline: trafilatura sets a leading ``<h1>`` aside as the title, and a reader keeps it."""
    import trafilatura

    text = trafilatura.extract(html, favor_precision=True, include_comments=False, include_tables=False,
                               deduplicate=True) or ""
    headline = _headline(html)
    if text and headline and headline not in text.split("\n", 3)[:3]:
        text = f"{headline}\n{text}"
    return text


def _headline(html: str) -> str:
    """The text of the page's only ``<h1>`` ('' when there is none or several: then none is the headline)."""
    import lxml.html

    try:
        heads = lxml.html.fromstring(html).xpath("//h1")
    except Exception:                                    # lxml refuses some fragments; they have no headline
        return ""
    return " ".join(heads[0].text_content().split()) if len(heads) == 1 else ""


def normalize_text(text: str) -> str:
    """ftfy repair, NFKC, one space for runs of spaces, at most one blank line, trimmed lines."""
    import ftfy

    text = ftfy.fix_text(text, normalization=None, fix_character_width=False)
    parts = _CJK_PUNCT.split(text)                       # odd indices: protected punctuation
    text = "".join(p if i % 2 else unicodedata.normalize("NFKC", p) for i, p in enumerate(parts))
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", text).strip()


def cjk_ratio(text: str) -> float:
    """Share of CJK characters among CJK + Latin letters (0 for text with neither)."""
    cjk, latin = len(_CJK.findall(text)), len(_LATIN.findall(text))
    return cjk / (cjk + latin) if cjk + latin else 0.0


def detect_language(text: str, zh_threshold: float = 0.3) -> str:
    """'zh' or 'en' by script share: an offline stand-in for fastText language id on our two languages."""
    return "zh" if cjk_ratio(text) >= zh_threshold else "en"
