"""Line-level precision and recall of the cleaning rules on the labelled dirty pages, before and after issue #18.

    python bench/clean_eval.py [--pages tests/data/dirty_pages] [--misses]

"before" is the rules as on main before issue #18 (no entity unescaping, no ad blocks, no list tails, no
furniture rules: page_eval.rules_as_on_main); "after" is the default BoilerplateConfig. Both run in this
process on the same pages, through the line-level steps of the documents pipeline (HTML to main text,
entities, ftfy + NFKC + whitespace, boilerplate lines). Per page group:

    junk rm    junk lines dropped / junk lines            drop P   junk dropped / all lines dropped
    art kept   article lines kept / article lines         kept P   article kept / all lines kept

--misses lists, per page, the lines the "after" rules get wrong. The lines each rule removed are printed
under the table. A second table runs both rule sets on real text that has no boilerplate, written by
nobody here, where every dropped line is a false drop: the GSM8K test problems and solutions (prices in
every other line) and the Anthropic HH harmless-base test dialogues, from ../shared/data.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
from collections import Counter
from pathlib import Path

from chatforge.data.cleaning.boilerplate import BoilerplateConfig
from chatforge.data.cleaning.page_eval import (
    drops_on_clean_text,
    missed_lines,
    read_pages,
    rules_as_on_main,
    score_pages,
)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def clean_corpora() -> dict[str, list[str]]:
    """Real text without boilerplate: GSM8K test (question + solution) and HH harmless-base test (chosen)."""
    out = {}
    gsm8k, hh = SHARED_DATA / "gsm8k-test.jsonl.gz", SHARED_DATA / "hh-rlhf-harmless-base-test.jsonl.gz"
    if gsm8k.exists():
        with gzip.open(gsm8k, "rt", encoding="utf-8") as fh:
            out["gsm8k"] = [f"{r['question']}\n{r['answer']}" for r in map(json.loads, fh)]
    if hh.exists():
        with gzip.open(hh, "rt", encoding="utf-8") as fh:
            out["hh"] = [r["chosen"] for r in map(json.loads, fh)]
    return out
GROUPS = ["farm", "blog", "forum", "shop", "zh", "en", "txt", "html", "all"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=Path, default=REPO / "tests/data/dirty_pages")
    parser.add_argument("--misses", action="store_true", help="list the lines the new rules get wrong")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    pages = read_pages(args.pages)
    after_cfg = BoilerplateConfig()
    before_counts, after_counts = Counter(), Counter()
    before = score_pages(pages, rules_as_on_main(after_cfg), entities=False, counts=before_counts)
    after = score_pages(pages, after_cfg, entities=True, counts=after_counts)

    print(f"{len(pages)} pages, {after['all'].article} article lines, {after['all'].junk} junk lines\n")
    head = f"{'group':<7}{'pages':>6}{'art':>5}{'junk':>5} | " + " | ".join(
        f"{name:^15}" for name in ("junk rm", "drop P", "art kept", "kept P"))
    print(head)
    print(f"{'':<23} | " + " | ".join(f"{'before':>7}{'after':>8}" for _ in range(4)))
    print("-" * len(head))
    n_pages = Counter(p.kind for p in pages) + Counter(p.lang for p in pages) + Counter(p.fmt for p in pages)
    n_pages["all"] = len(pages)
    for group in GROUPS:
        b, a = before[group], after[group]
        cells = [(b.junk_removed, a.junk_removed), (b.drop_precision, a.drop_precision),
                 (b.article_kept_share, a.article_kept_share), (b.kept_precision, a.kept_precision)]
        print(f"{group:<7}{n_pages[group]:>6}{a.article:>5}{a.junk:>5} | "
              + " | ".join(f"{x:>7.1%}{y:>8.1%}" for x, y in cells))
    print("\nlines removed per rule (entities: references decoded)")
    for rule in sorted(set(before_counts) | set(after_counts)):
        print(f"  {rule:<18}{before_counts[rule]:>6}{after_counts[rule]:>7}")
    print("\nfalse drops on real text without boilerplate (lines dropped / lines)")
    for name, texts in clean_corpora().items():
        for label, cfg, entities in (("before", rules_as_on_main(after_cfg), False), ("after", after_cfg, True)):
            lines, counts = drops_on_clean_text(texts, cfg, entities)
            dropped = sum(n for rule, n in counts.items() if rule != "entities")
            rules = ", ".join(f"{r} {n}" for r, n in sorted(counts.items()) if r != "entities") or "-"
            print(f"  {name:<6}{label:<7}{len(texts):>6} docs {lines:>7} lines {dropped:>5} dropped "
                  f"({dropped / lines:.2%})  {rules}")
    if args.misses:
        for page in pages:
            for line, keep in missed_lines(page, after_cfg):
                print(f"{page.name}: {'DROPPED article' if keep else 'KEPT junk':<16} {line}")


if __name__ == "__main__":
    main()
