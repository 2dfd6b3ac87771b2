"""Held-out evaluation of an RL policy against its SFT starting point, for any RL algorithm.

On held-out prompts, both models sample ``samples_per_prompt`` replies each (plain sampling at
temperature 1, no top-k/top-p, so the KL estimate is the real one). Then:

- judge: ``reward_sft`` / ``reward_policy`` (mean score), ``reward_gain_se`` (the standard error of
  their difference, replies paired and clustered by prompt), ``win_rate`` (share of paired samples
  where the policy's reply scores higher; ties count half). The judge is a reward model trained on
  pairs the RL reward model never saw and never used in RL.
- ``win_rate_length_controlled``: the same on the judge's scores with their linear dependence on
  reply length removed (one least-squares fit of score on length over both models' replies), so a
  policy that wins only by writing shorter or longer replies falls back to ~0.5.
- ``length_matched_gain`` (± ``length_matched_gain_se``) and ``length_matched_win_rate``: the policy's
  replies against the paired SFT replies cut to the same number of tokens, so a policy that wins only
  by stopping early falls back to ~0 (gain) and ~0.5 (win rate); no linear model of length involved.
- ``proxy_*``: the same figures from the reward model RL optimised (expect them to rise faster).
- ``proxy_judge_spearman`` and ``best_of_n_gain`` (± ``best_of_n_gain_se``): can the proxy guide RL at
  all? The rank correlation of proxy and judge over the SFT model's replies, and the judge's gain from
  keeping, per prompt, the SFT reply the proxy scores highest of its ``samples_per_prompt`` (best-of-n,
  KL log n - (n-1)/n nats) over that prompt's mean. Near 0 means optimising the proxy cannot be expected
  to raise the judge, whatever the algorithm.
- ``kl``: mean over policy samples of sum_t [log pi(y_t) - log pi_sft(y_t)] (nats per reply; the
  Monte-Carlo estimate of KL(pi || pi_sft)), and ``kl_per_token``.
- ``length_*`` (mean reply tokens) and ``distinct2_*`` (unique / total token bigrams over all
  replies) for both: a rising reward with falling length or diversity is reward hacking.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chatforge.core.config import field_help
from chatforge.train.chat_format import encode_chat, stop_token_ids
from chatforge.train.loading import load_model, load_model_and_tokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalSettings:
    max_prompts: int = field_help(48, "held-out prompts to evaluate on (0 = all)")
    samples_per_prompt: int = field_help(2, "replies sampled per prompt from each model")
    max_new_tokens: int = field_help(32, "tokens per sampled reply")
    max_length: int = field_help(192, "context: prompt + reply tokens (prompts lose turns from the left)")
    batch_size: int = field_help(32, "sequences per generate / forward call")


@dataclass
class Samples:
    prompt_index: list[int]          # which prompt each reply answers
    prompt_ids: list[list[int]]
    reply_ids: list[list[int]]       # without padding; ends with <|im_end|> when the reply finished
    replies: list[str]


def left_padded(seqs: list[list[int]], pad: int, device=None):
    """(ids, attention mask), each (B, T): prompts left-padded to the longest, so generation continues
    every row from its last column."""
    import torch

    width = max(len(x) for x in seqs)
    ids = torch.tensor([[pad] * (width - len(x)) + x for x in seqs], device=device)
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in seqs], device=device)
    return ids, mask


def sample_replies(model, tokenizer, prompts: list[list[dict[str, str]]], settings: EvalSettings,
                   seed: int) -> Samples:
    """``samples_per_prompt`` sampled replies per prompt (temperature 1, no truncation of the distribution)."""
    import torch

    torch.manual_seed(seed)
    enc = [encode_chat(p, tokenizer, settings.max_length, add_generation_prompt=True,
                       reserve=settings.max_new_tokens).input_ids for p in prompts]
    jobs = [(i, ids) for i, ids in enumerate(enc) for _ in range(settings.samples_per_prompt)]
    out = Samples([], [], [], [])
    pad, stops = tokenizer.pad_token_id, sorted(stop_token_ids(tokenizer))    # the template's end of turn, not EOS alone
    for b in range(0, len(jobs), settings.batch_size):
        batch = jobs[b:b + settings.batch_size]
        ids, mask = left_padded([x for _, x in batch], pad)
        with torch.no_grad():
            gen = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0,
                                 top_p=1.0, max_new_tokens=settings.max_new_tokens, eos_token_id=stops,
                                 pad_token_id=pad)[:, ids.shape[1]:]                          # (B, new)
        for (i, prompt_ids), row in zip(batch, gen.tolist()):
            end = next((k for k, t in enumerate(row) if t in stops), None)
            reply = row[: end + 1] if end is not None else [t for t in row if t != pad]
            out.prompt_index.append(i)
            out.prompt_ids.append(prompt_ids)
            out.reply_ids.append(reply)
            out.replies.append(tokenizer.decode(reply, skip_special_tokens=True).strip())
    return out


def reply_logprobs(model, samples: Samples, pad_id: int, batch_size: int) -> list[float]:
    """Sum of log p(reply token | context) under ``model`` for each sample."""
    import torch

    totals: list[float] = []
    for b in range(0, len(samples.reply_ids), batch_size):
        seqs = [p + r for p, r in zip(samples.prompt_ids[b:b + batch_size], samples.reply_ids[b:b + batch_size])]
        starts = [len(p) for p in samples.prompt_ids[b:b + batch_size]]
        width = max(len(s) for s in seqs)
        ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in seqs])                # (B, T)
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits[:, :-1].float(), -1)
        tok_logp = logp.gather(-1, ids[:, 1:, None])[..., 0]                                 # (B, T-1)
        for row, (seq, start) in enumerate(zip(seqs, starts)):
            totals.append(tok_logp[row, start - 1: len(seq) - 1].sum().item())
    return totals


def distinct_2(sequences: list[list[int]]) -> float:
    """Unique token bigrams / all token bigrams over the replies (Li et al. 2016, arXiv:1510.03055)."""
    bigrams = [tuple(s[i:i + 2]) for s in sequences for i in range(len(s) - 1)]
    return len(set(bigrams)) / len(bigrams) if bigrams else 0.0


def win_rate(a: list[float], b: list[float]) -> float:
    """Share of pairs where a > b (ties count half)."""
    return sum(1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(a, b)) / max(len(a), 1)


def gain_standard_error(a: list[float], b: list[float], groups: list[int]) -> float:
    """Standard error of mean(a) - mean(b) for paired samples, clustered by prompt (``groups``): the
    stdev of the per-prompt mean differences over sqrt(prompts), since replies to one prompt are not
    independent. 0 with fewer than two prompts."""
    by_prompt: dict[int, list[float]] = {}
    for x, y, g in zip(a, b, groups):
        by_prompt.setdefault(g, []).append(x - y)
    means = [statistics.fmean(d) for d in by_prompt.values()]
    return statistics.stdev(means) / len(means) ** 0.5 if len(means) > 1 else 0.0


def length_residuals(scores: list[float], lengths: list[int]) -> tuple[list[float], float]:
    """Scores minus their least-squares linear fit on length, and the fitted slope (reward per token)."""
    mean_len, mean_s = statistics.fmean(lengths), statistics.fmean(scores)
    var = sum((x - mean_len) ** 2 for x in lengths)
    slope = sum((x - mean_len) * (s - mean_s) for x, s in zip(lengths, scores)) / var if var else 0.0
    return [s - slope * (x - mean_len) for s, x in zip(scores, lengths)], slope


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman rank correlation (average ranks for ties); 0 when either side is constant."""
    def ranks(x: list[float]) -> list[float]:
        order = sorted(range(len(x)), key=x.__getitem__)
        out = [0.0] * len(x)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2
            i = j + 1
        return out
    ra, rb = ranks(a), ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    var = (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5
    return cov / var if var else 0.0


def best_of_n_gain(proxy: list[float], judge: list[float], groups: list[int]) -> tuple[float, float]:
    """Judge score of each group's proxy-best reply minus the group's mean judge score: (mean, SE)."""
    by_group: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    gains = [judge[max(idx, key=proxy.__getitem__)] - statistics.fmean(judge[i] for i in idx)
             for idx in by_group.values()]
    se = statistics.stdev(gains) / len(gains) ** 0.5 if len(gains) > 1 else 0.0
    return statistics.fmean(gains), se


def cut_to_lengths(samples: Samples, lengths: list[int], tokenizer) -> Samples:
    """``samples`` with each reply cut to at most the paired length in tokens."""
    cut = [ids[:n] for ids, n in zip(samples.reply_ids, lengths)]
    return Samples(samples.prompt_index, samples.prompt_ids, cut,
                   [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in cut])


def compare(prefix: str, rm_dir: Path, prompts: list[list[dict[str, str]]], sft: Samples, policy: Samples,
            sft_cut: Samples, settings: EvalSettings) -> tuple[dict[str, float], list[float]]:
    """Mean rewards, win rates (plain, length-controlled, length-matched against ``sft_cut``) of policy
    vs SFT under one reward model, and that model's scores of the SFT replies."""
    from chatforge.train.reward import load_reward_model, score_replies

    model, tokenizer = load_reward_model(rm_dir)
    s_sft = score_replies(model, tokenizer, [prompts[i] for i in sft.prompt_index], sft.replies,
                          settings.batch_size)
    s_pol = score_replies(model, tokenizer, [prompts[i] for i in policy.prompt_index], policy.replies,
                          settings.batch_size)
    s_cut = score_replies(model, tokenizer, [prompts[i] for i in sft_cut.prompt_index], sft_cut.replies,
                          settings.batch_size)
    lengths = [len(r) for r in sft.reply_ids] + [len(r) for r in policy.reply_ids]
    resid, slope = length_residuals(s_sft + s_pol, lengths)
    n = len(s_sft)
    return {f"{prefix}reward_sft": statistics.fmean(s_sft), f"{prefix}reward_policy": statistics.fmean(s_pol),
            f"{prefix}reward_gain_se": gain_standard_error(s_pol, s_sft, policy.prompt_index),
            f"{prefix}win_rate": win_rate(s_pol, s_sft),
            f"{prefix}win_rate_length_controlled": win_rate(resid[n:], resid[:n]),
            f"{prefix}length_matched_gain": statistics.fmean(s_pol) - statistics.fmean(s_cut),
            f"{prefix}length_matched_gain_se": gain_standard_error(s_pol, s_cut, policy.prompt_index),
            f"{prefix}length_matched_win_rate": win_rate(s_pol, s_cut),
            f"{prefix}reward_per_token": slope}, s_sft


def evaluate_policy(policy_dir: Path, sft_dir: Path, judge_dir: Path, proxy_dir: Path | None,
                    prompts: list[list[dict[str, str]]], settings: EvalSettings, seed: int = 0) -> dict[str, Any]:
    """The held-out comparison of ``policy_dir`` with ``sft_dir`` (see the module docstring)."""
    if not prompts:
        raise ValueError("evaluate_policy: no held-out prompts")
    prompts = prompts[: settings.max_prompts] if settings.max_prompts else prompts
    policy, tokenizer = load_model_and_tokenizer(policy_dir)
    sft = load_model(sft_dir)
    pol_samples = sample_replies(policy, tokenizer, prompts, settings, seed)
    sft_samples = sample_replies(sft, tokenizer, prompts, settings, seed)
    pad = tokenizer.pad_token_id
    log_ratio = [a - b for a, b in zip(reply_logprobs(policy, pol_samples, pad, settings.batch_size),
                                       reply_logprobs(sft, pol_samples, pad, settings.batch_size))]
    n_tokens = sum(len(r) for r in pol_samples.reply_ids)
    metrics: dict[str, Any] = {
        "eval_prompts": len(prompts), "eval_samples": len(pol_samples.replies),
        "kl": statistics.fmean(log_ratio), "kl_per_token": sum(log_ratio) / max(n_tokens, 1),
        "length_sft": statistics.fmean(len(r) for r in sft_samples.reply_ids),
        "length_policy": statistics.fmean(len(r) for r in pol_samples.reply_ids),
        "distinct2_sft": distinct_2(sft_samples.reply_ids), "distinct2_policy": distinct_2(pol_samples.reply_ids),
    }
    sft_cut = cut_to_lengths(sft_samples, [len(r) for r in pol_samples.reply_ids], tokenizer)
    judged, judge_sft = compare("", judge_dir, prompts, sft_samples, pol_samples, sft_cut, settings)
    metrics.update(judged)
    if proxy_dir is not None:
        proxied, proxy_sft = compare("proxy_", proxy_dir, prompts, sft_samples, pol_samples, sft_cut, settings)
        metrics.update(proxied)
        metrics["proxy_judge_spearman"] = spearman(proxy_sft, judge_sft)
        metrics["best_of_n_gain"], metrics["best_of_n_gain_se"] = best_of_n_gain(
            proxy_sft, judge_sft, sft_samples.prompt_index)
    metrics["samples"] = [{"prompt": prompts[i][-1]["content"], "sft": s, "policy": p}
                          for i, s, p in zip(pol_samples.prompt_index[:8], sft_samples.replies[:8],
                                             pol_samples.replies[:8])]
    return metrics


def reward_model_warning(report: dict[str, Any], algorithm: str, samples_per_prompt: int) -> str | None:
    """Why optimising the reward model is not expected to move the judge, or None. The rule: picking
    the best of n SFT replies by the reward model (what any optimiser of it converges towards at small
    KL) must raise the judge's reward by two standard errors. DPO never queries the reward model."""
    if algorithm == "dpo" or report["best_of_n_gain"] >= 2 * report["best_of_n_gain_se"]:
        return None
    return (f"the reward model does not rank the SFT model's replies as the judge does (Spearman "
            f"{report['proxy_judge_spearman']:.2f}; best-of-{samples_per_prompt} by reward model moves the judge by "
            f"{report['best_of_n_gain']:.3f} +- {report['best_of_n_gain_se']:.3f}): optimising it is not expected "
            "to raise the judge's reward, whatever the online algorithm")
