"""The template-agnostic chat encoder, token by token against each template's own rendering: ChatML
(ours), SmolLM2's (a default system prompt), Llama-3's (BOS in the text, trimmed content) and a
plain-text one; message content is always tokenized as text."""

import pytest

from chatforge.train.chat_format import encode_chat, stop_token_ids
from chat_templates import LLAMA3_MARKED, SMOLLM2_MARKED, family_tokenizer
from conftest import TINY_TEXTS

CONVS = [
    [{"role": "user", "content": "How are you doing today?"},
     {"role": "assistant", "content": "I'm doing well, thanks!"},
     {"role": "user", "content": "今天天气很好"},
     {"role": "assistant", "content": "我们去公园散步吧。"}],
    [{"role": "system", "content": "Be brief."},
     {"role": "user", "content": "  Hello there  "},
     {"role": "assistant", "content": " Hi!\n"}],
    [{"role": "user", "content": "user"}, {"role": "assistant", "content": "assistant"}],   # content = role names
]


def reference(tokenizer, marked_template, messages):
    """(ids, mask) from transformers' own {% generation %} machinery on a hand-marked copy of the template."""
    out = tokenizer.apply_chat_template(messages, chat_template=marked_template, tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True)
    return list(out["input_ids"]), list(out["assistant_masks"])


@pytest.fixture(scope="module")
def tokenizers(tiny_tokenizer):
    return {"chatml": tiny_tokenizer, "smollm2": family_tokenizer("smollm2", TINY_TEXTS),
            "llama3": family_tokenizer("llama3", TINY_TEXTS)}


@pytest.mark.parametrize("family,marked", [("chatml", None), ("smollm2", SMOLLM2_MARKED), ("llama3", LLAMA3_MARKED)])
@pytest.mark.parametrize("conv", range(len(CONVS)))
def test_ids_and_mask_match_the_template_token_by_token(tokenizers, family, marked, conv):
    tok, messages = tokenizers[family], CONVS[conv]
    ids, mask = reference(tok, marked or tok.chat_template, messages)
    enc = encode_chat(messages, tok, 10_000)
    assert enc.input_ids == ids
    assert enc.assistant_mask == mask
    assert sum(mask) > 0
    # and the unmarked template renders the very same ids (the marking changed nothing else)
    assert enc.input_ids == list(tok.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])


def test_default_system_prompt_is_template_text(tokenizers):
    tok = tokenizers["smollm2"]
    enc = encode_chat(CONVS[0], tok, 10_000)
    text = tok.decode(enc.input_ids)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    labelled = tok.decode([t for t, m in zip(enc.input_ids, enc.assistant_mask) if m])
    assert labelled == "I'm doing well, thanks!<|im_end|>我们去公园散步吧。<|im_end|>"


def test_llama3_mask_covers_the_reply_and_eot(tokenizers):
    tok = tokenizers["llama3"]
    enc = encode_chat(CONVS[1], tok, 10_000)
    labelled = tok.decode([t for t, m in zip(enc.input_ids, enc.assistant_mask) if m])
    assert labelled == "Hi!<|eot_id|>"
    assert enc.input_ids[0] == tok.bos_token_id


@pytest.mark.parametrize("family", ["chatml", "smollm2", "llama3"])
def test_content_is_text_never_control_tokens(tokenizers, family):
    tok = tokenizers[family]
    specials = set(tok.all_special_ids) | {int(i) for i in tok.added_tokens_decoder}
    injected = " ".join(tok.convert_ids_to_tokens(sorted(specials)))
    messages = [{"role": "user", "content": f"ignore this {injected} and"},
                {"role": "assistant", "content": f"fine {injected}"}]
    plain = [{"role": "user", "content": "ignore this  and"}, {"role": "assistant", "content": "fine "}]
    enc, base = encode_chat(messages, tok, 10_000), encode_chat(plain, tok, 10_000)
    # the control tokens the text holds are spelled out: the encoding has exactly the template's own
    assert sum(t in specials for t in enc.input_ids) == sum(t in specials for t in base.input_ids)
    assert tok.decode(enc.input_ids, skip_special_tokens=True).count(injected) == 2


@pytest.mark.parametrize("family", ["chatml", "smollm2", "llama3"])
def test_generation_prompt_and_truncation_follow_the_template(tokenizers, family):
    tok = tokenizers[family]
    prompt = CONVS[0][:3]
    full = encode_chat(prompt, tok, 10_000, add_generation_prompt=True)
    expected = tok.apply_chat_template(prompt, tokenize=True, return_dict=True, add_generation_prompt=True)
    assert full.input_ids == list(expected["input_ids"])
    # one token short: the first exchange goes whole and the kept text starts at the second user turn
    short = encode_chat(prompt, tok, len(full.input_ids) - 1, add_generation_prompt=True)
    assert short.first_message == 2 and short.cut_tokens == 0
    assert short.input_ids == list(tok.apply_chat_template(prompt[2:], tokenize=True, return_dict=True,
                                                            add_generation_prompt=True)["input_ids"])


def test_stop_tokens_come_from_the_template(tokenizers):
    ids = {f: {tokenizers[f].convert_ids_to_tokens(i) for i in stop_token_ids(tokenizers[f])} for f in tokenizers}
    assert ids["chatml"] == {"<|im_end|>", "<|im_start|>", "<|endoftext|>"}
    assert ids["smollm2"] == {"<|im_end|>", "<|im_start|>"}
    assert ids["llama3"] == {"<|eot_id|>", "<|start_header_id|>", "<|begin_of_text|>"}


def test_a_template_that_rewrites_content_is_refused(tiny_tokenizer):
    tok = family_tokenizer("smollm2", TINY_TEXTS)
    tok.chat_template = "{% for m in messages %}{{ m['content'] | upper }}{% endfor %}"
    with pytest.raises(ValueError, match="changes the message content"):
        encode_chat([{"role": "user", "content": "hello"}], tok, 100)
