"""Byte-level BPE tokenizer with chat special tokens and a ChatML-style chat template.

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

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from chatforge.config import field_help

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
