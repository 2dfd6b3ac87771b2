"""Anthropic HH pairs ({"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": ...}) as
multiple-choice docs for ``hh_harmless_mc.yaml``: the conversation both share up to the last
"Assistant:", and the two last replies. lm-eval loads this file by path (``!function``)."""

ASSISTANT = "\n\nAssistant:"
# Replies are cut to their first 300 characters (at a space) so that a small model's context holds
# one (lm-eval refuses a continuation longer than the context); in 69% of the pairs both are shorter.
MAX_REPLY_CHARS = 300


def shorten(reply: str) -> str:
    if len(reply) <= MAX_REPLY_CHARS:
        return reply
    head = reply[:MAX_REPLY_CHARS]
    return head[: head.rfind(" ")] if " " in head else head


def split_pair(chosen: str, rejected: str) -> dict[str, str] | None:
    """{"prompt", "chosen", "rejected"}, or None when the two do not share the conversation."""
    at = chosen.rfind(ASSISTANT)
    if at < 0:
        return None
    prompt = chosen[: at + len(ASSISTANT)]
    if not rejected.startswith(prompt):
        return None
    a, b = shorten(chosen[len(prompt):].strip()), shorten(rejected[len(prompt):].strip())
    if not a or not b or a == b:
        return None
    return {"prompt": prompt.strip(), "chosen": a, "rejected": b}


def process_docs(dataset):
    """The pairs that split cleanly (a pair whose conversations differ before the last reply, or
    whose replies are equal, has no right answer by likelihood and is left out)."""
    def ok(doc):
        return split_pair(doc["chosen"], doc["rejected"]) is not None

    return dataset.filter(ok).map(lambda doc: split_pair(doc["chosen"], doc["rejected"]),
                                  remove_columns=["chosen", "rejected"])
