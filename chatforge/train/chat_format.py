"""Conversations as token ids through any model's own chat template: an assistant-token mask that
needs no ``{% generation %}`` block, message content tokenized as text, and left truncation at a
turn boundary.

Every stage after pretraining feeds chat-formatted text to a model (SFT, the reward model, RL
prompts, evaluation, chat and serve). They all go through ``encode_chat`` so they agree on the format
and on how a conversation longer than the context is cut: whole messages are dropped from the *left*
(keeping a leading system message), and the kept part always starts at a user turn, so the model
never sees half a turn or a reply without the question before it. Only when the last exchange
alone does not fit are tokens cut from its left.

How a conversation becomes ids, for any Jinja chat template (ours, SmolLM2's, Llama-3's, Qwen2's):

1. The whole conversation is rendered once with its real content, and once with each message's
   content replaced by a placeholder. The placeholder rendering says which characters of the real
   text are message content and which the template wrote; the two are checked to agree (a template
   may ``trim`` the content, nothing else), so a template that rewrites content fails loudly.
2. The assistant's characters are found by rendering prefixes, as LLaMA-Factory and OpenRLHF do for
   templates without generation markers: for an assistant message ``i``, the text of
   ``messages[:i]`` with the generation prompt ends where the reply starts, and the text of
   ``messages[:i + 1]`` ends where it ends (trailing whitespace after the end-of-turn token left
   out). A template that inserts a default system prompt inserts it in every prefix, so it is
   simply template text. A template that rewrites earlier turns (one that is not prefix-stable)
   raises an error naming the message.
3. The text is cut at every content and assistant boundary, and each piece is tokenized on its
   own: template pieces with special tokens recognised, content pieces with
   ``split_special_tokens=True``, so a user who types ``<|im_end|>`` gets the characters, never the
   control token. Cutting at boundaries means no token straddles a boundary, so the mask is exact.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

IGNORE_INDEX = -100          # label of tokens excluded from the loss (PyTorch cross-entropy's default)

# Private-use code points: no real text or template contains them, and templates pass them through.
_PLACEHOLDER = "\ue000{}\ue001"
_PLACEHOLDER_RE = re.compile("\ue000(\\d+)\ue001")


@dataclass(frozen=True)
class EncodedChat:
    input_ids: list[int]
    assistant_mask: list[int]     # 1 on tokens the assistant wrote: its reply and the end-of-turn token closing it
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


# transformers' fast tokenizers apply ``split_special_tokens`` by setting a flag on the shared Rust
# tokenizer before encoding (tokenization_utils_tokenizers.py), so two threads encoding at once (the
# server's requests) can encode each other's text with the wrong setting: template tokens split into
# text, or content special tokens made live. Every tokenizer call of a server thread holds this lock.
TOKENIZER_LOCK = threading.Lock()


@dataclass(frozen=True)
class Piece:
    text: str
    content: bool       # message content (tokenized as text) rather than template text
    assistant: bool     # part of what an assistant turn adds (its reply and end-of-turn token)


def render(messages: list[dict[str, str]], tokenizer, add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def content_spans(messages: list[dict[str, str]], text: str, tokenizer, add_generation_prompt: bool) -> list[tuple[int, int]]:
    """Character spans of ``text`` (the real rendering) that are message content."""
    for i, m in enumerate(messages):
        if _PLACEHOLDER_RE.search(m["content"]) or "\ue000" in m["content"]:
            raise ValueError(f"message {i}: content holds the private-use character U+E000, which the "
                             "chat encoder reserves")
    marked = render([{**m, "content": _PLACEHOLDER.format(i)} for i, m in enumerate(messages)], tokenizer,
                    add_generation_prompt)
    parts = _PLACEHOLDER_RE.split(marked)         # template, index, template, index, ..., template
    spans, cursor = [], 0
    for k, part in enumerate(parts):
        if k % 2 == 0:
            if not text.startswith(part, cursor):
                raise ValueError(f"the chat template renders text around message content differently when the "
                                 f"content changes (at character {cursor}); chatforge cannot tell content from "
                                 "template text in it")
            cursor += len(part)
            continue
        content, after = messages[int(part)]["content"], parts[k + 1]
        for cand in dict.fromkeys((content, content.strip(), content.lstrip(), content.rstrip())):
            end = cursor + len(cand)
            if text.startswith(cand, cursor) and (text.startswith(after, end) if k + 2 < len(parts) or after
                                                  else end == len(text)):
                break
        else:
            raise ValueError(f"message {part}: the chat template changes the message content beyond trimming "
                             "whitespace; chatforge cannot tokenize it as text")
        if cand:
            spans.append((cursor, end))
        cursor = end
    return spans


def assistant_spans(messages: list[dict[str, str]], text: str, tokenizer) -> list[tuple[int, int]]:
    """Character spans of ``text`` that each assistant message adds after the generation prompt."""
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render(messages[:i], tokenizer, add_generation_prompt=True) if i else ""
        upto = render(messages[: i + 1], tokenizer)
        if not (text.startswith(upto) and upto.startswith(before)):
            raise ValueError(f"message {i}: the chat template is not prefix-stable (rendering the conversation "
                             "up to this assistant turn is not a prefix of rendering all of it), so its "
                             "assistant tokens cannot be located")
        end = len(upto.rstrip())
        if end > len(before):
            spans.append((len(before), end))
    return spans


def chat_pieces(messages: list[dict[str, str]], tokenizer, add_generation_prompt: bool = False) -> list[Piece]:
    """The rendered conversation cut at every content and assistant boundary."""
    text = render(messages, tokenizer, add_generation_prompt)
    contents = content_spans(messages, text, tokenizer, add_generation_prompt)
    replies = assistant_spans(messages, text, tokenizer)
    cuts = sorted({0, len(text), *(c for span in contents + replies for c in span)})

    def inside(spans, pos):
        return any(a <= pos < b for a, b in spans)

    return [Piece(text[a:b], inside(contents, a), inside(replies, a)) for a, b in zip(cuts, cuts[1:]) if b > a]


def encode_messages(messages: list[dict[str, str]], tokenizer,
                    add_generation_prompt: bool = False) -> tuple[list[int], list[int]]:
    """All of ``messages`` through the chat template -> (ids, assistant mask), content as text."""
    pieces = chat_pieces(messages, tokenizer, add_generation_prompt)
    ids_of: dict[bool, list[list[int]]] = {}
    with TOKENIZER_LOCK:
        for is_content in (False, True):
            texts = [p.text for p in pieces if p.content == is_content]
            ids_of[is_content] = (tokenizer(texts, add_special_tokens=False, split_special_tokens=is_content)
                                  ["input_ids"] if texts else [])
    ids, mask, taken = [], [], {False: 0, True: 0}
    for p in pieces:
        piece_ids = ids_of[p.content][taken[p.content]]
        taken[p.content] += 1
        ids += piece_ids
        mask += [int(p.assistant)] * len(piece_ids)
    return ids, mask


def encode_message(message: dict[str, str], tokenizer) -> tuple[list[int], list[int]]:
    """One message alone through the chat template -> (ids, assistant mask)."""
    return encode_messages([message], tokenizer)


def encode_chat(messages: list[dict[str, str]], tokenizer, max_length: int, *,
                add_generation_prompt: bool = False, reserve: int = 0) -> EncodedChat:
    """``messages`` as ids of at most ``max_length - reserve`` tokens, cut at a turn boundary.

    ``add_generation_prompt`` appends the template's generation prompt (a prompt to generate from);
    ``reserve`` keeps room for that many generated tokens.
    """
    budget = max_length - reserve
    head = 1 if messages and messages[0]["role"] == "system" else 0
    # Candidate starts, earliest first: keep everything, else start at a later user turn.
    starts = [head] + [i for i in range(head + 1, len(messages)) if messages[i]["role"] == "user"]
    encoded: dict[int, tuple[list[int], list[int]]] = {}

    def encode_from(k: int) -> tuple[list[int], list[int]]:
        if k not in encoded:
            encoded[k] = encode_messages(messages[:head] + messages[starts[k]:], tokenizer, add_generation_prompt)
        return encoded[k]

    # The kept length falls as the start moves right: binary search for the earliest start that fits.
    lo, hi = 0, len(starts)
    while lo < hi:
        mid = (lo + hi) // 2
        if len(encode_from(mid)[0]) <= budget:
            hi = mid
        else:
            lo = mid + 1
    if lo < len(starts):
        ids, mask = encode_from(lo)
        return EncodedChat(ids, mask, starts[lo], bool(head), 0)
    # Even the last exchange is too long with the system message: drop it, then cut from the left.
    start = starts[-1]
    ids, mask = encode_messages(messages[start:], tokenizer, add_generation_prompt)
    cut = max(len(ids) - budget, 0)
    return EncodedChat(ids[cut:], mask[cut:], start, False, cut)


def stop_token_ids(tokenizer) -> set[int]:
    """Token ids that end a reply under the tokenizer's chat template: its EOS, the special tokens that
    close an assistant turn, and those that open the next turn (a model that skips the end-of-turn
    token and opens a new turn, or a new document with BOS, has ended its reply too; it would go on to
    write the user's message)."""
    special = set(tokenizer.all_special_ids) | {int(i) for i in getattr(tokenizer, "added_tokens_decoder", {})}
    stops = {tokenizer.eos_token_id, tokenizer.bos_token_id} - {None}
    probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    try:
        ids, mask = encode_messages(probe, tokenizer)
        prompt, _ = encode_messages(probe[:1], tokenizer, add_generation_prompt=True)
    except Exception:        # a tokenizer without a usable chat template: EOS alone
        return stops
    closing = [t for t, m in zip(ids, mask) if m and t in special]
    opening = [t for t in prompt[len(encode_messages(probe[:1], tokenizer)[0]):] if t in special][:1]
    return stops | set(closing) | set(opening)


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
