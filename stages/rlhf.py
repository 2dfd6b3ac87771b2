"""RLHF: tune the SFT model against the reward model (grpo/rloo) or on its preference pairs (dpo),
then compare the policy with the SFT model on held-out prompts under the held-out judge.

Reads models/sft/, models/reward/, models/judge/, rlhf.prompts (data/clean/prompts.jsonl, or a
preference file, whose pairs' prompts are taken: train split for RL less the judge's conversations,
validation split for the evaluation), train_reward.input (its split; for dpo the reward model's
training pairs, the split train_reward used) and for ppo with ppo.ptx_coef > 0 the pretraining
documents (rlhf.ptx_input, train split). Writes models/policy/ and reports/rlhf.json.
Params: seed, train_reward, rlhf.
Run: dvc repro rlhf   or   python -m stages.rlhf --set rlhf.algorithm=rloo --set rlhf.max_steps=3
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

from chatforge.core.config import load_config
from chatforge.core.files import atomic_dir
from chatforge.core.tracking import setup_logging, stage_run
from chatforge.rl.algorithms import RlhfConfig, load_rlhf_data, train_policy
from chatforge.rl.evaluation import evaluate_policy, reward_model_warning
from chatforge.train.reward import RewardModelConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Params:
    seed: int
    train_reward: RewardModelConfig
    rlhf: RlhfConfig


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    cfg = load_config(Params, argv, description=__doc__)
    rl = cfg.rlhf
    data, eval_prompts = load_rlhf_data(rl, cfg.train_reward, cfg.seed)
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
        warning = reward_model_warning(report, rl.algorithm, rl.evaluation.samples_per_prompt)
        if warning:
            log.warning(warning)


if __name__ == "__main__":
    main()
