"""The per-document cleaning steps as datatrove blocks; each wraps a function of text.py, boilerplate.py,
pii.py or filters.py, so the rules live in one place and the pipeline is a plain list of these:

    TooLong -> HtmlToText -> UnescapeEntities -> NormalizeText -> BoilerplateLines -> PiiPlaceholders -> ScriptLanguage
    -> DocumentChecks -> Routed(a datatrove quality filter, filter set, language) -> ...

Steps that drop are datatrove filters (``BaseFilter``): the reason goes to their ``exclusion_writer``
(documents.RejectsWriter) and to datatrove's stats. Counts the report needs (PII per type, boilerplate
lines per rule) are datatrove stats too, keyed ``pii_<type>`` and ``lines_<rule>``, which datatrove saves
per task in the logging dir and pipeline.py sums.

Hand-written where datatrove's block does something else: datatrove's Trafilatura extractor treats every
document as HTML (ours mixes pages and plain text, so only what looks like a page is extracted), its
PIIFormatter knows only e-mails and public IPs (no phones, IDs, WeChat or QQ), and its LanguageFilter
downloads fastText's lid.176.bin at run time (ScriptLanguage decides zh/en by script, offline). Nothing
in the pipeline downloads: C4BadWordsFilter (LDNOOBW lists fetched from GitHub) and the fastText and
unigram-frequency filters are not used.
"""

from __future__ import annotations

from collections import Counter

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter, get_filter_result
from datatrove.pipeline.formatters.base import BaseFormatter
from datatrove.pipeline.writers.disk_base import DiskWriter

from chatforge.data.cleaning.boilerplate import Boilerplate, BoilerplateConfig
from chatforge.data.cleaning.documents import STATE
from chatforge.data.cleaning.entities import COUNT_KEY, unescape_entities
from chatforge.data.cleaning.filters import QualityConfig, precheck
from chatforge.data.cleaning.pii import redact
from chatforge.data.cleaning.text import detect_language, html_to_text, looks_like_html, normalize_text

PII_STAT = "pii_"
LINES_STAT = "lines_"
ENTITIES_STAT = COUNT_KEY


class TooLong(BaseFilter):
    """Drops documents over ``max_chars`` before anything else looks at them."""

    name = "📏 too long"

    def __init__(self, max_chars: int, exclusion_writer: DiskWriter | None = None):
        super().__init__(exclusion_writer)
        self.max_chars = max_chars

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        return len(doc.text) <= self.max_chars or (False, "too_long")


class HtmlToText(BaseFilter):
    """Pages (an .html source or text that looks like one) become their main text (trafilatura); a page
    without any is dropped. Sets the filter set: ``web`` for pages and ``web_sources``, else ``text``."""

    name = "🌐 HTML to main text"

    def __init__(self, web_sources: list[str], exclusion_writer: DiskWriter | None = None):
        super().__init__(exclusion_writer)
        self.web_sources = set(web_sources)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        source = str(doc.metadata.get("source", ""))
        page = looks_like_html(doc.text, source)
        doc.metadata[STATE]["kind"] = "web" if page or source in self.web_sources else "text"
        if page:
            doc.text = html_to_text(doc.text)
            if not doc.text.strip():
                return False, "html_no_main_text"
        return True


class UnescapeEntities(BaseFormatter):
    """HTML character references left in text (``&#xff0c;``, twice-escaped ``&amp;nbsp;``) decoded before
    normalisation (entities.py: ftfy leaves them alone on any line that holds a ``<``)."""

    name = "🔣 HTML entities"

    def format(self, text: str) -> str:
        counts: Counter = Counter()
        text = unescape_entities(text, counts)
        if counts[COUNT_KEY]:
            self.stat_update(ENTITIES_STAT, value=counts[COUNT_KEY])
        return text


class NormalizeText(BaseFormatter):
    """ftfy repair, NFKC (full-width CJK punctuation kept), whitespace (text.normalize_text; datatrove's
    FTFYFormatter is only the first of the three)."""

    name = "🧽 ftfy + NFKC + whitespace"

    def format(self, text: str) -> str:
        return normalize_text(text)


class BoilerplateLines(BaseFormatter):
    """Drops navigation, footer, share/login, ad lines and "related articles" tails (boilerplate.py)."""

    name = "🧱 boilerplate lines"

    def __init__(self, cfg: BoilerplateConfig):
        super().__init__()
        self.boilerplate = Boilerplate(cfg)

    def format(self, text: str) -> str:
        counts: Counter = Counter()
        text = self.boilerplate.clean(text, counts)
        for rule, n in counts.items():
            self.stat_update(LINES_STAT + rule, value=n)
        return text


class PiiPlaceholders(BaseFormatter):
    """PII to typed placeholders (<EMAIL>, <PHONE>, <WECHAT>, <QQ>, <ID_CARD>, <IP>, <URL>; pii.py)."""

    name = "🔒 PII placeholders"

    def format(self, text: str) -> str:
        counts: Counter = Counter()
        text = redact(text, counts)
        for kind, n in counts.items():
            self.stat_update(PII_STAT + kind, value=n)
        return text


class ScriptLanguage(PipelineStep):
    """``metadata["lang"]``: "zh" or "en" by script share (text.detect_language), the offline stand-in for
    datatrove's LanguageFilter on our two languages."""

    name = "🈶 language by script"
    type = "🏷 - TAGGER"

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            with self.track_time():
                doc.metadata["lang"] = detect_language(doc.text)
            self.stat_update(doc.metadata["lang"])
            yield doc


class DocumentChecks(BaseFilter):
    """The checks before the quality filters: long enough for its filter set, enough CJK for Chinese."""

    name = "✅ length and script"

    def __init__(self, quality: QualityConfig, exclusion_writer: DiskWriter | None = None):
        super().__init__(exclusion_writer)
        self.quality = quality

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        doc.text = doc.text.strip()
        reason = precheck(doc.text, getattr(self.quality, doc.metadata[STATE]["kind"]), doc.metadata["lang"])
        return (False, reason) if reason else True


class Routed(BaseFilter):
    """A datatrove filter applied only to the documents of one filter set (``web``/``text``) and language;
    the others pass untouched. A drop keeps the filter's own reason (its class name if it gave none)."""

    def __init__(self, inner: BaseFilter, kind: str, language: str, exclusion_writer: DiskWriter | None = None):
        self.name = f"{inner.name} [{kind}, {language}]"        # before the base class names the stats after it
        super().__init__(exclusion_writer)
        self.inner, self.kind, self.language = inner, kind, language

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if doc.metadata[STATE]["kind"] != self.kind or doc.metadata["lang"] != self.language:
            return True
        verdict = self.inner.filter(doc)
        keep, reason = get_filter_result(verdict)
        return True if keep or verdict is None else (False, reason or type(self.inner).__name__)
