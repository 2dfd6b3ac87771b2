"""RLHF: tune the SFT model against the reward model (grpo/rloo) or on its preference pairs (dpo),
then compare the policy with the SFT model on held-out prompts under the held-out judge.

Reads models/sft/, models/reward/, models/judge/, data/clean/prompts.jsonl (train split for RL,
validation split for the evaluation), for dpo the reward model's training pairs (the same split
of train_reward.input that train_reward used) and for ppo with ppo.ptx_coef > 0 the pretraining
documents (rlhf.ptx_input, train split). Writes models/policy/ and reports/rlhf.json.
Params: seed, train_reward, rlhf.
Run: dvc repro rlhf   or   python -m stages.rlhf --set rlhf.algorithm=rloo --set rlhf.max_steps=3
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

from chatforge.config import load_config
from chatforge.jsonl import atomic_dir
from chatforge.packing import documents_by_split
from chatforge.preferences import by_split, read_preferences, read_prompts, split_preferences
from chatforge.reward import RewardModelConfig
from chatforge.rlhf import RlhfConfig, RlhfData, train_policy
from chatforge.rlhf_eval import evaluate_policy
from chatforge.tracking import setup_logging, stage_run

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Params:
    seed: int
    train_reward: RewardModelConfig
    rlhf: RlhfConfig


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    cfg = load_config(Params, argv, description=__doc__)
    rl, rc = cfg.rlhf, cfg.train_reward
    prompts = read_prompts(rl.prompts).records
    train_prompts = [p["messages"] for p in by_split(prompts, "train", cfg.seed, rc.validation_fraction)]
    eval_prompts = [p["messages"] for p in by_split(prompts, "validation", cfg.seed, rc.validation_fraction)]
    pairs = []
    if rl.algorithm == "dpo":
        pairs = split_preferences(read_preferences(rc.input).records, cfg.seed, rc.judge_fraction,
                                  rc.validation_fraction).reward
    ptx_texts = None
    if rl.algorithm == "ppo" and rl.ppo.ptx_coef > 0:          # InstructGPT's PPO-ptx: pretraining text too
        ptx_texts = documents_by_split(rl.ptx_input)["train"]
    data = RlhfData(sft=rl.sft, reward=rl.reward, prompts=train_prompts, pairs=pairs, ptx_texts=ptx_texts)
    with stage_run("rlhf", cfg) as run, atomic_dir(rl.output) as out:
        start = time.perf_counter()
        report = train_policy(rl, data, cfg.seed, out)
        report["train_seconds"] = round(time.perf_counter() - start, 1)
        start = time.perf_counter()
        report.update(evaluate_policy(out, rl.sft, rl.judge, rl.reward, eval_prompts, rl.evaluation, cfg.seed))
        report["eval_seconds"] = round(time.perf_counter() - start, 1)
        samples = report.pop("samples")
        run.log_text(json.dumps(samples, indent=2, ensure_ascii=False), "samples.json")
        run.report(rl.report, report)
        log.info("rlhf (%s, %d steps): judge reward %.3f -> %.3f, win rate %.2f (length-controlled %.2f), "
                 "KL %.2f nats, length %.1f -> %.1f", rl.algorithm, report["steps"], report["reward_sft"],
                 report["reward_policy"], report["win_rate"], report["win_rate_length_controlled"], report["kl"],
                 report["length_sft"], report["length_policy"])
        if rl.algorithm != "dpo" and report["best_of_n_gain"] < 2 * report["best_of_n_gain_se"]:
            log.warning("the reward model does not rank the SFT model's replies as the judge does (Spearman %.2f; "
                        "best-of-%d by reward model moves the judge by %.3f +- %.3f): optimising it is not expected "
                        "to raise the judge's reward, whatever the online algorithm", report["proxy_judge_spearman"],
                        rl.evaluation.samples_per_prompt, report["best_of_n_gain"], report["best_of_n_gain_se"])


if __name__ == "__main__":
    main()
