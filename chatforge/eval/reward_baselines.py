"""Yardsticks for a reward model's held-out pairwise accuracy: scorers that need no training.

A reward model's accuracy means little alone. On next-reply pairs (a conversation's real next reply
against a reply from another conversation) most of the signal is whether the reply is on the
conversation's topic, which a bag of words already sees. So the train_reward report puts these
beside the trained models, computed on the same held-out pairs:

- ``length``: the longer reply wins (in words);
- ``word_overlap``: the reply's words that also occur in the conversation;
- ``idf_overlap``: the same, each word weighted by its inverse document frequency over the training
  replies (rare shared words count more);
- ``idf_overlap_norm``: that sum divided by the square root of the reply's own IDF mass (a long
  reply shares more words by chance);
- ``pmi``: a language model's pointwise mutual information of reply and conversation,
  log p(reply | conversation) - log p(reply | no conversation) (Li et al. 2016's MMI criterion,
  arXiv:1510.03055), from the model the reward model starts from. "No conversation" is one empty
  user turn: every chat template can render that, not every one renders nothing.

A tie counts half, so a scorer that cannot tell the replies apart scores 0.5.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from chatforge.rl.evaluation import Samples, reply_logprobs
from chatforge.train.chat_format import encode_chat
from chatforge.train.reward import pair_scores, win_share

WORD = re.compile(r"\w+")
NO_CONVERSATION = [{"role": "user", "content": ""}]
Pair = dict[str, Any]


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def conversation_words(prompt: list[dict[str, str]]) -> set[str]:
    return {w for m in prompt for w in words(m["content"])}


def inverse_document_frequency(replies: Sequence[str]) -> dict[str, float]:
    """log(N / df) over ``replies``, smoothed so that a word seen in none of them gets the largest weight."""
    df = Counter(w for r in replies for w in set(words(r)))
    n = len(replies)
    return {w: math.log((n + 1) / (c + 1)) for w, c in df.items()} | {"": math.log(n + 1)}


def pairwise_accuracy(pairs: Sequence[Pair], score: Callable[[list[dict[str, str]], str], float]) -> float:
    """``win_share`` of ``score`` on each pair's chosen and rejected reply."""
    return win_share([score(p["prompt"], p["chosen"]) for p in pairs],
                     [score(p["prompt"], p["rejected"]) for p in pairs])


def word_scorers(train_pairs: Sequence[Pair]) -> dict[str, Callable[[list[dict[str, str]], str], float]]:
    idf = inverse_document_frequency([p[k] for p in train_pairs for k in ("chosen", "rejected")])
    unseen = idf[""]

    def shared(prompt, reply) -> list[str]:
        context = conversation_words(prompt)
        return [w for w in words(reply) if w in context]

    def idf_norm(prompt, reply) -> float:
        mass = sum(idf.get(w, unseen) for w in words(reply))
        return sum(idf.get(w, unseen) for w in shared(prompt, reply)) / math.sqrt(mass) if mass else 0.0

    return {
        "length": lambda prompt, reply: len(words(reply)),
        "word_overlap": lambda prompt, reply: len(shared(prompt, reply)),
        "idf_overlap": lambda prompt, reply: sum(idf.get(w, unseen) for w in shared(prompt, reply)),
        "idf_overlap_norm": idf_norm,
    }


def pmi_scores(model, tokenizer, prompts: list[list[dict[str, str]]], replies: list[str],
               batch_size: int = 32, max_length: int | None = None) -> list[float]:
    """log p(reply | prompt) - log p(reply | an empty user turn) for each (prompt, reply), the reply
    ending with its end-of-turn token; prompt and reply keep as many whole turns as ``max_length``
    tokens allow (the model's context when None)."""
    context = int(model.config.max_position_embeddings)
    if max_length:
        context = min(context, max_length)
    reply_ids = [tokenizer.encode(r, add_special_tokens=False)[: context // 2] + [tokenizer.eos_token_id]
                 for r in replies]

    def logprobs(with_prompt: bool) -> list[float]:
        prompt_ids = [encode_chat(p if with_prompt else NO_CONVERSATION, tokenizer, context,
                                  add_generation_prompt=True, reserve=len(r)).input_ids
                      for p, r in zip(prompts, reply_ids)]
        n = len(replies)
        return reply_logprobs(model, Samples(list(range(n)), prompt_ids, reply_ids, replies),
                              tokenizer.pad_token_id, batch_size)

    return [a - b for a, b in zip(logprobs(True), logprobs(False))]


def reward_baselines(train_pairs: Sequence[Pair], heldout: Sequence[Pair], model=None, tokenizer=None,
                     batch_size: int = 32, max_length: int | None = None) -> dict[str, float]:
    """``{"baseline_<name>": held-out pairwise accuracy}`` of every scorer above (``pmi`` only with a
    model, reading ``max_length`` tokens as the reward model does: a 135M model's 8,192-token context
    would make it read, and cost, far more)."""
    out = {f"baseline_{name}": pairwise_accuracy(heldout, fn) for name, fn in word_scorers(train_pairs).items()}
    if model is not None and heldout:
        out["baseline_pmi"] = win_share(*pair_scores(
            lambda prompts, replies: pmi_scores(model, tokenizer, prompts, replies, batch_size, max_length), heldout))
    return out
