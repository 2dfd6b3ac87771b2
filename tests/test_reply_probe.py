"""The reward model's reply probe: a linear score on the reply tokens' mean hidden state, fitted by
the pairwise loss, saved beside the transformer and used wherever the reward model scores."""

import random

import pytest

KIND = ["thanks", "glad", "happy", "help", "welcome", "sure", "great", "pleasure"]
RUDE = ["no", "stupid", "leave", "boring", "never", "annoying", "useless", "whatever"]
FILLER = ["the", "a", "you", "it", "that", "so", "and", "well"]
TOPIC = ["pizza", "guitar", "soccer", "garden", "train", "coffee", "winter", "novel"]


def tone_pairs(words: slice, n: int, seed: int) -> list[dict]:
    """The chosen reply uses kind words, the rejected one rude words, both padded with the same kind
    of filler; ``words`` picks which of each list a split may use (held-out pairs use unseen ones)."""
    rng = random.Random(seed)

    def reply(pool: list[str]) -> str:
        return " ".join(rng.choice(pool[words]) if k % 2 else rng.choice(FILLER) for k in range(rng.randint(3, 7)))

    return [{"id": f"p{seed}-{i}#1", "prompt": [{"role": "user", "content": f"Tell me about {rng.choice(TOPIC)}."}],
             "chosen": reply(KIND), "rejected": reply(RUDE)} for i in range(n)]


@pytest.mark.parametrize("mask,span", [([0, 1, 1, 0, 0, 1, 1], (5, 7)), ([1, 1, 0, 1, 0], (3, 4)),
                                       ([0, 0, 0], (0, 3)), ([1, 1], (0, 2))])
def test_reply_span_is_the_last_assistant_run(mask, span):
    from chatforge.train.reply_probe import reply_span

    assert reply_span(mask) == span


def test_probe_reads_the_reply_not_the_last_token(tiny_model_dir, tmp_path, mlflow_uri):
    """Head-only reward model with the probe: the probe learns the tone from the reply's tokens and
    carries to words it never saw paired (same lists, other members), and the saved directory scores
    through load_reward_model / score_replies as the fitted probe did."""
    import mlflow

    from chatforge.train.reply_probe import WEIGHTS, ReplyProbeConfig
    from chatforge.train.reward import RewardModelConfig, load_reward_model, score_replies, train_and_score

    cfg = RewardModelConfig(sft=tiny_model_dir, checkpoints=tmp_path / "ck", epochs=0.0, max_steps=0, max_length=64,
                            reply_probe=ReplyProbeConfig(enabled=True, folds=3))
    train, heldout = tone_pairs(slice(0, 6), 150, seed=0), tone_pairs(slice(0, 8), 60, seed=1)
    with mlflow.start_run():
        report, margins = train_and_score(cfg, train, heldout, 0, tmp_path / "rm")
    assert report["train_steps"] == 0 and report["reply_probe_fitted_l2"] in cfg.reply_probe.l2
    assert report["reply_probe_cv_accuracy"] > 0.9 and report["accuracy"] > 0.85, report
    assert len(margins) == len(heldout) and (tmp_path / "rm" / WEIGHTS).exists()
    model, tok = load_reward_model(tmp_path / "rm")
    assert model.probe is not None and model.head is None and model.probe.max_length == 64
    prompts, chosen = [p["prompt"] for p in heldout], [p["chosen"] for p in heldout]
    assert score_replies(model, tok, prompts, chosen) == \
        pytest.approx(model.probe.score(model.transformer, tok, prompts, chosen), rel=1e-5, abs=1e-6)
    # One reply scores the same alone and in a padded batch beside a longer one.
    longer = chosen[0] + " and the rest of it, well, so that you know it"
    assert score_replies(model, tok, prompts[:1], chosen[:1]) == \
        pytest.approx(score_replies(model, tok, prompts[:2], [chosen[0], longer])[:1], rel=1e-4, abs=1e-5)


def test_probe_needs_enough_pairs_for_its_folds(tiny_model_dir):
    from chatforge.train.loading import load_model_and_tokenizer
    from chatforge.train.reply_probe import ReplyProbeConfig, fit_reply_probe

    model, tok = load_model_and_tokenizer(tiny_model_dir, head="reward")
    with pytest.raises(ValueError, match="reply_probe.folds"):
        fit_reply_probe(model, tok, tone_pairs(slice(0, 6), 3, seed=0), ReplyProbeConfig(enabled=True), 64, 0)


def test_a_layer_the_model_lacks_is_named(tiny_model_dir):
    from chatforge.train.loading import load_model_and_tokenizer
    from chatforge.train.reply_probe import reply_features

    model, tok = load_model_and_tokenizer(tiny_model_dir, head="reward")          # 2 layers
    pairs = tone_pairs(slice(0, 6), 2, seed=0)
    assert reply_features(model, tok, [p["prompt"] for p in pairs], ["Hi"] * 2, 64, layer=2).shape == (2, 32)
    with pytest.raises(ValueError, match="reply_probe.layer: 3"):
        reply_features(model, tok, [p["prompt"] for p in pairs], ["Hi"] * 2, 64, layer=3)


def test_probe_settings_are_checked():
    from chatforge.train.reply_probe import ReplyProbeConfig

    with pytest.raises(ValueError, match="'l2'"):
        ReplyProbeConfig(l2=[])
    with pytest.raises(ValueError, match="'folds'"):
        ReplyProbeConfig(folds=1)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_hidden_states_at_a_layer_match_the_full_pass(family):
    """The pass stopped at the read layer gives the hidden states a full pass reports there, for each
    layer and three architectures (block lists named ``layers`` and ``h``), padding included."""
    import torch
    from transformers import GPT2Config, GPT2Model, LlamaConfig, LlamaModel, Qwen2Config, Qwen2Model

    from chatforge.train.reply_probe import decoder_layers, hidden_states_at

    torch.manual_seed(0)
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=50)
    backbone = {"llama": lambda: LlamaModel(LlamaConfig(**small)), "qwen2": lambda: Qwen2Model(Qwen2Config(**small)),
                "gpt2": lambda: GPT2Model(GPT2Config(n_embd=32, n_layer=3, n_head=4, vocab_size=50))}[family]().eval()
    ids = torch.randint(0, 50, (2, 7))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    with torch.no_grad():
        full = backbone(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        for layer in (0, 1, 2, 3, -1):
            want = full.last_hidden_state if layer == -1 else full.hidden_states[layer]
            got = hidden_states_at(backbone, layer, 3, input_ids=ids, attention_mask=mask)
            assert torch.allclose(got, want, atol=1e-6), (family, layer)
        ran = []
        blocks = decoder_layers(backbone, 3)
        blocks[2].register_forward_hook(lambda *_: ran.append(2))
        hidden_states_at(backbone, 1, 3, input_ids=ids, attention_mask=mask)
        assert ran == [], "the blocks above the read layer ran"
        hidden_states_at(backbone, 3, 3, input_ids=ids, attention_mask=mask)
        assert ran == [2]
