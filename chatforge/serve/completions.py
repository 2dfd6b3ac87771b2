"""``POST /v1/completions`` (OpenAI's legacy text completions) with ``echo`` and ``logprobs``, and the
``logprobs`` / ``top_logprobs`` of chat completions: what lm-evaluation-harness's
``local-completions`` (loglikelihood tasks: the prompt's token log-probabilities, with ``echo``)
and ``local-chat-completions`` (generated answers) need to score a served model.

As OpenAI defines them (API reference, "Completions (Legacy)" and "Chat Completions"):

- ``prompt``: a string, a list of strings, a list of token ids or a list of token-id lists; one
  choice per prompt, in order (``n`` must be 1).
- ``logprobs: k`` (0-5) returns ``{"tokens", "token_logprobs", "top_logprobs", "text_offset"}``
  over the generated tokens, or over the prompt's and the generated tokens with ``echo: true``
  (the first prompt token has no log-probability: ``null``). ``top_logprobs`` holds the ``k`` most
  likely tokens at each position (plus the sampled one, as OpenAI adds it).
  ``max_tokens: 0`` with ``echo`` scores the prompt without generating.
- Chat: ``logprobs: true`` returns ``choices[0].logprobs.content``, one entry per reply token with
  ``top_logprobs`` (0-20) alternatives; not with ``stream`` (refused with a 400).

Log-probabilities are the model's own, softmax(logits), computed by ``chatforge.inference.scoring``
in one forward pass over prompt and reply, whatever the sampling settings were. Prompt text is
tokenized without special tokens; token-id prompts are taken as they are. ``stream`` is not
supported on this route (400).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from typing import Any

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from chatforge.inference.decoding import ChatModel, DecodingConfig, ReplyText, TextStream, beam_search, sample_tokens
from chatforge.inference.scoring import ScoredToken, score_tokens
from chatforge.serve.errors import ApiError, validation_error
from chatforge.serve.context import ServerContext
from chatforge.serve.schema import MAX_STOP_STRINGS, ServerLimits
from chatforge.train.chat_format import TOKENIZER_LOCK

MAX_PROMPTS = 64                 # prompts in one request (lm-eval sends its batch as one request)
MAX_LOGPROBS = 5                 # OpenAI's limit for the legacy completions
MAX_TOP_LOGPROBS = 20            # OpenAI's limit for chat completions


class CompletionRequest(BaseModel):
    """``POST /v1/completions``; fields this server has no use for (``user``, ``suffix``) are ignored."""

    model_config = ConfigDict(strict=True, extra="ignore")
    model: str | None = None
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(None, ge=0)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = None
    best_of: int | None = None
    stream: bool | None = None
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False
    stop: str | list[str] | None = None
    seed: int | None = None
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    # chatforge extensions, as on chat completions
    top_k: int | None = Field(None, ge=0)
    repetition_penalty: float | None = Field(None, gt=0)


def prompt_ids(req: CompletionRequest, tokenizer) -> list[list[int]]:
    """Each prompt of the request as token ids; ApiError for an empty or oversized list."""
    prompt = req.prompt
    if isinstance(prompt, str):
        prompts: list[Any] = [prompt]
    elif prompt and isinstance(prompt[0], int):
        prompts = [prompt]
    else:
        prompts = list(prompt)
    if not prompts or len(prompts) > MAX_PROMPTS:
        raise ApiError(400, f"'prompt' must hold 1 to {MAX_PROMPTS} prompts; got {len(prompts)}.", "prompt",
                       "invalid_value")
    vocab = len(tokenizer)
    out = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            with TOKENIZER_LOCK:                       # see chatforge.train.chat_format.TOKENIZER_LOCK
                ids = tokenizer(p, add_special_tokens=False).input_ids
        else:
            ids = list(p)
        if not ids:
            raise ApiError(400, f"prompt {i} is empty.", "prompt", "invalid_value")
        if any(not 0 <= t < vocab for t in ids):
            raise ApiError(400, f"prompt {i} has a token id outside the vocabulary (0..{vocab - 1}).", "prompt",
                           "invalid_value")
        out.append(ids)
    return out


def decoding(req: CompletionRequest, defaults: DecodingConfig, limits: ServerLimits) -> DecodingConfig:
    if req.n not in (None, 1) or req.best_of not in (None, 1):
        raise ApiError(400, "n and best_of must be 1: this server returns one choice per prompt.", "n",
                       "invalid_value")
    if req.stream:
        raise ApiError(400, "stream is not supported on /v1/completions (it is on /v1/chat/completions).",
                       "stream", "unsupported_parameter")
    if req.max_tokens is not None and req.max_tokens > limits.max_tokens:
        raise ApiError(400, f"max_tokens={req.max_tokens} is over this server's limit of {limits.max_tokens}.",
                       "max_tokens", "invalid_value")
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stop) > MAX_STOP_STRINGS or not all(stop):
        raise ApiError(400, f"'stop' takes up to {MAX_STOP_STRINGS} non-empty strings.", "stop", "invalid_value")
    given = {"temperature": req.temperature, "top_p": req.top_p, "top_k": req.top_k, "seed": req.seed,
             "repetition_penalty": req.repetition_penalty, "frequency_penalty": req.frequency_penalty,
             "presence_penalty": req.presence_penalty, "stop": tuple(stop) or None,
             "max_new_tokens": max(1, req.max_tokens if req.max_tokens is not None else 16)}   # OpenAI's default: 16
    try:
        return replace(defaults, num_beams=1, **{k: v for k, v in given.items() if v is not None})
    except ValueError as err:
        raise ApiError(400, f"Invalid decoding settings: {err}.", code="invalid_value") from err


def generate(chat_model: ChatModel, ids: list[int], cfg: DecodingConfig) -> tuple[str, list[int], str]:
    """(text, token ids, finish_reason) continuing ``ids`` as plain text (no chat template)."""
    tokens, reply = TextStream(chat_model.tokenizer), ReplyText(cfg.stop)
    source = iter(beam_search(chat_model.step, ids, cfg, chat_model.eos_ids)) if cfg.num_beams > 1 else \
        sample_tokens(chat_model.step, ids, cfg, chat_model.eos_ids)
    for token in source:
        reply.push(tokens.push(token))
        if reply.stopped:
            break
    reply.push(tokens.flush())
    reply.flush()
    ended = reply.stopped or (bool(tokens.ids) and tokens.ids[-1] in chat_model.eos_ids)
    return reply.text, tokens.ids, "stop" if ended else "length"


def legacy_logprobs(scored: list[ScoredToken], tokenizer, k: int) -> dict[str, Any]:
    """OpenAI's completions ``logprobs`` object over ``scored`` tokens."""
    def text(t: int) -> str:
        return tokenizer.decode([t])

    tokens = [text(s.id) for s in scored]
    offsets, at = [], 0
    for t in tokens:
        offsets.append(at)
        at += len(t)
    top = []
    for s in scored:
        if s.logprob is None:
            top.append(None)
            continue
        best = {text(i): lp for i, lp in s.top[:k]}
        best.setdefault(text(s.id), s.logprob)                 # OpenAI lists the sampled token too
        top.append(best)
    return {"tokens": tokens, "token_logprobs": [s.logprob for s in scored], "top_logprobs": top,
            "text_offset": offsets}


def complete_one(chat_model: ChatModel, ids: list[int], req: CompletionRequest, cfg: DecodingConfig) -> dict:
    """One choice: generate (unless max_tokens is 0 with echo), then score when logprobs are asked."""
    new_tokens = 0 if req.max_tokens == 0 else cfg.max_new_tokens
    if len(ids) + new_tokens > chat_model.context_length:
        raise ApiError(400, f"The prompt ({len(ids)} tokens) and max_tokens ({new_tokens}) do not fit the model's "
                            f"context of {chat_model.context_length} tokens.", "prompt", "context_length_exceeded")
    if req.max_tokens == 0:
        if not req.echo:
            raise ApiError(400, "max_tokens=0 generates nothing; it needs echo=true.", "max_tokens", "invalid_value")
        text, new, finish = "", [], "length"
    else:
        text, new, finish = generate(chat_model, ids, cfg)
    choice: dict[str, Any] = {"text": text, "logprobs": None, "finish_reason": finish}
    tok = chat_model.tokenizer
    if req.echo:
        choice["text"] = tok.decode(ids) + text
    if req.logprobs is not None:
        scored = score_tokens(chat_model.step, ids + new, top=req.logprobs)
        choice["logprobs"] = legacy_logprobs(scored if req.echo else scored[len(ids):], tok, req.logprobs)
    choice["usage"] = (len(ids), len(new))
    return choice


def chat_logprobs(chat_model: ChatModel, messages: list[dict[str, str]], cfg: DecodingConfig,
                  reply_ids: list[int], top: int) -> dict[str, Any]:
    """Chat completions' ``logprobs``: ``{"content": [{token, logprob, bytes, top_logprobs}, ...]}``
    over the reply's tokens (a final end-of-turn token is not content and is left out)."""
    ids, _ = chat_model.prompt_ids(messages, cfg.max_new_tokens)
    reply = list(reply_ids)
    if reply and reply[-1] in chat_model.eos_ids:
        reply = reply[:-1]
    scored = score_tokens(chat_model.step, ids + reply, top=top)[len(ids):]
    tok = chat_model.tokenizer

    def entry(t: int, lp: float) -> dict[str, Any]:
        s = tok.decode([t])
        return {"token": s, "logprob": lp, "bytes": list(s.encode("utf-8"))}

    return {"content": [{**entry(s.id, s.logprob), "top_logprobs": [entry(i, lp) for i, lp in s.top]}
                        for s in scored], "refusal": None}


def add_completion_routes(app: FastAPI, ctx: ServerContext) -> None:
    """``POST /v1/completions`` on ``app``, with the app's key check, body reader and places."""
    chat_model = ctx.chat_model

    @app.post("/v1/completions")
    async def completions(request: Request):
        ctx.authorize(request)
        body = await ctx.read_json_body(request)
        try:
            req = CompletionRequest.model_validate_json(body)
        except ValidationError as err:
            raise validation_error(err) from None
        cfg = decoding(req, ctx.defaults, ctx.limits)
        prompts = prompt_ids(req, chat_model.tokenizer)
        async with ctx.runner.place():             # a slot of the batch (or 429), while the choices are made
            choices = [await run_in_threadpool(complete_one, chat_model, ids, req, cfg) for ids in prompts]
        prompt_tokens = sum(c["usage"][0] for c in choices)
        completion_tokens = sum(c.pop("usage")[1] for c in choices)
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": ctx.model_id, "choices": [{"index": i, **c} for i, c in enumerate(choices)],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}
