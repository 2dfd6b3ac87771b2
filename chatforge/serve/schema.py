"""The request of ``POST /v1/chat/completions`` as OpenAI defines it (strict types: "10" is not a
number here, as in OpenAI's API), the server's limits, and the decoding settings a request asks for.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from chatforge.core.config import field_help
from chatforge.inference.decoding import DecodingConfig
from chatforge.serve.errors import ApiError

MAX_STOP_STRINGS = 4                     # OpenAI's limit


@dataclass(frozen=True)
class ServerLimits:
    """What one request may ask for (past a limit the request gets a 400 that names the field) and
    how much the server takes on at once (past that, 429 with Retry-After)."""

    max_tokens: int = field_help(512, "most new tokens a request may ask for (also always below the context)")
    max_messages: int = field_help(256, "most messages in one request")
    max_request_bytes: int = field_help(1_000_000, "largest request body, in bytes")
    max_message_chars: int = field_help(32_000, "longest message content, in characters")
    max_stop_chars: int = field_help(256, "longest stop string, in characters")
    max_beams: int = field_help(4, "most beams a request may ask for (beam search runs on its own, not batched)")
    max_top_k: int = field_help(1_000, "largest top_k a request may ask for")
    max_batch: int = field_help(16, "generations decoded together, sharing each step (1: one at a time)")
    max_waiting: int = field_help(64, "requests waiting for a place in the batch; one more is answered 429")
    request_timeout: float = field_help(300.0, "seconds a request may take, waiting included; then it stops")

    def __post_init__(self) -> None:
        for name in ("max_tokens", "max_messages", "max_request_bytes", "max_message_chars", "max_stop_chars",
                     "max_beams", "max_top_k", "max_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"'{name}' must be at least 1")
        if self.max_waiting < 0:
            raise ValueError("'max_waiting' must be >= 0 (0: no request waits)")
        if not self.request_timeout > 0:
            raise ValueError("'request_timeout' must be > 0 seconds")



class TextPart(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def as_chat(self) -> dict[str, str]:
        """Our message: OpenAI's "developer" is a system message; text parts are joined by lines."""
        content = self.content if isinstance(self.content, str) else "\n".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": content}


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    include_usage: bool = False


class ChatRequest(BaseModel):
    """``POST /v1/chat/completions``. Fields this server has no use for (``user``, ``metadata``,
    ``store``, ...) are ignored, as OpenAI-compatible servers commonly do."""

    model_config = ConfigDict(strict=True, extra="ignore")
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[Any] | None = None
    # chatforge extensions
    top_k: int | None = Field(None, ge=0)
    num_beams: int | None = Field(None, ge=1)
    repetition_penalty: float | None = Field(None, gt=0)



def decoding_for(req: ChatRequest, defaults: DecodingConfig, limits: ServerLimits,
                 context_length: int) -> DecodingConfig:
    """The request's decoding settings on top of the server's defaults; ApiError when out of bounds."""
    if req.n not in (None, 1):
        raise ApiError(400, f"n={req.n} is not supported: this server returns one choice (n=1).", "n", "invalid_value")
    if req.top_logprobs is not None and not req.logprobs:
        raise ApiError(400, "top_logprobs needs logprobs=true.", "top_logprobs", "invalid_value")
    if req.logprobs and req.stream:
        raise ApiError(400, "logprobs are not supported with stream=true on this server.", "logprobs",
                       "unsupported_parameter")
    if req.tools:
        raise ApiError(400, "tools (function calling) are not supported by this server.", "tools",
                       "unsupported_parameter")
    if len(req.messages) > limits.max_messages:
        raise ApiError(400, f"Too many messages: {len(req.messages)}; this server takes at most "
                            f"{limits.max_messages} per request.", "messages", "too_many_messages")
    for i, message in enumerate(req.messages):
        size = len(message.as_chat()["content"])
        if size > limits.max_message_chars:
            raise ApiError(400, f"Message {i} has {size} characters; this server takes at most "
                                f"{limits.max_message_chars} per message.", f"messages.{i}.content", "message_too_long")
    for param, asked, most in (("num_beams", req.num_beams, limits.max_beams), ("top_k", req.top_k, limits.max_top_k)):
        if asked is not None and asked > most:
            raise ApiError(400, f"{param}={asked} is over this server's limit of {most}.", param, "invalid_value")
    param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    asked = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    limit = min(limits.max_tokens, context_length - 1)
    if asked is not None and asked > limit:
        raise ApiError(400, f"{param}={asked} is over this server's limit of {limit} new tokens (the model's context "
                            f"is {context_length} tokens).", param, "invalid_value")
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stop) > MAX_STOP_STRINGS or not all(stop):
        raise ApiError(400, f"'stop' takes up to {MAX_STOP_STRINGS} non-empty strings.", "stop", "invalid_value")
    if any(len(s) > limits.max_stop_chars for s in stop):
        raise ApiError(400, f"A stop string is over this server's limit of {limits.max_stop_chars} characters.",
                       "stop", "invalid_value")
    given = {
        "max_new_tokens": min(asked or defaults.max_new_tokens, limit),
        "temperature": req.temperature, "top_p": req.top_p, "top_k": req.top_k, "num_beams": req.num_beams,
        "repetition_penalty": req.repetition_penalty, "frequency_penalty": req.frequency_penalty,
        "presence_penalty": req.presence_penalty, "seed": req.seed, "stop": tuple(stop) or None,
    }
    try:
        return replace(defaults, **{k: v for k, v in given.items() if v is not None})
    except ValueError as err:
        raise ApiError(400, f"Invalid decoding settings: {err}.", code="invalid_value") from err
