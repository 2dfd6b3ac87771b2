"""PPO against a reward model, as in InstructGPT (Ouyang et al. 2022), written by hand.

TRL deleted its PPOTrainer in 1.13 and no maintained library in our stack has one, so this module
is a compact PPO modelled on DeepSpeed-Chat's ``dschat/rlhf/ppo_trainer.py`` and TRL's old PPOv2.
One training step:

1. rollout: sample replies from the policy (temperature only: no top-k/top-p, so the log-probs we
   compute are the ones we sampled from), score each reply with the reward model (or a callable);
2. per-token reward: ``-kl_coef * KL(pi || pi_SFT)`` on every reply token, plus the clipped score
   on the last token (InstructGPT's ``r(x, y) - beta * log(pi / pi_SFT)``);
3. generalised advantage estimation (gamma 1, lambda 0.95, DeepSpeed-Chat);
4. ``ppo_epochs`` passes of clipped policy + clipped value loss over mini-batches of the rollout,
   plus ``ptx_coef`` x the LM loss on pretraining text (InstructGPT's PPO-ptx);
5. the adaptive KL controller (Ziegler et al. 2019) moves ``kl_coef`` toward ``target_kl``.

Value function: a linear head on the policy's own last hidden state (not a separate critic
initialised from the reward model, as InstructGPT and DeepSpeed-Chat do). Why: a separate critic is
a fourth full model in memory and a second forward/backward per mini-batch, which is what makes
PPO the OOM-prone method (four models at once, huggingface/trl#1051); the shared trunk keeps PPO at the cost of GRPO/RLOO plus
one linear layer, and it also works when the reward is a Python callable (no RM to initialise a
critic from). The head starts at zero (value 0 = "average return"), so at first the value loss
sends no gradient into the trunk; ``vf_coef`` bounds how much it pulls later. The head is saved in
checkpoints only: the final ``out_dir`` is a plain LlamaForCausalLM directory.

Distributed: under torchrun each rank rolls out its own slice of prompts, gradients are averaged
by DDP, the KL that drives the controller is averaged over ranks, and only rank 0 logs and writes.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from chatforge.core.config import field_help, to_dict
from chatforge.core.launcher import local_rank
from chatforge.rl.evaluation import left_padded
from chatforge.train.chat_format import encode_chat, stop_token_ids
from chatforge.train.loading import load_model, load_model_and_tokenizer

log = logging.getLogger(__name__)

# A reward function: (prompts as message lists, reply texts) -> one score per reply.
RewardFn = Callable[[list[list[dict[str, str]]], list[str]], Sequence[float]]


@dataclass(frozen=True)
class PPOConfig:
    steps: int = field_help(20, "PPO steps; each is one rollout batch followed by ppo_epochs of updates")
    rollout_batch_size: int = field_help(16, "prompts rolled out per step (per rank); InstructGPT: batch 512")
    mini_batch_size: int = field_help(8, "rollouts per optimizer step; InstructGPT: minibatch 64")
    ppo_epochs: int = field_help(1, "passes over each rollout batch; DeepSpeed-Chat is only stable with 1")
    lr: float = field_help(1.0e-5, "AdamW LR of the policy (DeepSpeed-Chat actor: 9.65e-6)")
    value_head_lr: float = field_help(1.0e-3, "AdamW LR of the freshly initialised value head")
    weight_decay: float = field_help(0.0, "AdamW weight decay")
    max_grad_norm: float = field_help(1.0, "gradient clipping norm")
    # KL penalty against the frozen SFT model
    init_kl_coef: float = field_help(0.02, "beta, the per-token KL reward coefficient (InstructGPT: 0.02)")
    kl_control: Literal["adaptive", "fixed"] = field_help(
        "adaptive", "adaptive: Ziegler et al. 2019 controller toward target_kl; fixed: beta stays (InstructGPT)")
    target_kl: float = field_help(6.0, "adaptive controller: target KL per reply in nats (Ziegler/TRL: 6)")
    kl_horizon: int = field_help(10000, "adaptive controller: horizon in episodes (Ziegler/TRL: 10000)")
    kl_estimator: Literal["k1", "k3"] = field_help(
        "k3", "per-token KL in the reward: k1 = log(pi/ref) (InstructGPT), k3 = r - 1 - log r (never < 0)")
    # rewards and advantages
    gamma: float = field_help(1.0, "GAE discount (DeepSpeed-Chat and InstructGPT's bandit setting: 1.0)")
    lam: float = field_help(0.95, "GAE lambda (DeepSpeed-Chat: 0.95)")
    reward_clip: float = field_help(5.0, "clip the reward-model score to +-this (DeepSpeed-Chat: 5)")
    missing_eos_penalty: float = field_help(1.0, "subtracted from the score of a reply cut off before EOS "
                                                 "(TRL's missing_eos_penalty; 0 = off)")
    whiten_rewards: bool = field_help(False, "scale per-token rewards to unit std per batch (TRL PPOv2 option)")
    # PPO losses
    cliprange: float = field_help(0.2, "policy ratio clip epsilon (InstructGPT, DeepSpeed-Chat: 0.2)")
    cliprange_value: float = field_help(0.2, "value clip around the rollout values (DeepSpeed-Chat: 0.2)")
    vf_coef: float = field_help(0.1, "value loss weight in the shared-trunk loss (TRL PPOv2: 0.1)")
    kl_stop: float = field_help(0.0, "stop a batch's PPO epochs once approx KL(old || new) passes this "
                                     "(0 = off; Spinning Up PPO uses 0.015)")
    # PPO-ptx
    ptx_coef: float = field_help(0.0, "gamma of PPO-ptx: weight of the LM loss on pretraining text "
                                      "(InstructGPT: 27.8; 0 = plain PPO, the stable start)")
    ptx_batch_size: int = field_help(4, "pretraining texts per mini-batch when ptx_coef > 0")
    ptx_max_length: int = field_help(128, "tokens per pretraining text")
    # generation
    temperature: float = field_help(1.0, "sampling temperature (log-probs use the same scaled logits)")
    max_new_tokens: int = field_help(32, "longest reply")
    max_prompt_length: int = field_help(96, "prompt tokens kept (from the end)")
    # bookkeeping
    seed: int = field_help(1337, "seeds prompt order and sampling (each rank adds its rank)")
    save_every: int = field_help(10, "write a full-state checkpoint every this many steps (0 = only at the end)")
    resume: bool = field_help(True, "resume from checkpoint_dir/last when it exists and matches this config")

    def __post_init__(self) -> None:
        if self.rollout_batch_size % self.mini_batch_size:
            raise ValueError("'rollout_batch_size' must be a multiple of 'mini_batch_size'")
        if self.temperature <= 0:
            raise ValueError("'temperature' must be > 0 (sample plainly; greedy replies have no ratio)")
        if min(self.steps, self.ppo_epochs, self.max_new_tokens, self.mini_batch_size) < 1:
            raise ValueError("'steps', 'ppo_epochs', 'max_new_tokens' and 'mini_batch_size' must be >= 1")


# --------------------------------------------------------------------------------------------
# The maths, on plain tensors (tested against hand-computed cases)
# --------------------------------------------------------------------------------------------

def masked_mean(x, mask):
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_var(x, mask):
    return masked_mean((x - masked_mean(x, mask)) ** 2, mask)


def masked_whiten(x, mask, shift_mean: bool = True):
    mean = masked_mean(x, mask)
    out = (x - mean) * (masked_var(x, mask) + 1e-8).rsqrt()
    return (out if shift_mean else out + mean) * mask


def kl_per_token(logprobs, ref_logprobs, estimator: str = "k1"):
    """Estimate of KL(pi || ref) at each sampled token (Schulman's k1/k3)."""
    log_ratio = logprobs - ref_logprobs                       # log pi/ref
    if estimator == "k1":
        return log_ratio
    return (-log_ratio).exp() - 1 + log_ratio                 # k3: r - 1 - log r with r = ref/pi


def gae(rewards, values, mask, gamma: float, lam: float):
    """Generalised advantage estimation over reply tokens; (B, T) each -> (advantages, returns).

    Tokens past the reply (mask 0) have reward and value 0, so the last reply token bootstraps
    from 0: the episode ends there.
    """
    import torch

    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = delta + gamma * lam * last
        advantages[:, t] = last
    return advantages * mask, (advantages + values) * mask


def policy_loss(logprobs, old_logprobs, advantages, mask, cliprange: float):
    """Clipped surrogate, -min(r A, clip(r) A); returns (loss, clip fraction, ratio)."""
    import torch

    ratio = (logprobs - old_logprobs).exp()
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - cliprange, 1 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    return loss, masked_mean((clipped > unclipped).float(), mask), ratio


def value_loss(values, old_values, returns, mask, cliprange_value: float):
    """0.5 * max((v - R)^2, (clip(v, v_old +- eps) - R)^2); returns (loss, clip fraction)."""
    import torch

    clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    err, err_clipped = (values - returns) ** 2, (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(err, err_clipped), mask)
    return loss, masked_mean((err_clipped > err).float(), mask)


class AdaptiveKLController:
    """Ziegler et al. 2019: beta *= 1 + clip(KL/target - 1, +-0.2) * n / horizon."""

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        self.value, self.target, self.horizon = init_kl_coef, target, horizon

    def update(self, current_kl: float, n_episodes: int) -> None:
        error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n_episodes / self.horizon


class FixedKLController:
    def __init__(self, init_kl_coef: float):
        self.value = init_kl_coef

    def update(self, current_kl: float, n_episodes: int) -> None:
        pass


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------

def _nn():
    import torch

    class PolicyWithValue(torch.nn.Module):
        """The causal LM plus a scalar value head on its last hidden state (see module docstring)."""

        def __init__(self, policy):
            super().__init__()
            self.policy = policy
            self.value_head = torch.nn.Linear(policy.config.hidden_size, 1)
            torch.nn.init.zeros_(self.value_head.weight)
            torch.nn.init.zeros_(self.value_head.bias)

        def forward(self, input_ids, attention_mask, with_values: bool = True):
            position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)      # left padding
            out = self.policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                              output_hidden_states=with_values, use_cache=False)
            values = self.value_head(out.hidden_states[-1]).squeeze(-1) if with_values else None
            return out.logits, values                                       # (B, T, V), (B, T)

    return PolicyWithValue


def reply_logprobs(logits, replies, temperature: float):
    """Log-probs of the sampled reply tokens and the entropy at each position; logits (B, R, V)."""
    import torch

    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    token_logp = logp.gather(-1, replies.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return token_logp, entropy                                              # (B, R) each


class RewardModelScorer:
    """Scores (prompt, reply) with a sequence-classification reward model at the reply's last token,
    through ``chatforge.train.reward.score_replies``: the format and length train_reward trained it on."""

    def __init__(self, reward_dir: Path, device):
        from chatforge.train.reward import load_reward_model

        self.model, self.tokenizer = load_reward_model(reward_dir)
        self.model.to(device).requires_grad_(False)

    def __call__(self, prompts: list[list[dict[str, str]]], replies: list[str]) -> list[float]:
        from chatforge.train.reward import score_replies

        return score_replies(self.model, self.tokenizer, prompts, replies)


def sample_replies(policy, tokenizer, prompts: list[list[dict[str, str]]], cfg: PPOConfig, device) -> dict:
    """One sampled reply per prompt (temperature only, so log-probs match what was sampled).

    Prompts are rendered with the chat template, cut at a turn boundary to at most
    max_prompt_length tokens and left-padded. ``mask`` covers the reply up to and including the
    token that ended it (any of the template's stop tokens).
    """
    import torch

    # The base's own template, cut at a turn boundary to the last max_prompt_length tokens.
    ids = [encode_chat(p, tokenizer, cfg.max_prompt_length, add_generation_prompt=True).input_ids for p in prompts]
    pad = tokenizer.pad_token_id
    query, query_mask = left_padded(ids, pad, device)                                # (B, T) each
    stops = sorted(stop_token_ids(tokenizer))         # the template's end of turn, not EOS alone
    with torch.no_grad():
        seq = policy.generate(input_ids=query, attention_mask=query_mask, do_sample=True, top_k=0, top_p=1.0,
                              temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                              eos_token_id=stops, pad_token_id=pad)
    reply = seq[:, query.shape[1]:]                                          # (B, R)
    is_eos = torch.isin(reply, torch.tensor(stops, device=reply.device))
    mask = ((is_eos.cumsum(1) - is_eos.long()) == 0).float()
    has_eos, lengths = is_eos.any(1), mask.sum(1).long()
    texts = [tokenizer.decode(r[: n - int(e)], skip_special_tokens=True)
             for r, n, e in zip(reply.tolist(), lengths.tolist(), has_eos.tolist())]
    return {"query_mask": query_mask, "seq": seq, "reply": reply, "mask": mask, "has_eos": has_eos,
            "lengths": lengths, "texts": texts}


def final_score(raw, has_eos, cfg: PPOConfig):
    """The score PPO optimises: the reward minus the missing-EOS penalty, clipped to +-reward_clip."""
    return (raw - cfg.missing_eos_penalty * (~has_eos).float()).clamp(-cfg.reward_clip, cfg.reward_clip)


def score_policy(model_dir: Path, reward: Path | RewardFn, prompts: Sequence[Any], cfg: PPOConfig,
                 batch_size: int = 32, seed: int = 0) -> dict[str, float]:
    """Held-out check: sample one reply per prompt from ``model_dir`` as PPO does and score it.

    Returns the mean raw reward, the mean score PPO optimises (penalised and clipped) and the
    mean reply length. Seeded, so two policies are compared on the same random stream.
    """
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    policy, tokenizer = load_model_and_tokenizer(model_dir, device=device)
    reward_fn = reward if callable(reward) else RewardModelScorer(Path(reward), device)
    prompts = as_messages(prompts)
    torch.manual_seed(seed)
    raw, score, length = [], [], []
    for i in range(0, len(prompts), batch_size):
        part = prompts[i:i + batch_size]
        s = sample_replies(policy, tokenizer, part, cfg, device)
        r = torch.tensor([float(x) for x in reward_fn(part, s["texts"])], device=device)
        raw += r.tolist()
        score += final_score(r, s["has_eos"], cfg).tolist()
        length += s["lengths"].tolist()
    n = len(raw)
    return {"reward": sum(raw) / n, "score": sum(score) / n, "response_length": sum(length) / n}


def as_messages(prompts: Sequence[Any]) -> list[list[dict[str, str]]]:
    """Prompts as message lists; a plain string is one user turn."""
    out = [[{"role": "user", "content": p}] if isinstance(p, str) else list(p) for p in prompts]
    if not out:
        raise ValueError("PPO needs at least one prompt")
    return out


# --------------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------------

class PPOTrainer:
    """PPO on a policy directory (the SFT model, also the frozen reference) and a reward."""

    def __init__(self, policy_dir: Path, reward: Path | RewardFn, prompts: Sequence[Any], cfg: PPOConfig,
                 ptx_texts: Sequence[str] | None = None, checkpoint_dir: Path | None = None,
                 log_fn: Callable[[dict[str, float], int], None] | None = None):
        import torch
        import torch.distributed as dist

        self.cfg, self.checkpoint_dir, self.log_fn = cfg, checkpoint_dir, log_fn
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.world = dist.get_world_size() if self.distributed else 1
        if torch.cuda.is_available():             # torchrun sets LOCAL_RANK: one GPU per process
            self.device = torch.device("cuda", local_rank())
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        # bf16 autocast on GPU for every forward (policy, reference and RM alike: same dtype,
        # so the KL between them is not an artefact of mixed precision); fp32 on CPU.
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")

        self.prompts = as_messages(prompts)
        policy, self.tokenizer = load_model_and_tokenizer(policy_dir)
        self.model = _nn()(policy).to(self.device)
        self.ref = load_model(policy_dir, device=self.device).requires_grad_(False)
        self.reward_fn = reward if callable(reward) else RewardModelScorer(Path(reward), self.device)
        self.ddp = self.model
        if self.distributed:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.optimizer = torch.optim.AdamW([
            {"params": list(self.model.policy.parameters()), "lr": cfg.lr},
            {"params": list(self.model.value_head.parameters()), "lr": cfg.value_head_lr},
        ], weight_decay=cfg.weight_decay)
        self.kl_ctl = (AdaptiveKLController(cfg.init_kl_coef, cfg.target_kl, cfg.kl_horizon)
                       if cfg.kl_control == "adaptive" else FixedKLController(cfg.init_kl_coef))
        self.ptx = None
        if cfg.ptx_coef > 0:
            if not ptx_texts:
                raise ValueError("ptx_coef > 0 needs ptx_texts (pretraining documents)")
            self.ptx = list(ptx_texts)
        self.step, self.prompt_cursor, self.ptx_cursor, self.history = 0, 0, 0, []
        self._order: tuple[int, Any] = (-1, None)
        torch.manual_seed(cfg.seed + self.rank)
        if checkpoint_dir is not None and cfg.resume:
            self._load_checkpoint()

    # ---- data -------------------------------------------------------------------------------

    def _next_prompts(self) -> list[list[dict[str, str]]]:
        """The next rollout_batch_size prompts of this rank; a fresh seeded shuffle every epoch."""
        import torch

        n, out = len(self.prompts), []
        for _ in range(self.cfg.rollout_batch_size):
            epoch, pos = divmod(self.prompt_cursor * self.world + self.rank, n)
            if self._order[0] != epoch:
                gen = torch.Generator().manual_seed(self.cfg.seed + epoch)
                self._order = (epoch, torch.randperm(n, generator=gen))
            out.append(self.prompts[self._order[1][pos]])
            self.prompt_cursor += 1
        return out

    def _next_ptx_batch(self):
        """ptx_batch_size pretraining texts, each <|endoftext|> + its first ptx_max_length - 1 tokens."""
        tok, n = self.tokenizer, self.cfg.ptx_batch_size
        texts = [self.ptx[(self.ptx_cursor + i) % len(self.ptx)] for i in range(n)]
        self.ptx_cursor += n
        ids = [[tok.bos_token_id] + t[: self.cfg.ptx_max_length - 1]
               for t in tok(texts, add_special_tokens=False)["input_ids"]]
        enc = tok.pad({"input_ids": ids}, return_tensors="pt")
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)

    # ---- 1-3: rollout, rewards, advantages ----------------------------------------------------

    def rollout(self) -> tuple[dict[str, Any], dict[str, float]]:
        import torch

        cfg = self.cfg
        prompts = self._next_prompts()
        self.model.eval()
        with self.autocast:
            s = sample_replies(self.model.policy, self.tokenizer, prompts, cfg, self.device)
        query_mask, seq, reply, mask, lengths = s["query_mask"], s["seq"], s["reply"], s["mask"], s["lengths"]
        Q = query_mask.shape[1]
        raw = torch.tensor([float(x) for x in self.reward_fn(prompts, s["texts"])], device=self.device)
        score = final_score(raw, s["has_eos"], cfg)

        attn = torch.cat([query_mask, mask.long()], 1)
        with torch.no_grad(), self.autocast:
            logits, values = self.model(seq, attn)
            ref_logits = self.ref(input_ids=seq, attention_mask=attn,
                                  position_ids=(attn.cumsum(-1) - 1).clamp(min=0), use_cache=False).logits
        old_logprobs, _ = reply_logprobs(logits[:, Q - 1:-1], reply, cfg.temperature)
        ref_logprobs, _ = reply_logprobs(ref_logits[:, Q - 1:-1], reply, cfg.temperature)
        values = values[:, Q - 1:-1].float() * mask
        del logits, ref_logits

        # InstructGPT's per-token reward: -beta * KL on every token, the score on the last one.
        kl = kl_per_token(old_logprobs, ref_logprobs, cfg.kl_estimator) * mask
        rewards = -self.kl_ctl.value * kl
        rewards[torch.arange(len(score)), (lengths - 1).clamp(min=0)] += score
        if cfg.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False)
        advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
        advantages = masked_whiten(advantages, mask)

        explained_var = 1 - masked_var(returns - values, mask) / masked_var(returns, mask).clamp(min=1e-8)
        stats = {
            "reward": score.mean().item(), "rm_score": raw.mean().item(),
            "kl": kl.sum(1).mean().item(),
            "kl_k1": ((old_logprobs - ref_logprobs) * mask).sum(1).mean().item(),
            "kl_coef": self.kl_ctl.value,
            "reward_total": (score - self.kl_ctl.value * kl.sum(1)).mean().item(),
            "response_length": lengths.float().mean().item(), "eos_fraction": s["has_eos"].float().mean().item(),
            "explained_variance": explained_var.item(),
        }
        batch = {"seq": seq, "attn": attn, "reply": reply, "mask": mask, "old_logprobs": old_logprobs,
                 "values": values, "advantages": advantages, "returns": returns, "Q": Q}
        return batch, stats

    # ---- 4: PPO epochs ------------------------------------------------------------------------

    def update(self, batch: dict[str, Any]) -> dict[str, float]:
        import torch

        cfg, Q, mask = self.cfg, batch["Q"], batch["mask"]
        self.model.train()
        sums: dict[str, float] = {}
        n_mb = epochs_run = 0
        ratio_max = 0.0
        for _ in range(cfg.ppo_epochs):
            epochs_run += 1
            stop = False
            for idx in torch.randperm(len(mask), device=self.device).split(cfg.mini_batch_size):
                self.optimizer.zero_grad(set_to_none=True)
                ptx_loss = torch.zeros((), device=self.device)
                if self.ptx is not None:
                    # Accumulated locally first (no all-reduce), then synced with the PPO backward.
                    ids, am = self._next_ptx_batch()
                    sync_off = self.ddp.no_sync() if self.distributed else torch.enable_grad()
                    with sync_off, self.autocast:
                        lm_logits, _ = self.ddp(ids, am, with_values=False)
                        labels = ids[:, 1:].masked_fill(am[:, 1:] == 0, -100)
                        ptx_loss = torch.nn.functional.cross_entropy(
                            lm_logits[:, :-1].flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
                        (cfg.ptx_coef * ptx_loss).backward()
                with self.autocast:
                    logits, values = self.ddp(batch["seq"][idx], batch["attn"][idx])
                m = mask[idx]
                logprobs, entropy = reply_logprobs(logits[:, Q - 1:-1], batch["reply"][idx], cfg.temperature)
                pg_loss, clip_frac, ratio = policy_loss(logprobs, batch["old_logprobs"][idx],
                                                        batch["advantages"][idx], m, cfg.cliprange)
                vf_loss, vf_clip_frac = value_loss(values[:, Q - 1:-1].float(), batch["values"][idx],
                                                   batch["returns"][idx], m, cfg.cliprange_value)
                (pg_loss + cfg.vf_coef * vf_loss).backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                with torch.no_grad():
                    approx_kl = masked_mean(0.5 * (logprobs - batch["old_logprobs"][idx]) ** 2, m)
                    mb = {"policy_loss": pg_loss, "value_loss": vf_loss, "clip_frac": clip_frac,
                          "value_clip_frac": vf_clip_frac, "entropy": masked_mean(entropy, m),
                          "approx_kl": approx_kl, "ratio_mean": masked_mean(ratio, m),
                          "grad_norm": grad_norm, "ptx_loss": ptx_loss}
                    ratio_max = max(ratio_max, (ratio * m).max().item())
                for k, v in mb.items():
                    sums[k] = sums.get(k, 0.0) + v.item()
                n_mb += 1
                # Every rank must take the same decision, or DDP waits forever for the one that stopped.
                if cfg.kl_stop and self._mean_over_ranks(approx_kl.item()) > cfg.kl_stop:
                    stop = True
                    break
            if stop:
                break
        stats = {k: v / n_mb for k, v in sums.items()}
        stats.update(ratio_max=ratio_max, ppo_epochs_run=epochs_run)
        return stats

    # ---- the loop -----------------------------------------------------------------------------

    def train(self) -> list[dict[str, float]]:
        cfg = self.cfg
        start, first = time.perf_counter(), self.step
        while self.step < cfg.steps:
            t0 = time.perf_counter()
            batch, stats = self.rollout()
            stats.update(self.update(batch))
            kl = self._mean_over_ranks(stats["kl"])
            self.kl_ctl.update(kl, cfg.rollout_batch_size * self.world)     # 5: adaptive KL
            self.step += 1
            stats = {k: self._mean_over_ranks(v) for k, v in stats.items()}
            stats["step_time_s"] = time.perf_counter() - t0
            self.history.append(stats)
            if self.rank == 0:
                if self.log_fn is not None:
                    self.log_fn(stats, self.step)
                done = self.step - first
                eta = (time.perf_counter() - start) / done * (cfg.steps - self.step)
                log.info("ppo step %d/%d  reward %.3f  kl %.3f  kl_coef %.4f  len %.1f  eta %.0fs", self.step,
                         cfg.steps, stats["reward"], stats["kl"], stats["kl_coef"], stats["response_length"], eta)
            if self.checkpoint_dir is not None and (
                    self.step == cfg.steps or (cfg.save_every and self.step % cfg.save_every == 0)):
                self.save_checkpoint()
        return self.history

    def _mean_over_ranks(self, value: float) -> float:
        if not self.distributed:
            return float(value)
        import torch
        import torch.distributed as dist

        t = torch.tensor(float(value), device=self.device)
        dist.all_reduce(t)
        return t.item() / self.world

    # ---- saving and resuming ------------------------------------------------------------------

    def _rng_state(self) -> dict[str, Any]:
        import torch

        state = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        if not self.distributed:
            return {0: state}
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(gathered, state)
        return dict(enumerate(gathered))

    def save_checkpoint(self) -> None:
        """Policy (HF dir), value head, optimizer, RNG of every rank, counters, KL coef: atomically."""
        import torch

        from chatforge.core.files import atomic_dir, write_json

        rng = self._rng_state()                       # a collective: every rank takes part
        if self.rank != 0:
            return
        with atomic_dir(self.checkpoint_dir / "last") as tmp:
            self.model.policy.save_pretrained(tmp / "policy")
            torch.save({"value_head": self.model.value_head.state_dict(), "optimizer": self.optimizer.state_dict(),
                        "rng": rng}, tmp / "state.pt")
            write_json(tmp / "trainer_state.json", {
                "step": self.step, "kl_coef": self.kl_ctl.value, "prompt_cursor": self.prompt_cursor,
                "ptx_cursor": self.ptx_cursor, "world_size": self.world, "history": self.history,
                "config": to_dict(self.cfg)})
        log.info("ppo: checkpoint at step %d -> %s", self.step, self.checkpoint_dir / "last")

    def _load_checkpoint(self) -> None:
        import torch

        path = self.checkpoint_dir / "last"
        if not (path / "trainer_state.json").exists():
            return
        meta = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        # Only the run length and the checkpoint cadence may change across a resume.
        ignore = {"steps", "save_every", "resume"}
        saved = {k: v for k, v in meta["config"].items() if k not in ignore}
        now = {k: v for k, v in to_dict(self.cfg).items() if k not in ignore}
        if saved != now or meta["world_size"] != self.world:
            changed = sorted(k for k in now if saved.get(k) != now[k])
            log.warning("ppo: ignoring checkpoint %s: made with other settings (%s); starting fresh",
                        path, ", ".join(changed) or "world size")
            return
        saved_policy = load_model(path / "policy")
        self.model.policy.load_state_dict(saved_policy.state_dict())
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
        self.model.value_head.load_state_dict(state["value_head"])
        self.optimizer.load_state_dict(state["optimizer"])
        rng = state["rng"][self.rank]
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        self.step, self.kl_ctl.value = meta["step"], meta["kl_coef"]
        self.prompt_cursor, self.ptx_cursor, self.history = meta["prompt_cursor"], meta["ptx_cursor"], meta["history"]
        log.info("ppo: resumed from %s at step %d (kl_coef %.4f)", path, self.step, self.kl_ctl.value)

    def save_policy(self, out_dir: Path) -> None:
        """The trained policy as a standard HF directory with its tokenizer (no value head)."""
        from chatforge.core.files import atomic_dir

        if self.rank == 0:
            with atomic_dir(out_dir) as tmp:
                self.model.policy.save_pretrained(tmp)
                self.tokenizer.save_pretrained(tmp)
        if self.distributed:                          # every rank returns once the policy is on disk
            import torch.distributed as dist

            dist.barrier()


def train_ppo(policy_dir: Path, reward: Path | RewardFn, prompts: Sequence[Any], cfg: PPOConfig, out_dir: Path,
              ptx_texts: Sequence[str] | None = None, checkpoint_dir: Path | None = None,
              log_fn: Callable[[dict[str, float], int], None] | None = None) -> dict[str, Any]:
    """Run PPO from ``policy_dir`` and write the policy to ``out_dir``; returns a summary.

    ``reward`` is a reward-model directory (AutoModelForSequenceClassification, num_labels=1, with
    the policy's tokenizer) or a callable ``(prompts, replies) -> scores``. ``prompts`` are message
    lists (or plain strings, read as one user turn). ``log_fn(metrics, step)`` gets every step's
    metrics on rank 0 (the stage passes ``run.log_metrics``).
    """
    start = time.perf_counter()
    trainer = PPOTrainer(policy_dir, reward, prompts, cfg, ptx_texts, checkpoint_dir, log_fn)
    history = trainer.train()
    trainer.save_policy(out_dir)

    def mean(key: str, part: slice) -> float:
        values = [h[key] for h in history[part] if key in h]
        return sum(values) / len(values) if values else math.nan

    k = max(1, min(3, len(history) // 3))            # average a few steps: one rollout batch is noisy
    return {
        "algorithm": "ppo", "steps": trainer.step,
        "train_reward_start": mean("reward", slice(0, k)), "train_reward_end": mean("reward", slice(-k, None)),
        "kl_end": mean("kl", slice(-k, None)), "kl_coef_end": trainer.kl_ctl.value,
        "response_length_end": mean("response_length", slice(-k, None)),
        "wall_time_s": time.perf_counter() - start,
    }
