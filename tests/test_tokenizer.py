"""The tokenizer: exact round trips for any Unicode, the chat template, bytes per token, the stage."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatforge.train.tokenizer import (
    BOS,
    EOS,
    IM_START,
    PAD,
    PROBE_TEXTS,
    count_bytes_and_tokens,
    held_out_compression,
    load_tokenizer,
    text_language,
)

MIXED = ["héllo wörld", "数据清洗会去掉导航栏", "emoji 🎉👩‍👩‍👧 ok", "tab\tnull\x00bell\x07 cr\r\n", "mixed 中文 and English 😀"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=200))
def test_round_trip_is_exact_for_any_unicode(tiny_tokenizer, text):
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tiny_tokenizer.decode(ids) == text


@pytest.mark.parametrize("text", MIXED)
def test_round_trip_examples(tiny_tokenizer, text):
    assert tiny_tokenizer.decode(tiny_tokenizer(text, add_special_tokens=False)["input_ids"]) == text


def test_special_tokens_are_single_ids(tiny_tokenizer):
    for tok in (BOS, EOS, PAD, IM_START):
        assert len(tiny_tokenizer(tok, add_special_tokens=False)["input_ids"]) == 1
    assert tiny_tokenizer.bos_token == BOS and tiny_tokenizer.eos_token == EOS and tiny_tokenizer.pad_token == PAD
    assert len({tiny_tokenizer.bos_token_id, tiny_tokenizer.eos_token_id, tiny_tokenizer.pad_token_id}) == 3


def test_chat_template_with_generation_prompt(tiny_tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "你好"},
                {"role": "assistant", "content": "Hi!"}, {"role": "user", "content": "How are you?"}]
    text = tiny_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n你好<|im_end|>\n"
                    "<|im_start|>assistant\nHi!<|im_end|>\n<|im_start|>user\nHow are you?<|im_end|>\n"
                    "<|im_start|>assistant\n")
    out = tiny_tokenizer.apply_chat_template(messages[:3], return_dict=True, return_assistant_tokens_mask=True)
    reply = [i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tiny_tokenizer.decode(reply) == "Hi!<|im_end|>"


def test_language_detection_and_compression(tiny_tokenizer):
    assert text_language("The weather is lovely today.") == "en"
    assert text_language("今天天气很好，我们去公园散步吧。") == "zh"
    assert text_language("") == "en"
    n_bytes, n_tokens = count_bytes_and_tokens(tiny_tokenizer, ["今天天气很好"])
    assert n_bytes == len("今天天气很好".encode()) and 0 < n_tokens <= n_bytes
    held = held_out_compression(tiny_tokenizer, ["The quick brown fox jumps over the lazy dog."])
    assert held["en"]["source"] == "validation" and held["en"]["documents"] == 1
    assert held["zh"]["source"] == "probe" and held["zh"]["bytes"] == len(PROBE_TEXTS["zh"].encode())
    # the tokenizer saw this English sentence in training: it compresses it better than bytes
    assert held["en"]["bytes_per_token"] > 2


def test_train_tokenizer_stage(tmp_path, mlflow_uri, monkeypatch):
    from stages.train_tokenizer import main

    en = ["How are you doing today? I'm doing well, thanks for asking!",
          "What is your favourite book? I like reading science fiction at night."]
    zh = ["今天天气很好，我们去公园散步吧。", "你好，最近怎么样？我很好，谢谢你的关心！"]
    docs = tmp_path / "documents.jsonl"
    records = [{"id": f"t{i}", "text": t, "source": "test", "split": "train"} for i, t in enumerate((en + zh) * 20)]
    records += [{"id": "v-en", "text": en[0], "source": "test", "split": "validation"},
                {"id": "v-zh", "text": zh[1], "source": "test", "split": "validation"}]
    docs.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    params = tmp_path / "params.yaml"
    params.write_text(
        f"train_tokenizer:\n  input: {docs}\n  output: {tmp_path / 'tok'}\n  report: {tmp_path / 'r.json'}\n"
        "  vocab_size: 400\n  min_frequency: 1\n  max_chars: 100000\n", encoding="utf-8")
    main(["--params", str(params)])

    tok = load_tokenizer(tmp_path / "tok")
    assert tok.decode(tok("混合 mixed 🎉", add_special_tokens=False)["input_ids"]) == "混合 mixed 🎉"
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                   add_generation_prompt=True).endswith("<|im_start|>assistant\n")
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["held_out"]["en"]["source"] == report["held_out"]["zh"]["source"] == "validation"
    # both languages were in training: each held-out line compresses to fewer tokens than bytes
    assert report["bytes_per_token"]["en"] > 1.5 and report["bytes_per_token"]["zh"] > 1.5
