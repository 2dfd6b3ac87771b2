"""The four record kinds and the formats we read them from.

Canonical forms (DESIGN.md, one JSON object per line):

- document:     {"id", "text", "source"}
- conversation: {"id", "messages": [{"role": "system"|"user"|"assistant", "content"}, ...]}
- preference:   {"id", "prompt": [messages], "chosen": str, "rejected": str}
- prompt:       {"id", "messages": [messages]}

``normalize_*`` turn any accepted input shape into the canonical form or raise ``RecordError``
with a reason; the caller sends that record to the rejects file. Accepted preference shapes:
ours, Anthropic HH (``"\\n\\nHuman: ... \\n\\nAssistant: ..."`` transcripts) and TRL's standard
and conversational preference formats, with explicit or implicit prompt.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

RecordKind = Literal["documents", "conversations", "preferences", "prompts"]
KINDS: tuple[RecordKind, ...] = ("documents", "conversations", "preferences", "prompts")
ROLES = ("system", "user", "assistant")

# ShareGPT-style speaker names, mapped onto our roles.
_ROLE_ALIASES = {"human": "user", "gpt": "assistant", "bot": "assistant", "model": "assistant",
                 "user": "user", "assistant": "assistant", "system": "system"}


class RecordError(ValueError):
    """A record that does not fit its kind; the message is the reason written to the rejects file."""


def content_id(prefix: str, payload: Any) -> str:
    """A stable id from a record's content, for inputs that carry none."""
    digest = hashlib.sha1(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    return f"{prefix}-{digest[:16]}"


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise RecordError(f"field '{field}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise RecordError(f"field '{field}' is empty")
    return value


def _record_id(record: dict[str, Any], prefix: str, payload: Any) -> str:
    rid = record.get("id")
    if rid is None:
        return content_id(prefix, payload)
    if isinstance(rid, (int, str)) and not isinstance(rid, bool) and str(rid).strip():
        return str(rid)
    raise RecordError(f"field 'id' must be a non-empty string or integer, got {rid!r}")


def normalize_messages(value: Any, field: str = "messages") -> list[dict[str, str]]:
    """A list of {"role", "content"} dicts (ShareGPT {"from", "value"} accepted)."""
    if not isinstance(value, list) or not value:
        raise RecordError(f"field '{field}' must be a non-empty list of messages")
    messages = []
    for i, msg in enumerate(value):
        if not isinstance(msg, dict):
            raise RecordError(f"{field}[{i}] must be an object with 'role' and 'content'")
        role = msg.get("role", msg.get("from"))
        content = msg.get("content", msg.get("value"))
        if not isinstance(role, str) or role.lower() not in _ROLE_ALIASES:
            raise RecordError(f"{field}[{i}].role must be one of {list(ROLES)}, got {role!r}")
        messages.append({"role": _ROLE_ALIASES[role.lower()], "content": _text(content, f"{field}[{i}].content")})
    return messages


def normalize_document(record: dict[str, Any], source: str) -> dict[str, str]:
    if "text" not in record:
        raise RecordError("missing field 'text'")
    text = _text(record["text"], "text")
    src = record.get("source", source)
    return {"id": _record_id(record, "doc", text), "text": text, "source": str(src)}


def normalize_conversation(record: dict[str, Any]) -> dict[str, Any]:
    raw = record.get("messages", record.get("conversations"))
    if raw is None:
        raise RecordError("missing field 'messages'")
    messages = normalize_messages(raw)
    if not any(m["role"] == "assistant" for m in messages):
        raise RecordError("conversation has no assistant turn")
    return {"id": _record_id(record, "conv", messages), "messages": messages}


def normalize_prompt(record: dict[str, Any]) -> dict[str, Any]:
    """A prompt record, or the prompt of a preference pair (any shape ``normalize_preference`` reads,
    keeping the pair's id, so a preference file splits into the same train/validation prompts as its
    pairs: RL on the prompts of the reward model's data)."""
    if "chosen" in record and "rejected" in record:
        pair = normalize_preference(record)
        return {"id": pair["id"], "messages": pair["prompt"]}
    if "messages" in record:
        messages = normalize_messages(record["messages"])
    elif "prompt" in record:
        prompt = record["prompt"]
        messages = ([{"role": "user", "content": _text(prompt, "prompt")}] if isinstance(prompt, str)
                    else normalize_messages(prompt, "prompt"))
    else:
        raise RecordError("missing field 'messages' (or 'prompt')")
    if messages[-1]["role"] == "assistant":
        raise RecordError("a prompt must not end with an assistant turn")
    return {"id": _record_id(record, "prompt", messages), "messages": messages}


# --------------------------------------------------------------------------------------------
# Preferences
# --------------------------------------------------------------------------------------------

_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")


def parse_hh_transcript(text: str, field: str) -> list[dict[str, str]]:
    """``"\\n\\nHuman: hi\\n\\nAssistant: hello"`` -> messages (Anthropic HH format)."""
    parts = _HH_TURN.split(text)
    if len(parts) < 3 or parts[0].strip():
        raise RecordError(f"field '{field}' is not an HH transcript (expected '\\n\\nHuman: ...' turns)")
    messages = []
    for speaker, content in zip(parts[1::2], parts[2::2]):
        messages.append({"role": "user" if speaker == "Human" else "assistant", "content": content.strip()})
    return messages


def _split_pair(chosen: list[dict[str, str]], rejected: list[dict[str, str]]) -> tuple[list, str, str]:
    """Two full conversations sharing a prompt -> (prompt, chosen reply, rejected reply)."""
    if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
        raise RecordError("chosen and rejected must each end with an assistant reply")
    if chosen[:-1] != rejected[:-1]:
        raise RecordError("chosen and rejected do not share the same prompt turns")
    prompt = chosen[:-1]
    if not prompt:
        raise RecordError("preference has no prompt turns before the replies")
    return prompt, chosen[-1]["content"], rejected[-1]["content"]


def normalize_preference(record: dict[str, Any]) -> dict[str, Any]:
    """Ours, Anthropic HH, or TRL (standard/conversational, explicit/implicit prompt) -> ours."""
    for field in ("chosen", "rejected"):
        if field not in record:
            raise RecordError(f"missing field '{field}'")
    chosen, rejected, prompt = record["chosen"], record["rejected"], record.get("prompt")

    if prompt is None:
        if isinstance(chosen, str) and isinstance(rejected, str):          # Anthropic HH
            prompt, chosen, rejected = _split_pair(parse_hh_transcript(chosen, "chosen"),
                                                   parse_hh_transcript(rejected, "rejected"))
        elif isinstance(chosen, list) and isinstance(rejected, list):      # TRL conversational, implicit prompt
            prompt, chosen, rejected = _split_pair(normalize_messages(chosen, "chosen"),
                                                   normalize_messages(rejected, "rejected"))
        else:
            raise RecordError("'chosen' and 'rejected' must both be strings or both be message lists")
    else:
        if isinstance(prompt, str):                                         # TRL standard, explicit prompt
            prompt = [{"role": "user", "content": _text(prompt, "prompt")}]
        else:
            prompt = normalize_messages(prompt, "prompt")
        replies = []
        for field, value in (("chosen", chosen), ("rejected", rejected)):
            if isinstance(value, list):                                     # TRL conversational
                msgs = normalize_messages(value, field)
                if len(msgs) != 1 or msgs[0]["role"] != "assistant":
                    raise RecordError(f"field '{field}' must hold exactly one assistant message")
                value = msgs[0]["content"]
            replies.append(_text(value, field))
        chosen, rejected = replies
    chosen, rejected = _text(chosen, "chosen"), _text(rejected, "rejected")
    if prompt[-1]["role"] == "assistant":
        raise RecordError("the prompt must end with a user turn")
    if chosen.strip() == rejected.strip():
        raise RecordError("chosen and rejected replies are identical")
    payload = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    return {"id": _record_id(record, "pref", payload), **payload}


def normalize(kind: RecordKind, record: dict[str, Any], source: str) -> dict[str, Any]:
    if kind == "documents":
        return normalize_document(record, source)
    if kind == "conversations":
        return normalize_conversation(record)
    if kind == "preferences":
        return normalize_preference(record)
    return normalize_prompt(record)


def guess_kind(record: dict[str, Any]) -> RecordKind | None:
    """Which kind a record of unknown kind looks like (for files given without a kind)."""
    if "chosen" in record and "rejected" in record:
        return "preferences"
    if "messages" in record or "conversations" in record:
        msgs = record.get("messages", record.get("conversations"))
        if isinstance(msgs, list) and msgs and isinstance(msgs[-1], dict):
            last = str(msgs[-1].get("role", msgs[-1].get("from", ""))).lower()
            return "conversations" if _ROLE_ALIASES.get(last) == "assistant" else "prompts"
        return "conversations"
    if "prompt" in record:
        return "prompts"
    if "text" in record:
        return "documents"
    return None


SPLITS = ("train", "validation")


def group_by_split(records: list[dict[str, Any]], source: str = "<records>") -> dict[str, list[dict[str, Any]]]:
    """``{"train": [...], "validation": [...]}`` by each record's ``"split"`` (absent: train), the
    split every file that prepare_data and clean_data write carries. Another value is an error."""
    out: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    for rec in records:
        split = rec.get("split", "train")
        if split not in out:
            raise RecordError(f"{source}: record {rec.get('id')!r} has split {split!r}, expected train or validation")
        out[split].append(rec)
    return out


def read_by_split(path: Path) -> dict[str, list[dict[str, Any]]]:
    """The records of a JSONL file, by split (see ``group_by_split``)."""
    from chatforge.core.files import read_jsonl

    return group_by_split(read_jsonl(path), str(path))


def documents_by_split(path: Path) -> dict[str, list[str]]:
    """``{"train": [text, ...], "validation": [...]}`` from a documents JSONL with a split field."""
    return {split: [rec["text"] for rec in recs if rec.get("text")] for split, recs in read_by_split(path).items()}
