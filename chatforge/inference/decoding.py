"""Chat decoding: one token loop over a model "step", for PyTorch and ONNX Runtime alike.

A *step* takes the new tokens, the attention mask over past + new positions and the KV cache,
and returns the logits of the new positions and the grown cache::

    logits, past = step(input_ids, attention_mask, past)     # (B, T) ids, (B, P+T) mask -> (B, T, V)

``TorchStep`` runs a transformers causal LM with its ``DynamicCache``; ``chatforge.inference.onnx_runtime``
runs the exported ONNX graph the same way. On top of a step this module decodes greedy, with
temperature / top-k / top-p sampling, or with beam search, with a repetition penalty (and
OpenAI's frequency and presence penalties), yielding tokens as they come (streaming). The logits
processors are transformers' own, so the sampling means what it means in ``model.generate``.
The loop is ours because ONNX Runtime has no ``generate`` for a plain exported graph
(optimum-onnx, which has one, pins transformers < 4.58), and because streaming and both runtimes
want one loop rather than two; tests check it against ``model.generate`` token for token.

``ChatModel`` puts a tokenizer with our chat template around a step: messages in, reply out,
with the conversation cut from its oldest turns when it passes the context. Its stream of text
deltas joins to exactly the final reply: a partial UTF-8 character, trailing whitespace and text
that may be the start of a stop string are held back until they resolve.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from chatforge.core.config import field_help

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecodingConfig:
    """How to pick the next token. ``temperature == 0`` is greedy; ``num_beams > 1`` is beam search."""

    max_new_tokens: int = field_help(128, "most tokens in a reply")
    temperature: float = field_help(0.0, "0 = greedy; > 0 samples from softmax(logits / temperature)")
    top_k: int = field_help(0, "sample from the k most likely tokens only (0 = off)")
    top_p: float = field_help(1.0, "sample from the smallest set of tokens with this much probability (1 = off)")
    num_beams: int = field_help(1, "beam search with this many beams (needs temperature 0)")
    length_penalty: float = field_help(1.0, "beam score = log-prob / length ** length_penalty (as in generate)")
    repetition_penalty: float = field_help(1.0, "> 1 discourages tokens already in the context (CTRL paper)")
    frequency_penalty: float = field_help(0.0, "OpenAI's: logit -= this x times the token is already in the reply")
    presence_penalty: float = field_help(0.0, "OpenAI's: logit -= this when the token is already in the reply")
    stop: tuple[str, ...] = field_help((), "the reply ends before the first of these strings (not included)")
    seed: int | None = field_help(None, "sampling seed (None: a fresh one each time)")

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError("'max_new_tokens' must be at least 1")
        if self.temperature < 0:
            raise ValueError("'temperature' must be >= 0 (0 is greedy)")
        if self.top_k < 0:
            raise ValueError("'top_k' must be >= 0 (0 is off)")
        if not 0 < self.top_p <= 1:
            raise ValueError("'top_p' must be in (0, 1]")
        if self.num_beams < 1:
            raise ValueError("'num_beams' must be at least 1")
        if self.num_beams > 1 and self.temperature > 0:
            raise ValueError("beam search is deterministic: use temperature 0 with num_beams > 1")
        if self.repetition_penalty <= 0:
            raise ValueError("'repetition_penalty' must be > 0 (1 is off)")
        for name in ("frequency_penalty", "presence_penalty"):
            if not -2 <= getattr(self, name) <= 2:
                raise ValueError(f"'{name}' must be in [-2, 2] (OpenAI's range; 0 is off)")
        if not isinstance(self.stop, tuple) or not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError("'stop' must be a tuple of non-empty strings")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 and self.num_beams == 1


class Step(Protocol):
    """One forward pass with a KV cache (see the module docstring)."""

    def __call__(self, input_ids, attention_mask, past: Any | None) -> tuple[Any, Any]: ...

    def reorder(self, past: Any, index) -> Any:
        """The cache with its batch rows taken in ``index`` order (beam search)."""
        ...


class TorchStep:
    """A step through a transformers causal LM and its ``DynamicCache``."""

    explicit_positions = True            # forward_batch honours position_ids (see chatforge.inference.batching)

    def __init__(self, model):
        self.model = model.eval()

    def __call__(self, input_ids, attention_mask, past):
        import torch

        with torch.no_grad():
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, cache=past, use_cache=True)
        return out.logits.float(), out.cache

    def forward_batch(self, input_ids, attention_mask, position_ids, kv):
        """The batched step of ``chatforge.inference.batching``: the cache as flat per-layer tensors
        ``[k0, v0, k1, v1, ...]`` of shape (B, n_kv, P, Dh), or None before the first token."""
        import torch

        from chatforge.inference.export import cache_from_flat

        cache = cache_from_flat(kv, self.model.config) if kv else None
        with torch.no_grad():
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             cache=cache, use_cache=True)
        return out.logits.float(), [t for layer in out.cache.layers for t in (layer.keys, layer.values)]

    def reorder(self, past, index):
        past.reorder_cache(index)
        return past


class ReplyPenaltyLogitsProcessor:
    """OpenAI's frequency and presence penalties over the tokens of the reply so far:
    ``logit[j] -= count[j] * frequency + (count[j] > 0) * presence`` (OpenAI API reference).

    Written here because transformers has none: its repetition penalty scales logits instead of
    subtracting, and counts the prompt's tokens too.
    """

    def __init__(self, prompt_len: int, frequency: float, presence: float):
        self.prompt_len = prompt_len
        self.frequency = frequency
        self.presence = presence

    def __call__(self, input_ids, scores):
        import torch

        reply = input_ids[:, self.prompt_len:]                                  # (B, R)
        counts = torch.zeros_like(scores).scatter_add_(1, reply, torch.ones_like(reply, dtype=scores.dtype))
        return scores - counts * self.frequency - (counts > 0).to(scores.dtype) * self.presence    # (B, V)


def logits_processors(cfg: DecodingConfig, prompt_len: int = 0):
    """The processors for ``cfg``: repetition penalty, OpenAI's reply penalties (the reply starts at
    ``prompt_len``), then temperature, top-k, top-p. All but the reply penalties are transformers'."""
    from transformers import (
        LogitsProcessorList,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    procs = LogitsProcessorList()
    if cfg.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(cfg.repetition_penalty))
    if cfg.frequency_penalty or cfg.presence_penalty:
        procs.append(ReplyPenaltyLogitsProcessor(prompt_len, cfg.frequency_penalty, cfg.presence_penalty))
    if cfg.temperature > 0:
        if cfg.temperature != 1.0:
            procs.append(TemperatureLogitsWarper(cfg.temperature))
        if cfg.top_k > 0:
            procs.append(TopKLogitsWarper(cfg.top_k))
        if cfg.top_p < 1.0:
            procs.append(TopPLogitsWarper(cfg.top_p))
    return procs


def sample_tokens(step: Step, prompt_ids: list[int], cfg: DecodingConfig, eos_ids: set[int]) -> Iterator[int]:
    """Yield the reply's token ids one at a time (greedy or sampled), ending with an EOS id if one comes."""
    import torch

    if cfg.num_beams > 1:
        raise ValueError("sample_tokens decodes one sequence; use beam_search for num_beams > 1")
    procs = logits_processors(cfg, len(prompt_ids))
    generator = torch.Generator()
    if cfg.seed is None:
        generator.seed()
    else:
        generator.manual_seed(cfg.seed)
    ids = torch.tensor([prompt_ids], dtype=torch.long)                      # (1, T) everything so far
    new = ids
    past = None
    for _ in range(cfg.max_new_tokens):
        mask = torch.ones_like(ids)                                         # (1, P+T)
        logits, past = step(new, mask, past)
        scores = procs(ids, logits[:, -1, :])                               # (1, V)
        if cfg.temperature == 0:
            token = int(scores.argmax(-1))
        else:
            token = int(torch.multinomial(scores.softmax(-1), 1, generator=generator))
        yield token
        if token in eos_ids:
            return
        new = torch.tensor([[token]], dtype=torch.long)
        ids = torch.cat([ids, new], dim=1)


class GenerationCancelled(Exception):
    """The generation was stopped from outside (its client went away, or its time ran out)."""


def beam_search(step: Step, prompt_ids: list[int], cfg: DecodingConfig, eos_ids: set[int],
                cancel: threading.Event | None = None) -> list[int]:
    """The best reply by beam search, scored as in ``generate(num_beams=n, early_stopping=True)``.

    Every step keeps the ``n`` best unfinished beams out of the best ``k`` extensions (k = 2n, or
    (1 + number of EOS ids) * n as in ``generate``, so that n beams without EOS are always among
    them); an extension ending in EOS among the top n is a finished hypothesis, scored
    sum(log p) / length ** length_penalty (length = new tokens, EOS included). Stops when n
    hypotheses are finished or at ``max_new_tokens``, where the running beams count as finished too.
    ``cancel``, once set, stops the search before its next step (GenerationCancelled).
    """
    import torch

    n = cfg.num_beams
    procs = logits_processors(cfg, len(prompt_ids))
    ids = torch.tensor([prompt_ids] * n, dtype=torch.long)                  # (n, T)
    scores = torch.full((n,), -1e9)
    scores[0] = 0.0                                                         # all beams start identical
    new, past = ids, None
    finished: list[tuple[float, list[int]]] = []
    prompt_len = len(prompt_ids)
    candidates = max(2, 1 + len(eos_ids)) * n
    for length in range(1, cfg.max_new_tokens + 1):
        if cancel is not None and cancel.is_set():
            raise GenerationCancelled()
        logits, past = step(new, torch.ones_like(ids), past)
        logprobs = procs(ids, torch.log_softmax(logits[:, -1, :], dim=-1))  # (n, V)
        vocab = logprobs.size(-1)
        total = (logprobs + scores[:, None]).view(-1)                       # (n * V)
        top_scores, top_index = total.topk(candidates)
        keep_beam, keep_token, keep_score = [], [], []
        for rank, (score, index) in enumerate(zip(top_scores.tolist(), top_index.tolist())):
            beam, token = divmod(index, vocab)
            if token in eos_ids:
                if rank < n:
                    finished.append((score / length ** cfg.length_penalty,
                                     ids[beam, prompt_len:].tolist() + [token]))
                continue
            keep_beam.append(beam)
            keep_token.append(token)
            keep_score.append(score)
            if len(keep_beam) == n:
                break
        if len(finished) >= n:
            break
        index = torch.tensor(keep_beam)
        past = step.reorder(past, index)
        new = torch.tensor(keep_token)[:, None]                             # (n, 1)
        ids = torch.cat([ids[index], new], dim=1)
        scores = torch.tensor(keep_score)
    else:
        finished += [(s / cfg.max_new_tokens ** cfg.length_penalty, row[prompt_len:].tolist())
                     for s, row in zip(scores.tolist(), ids)]
    return max(finished, key=lambda f: f[0])[1]


class TextStream:
    """Token ids in, text deltas out; holds back a partial UTF-8 character until it completes."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.sent = 0

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.text
        if text.endswith("\ufffd"):                 # a byte-level token that ends mid-character
            return ""
        delta, self.sent = text[self.sent:], len(text)
        return delta

    def flush(self) -> str:
        """What is still held back at the end (bytes that never made a character decode as U+FFFD)."""
        text = self.text
        delta, self.sent = text[self.sent:], len(text)
        return delta

    @property
    def text(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True)


class ReplyText:
    """Raw text deltas in, reply deltas out, joining to ``text`` exactly: the reply ends before
    the first stop string, without leading or trailing whitespace.

    Text that could be the start of a stop string waits for the next delta to show whether it
    is one; whitespace waits to show whether more text follows it.
    """

    def __init__(self, stop: tuple[str, ...] = ()):
        self.stop = stop
        self.held = ""                 # the end of the raw text that may begin a stop string
        self.space = ""                # whitespace sent only once more text follows
        self.text = ""                 # the reply so far: the join of every delta returned
        self.stopped = False           # a stop string came; later deltas are ignored

    def push(self, delta: str) -> str:
        if self.stopped:
            return ""
        held = self.held + delta
        hits = [i for i in (held.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.held, self.stopped = "", True
            return self._send(held[:min(hits)])
        keep = max((k for s in self.stop for k in range(1, len(s)) if held.endswith(s[:k])), default=0)
        self.held = held[len(held) - keep:]
        return self._send(held[:len(held) - keep])

    def flush(self) -> str:
        """The reply has ended: held text that did not become a stop string belongs to it."""
        held, self.held = self.held, ""
        return self._send(held)

    def _send(self, ready: str) -> str:
        if not self.text:
            ready = ready.lstrip()
        pending = self.space + ready
        body = pending.rstrip()
        if not body:                               # nothing but whitespace so far: it waits
            self.space = pending
            return ""
        self.space = pending[len(body):]
        self.text += body
        return body


@dataclass
class Completion:
    """A reply and its accounting (the OpenAI ``usage`` and ``finish_reason``)."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str                   # "stop" (EOS or a stop string) or "length" (max_new_tokens)
    dropped_messages: int = 0            # oldest messages left out to fit the context
    token_ids: list[int] = field(default_factory=list)


class ReplyBuilder:
    """Token ids in, reply text deltas out, then the Completion: the text of one reply however its
    tokens are made (one sequence at a time, or a row of a batch)."""

    def __init__(self, tokenizer, cfg: DecodingConfig, eos_ids: set[int], prompt_tokens: int, dropped: int = 0):
        self.tokens, self.reply = TextStream(tokenizer), ReplyText(cfg.stop)
        self.eos_ids, self.prompt_tokens, self.dropped = eos_ids, prompt_tokens, dropped

    @property
    def stopped(self) -> bool:
        """A stop string came: the reply is over, whatever tokens follow."""
        return self.reply.stopped

    def push(self, token: int) -> str:
        return self.reply.push(self.tokens.push(token))

    def finish(self) -> tuple[str, Completion]:
        """(the last delta, the Completion) once no more tokens come."""
        rest = self.reply.push(self.tokens.flush()) + self.reply.flush()
        ids = self.tokens.ids
        ended = self.reply.stopped or (bool(ids) and ids[-1] in self.eos_ids)
        return rest, Completion(self.reply.text, self.prompt_tokens, len(ids), "stop" if ended else "length",
                                self.dropped, ids)


class ChatModel:
    """A tokenizer with the chat template around a step: messages in, a reply out."""

    def __init__(self, tokenizer, step: Step, context_length: int, name: str = "chatforge"):
        self.tokenizer = tokenizer
        self.step = step
        self.context_length = context_length
        self.name = name
        # The template's end-of-turn token ends a reply, and so do the tokens that open a new turn or
        # document (see chat_format.stop_token_ids): ChatML's <|im_end|>, Llama-3's <|eot_id|>, ...
        from chatforge.train.chat_format import stop_token_ids

        self.eos_ids = stop_token_ids(tokenizer)

    def prompt_ids(self, messages: list[dict[str, str]], max_new_tokens: int) -> tuple[list[int], int]:
        """(ids, messages dropped): the conversation rendered with the chat template and the
        generation prompt, cut from its oldest turns so that ``max_new_tokens`` still fit."""
        from chatforge.train.chat_format import encode_chat

        if max_new_tokens >= self.context_length:
            raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for the prompt in a "
                             f"{self.context_length}-token context")
        enc = encode_chat(messages, self.tokenizer, self.context_length, add_generation_prompt=True,
                          reserve=max_new_tokens)
        return enc.input_ids, enc.dropped_messages(messages)

    def stream(self, messages: list[dict[str, str]], cfg: DecodingConfig,
               cancel: threading.Event | None = None) -> Iterator[str | Completion]:
        """Yield text deltas as the tokens come, then the ``Completion`` as the last item.

        The deltas join to ``Completion.text``. Beam search knows its reply only at the end, so
        it yields the whole text at once; ``cancel`` stops it (closing the stream stops sampling).
        """
        ids, dropped = self.prompt_ids(messages, cfg.max_new_tokens)
        reply = ReplyBuilder(self.tokenizer, cfg, self.eos_ids, len(ids), dropped)
        if cfg.num_beams > 1:
            source = iter(beam_search(self.step, ids, cfg, self.eos_ids, cancel))
        else:
            source = sample_tokens(self.step, ids, cfg, self.eos_ids)
        for token in source:
            delta = reply.push(token)
            if delta:
                yield delta
            if reply.stopped:
                break
        rest, done = reply.finish()
        if rest:
            yield rest
        yield done

    def complete(self, messages: list[dict[str, str]], cfg: DecodingConfig,
                 cancel: threading.Event | None = None) -> Completion:
        *_, done = self.stream(messages, cfg, cancel)
        return done


def load_chat_model(source: str | Path, *, onnx: bool = False) -> ChatModel:
    """A ChatModel from a model directory, an ONNX export directory (``onnx=True``) or an MLflow
    model URI such as ``models:/chatforge-policy@champion``."""
    from chatforge.train.tokenizer import load_tokenizer

    text = str(source)
    if onnx:
        from chatforge.inference.onnx_runtime import OrtStep, load_export

        export_dir = Path(text)
        session, meta = load_export(export_dir)
        return ChatModel(load_tokenizer(export_dir), OrtStep(session, meta), meta["context_length"], text)
    if text.startswith(("models:/", "runs:/", "mlflow-artifacts:/")):
        import mlflow.transformers

        from chatforge.core.tracking import tracking_uri

        # Only the store's address: loading needs no experiment (configure_mlflow would create one).
        mlflow.set_tracking_uri(tracking_uri())
        parts = mlflow.transformers.load_model(text, return_type="components")
        model, tokenizer = parts["model"], parts["tokenizer"]
    else:
        from chatforge.train.loading import load_model_and_tokenizer

        model, tokenizer = load_model_and_tokenizer(
            Path(text), hint="pass a directory written by a chatforge stage (e.g. models/policy) or "
                             "models:/chatforge-policy@champion")
    return ChatModel(tokenizer, TorchStep(model), int(model.config.max_position_embeddings), text)
