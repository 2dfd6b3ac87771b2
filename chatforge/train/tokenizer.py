"""Byte-level BPE tokenizer with chat special tokens and a ChatML-style chat template; or, with a
pretrained base model, that model's own tokenizer and chat template, adopted as they are.

Byte-level BPE (GPT-2 style) maps every input byte to a symbol first, so any Unicode text (CJK,
emoji, control characters) round-trips exactly: there is no normalizer and no unknown token.

Special tokens:
    <|endoftext|>   separates documents when pretraining (bos_token)
    <|im_start|>    opens a chat turn, followed by the role and a newline
    <|im_end|>      closes a turn; it is eos_token, so generation stops at the end of a reply
    <|pad|>         padding

The chat template marks assistant replies with ``{% generation %}`` so TRL's
``assistant_only_loss`` (and ``return_assistant_tokens_mask``) can find them.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from chatforge.core.config import field_help

BOS, EOS, PAD, IM_START = "<|endoftext|>", "<|im_end|>", "<|pad|>", "<|im_start|>"
SPECIAL_TOKENS = [BOS, IM_START, EOS, PAD]

# One line, no whitespace control. transformers renders with trim_blocks, which eats a newline
# right after a block tag, hence the {{ '\n' }} after endgeneration.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "<|im_start|>assistant\n{% generation %}{{ message['content'] }}<|im_end|>{% endgeneration %}{{ '\\n' }}"
    "{% else %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class TokenizerConfig:
    """The ``train_tokenizer:`` params section."""

    input: Path = field_help(Path("data/clean/documents.jsonl"), "documents (train split trains, validation measures)")
    output: Path = field_help(Path("models/tokenizer"), "the Hugging Face tokenizer directory written")
    report: Path = field_help(Path("reports/train_tokenizer.json"), "bytes per token and counts")
    base: Path | None = field_help(None, "the base_model output (params.yaml: models/pretrained): when it holds "
                                         "a model, its tokenizer is adopted instead of training one")
    vocab_size: int = field_help(4096, "total vocabulary including the 256 byte symbols and special tokens")
    min_frequency: int = field_help(2, "a pair must occur this often to be merged")
    max_chars: int = field_help(20_000_000, "character budget: train on at most this many characters")

    def __post_init__(self) -> None:
        if self.vocab_size < 256 + len(SPECIAL_TOKENS):
            raise ValueError(f"'vocab_size' must be at least {256 + len(SPECIAL_TOKENS)} (bytes + special tokens)")


def limit_chars(texts: Iterable[str], max_chars: int) -> Iterator[str]:
    """Yield texts until the character budget is spent (the last one is cut to fit)."""
    left = max_chars
    for text in texts:
        if left <= 0:
            return
        yield text[:left]
        left -= len(text)


def train_tokenizer(texts: Iterable[str], cfg: TokenizerConfig):
    """Train byte-level BPE on ``texts``; returns a transformers fast tokenizer with the chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),   # all 256 bytes, so nothing is unknown
        show_progress=False,
    )
    tok.train_from_iterator(limit_chars(texts, cfg.max_chars), trainer=trainer)
    return wrap_tokenizer(tok)


def tokenizer_for(texts: Iterable[str], cfg: TokenizerConfig):
    """(tokenizer, adopted source): the base model's own tokenizer when ``cfg.base`` holds a model
    (its vocabulary is what the weights were trained on), else one trained on ``texts``."""
    from chatforge.train.base_model import has_model, read_lineage

    if cfg.base is not None and has_model(cfg.base):
        return load_tokenizer(cfg.base), read_lineage(cfg.base)["base"]["source"]
    return train_tokenizer(texts, cfg), None


def wrap_tokenizer(tok):
    """A ``tokenizers.Tokenizer`` -> transformers fast tokenizer with our special tokens and template."""
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        additional_special_tokens=[IM_START], clean_up_tokenization_spaces=False,
    )
    hf.chat_template = CHAT_TEMPLATE
    return hf


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


# --------------------------------------------------------------------------------------------
# Measuring a tokenizer: bytes per token (higher = better compression) by language
# --------------------------------------------------------------------------------------------

Language = Literal["en", "zh"]

# Held-out probes, written for this file and never part of any training set: used for a language
# that the validation split has no documents of (the default chitchat data are English only).
PROBE_TEXTS: dict[str, str] = {
    "en": (
        "The library opened its doors at nine, and by ten the reading room was full of students "
        "preparing for their exams. Outside, the rain had stopped; a few cyclists were already "
        "drying their seats with their sleeves. Nobody seemed to notice the old clock above the "
        "entrance, which had been running seven minutes late for as long as anyone could remember."
    ),
    "zh": (
        "图书馆九点开门，十点的时候阅览室里已经坐满了准备考试的学生。外面的雨停了，"
        "几个骑自行车的人正用袖子擦干车座。没有人注意到入口上方的那座老钟，"
        "从大家记事起，它就一直慢七分钟。"
    ),
}


def _is_cjk(ch: str) -> bool:
    return unicodedata.name(ch, "").startswith(("CJK UNIFIED IDEOGRAPH", "CJK COMPATIBILITY IDEOGRAPH"))


def text_language(text: str, cjk_share: float = 0.3) -> Language:
    """"zh" when at least ``cjk_share`` of the non-space characters are CJK ideographs, else "en"."""
    chars = [c for c in text if not c.isspace()]
    if not chars:
        return "en"
    return "zh" if sum(map(_is_cjk, chars)) / len(chars) >= cjk_share else "en"


def count_bytes_and_tokens(tokenizer, texts: Iterable[str]) -> tuple[int, int]:
    """(UTF-8 bytes, tokens) over ``texts``, tokenized without special tokens."""
    texts = [t for t in texts if t]
    if not texts:
        return 0, 0
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    n_tokens = sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
    return n_bytes, n_tokens


def held_out_compression(tokenizer, texts: Iterable[str]) -> dict[str, dict]:
    """Bytes per token on held-out ``texts``, per language (see ``text_language``).

    A language with no held-out text is measured on its built-in probe instead, and says so
    in ``source``, so the report always has both numbers and never passes a probe off as data.
    """
    by_lang: dict[str, list[str]] = {lang: [] for lang in PROBE_TEXTS}
    for text in texts:
        by_lang[text_language(text)].append(text)
    out = {}
    for lang, docs in by_lang.items():
        source = "validation" if docs else "probe"
        n_bytes, n_tokens = count_bytes_and_tokens(tokenizer, docs or [PROBE_TEXTS[lang]])
        out[lang] = {"source": source, "documents": len(docs), "bytes": n_bytes, "tokens": n_tokens,
                     "bytes_per_token": round(n_bytes / max(n_tokens, 1), 4)}
    return out
