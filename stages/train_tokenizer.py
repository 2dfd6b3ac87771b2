"""Train the byte-level BPE tokenizer (with the chat special tokens and template) on the clean documents,
or adopt the base model's tokenizer when train_tokenizer.base holds one (base_model.source set).

Reads train_tokenizer.input (data/clean/documents.jsonl: the "train" split trains, the "validation"
split measures), writes train_tokenizer.output (models/tokenizer/, a Hugging Face tokenizer directory)
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
from chatforge.data.records import documents_by_split
from chatforge.train.tokenizer import TokenizerConfig, held_out_compression, tokenizer_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Params:
    train_tokenizer: TokenizerConfig


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    cfg = load_config(Params, argv, description=__doc__)
    tc = cfg.train_tokenizer
    with stage_run("train_tokenizer", cfg) as run:
        texts = documents_by_split(tc.input)
        train, held_out = texts["train"], texts["validation"]
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
