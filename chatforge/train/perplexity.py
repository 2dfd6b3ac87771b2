"""Held-out loss, perplexity and bits per byte of a causal LM, and a unigram baseline.

Bits per byte (bpb) divides the summed next-token loss by the UTF-8 bytes those tokens stand
for, so it does not depend on the tokenizer: a model with a bigger vocabulary cannot look better
just by predicting fewer, longer tokens (nanochat's ``evaluate_bpb`` does the same). Special
tokens (the ``<|endoftext|>`` separators) stand for no bytes and are left out of both sums.

The baseline is a unigram model (token frequencies of the training tokens, add-one smoothed)
scored on exactly the same target tokens: a language model that does not beat it has learnt
nothing beyond token frequencies.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

LN2 = math.log(2.0)


def token_byte_lengths(tokenizer) -> np.ndarray:
    """UTF-8 bytes per token id (0 for special tokens), for a byte-level BPE tokenizer.

    In byte-level BPE every character of a vocabulary entry stands for exactly one byte (GPT-2's
    bytes-to-unicode map), so an entry's length is its byte count, partial UTF-8 sequences included.
    """
    special = set(tokenizer.all_special_ids)
    vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return np.array([0 if i in special else len(tok) for i, tok in enumerate(vocab)], dtype=np.int64)


@dataclass(frozen=True)
class HeldOutScore:
    """Sums over the scored target tokens, and the figures made from them."""

    nats: float              # summed loss over all target tokens
    tokens: int
    byte_nats: float         # summed loss over target tokens that stand for bytes
    bytes: int

    @property
    def loss(self) -> float:
        return self.nats / max(self.tokens, 1)

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.loss, 700.0))

    @property
    def bpb(self) -> float:
        return self.byte_nats / (LN2 * max(self.bytes, 1))


def unigram_counts(blocks: Iterable[np.ndarray], vocab_size: int) -> np.ndarray:
    """Token counts over batches of blocks (B, T) of training ids."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for batch in blocks:
        counts += np.bincount(np.asarray(batch).ravel(), minlength=vocab_size)[:vocab_size]
    return counts


def unigram_score(counts: np.ndarray, blocks: np.ndarray, token_bytes: np.ndarray) -> HeldOutScore:
    """Score the add-one smoothed unigram model of ``counts`` on the targets of ``blocks`` (N, T)."""
    logp = np.log(counts + 1.0) - np.log(counts.sum() + len(counts))        # (V,)
    targets = np.asarray(blocks)[:, 1:].ravel()                             # what the LM predicts
    nats = -logp[targets]
    nbytes = token_bytes[targets]
    return HeldOutScore(float(nats.sum()), int(targets.size), float(nats[nbytes > 0].sum()), int(nbytes.sum()))


def score_model(model, blocks: np.ndarray, token_bytes: np.ndarray, batch_size: int, device,
                autocast: contextlib.AbstractContextManager | None = None) -> HeldOutScore:
    """Next-token loss of ``model`` on ``blocks`` (N, T); sums over all ranks when distributed.

    In a distributed run every rank scores its own equal share of the blocks (FSDP and ZeRO-3
    need every rank in every forward), and the sums are all-reduced.
    """
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    per_rank = len(blocks) // world
    mine = np.asarray(blocks)[rank * per_rank:(rank + 1) * per_rank]
    nbytes_of = torch.as_tensor(token_bytes, device=device)
    sums = torch.zeros(4, dtype=torch.float64, device=device)     # nats, tokens, byte_nats, bytes
    was_training = model.training
    model.eval()
    with torch.no_grad(), (autocast or contextlib.nullcontext()):
        for i in range(0, len(mine), batch_size):
            ids = torch.as_tensor(mine[i:i + batch_size], dtype=torch.long, device=device)   # (B, T)
            logits = model(input_ids=ids).logits[:, :-1].float()                              # (B, T-1, V)
            targets = ids[:, 1:]                                                              # (B, T-1)
            nats = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none")
            nbytes = nbytes_of[targets.reshape(-1)]
            sums += torch.stack([nats.sum().double(), torch.tensor(float(nats.numel()), dtype=torch.float64,
                                 device=device), nats[nbytes > 0].sum().double(), nbytes.sum().double()])
    model.train(was_training)
    if world > 1:
        dist.all_reduce(sums)
    nats, tokens, byte_nats, nbytes = sums.tolist()
    return HeldOutScore(nats, int(tokens), byte_nats, int(nbytes))
