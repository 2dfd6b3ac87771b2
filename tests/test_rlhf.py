"""Reward model, judge and RL: each algorithm runs a few real TRL steps on a 2-layer model, and
the weights change and reward and KL reach MLflow every step."""

import pytest

PROMPTS = [
    [{"role": "user", "content": "How are you doing today?"}],
    [{"role": "user", "content": "What is your favourite book?"}],
    [{"role": "user", "content": "今天天气很好"}],
    [{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": "Hi, how are you?"},
     {"role": "user", "content": "Let's go for a walk in the park."}],
]
GOOD = ["I'm doing well, thanks for asking!", "I like reading science fiction at night.", "我们去公园散步吧。",
        "The weather is lovely today."]
BAD = ["The quick brown fox.", "Tokenizers split text.", "数据清洗。", "A language model predicts."]
PAIRS = [{"id": f"c{i}#1", "prompt": p, "chosen": g, "rejected": b}
         for i, (p, g, b) in enumerate(zip(PROMPTS, GOOD, BAD))] * 3


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory, tiny_model_dir):
    """A reward model trained for a few steps from the tiny model (stands in for the RM and the judge)."""
    import mlflow
    from conftest import forget_mlflow_experiment

    from chatforge.train.reward import RewardModelConfig, train_reward_model

    out = tmp_path_factory.mktemp("reward")
    cfg = RewardModelConfig(sft=tiny_model_dir, checkpoints=out / "ckpt", max_length=64, max_steps=4, batch_size=4,
                            lr=1.0e-2, logging_steps=1)
    forget_mlflow_experiment()
    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    with mlflow.start_run():
        metrics = train_reward_model(cfg, PAIRS, seed=0, output_dir=out / "rm")
    mlflow.set_tracking_uri(None)
    assert metrics["steps"] == 4
    return out / "rm"


def test_reward_model_learns_the_pairs(reward_dir):
    from chatforge.train.reward import load_reward_model, pairwise_metrics, scoring_length

    model, tok = load_reward_model(reward_dir)
    assert model.config.num_labels == 1 and (reward_dir / "tokenizer.json").exists()
    assert scoring_length(model) == 64                     # scored at the length it was trained on
    metrics, margins = pairwise_metrics(model, tok, PAIRS[:4])
    assert metrics["accuracy"] >= 0.75 and metrics["margin_mean"] > 0 and len(margins) == 4


def weights(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).state_dict()


@pytest.mark.parametrize("algorithm", ["grpo", "rloo", "dpo", "ppo"])
def test_algorithm_updates_policy_and_logs_reward_and_kl(algorithm, tmp_path, tiny_model_dir, reward_dir,
                                                         mlflow_uri):
    import mlflow
    import torch

    from chatforge.rl.algorithms import RlhfConfig, RlhfData, train_policy
    from chatforge.rl.ppo import PPOConfig

    ppo = PPOConfig(steps=3, rollout_batch_size=4, mini_batch_size=4, max_new_tokens=8, lr=1.0e-2, save_every=0)
    cfg = RlhfConfig(algorithm=algorithm, checkpoints=tmp_path / "ckpt", max_steps=3, batch_size=4,
                     num_generations=2, lr=1.0e-2, dpo_lr=1.0e-2, max_completion_length=8, max_length=64,
                     normalization_samples=4, ppo=ppo)
    data = RlhfData(sft=tiny_model_dir, reward=reward_dir, prompts=PROMPTS * 2, pairs=PAIRS)
    with mlflow.start_run() as run:
        facts = train_policy(cfg, data, seed=0, output_dir=tmp_path / "policy")
    assert facts["steps"] == 3 and facts["algorithm"] == algorithm
    before, after = weights(tiny_model_dir), weights(tmp_path / "policy")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    client = mlflow.MlflowClient()
    for key in ("reward", "kl"):
        steps = {m.step for m in client.get_metric_history(run.info.run_id, key)}
        assert len(steps) == 3, (key, steps)                      # every step


def test_kl_guard_stops_training(tmp_path, tiny_model_dir, reward_dir, mlflow_uri):
    import mlflow

    from chatforge.rl.algorithms import RlhfConfig, RlhfData, train_policy

    cfg = RlhfConfig(algorithm="grpo", checkpoints=tmp_path / "ckpt", max_steps=4, batch_size=4, num_generations=2,
                     lr=5.0e-2, max_completion_length=8, max_length=64, max_kl=-1.0)      # any KL trips it
    data = RlhfData(sft=tiny_model_dir, reward=reward_dir, prompts=PROMPTS, pairs=[])
    with mlflow.start_run():
        facts = train_policy(cfg, data, seed=0, output_dir=tmp_path / "policy")
    assert facts["stopped_early"] and facts["steps"] < 4


def test_rlhf_config_guards():
    from chatforge.rl.algorithms import RlhfConfig

    with pytest.raises(ValueError, match="beta"):
        RlhfConfig(algorithm="grpo", beta=0.0)
    with pytest.raises(ValueError, match="multiple of 'num_generations'"):
        RlhfConfig(algorithm="rloo", batch_size=6, num_generations=4)
    RlhfConfig(algorithm="dpo", beta=0.0)                         # dpo has its own beta


def test_evaluate_policy_against_itself(tiny_model_dir, reward_dir):
    from chatforge.rl.evaluation import EvalSettings, evaluate_policy

    settings = EvalSettings(max_prompts=4, samples_per_prompt=2, max_new_tokens=6, max_length=64)
    report = evaluate_policy(tiny_model_dir, tiny_model_dir, reward_dir, reward_dir, PROMPTS, settings, seed=3)
    # Same model, same seed: identical samples, so no KL, equal rewards, every comparison a tie.
    assert abs(report["kl"]) < 1e-4 and report["win_rate"] == 0.5 and report["proxy_win_rate"] == 0.5
    assert report["reward_sft"] == pytest.approx(report["reward_policy"]) and report["reward_gain_se"] < 1e-6
    assert report["length_sft"] == report["length_policy"] > 0
    assert 0 < report["distinct2_policy"] <= 1 and report["eval_samples"] == 8
    # judge and proxy are the same model: they rank the SFT replies alike
    assert report["proxy_judge_spearman"] == pytest.approx(1.0) and report["best_of_n_gain"] >= 0
    assert report["length_matched_gain"] == pytest.approx(0.0) and report["length_matched_win_rate"] == 0.5


def test_eval_helpers():
    from chatforge.rl.evaluation import distinct_2, gain_standard_error, length_residuals, win_rate

    assert distinct_2([[1, 2, 1, 2], [3, 4]]) == pytest.approx(3 / 4)
    assert win_rate([1.0, 2.0, 3.0], [0.0, 2.0, 4.0]) == pytest.approx(0.5)
    resid, slope = length_residuals([1.0, 2.0, 3.0, 4.0], [10, 20, 30, 40])
    assert slope == pytest.approx(0.1) and max(resid) - min(resid) < 1e-9     # all of it was length
    # per-prompt mean differences 1, 2, 3 (prompt 1: differences 3 and 1): stdev 1, over sqrt(3)
    policy, sft, prompt = [1.0, 4.0, 2.0, 4.0], [0.0, 1.0, 1.0, 1.0], [0, 1, 1, 2]
    assert gain_standard_error(policy, sft, prompt) == pytest.approx(1 / 3 ** 0.5)
    assert gain_standard_error([1.0], [0.0], [0]) == 0.0


def test_proxy_diagnostics():
    from chatforge.rl.evaluation import best_of_n_gain, spearman

    assert spearman([1.0, 2.0, 3.0, 4.0], [10.0, 30.0, 20.0, 40.0]) == pytest.approx(0.8)
    assert spearman([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]) == pytest.approx(-1.0)
    assert spearman([1.0, 1.0, 2.0], [5.0, 5.0, 9.0]) == pytest.approx(1.0)      # ties share a rank
    assert spearman([1.0, 1.0], [1.0, 2.0]) == 0.0
    # prompt 0: the proxy picks reply 1 (judge 3, mean 2) -> +1; prompt 1: it picks reply 3 (judge 0, mean 1) -> -1
    gain, se = best_of_n_gain([0.1, 0.9, 0.2, 0.8], [1.0, 3.0, 2.0, 0.0], [0, 0, 1, 1])
    assert gain == pytest.approx(0.0) and se == pytest.approx(1.0)


def test_cut_to_lengths():
    from chatforge.rl.evaluation import Samples, cut_to_lengths

    class Decoder:
        def decode(self, ids, skip_special_tokens=True):
            return " ".join(map(str, ids)) + " "

    samples = Samples([0, 1], [[9], [9]], [[1, 2, 3, 4], [5, 6]], ["1 2 3 4", "5 6"])
    cut = cut_to_lengths(samples, [2, 5], Decoder())
    assert cut.reply_ids == [[1, 2], [5, 6]] and cut.replies == ["1 2", "5 6"] and cut.prompt_index == [0, 1]


def test_stage_runs_ppo_ptx_on_the_pretraining_documents(tmp_path, tiny_model_dir, reward_dir, mlflow_uri):
    """The rlhf stage end to end: params file in, policy and report out; PPO-ptx reads the
    pretraining documents (train split) and its LM loss reaches MLflow every step."""
    import json

    import mlflow

    from chatforge.core.config import to_dict
    from chatforge.rl.algorithms import RlhfConfig
    from chatforge.rl.evaluation import EvalSettings
    from chatforge.rl.ppo import PPOConfig
    from chatforge.train.reward import RewardModelConfig
    from stages.rlhf import main

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "messages": m, "split": split}) + "\n"
                               for i, (m, split) in enumerate([(p, "train") for p in PROMPTS] +
                                                              [(PROMPTS[0], "validation"), (PROMPTS[3], "validation")])))
    docs = tmp_path / "documents.jsonl"
    docs.write_text("".join(json.dumps({"id": f"d{i}", "text": t, "split": "train"}) + "\n"
                            for i, t in enumerate(GOOD + BAD)))
    ppo = PPOConfig(steps=2, rollout_batch_size=4, mini_batch_size=4, max_new_tokens=8, lr=1.0e-3, save_every=0,
                    ptx_coef=1.0, ptx_batch_size=2, ptx_max_length=16)
    rl = RlhfConfig(algorithm="ppo", sft=tiny_model_dir, reward=reward_dir, judge=reward_dir, prompts=prompts,
                    ptx_input=docs, output=tmp_path / "policy", checkpoints=tmp_path / "ckpt",
                    report=tmp_path / "rlhf.json", max_length=64, ppo=ppo,
                    evaluation=EvalSettings(max_prompts=2, samples_per_prompt=1, max_new_tokens=6, max_length=64))
    pairs = tmp_path / "preferences.jsonl"
    pairs.write_text("".join(json.dumps(p) + "\n" for p in PAIRS[:4]))
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps({"seed": 0, "train_reward": to_dict(RewardModelConfig(input=pairs)),
                                  "rlhf": to_dict(rl)}))
    main(["--params", str(params)])
    report = json.loads(rl.report.read_text())
    assert report["algorithm"] == "ppo" and report["steps"] == 2 and report["eval_prompts"] == 2
    assert {"reward_sft", "reward_policy", "kl", "win_rate", "proxy_win_rate"} <= set(report)
    assert (rl.output / "model.safetensors").exists() and (rl.output / "tokenizer.json").exists()
    run = mlflow.search_runs(filter_string="tags.stage = 'rlhf'", output_format="list")[0]
    ptx = mlflow.MlflowClient().get_metric_history(run.info.run_id, "ptx_loss")
    assert len(ptx) == 2 and all(m.value > 0 for m in ptx)


def test_rl_prompts_from_the_preference_file(tmp_path):
    """rlhf.prompts may be the reward model's preference file (here in Anthropic HH's format): RL gets
    the prompts of the reward model's pairs, the evaluation those of the validation pairs, and no prompt
    of a conversation the judge was trained on reaches RL."""
    import json

    from chatforge.data.preferences import read_preferences, split_preferences
    from chatforge.rl.algorithms import RlhfConfig, load_rlhf_data
    from chatforge.train.reward import RewardModelConfig

    hh = [{"chosen": f"\n\nHuman: question {i}?\n\nAssistant: answer {i}.",
           "rejected": f"\n\nHuman: question {i}?\n\nAssistant: no."} for i in range(60)]
    path = tmp_path / "hh.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in hh))
    reward_cfg = RewardModelConfig(input=path, judge_fraction=0.5, validation_fraction=0.2)
    data, held_out = load_rlhf_data(RlhfConfig(algorithm="grpo", prompts=path), reward_cfg, seed=3)
    splits = split_preferences(read_preferences(path).records, 3, 0.5, 0.2)
    assert splits.reward and splits.judge and splits.validation
    assert sorted(map(str, data.prompts)) == sorted(str(p["prompt"]) for p in splits.reward)
    assert sorted(map(str, held_out)) == sorted(str(p["prompt"]) for p in splits.validation)
    assert data.pairs == []                                          # only dpo trains on the pairs
