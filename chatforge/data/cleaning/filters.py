"""Document quality filters: datatrove's Gopher, C4 and FineWeb filters, per language.

English uses datatrove's defaults (C4 without the terminal-punctuation rule, which FineWeb found
removes ~30% of tokens for little gain; FineWeb's duplicated-line char ratio at the paper's 0.1,
not the code's 0.01). Chinese uses FineWeb-2's ``cmn_Hani`` thresholds with jieba word splitting
(huggingface/fineweb-2 configs/cmn_Hani.yml) and never the C4 line rules, whose ASCII-only
terminal punctuation would drop almost every Chinese line. Each filter returns its reason, which
ends up in the rejects file. blocks.py runs these filters as steps of a datatrove pipeline, each one
routed to the documents of its language and filter set.

Two filter sets: ``web`` for pages (HTML sources, or any source listed in ``web_sources``) and
``text`` for everything else (our default data are chat transcripts: short lines, little
punctuation, which the web filters would mostly throw away).
"""

from __future__ import annotations

from dataclasses import dataclass

from chatforge.core.config import field_help
from chatforge.data.cleaning.text import cjk_ratio

ZH_STOP_WORDS = ["的", "年", "在", "月", "是", "和", "日", "了", "於", "·", "為", "有", "被", "人", "中", "为", "他",
                 "與", "後", "也", "而", "由"]


@dataclass(frozen=True)
class FilterSet:
    min_chars: int = field_help(50, "drop documents shorter than this after cleaning")
    gopher_quality: bool = field_help(True, "Gopher quality rules (word count, word length, symbols, stop words)")
    min_words: int = field_help(50, "Gopher minimum words (jieba words for Chinese)")
    gopher_repetition: bool = field_help(True, "Gopher repetition rules (duplicate lines/paragraphs, n-grams)")
    c4: bool = field_help(True, "C4 rules (English only; terminal-punctuation rule off)")
    fineweb: bool = field_help(True, "FineWeb rules (line punctuation, short lines, duplicated chars, newlines)")
    zh_min_cjk_ratio: float = field_help(0.3, "Chinese documents need this CJK share (ChineseWebText)")


@dataclass(frozen=True)
class QualityConfig:
    web: FilterSet = field_help(FilterSet(), "filters for web pages")
    text: FilterSet = field_help(FilterSet(min_chars=20, min_words=10, c4=False, fineweb=False),
                                 "filters for other text (chat transcripts, plain documents)")
    web_sources: list[str] = field_help([], "sources (the record's 'source' field) to treat as web pages too")


def build_filters(fs: FilterSet, language: str) -> list:
    """datatrove filter objects for one language ('en' or 'zh')."""
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )

    out = []
    if language == "zh":
        if fs.gopher_quality:
            out.append(GopherQualityFilter(language="cmn_Hani", min_doc_words=fs.min_words, min_avg_word_length=1,
                                           max_avg_word_length=5, max_non_alpha_words_ratio=0.735,
                                           stop_words=ZH_STOP_WORDS))
        if fs.gopher_repetition:
            out.append(GopherRepetitionFilter(language="cmn_Hani", dup_line_frac=0.287, dup_para_frac=0,
                                              dup_line_char_frac=0, dup_para_char_frac=0,
                                              top_n_grams=((2, 0.256), (3, 0.201), (4, 0.171)),
                                              dup_n_grams=((5, 0.198), (6, 0.182), (7, 0.167), (8, 0.154),
                                                           (9, 0.14), (10, 0.127))))
        if fs.fineweb:
            out.append(FineWebQualityFilter(language="cmn_Hani", line_punct_thr=0.106, short_line_thr=999,
                                            char_duplicates_ratio=0.1, new_line_ratio=0.178))
        return out
    if fs.gopher_quality:
        out.append(GopherQualityFilter(min_doc_words=fs.min_words))
    if fs.gopher_repetition:
        out.append(GopherRepetitionFilter())
    if fs.c4:
        out.append(C4QualityFilter(filter_no_terminal_punct=False))
    if fs.fineweb:
        out.append(FineWebQualityFilter(char_duplicates_ratio=0.1))
    return out


def precheck(text: str, fs: FilterSet, language: str) -> str | None:
    """Why ``text`` fails before any datatrove filter runs (too short, too little CJK for Chinese), or None."""
    if len(text) < max(fs.min_chars, 1):          # an empty document never goes on, whatever min_chars says
        return "too_short"
    if language == "zh" and cjk_ratio(text) < fs.zh_min_cjk_ratio:
        return "zh_low_cjk_ratio"
    return None
