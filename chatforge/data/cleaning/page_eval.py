"""Line-level scoring of the cleaning rules on labelled pages (tests/data/dirty_pages/, its README says the format).

A page goes through the line-level steps of the documents pipeline, in the pipeline's order and with the same
functions that blocks.py wraps: HTML to main text (pages only), entity unescaping, ftfy + NFKC + whitespace,
boilerplate lines (blocks, tails, furniture, single lines). PII placeholders and the document filters are left
out: they do not decide which lines stay. A labelled line counts as kept when the cleaned text still holds
it intact (after the same normalisation): as a whole line, or, for a line of 12 characters or more, inside a
longer one (trafilatura sometimes joins blocks). A kept line whose entities were not decoded does not match.

For each page kind the scores are the usual ones, with "dropped" as the positive class for junk:
    junk_removed   junk lines dropped / junk lines          (recall of the removal)
    drop_precision junk lines dropped / lines dropped
    article_kept   article lines kept / article lines       (recall of what a reader keeps)
    kept_precision article lines kept / lines kept
"""

from __future__ import annotations

import dataclasses
import html
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from chatforge.core.files import InputError
from chatforge.data.cleaning.boilerplate import Boilerplate, BoilerplateConfig
from chatforge.data.cleaning.entities import unescape_entities
from chatforge.data.cleaning.text import html_to_text, looks_like_html, normalize_text

LABELS = {"+": True, "-": False, " ": None}
_TAG = re.compile(r"<[^>]*>")
MIN_CONTAINED_CHARS = 12


@dataclass(frozen=True)
class LabelledPage:
    name: str
    kind: str              # farm, blog, forum, shop
    lang: str              # zh, en
    fmt: str               # txt, html
    text: str              # the page as a crawler would get it
    lines: list[tuple[str, bool]]   # (normalised text of a labelled line, a reader keeps it)


def read_page(path: Path) -> LabelledPage:
    """One labelled page; a line without a known label, or a file name out of the pattern, is an InputError."""
    try:
        kind, lang, _ = path.stem.split("-")
    except ValueError:
        raise InputError(f"{path}: name must be <kind>-<lang>-<nn>.<txt|html>") from None
    fmt = path.suffix.lstrip(".")
    page, labelled = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
        if not line:
            page.append("")
            continue
        if line[0] not in LABELS or (len(line) > 1 and line[1] != " "):
            raise InputError(f"{path}:{number}: a line starts with '+ ', '- ' or '  ', got {line[:2]!r}")
        content = line[2:]
        page.append(content)
        if LABELS[line[0]] is not None:
            gold = gold_text(content, fmt == "html")
            if not gold:
                raise InputError(f"{path}:{number}: a labelled line has no text")
            labelled.append((gold, LABELS[line[0]]))
    return LabelledPage(path.name, kind, lang, fmt, "\n".join(page).strip("\n"), labelled)


def read_pages(folder: Path) -> list[LabelledPage]:
    pages = [read_page(p) for p in sorted(folder.iterdir()) if p.suffix in (".txt", ".html")]
    if not pages:
        raise InputError(f"{folder}: no labelled .txt or .html pages")
    return pages


def gold_text(line: str, is_html: bool) -> str:
    """What a reader sees of a labelled line: tags gone, entities decoded (twice-escaped ones too), normalised."""
    text = _TAG.sub("", line) if is_html else line
    for _ in range(3):
        text = html.unescape(text)
    return normalize_text(text)


def clean_page(text: str, source: str, boilerplate: Boilerplate, entities: bool = True,
               counts: Counter | None = None) -> str:
    """The line-level steps of the documents pipeline on one page (blocks.py runs the same functions)."""
    if looks_like_html(text, source):
        text = html_to_text(text)
    if entities:
        text = unescape_entities(text, counts)
    return boilerplate.clean(normalize_text(text), counts)


def kept_lines(page: LabelledPage, cleaned: str) -> list[bool]:
    out = [line.strip() for line in cleaned.split("\n") if line.strip()]
    whole = set(out)
    return [gold in whole or (len(gold) >= MIN_CONTAINED_CHARS and any(gold in o for o in out))
            for gold, _ in page.lines]


@dataclass
class Score:
    junk: int = 0
    junk_dropped: int = 0
    article: int = 0
    article_kept: int = 0

    def add(self, labels: list[bool], kept: list[bool]) -> None:
        for keep, was_kept in zip(labels, kept):
            if keep:
                self.article += 1
                self.article_kept += was_kept
            else:
                self.junk += 1
                self.junk_dropped += not was_kept

    @property
    def junk_removed(self) -> float:
        return self.junk_dropped / self.junk if self.junk else 1.0

    @property
    def drop_precision(self) -> float:
        dropped = self.junk_dropped + self.article - self.article_kept
        return self.junk_dropped / dropped if dropped else 1.0

    @property
    def article_kept_share(self) -> float:
        return self.article_kept / self.article if self.article else 1.0

    @property
    def kept_precision(self) -> float:
        kept = self.article_kept + self.junk - self.junk_dropped
        return self.article_kept / kept if kept else 1.0


def rules_as_on_main(cfg: BoilerplateConfig) -> BoilerplateConfig:
    """``cfg`` with the rules of issue #18 switched off: the line rules as they were before them."""
    return dataclasses.replace(cfg, ad_blocks=False, furniture=False, list_tails=False)


def score_pages(pages: list[LabelledPage], cfg: BoilerplateConfig, entities: bool = True,
                counts: Counter | None = None) -> dict[str, Score]:
    """Scores per page group ("all", each kind, each language, each format); ``counts`` gets lines per rule."""
    boilerplate, groups = Boilerplate(cfg), {}
    for page in pages:
        kept = kept_lines(page, clean_page(page.text, page.name, boilerplate, entities, counts))
        labels = [keep for _, keep in page.lines]
        for group in ("all", page.kind, page.lang, page.fmt):
            groups.setdefault(group, Score()).add(labels, kept)
    return groups


def drops_on_clean_text(texts: list[str], cfg: BoilerplateConfig, entities: bool = True) -> tuple[int, Counter]:
    """(non-empty lines, lines dropped per rule) over texts with no boilerplate in them, where every dropped
    line is a false drop (entities: references decoded, not lines)."""
    boilerplate, counts, lines = Boilerplate(cfg), Counter(), 0
    for text in texts:
        lines += sum(1 for line in normalize_text(text).split("\n") if line.strip())
        clean_page(text, "", boilerplate, entities, counts)
    return lines, counts


def missed_lines(page: LabelledPage, cfg: BoilerplateConfig, entities: bool = True) -> list[tuple[str, bool]]:
    """The labelled lines the rules got wrong on ``page``: (line, a reader keeps it)."""
    kept = kept_lines(page, clean_page(page.text, page.name, Boilerplate(cfg), entities))
    return [(gold, keep) for (gold, keep), k in zip(page.lines, kept) if keep != k]
