"""The reward model's token-match head: it learns which shared tokens say "on topic", is saved beside
the transformer and loaded back with it, and its mix with the transformer is what scoring returns."""

import random

import pytest

TOPICS = [["pizza", "cheese", "oven", "dough"], ["guitar", "chords", "song", "music"],
          ["soccer", "goal", "team", "match"], ["garden", "roses", "soil", "seeds"],
          ["train", "station", "ticket", "platform"], ["coffee", "beans", "espresso", "milk"],
          ["winter", "snow", "skiing", "jacket"], ["puppy", "leash", "walks", "treats"],
          ["novel", "chapter", "author", "pages"], ["painting", "canvas", "brush", "colors"]]
COMMON = ["the", "and", "you", "that"]


def topic_pairs(topics: list[list[str]], n: int, seed: int) -> list[dict]:
    """The chosen reply shares one topic word with the conversation; the rejected one, from another
    topic, shares three common words. Counting shared tokens prefers the rejected reply; a scorer
    that learnt to discount common words prefers the chosen one."""
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        topic, other = rng.sample(topics, 2)
        a, b = rng.sample(topic, 2)
        prompt = [{"role": "user", "content": f"Do you know {a}? I like {b} and the rest, you know that."}]
        pairs.append({"id": f"t{seed}-{i}#1", "prompt": prompt, "chosen": f"Yes, {a} is nice.",
                      "rejected": f"Well the {rng.choice(other)} and you know that {rng.choice(other)}."})
    return pairs


def accuracy(head, tokenizer, pairs) -> float:
    from chatforge.train.reward import win_share

    prompts = [p["prompt"] for p in pairs]
    return win_share(head.score(prompts, [p["chosen"] for p in pairs], tokenizer),
                     head.score(prompts, [p["rejected"] for p in pairs], tokenizer))


def test_head_learns_to_discount_common_tokens(tiny_model_dir):
    from chatforge.train.token_match import TokenMatchConfig, TokenMatchHead, fit_token_match
    from chatforge.train.tokenizer import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    train, heldout = topic_pairs(TOPICS[:6], 120, seed=0), topic_pairs(TOPICS[6:], 60, seed=1)   # unseen topics
    cfg = TokenMatchConfig(enabled=True, negatives=4, epochs=4, lr=0.05)
    assert accuracy(TokenMatchHead(len(tok), cfg), tok, heldout) < 0.2      # untrained: more shared tokens win
    head, loss = fit_token_match(train, tok, cfg, seed=0)
    assert accuracy(head, tok, heldout) > 0.9 and loss > 0


def test_head_only_reward_model_round_trips(tiny_model_dir, tmp_path, mlflow_uri):
    """epochs and max_steps 0: the transformer is saved untrained with weight 0 in the mix, and the
    directory scores through load_reward_model / score_replies exactly as the trained head did."""
    import mlflow
    import torch

    from chatforge.train.reward import RewardModelConfig, load_reward_model, score_replies, train_and_score
    from chatforge.train.token_match import TokenMatchConfig

    cfg = RewardModelConfig(sft=tiny_model_dir, checkpoints=tmp_path / "ck", epochs=0.0, max_steps=0,
                            token_match=TokenMatchConfig(enabled=True, negatives=4, epochs=4, lr=0.05))
    heldout = topic_pairs(TOPICS[6:], 40, seed=1)
    with mlflow.start_run():
        report, margins = train_and_score(cfg, topic_pairs(TOPICS[:6], 120, seed=0), heldout, 0, tmp_path / "rm")
    assert report["train_steps"] == 0 and (report["mix_transformer"], report["mix_token_match"]) == (0.0, 1.0)
    assert report["accuracy"] > 0.9 and report["token_match_accuracy"] == pytest.approx(report["accuracy"], abs=0.03)
    assert "transformer_accuracy" not in report                          # nothing trained to report
    model, tok = load_reward_model(tmp_path / "rm")
    assert model.head is not None and model.config.num_labels == 1
    prompts = [p["prompt"] for p in heldout]
    assert score_replies(model, tok, prompts, [p["chosen"] for p in heldout]) == \
        pytest.approx(model.head.score(prompts, [p["chosen"] for p in heldout], tok))
    assert len(margins) == len(heldout)
    torch.manual_seed(12345)                       # whatever ran before: the same directory, byte for byte
    with mlflow.start_run():
        train_and_score(cfg, topic_pairs(TOPICS[:6], 120, seed=0), heldout, 0, tmp_path / "again")
    for f in ("model.safetensors", "token_match.safetensors"):
        assert (tmp_path / "rm" / f).read_bytes() == (tmp_path / "again" / f).read_bytes()


def test_trained_transformer_and_head_are_mixed(tiny_model_dir, tmp_path, mlflow_uri):
    import mlflow

    from chatforge.train.reward import (
        RewardModelConfig,
        load_reward_model,
        score_replies,
        train_and_score,
        transformer_scores,
    )
    from chatforge.train.token_match import TokenMatchConfig

    cfg = RewardModelConfig(sft=tiny_model_dir, checkpoints=tmp_path / "ck", max_length=64, max_steps=2, batch_size=4,
                            token_match=TokenMatchConfig(enabled=True, negatives=2, epochs=2))
    pairs = topic_pairs(TOPICS, 24, seed=2)
    with mlflow.start_run():
        report, _ = train_and_score(cfg, pairs, pairs[:8], 0, tmp_path / "rm")
    assert report["train_steps"] == 2 and "transformer_accuracy" in report
    model, tok = load_reward_model(tmp_path / "rm")
    alpha, beta = model.head.mix.tolist()
    assert (alpha, beta) == (report["mix_transformer"], report["mix_token_match"])
    prompts, replies = [p["prompt"] for p in pairs[:4]], [p["chosen"] for p in pairs[:4]]
    expected = [alpha * t + beta * m for t, m in zip(transformer_scores(model.transformer, tok, prompts, replies),
                                                     model.head.score(prompts, replies, tok))]
    assert score_replies(model, tok, prompts, replies) == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_a_reward_model_with_nothing_to_train_is_refused():
    from chatforge.train.reward import RewardModelConfig

    with pytest.raises(ValueError, match="token_match"):
        RewardModelConfig(epochs=0.0, max_steps=0)
