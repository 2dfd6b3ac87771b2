"""SFT: the assistant-only label mask token by token, left truncation at a turn boundary, and a
few real SFTTrainer steps on a 2-layer model."""


from chatforge.train.chat_format import IGNORE_INDEX, encode_chat, encode_message, fit_prompt

CONV = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "How are you doing today?"},
    {"role": "assistant", "content": "I'm doing well, thanks!"},
    {"role": "user", "content": "今天天气很好"},
    {"role": "assistant", "content": "我们去公园散步吧。"},
]


def test_encoding_matches_the_whole_template(tiny_tokenizer):
    full = tiny_tokenizer.apply_chat_template(CONV, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    enc = encode_chat(CONV, tiny_tokenizer, 10_000)
    assert enc.input_ids == list(full["input_ids"])
    assert enc.assistant_mask == list(full["assistant_masks"])


def test_label_mask_token_by_token(tiny_tokenizer):
    """Only the assistant replies and their closing <|im_end|> carry labels, in both turns."""
    tok = tiny_tokenizer
    enc = encode_chat(CONV, tok, 10_000)
    expected = []
    for msg in CONV:
        ids, _ = encode_message(msg, tok)
        if msg["role"] == "assistant":
            header = tok.encode("<|im_start|>assistant\n", add_special_tokens=False)
            reply = tok.encode(msg["content"], add_special_tokens=False) + [tok.eos_token_id]
            assert ids == header + reply + tok.encode("\n", add_special_tokens=False)
            expected += [IGNORE_INDEX] * len(header) + reply + [IGNORE_INDEX]
        else:
            expected += [IGNORE_INDEX] * len(ids)
    assert enc.labels == expected
    labelled = tok.decode([t for t in enc.labels if t != IGNORE_INDEX])
    assert labelled == "I'm doing well, thanks!<|im_end|>我们去公园散步吧。<|im_end|>"


def test_left_truncation_keeps_whole_turns(tiny_tokenizer):
    tok = tiny_tokenizer
    full = encode_chat(CONV, tok, 10_000)
    system = len(encode_message(CONV[0], tok)[0])
    last_exchange = sum(len(encode_message(m, tok)[0]) for m in CONV[3:])
    # Room for the system message and the last exchange only: the first exchange goes, whole.
    enc = encode_chat(CONV, tok, system + last_exchange)
    assert enc.first_message == 3 and enc.kept_system and enc.cut_tokens == 0
    assert tok.decode(enc.input_ids).startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n今天")
    assert enc.dropped_messages(CONV) == 2
    # No room for the system message either: it is dropped, the text starts at the user turn.
    enc = encode_chat(CONV, tok, last_exchange)
    assert not enc.kept_system and enc.cut_tokens == 0
    assert tok.decode(enc.input_ids).startswith("<|im_start|>user\n今天")
    assert len(enc.input_ids) <= last_exchange < len(full.input_ids)
    # Not even the last exchange fits: tokens are cut from the left, the reply survives.
    enc = encode_chat(CONV, tok, 8)
    assert enc.cut_tokens > 0 and len(enc.input_ids) == 8 and enc.input_ids[-2] == tok.eos_token_id


def test_fit_prompt_leaves_room_for_the_reply(tiny_tokenizer):
    prompt = CONV[:4]
    assert fit_prompt(prompt, tiny_tokenizer, 10_000, 10) == prompt
    short = fit_prompt(prompt, tiny_tokenizer, 40, 10)
    assert short[-1] == prompt[-1] and len(short) < len(prompt) and short[-1]["role"] == "user"
    assert fit_prompt(prompt, tiny_tokenizer, 12, 10) is None


def test_sft_trains_on_assistant_tokens(tmp_path, tiny_model_dir, tiny_tokenizer, mlflow_uri):
    import mlflow
    import torch
    from transformers import AutoModelForCausalLM

    from chatforge.train.sft import SftConfig, encode_conversations, train_sft

    convs = [{"messages": CONV}, {"messages": CONV[1:3]}, {"messages": CONV[3:]}] * 4
    cfg = SftConfig(base=tiny_model_dir, checkpoints=tmp_path / "ckpt", max_length=64, max_steps=6, batch_size=4,
                    lr=1.0e-2, logging_steps=1)
    with mlflow.start_run() as run:
        metrics = train_sft(cfg, convs, convs[:3], seed=0, output_dir=tmp_path / "sft")
    assert metrics["steps"] == 6
    assert metrics["eval_loss"] < metrics["base_eval_loss"]          # held-out (here: repeated) loss falls
    before = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    after = AutoModelForCausalLM.from_pretrained(tmp_path / "sft").state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert (tmp_path / "sft" / "tokenizer.json").exists()
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "loss")
    assert len(history) >= 3
    rows, counts = encode_conversations(convs, tiny_tokenizer, 64)
    assert counts["skipped"] == 0 and rows[0]["labels"] == encode_chat(CONV, tiny_tokenizer, 64).labels
