"""Train the byte-level BPE tokenizer (with the chat special tokens and template) on the clean documents,
or adopt the base model's tokenizer when train_tokenizer.base holds one (base_model.source set).

Reads train_tokenizer.input (data/clean/documents.jsonl, or a directory of shards: a seeded sample of the
"train" split within train_tokenizer.max_chars trains, a bounded sample of the "validation" split
measures; both streamed, so memory is the budget, not the corpus), writes train_tokenizer.output
(models/tokenizer/, a Hugging Face tokenizer directory)
and train_tokenizer.report (reports/train_tokenizer.json: bytes per token on held-out English and
Chinese text). Params: train_tokenizer.
Run: dvc repro train_tokenizer   or   python -m stages.train_tokenizer --set train_tokenizer.vocab_size=8192
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from chatforge.core.config import load_config
from chatforge.core.files import atomic_dir
from chatforge.core.tracking import setup_logging, stage_run
from chatforge.data.sampling import sample_texts
from chatforge.train.tokenizer import TokenizerConfig, held_out_compression, tokenizer_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Params:
    train_tokenizer: TokenizerConfig
    seed: int = 0                               # which documents the sample keeps when the budget is short


HELD_OUT_CHARS = 5_000_000      # bytes per token is stable to ~0.1% long before this much held-out text


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    cfg = load_config(Params, argv, description=__doc__)
    tc = cfg.train_tokenizer
    with stage_run("train_tokenizer", cfg) as run:
        train = sample_texts(tc.input, "train", tc.max_chars, cfg.seed)
        held_out = sample_texts(tc.input, "validation", min(tc.max_chars, HELD_OUT_CHARS), cfg.seed)
        log.info("train_tokenizer: %d training documents (%d chars), %d held out", len(train),
                 sum(map(len, train)), len(held_out))
        tokenizer, adopted = tokenizer_for(train, tc)
        if adopted:
            log.info("train_tokenizer: adopted the base model's tokenizer (%s)", adopted)
        with atomic_dir(tc.output) as tmp:
            tokenizer.save_pretrained(tmp)
        compression = held_out_compression(tokenizer, held_out)
        for lang, m in compression.items():
            log.info("train_tokenizer: %s %.3f bytes/token (%s, %d bytes)", lang, m["bytes_per_token"],
                     m["source"], m["bytes"])
        run.report(tc.report, {
            "vocab_size": len(tokenizer),
            "adopted_from": adopted,
            "train_documents": 0 if adopted else len(train),
            "train_chars": 0 if adopted else min(sum(map(len, train)), tc.max_chars),
            "bytes_per_token": {lang: m["bytes_per_token"] for lang, m in compression.items()},
            "held_out": compression,
        })
        run.log_artifact(tc.output, "tokenizer")


if __name__ == "__main__":
    main()
