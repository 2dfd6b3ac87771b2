"""Conversations as token ids: our chat template, an assistant-token mask, and left truncation
at a turn boundary.

Every stage after pretraining feeds chat-formatted text to a model (SFT, the reward model, RL
prompts, evaluation). They all go through ``encode_chat`` so they agree on the format and on how
a conversation longer than the context is cut: whole messages are dropped from the *left*
(keeping a leading system message), and the kept part always starts at a user turn, so the model
never sees half a turn or a reply without the question before it. Only when the last exchange
alone does not fit are tokens cut from its left.

Our template renders each message on its own (no state across messages, no BOS), so a
conversation's ids are the concatenation of its messages' ids; ``encode_chat`` tokenizes message
by message and never re-tokenizes the whole text.
"""

from __future__ import annotations

from dataclasses import dataclass

IGNORE_INDEX = -100          # label of tokens excluded from the loss (PyTorch cross-entropy's default)
GENERATION_PROMPT = "<|im_start|>assistant\n"


@dataclass(frozen=True)
class EncodedChat:
    input_ids: list[int]
    assistant_mask: list[int]     # 1 on tokens the assistant wrote: its reply and the <|im_end|> closing it
    first_message: int            # index of the first kept message other than a leading system message
    kept_system: bool             # a leading system message is kept (False when there is none or it was dropped)
    cut_tokens: int               # tokens cut from the left when one exchange alone did not fit

    @property
    def labels(self) -> list[int]:
        """``input_ids`` with every non-assistant token set to IGNORE_INDEX: loss on replies only."""
        return [t if m else IGNORE_INDEX for t, m in zip(self.input_ids, self.assistant_mask)]

    def dropped_messages(self, messages: list[dict[str, str]]) -> int:
        head = 1 if messages and messages[0]["role"] == "system" else 0
        return self.first_message - head + (head and not self.kept_system)


def encode_message(message: dict[str, str], tokenizer) -> tuple[list[int], list[int]]:
    """One message through the chat template -> (ids, assistant mask from its {% generation %} block).

    The content is text: a special-token string in it (``<|im_end|>\n<|im_start|>system``) is
    tokenized as ordinary text, never as the special token, so no message can forge a turn.
    """
    if any(special in message["content"] for special in tokenizer.all_special_tokens):
        return _encode_content_as_text(message, tokenizer)
    out = tokenizer.apply_chat_template([message], tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True)
    ids = list(out["input_ids"])
    return ids, list(out.get("assistant_masks") or [0] * len(ids))


def _encode_content_as_text(message: dict[str, str], tokenizer) -> tuple[list[int], list[int]]:
    """The template rendered around a special token that it does not write itself (a marker), and
    the content tokenized with special tokens split in the marker's place. transformers'
    ``sanitize_control_tokens`` does the same but refuses ``return_assistant_tokens_mask``."""
    for marker in tokenizer.all_special_tokens:
        out = tokenizer.apply_chat_template([{**message, "content": marker}], tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)
        ids, marker_id = list(out["input_ids"]), tokenizer.convert_tokens_to_ids(marker)
        if ids.count(marker_id) == 1:
            break
    else:
        raise ValueError("the chat template writes every special token itself: no marker to place the content")
    mask = list(out.get("assistant_masks") or [0] * len(ids))
    at = ids.index(marker_id)
    text = tokenizer.encode(message["content"], add_special_tokens=False, split_special_tokens=True)
    return ids[:at] + text + ids[at + 1:], mask[:at] + [mask[at]] * len(text) + mask[at + 1:]


def encode_chat(messages: list[dict[str, str]], tokenizer, max_length: int, *,
                add_generation_prompt: bool = False, reserve: int = 0) -> EncodedChat:
    """``messages`` as ids of at most ``max_length - reserve`` tokens, cut at a turn boundary.

    ``add_generation_prompt`` appends ``<|im_start|>assistant\\n`` (a prompt to generate from);
    ``reserve`` keeps room for that many generated tokens.
    """
    budget = max_length - reserve
    parts = [encode_message(m, tokenizer) for m in messages]
    tail = tokenizer.encode(GENERATION_PROMPT, add_special_tokens=False) if add_generation_prompt else []
    head = 1 if messages and messages[0]["role"] == "system" else 0
    head_len = sum(len(ids) for ids, _ in parts[:head])
    # Candidate starts, earliest first: keep everything, else start at a later user turn.
    starts = [head] + [i for i in range(head + 1, len(messages)) if messages[i]["role"] == "user"]
    suffix = [0] * (len(parts) + 1)
    for i in range(len(parts) - 1, -1, -1):
        suffix[i] = suffix[i + 1] + len(parts[i][0])
    for start in starts:
        if head_len + suffix[start] + len(tail) <= budget:
            kept = parts[:head] + parts[start:]
            ids = [t for p, _ in kept for t in p] + tail
            mask = [b for _, m in kept for b in m] + [0] * len(tail)
            return EncodedChat(ids, mask, start, bool(head), 0)
    # Even the last exchange is too long with the system message: drop it, then cut from the left.
    start = starts[-1]
    ids = [t for p, _ in parts[start:] for t in p] + tail
    mask = [b for _, m in parts[start:] for b in m] + [0] * len(tail)
    cut = max(len(ids) - budget, 0)
    return EncodedChat(ids[cut:], mask[cut:], start, False, cut)


def fit_prompt(messages: list[dict[str, str]], tokenizer, max_length: int, reserve: int) -> list[dict[str, str]] | None:
    """The messages of a prompt that fit with ``reserve`` tokens left to generate, cut at a turn
    boundary; None when even the last user turn does not fit (callers skip and count those)."""
    enc = encode_chat(messages, tokenizer, max_length, add_generation_prompt=True, reserve=reserve)
    if enc.cut_tokens:
        return None
    return messages[:1] * enc.kept_system + messages[enc.first_message:]


def reply_pair(prompt: list[dict[str, str]], reply: str) -> list[dict[str, str]]:
    """A prompt and one assistant reply as one conversation."""
    return [*prompt, {"role": "assistant", "content": reply}]
