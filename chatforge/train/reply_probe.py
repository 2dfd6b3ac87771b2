"""A reply probe for reward models: a linear score on the mean hidden state of the reply's tokens.

Why: a sequence-classification reward model scores the hidden state of the last token. On human
preference pairs (Anthropic HH) with a small pretrained model that reads badly: SmolLM2-135M's last
hidden state separates the chosen reply from the rejected one 53-57% of the time, its reply tokens'
mean hidden state 61-64% (../shared/notes/stack.md), and 30 LoRA steps of the last-token head on 240
pairs stayed at chance (train loss 0.68). The probe fits

    score(x, y) = w . (h(x, y) - mu) / sd,    h = mean of the transformer's hidden states over y's tokens

by the pairwise (Bradley-Terry) loss, ``-log sigmoid(score(chosen) - score(rejected))``, with an L2
penalty picked by cross-validation on the training pairs. It needs forward passes only: the
transformer (trained by train_reward or not) stays as it is. The probe is saved beside it
(``reply_probe.safetensors`` + ``reply_probe.json``) and replaces the transformer's last-token score
wherever the reward model scores (chatforge.train.reward.score_replies).
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from chatforge.core.config import field_help
from chatforge.train.chat_format import encode_chat, reply_pair

log = logging.getLogger(__name__)
WEIGHTS, SETTINGS = "reply_probe.safetensors", "reply_probe.json"


@dataclass(frozen=True)
class ReplyProbeConfig:
    """The ``reply_probe:`` block of the train_reward params."""

    enabled: bool = field_help(False, "score with a linear probe on the reply tokens' mean hidden state "
                                      "instead of the last token's head (see reply_probe.py)")
    layer: int = field_help(-1, "hidden layer to read: -1 the last (after the final norm), 0 the embeddings")
    l2: list[float] = field_help([1.0e-2, 1.0e-1, 1.0, 10.0],
                                 "L2 penalties tried; the best by cross-validated pairwise log loss is kept")
    folds: int = field_help(5, "cross-validation folds over the training pairs")

    def __post_init__(self) -> None:
        if not self.l2 or any(v < 0 for v in self.l2):
            raise ValueError("'l2' must list at least one penalty, each >= 0")
        if self.folds < 2:
            raise ValueError("'folds' must be at least 2")


def reply_span(mask: list[int]) -> tuple[int, int]:
    """[start, end) of the last run of assistant tokens: the reply (earlier assistant turns of the
    conversation are marked too). A sequence with no marked token is read whole."""
    end = len(mask)
    while end > 0 and not mask[end - 1]:
        end -= 1
    start = end
    while start > 0 and mask[start - 1]:
        start -= 1
    return (start, end) if end > start else (0, len(mask))


@torch.no_grad()
def reply_features(transformer, tokenizer, prompts: list[list[dict[str, str]]], replies: list[str],
                   max_length: int, layer: int = -1, batch_size: int = 16) -> torch.Tensor:
    """(N, hidden) float32: the mean hidden state over each reply's tokens (its end-of-turn token
    included), the conversation cut at a turn boundary to ``max_length`` tokens as the reward model
    reads it."""
    backbone = transformer.base_model          # the transformer under a sequence-classification head
    layers = transformer.config.num_hidden_layers
    if not -1 <= layer <= layers:
        raise ValueError(f"train_reward.reply_probe.layer: {layer} is not a hidden layer of this model "
                         f"(-1 for the last, 0 for the embeddings, up to {layers})")
    encoded = [encode_chat(reply_pair(p, r), tokenizer, max_length) for p, r in zip(prompts, replies)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows: list[torch.Tensor] = []
    for i in range(0, len(encoded), batch_size):
        batch = encoded[i:i + batch_size]
        width = max(len(e.input_ids) for e in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)                  # (B, T)
        attention = torch.zeros(len(batch), width, dtype=torch.long)
        reply = torch.zeros(len(batch), width)
        for b, e in enumerate(batch):
            ids[b, :len(e.input_ids)] = torch.tensor(e.input_ids)
            attention[b, :len(e.input_ids)] = 1
            start, end = reply_span(e.assistant_mask)
            reply[b, start:end] = 1.0
        hidden = hidden_states_at(backbone, layer, layers, input_ids=ids.to(transformer.device),
                                  attention_mask=attention.to(transformer.device)).float().cpu()     # (B, T, H)
        rows.append((hidden * reply[:, :, None]).sum(1) / reply.sum(1, keepdim=True))
    return torch.cat(rows) if rows else torch.zeros(0, transformer.config.hidden_size)


class _Reached(Exception):
    """Raised by the hook in ``hidden_states_at`` to stop the forward pass at the layer it reads."""


def decoder_layers(backbone, count: int):
    """The backbone's list of decoder blocks (``layers`` in Llama/Qwen2, ``h`` in GPT-2): its first
    ModuleList of ``count`` modules, or None."""
    return next((m for m in backbone.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == count), None)


def hidden_states_at(backbone, layer: int, layers: int, **inputs) -> torch.Tensor:
    """The backbone's hidden states at ``layer`` (as ``output_hidden_states`` numbers them: 0 the
    embeddings, -1 the last layer after the final norm) without running the blocks above it: the
    input of block ``layer`` is caught by a pre-hook that ends the pass. Reading layer 18 of
    SmolLM2's 30 costs ~60% of a full pass."""
    blocks = decoder_layers(backbone, layers) if 0 <= layer < layers else None
    if blocks is None:
        out = backbone(**inputs, output_hidden_states=layer != -1)
        return out.last_hidden_state if layer == -1 else out.hidden_states[layer]
    caught: list[torch.Tensor] = []

    def catch(module, args, kwargs):
        caught.append(args[0] if args else kwargs["hidden_states"])
        raise _Reached

    handle = blocks[layer].register_forward_pre_hook(catch, with_kwargs=True)
    try:
        backbone(**inputs)
    except _Reached:
        pass
    finally:
        handle.remove()
    return caught[0]


def fit_weights(diffs: torch.Tensor, l2: float) -> torch.Tensor:
    """w minimising mean softplus(-diffs @ w) + l2 |w|^2 (no bias: the loss is on differences)."""
    w = torch.zeros(diffs.shape[1], requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.softplus(-diffs @ w).mean() + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach()


class ReplyProbe(torch.nn.Module):
    def __init__(self, hidden: int, cfg: ReplyProbeConfig, max_length: int):
        super().__init__()
        self.cfg, self.max_length = cfg, max_length
        self.register_buffer("weight", torch.zeros(hidden))
        self.register_buffer("mean", torch.zeros(hidden))
        self.register_buffer("scale", torch.ones(hidden))
        self.fit_report: dict[str, Any] = {}

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return ((features - self.mean) / self.scale) @ self.weight

    def score(self, transformer, tokenizer, prompts: list[list[dict[str, str]]], replies: list[str],
              batch_size: int = 16) -> list[float]:
        features = reply_features(transformer, tokenizer, prompts, replies, self.max_length, self.cfg.layer, batch_size)
        return self(features.to(self.weight.device)).tolist()

    def save(self, directory: Path) -> None:
        from safetensors.torch import save_file

        save_file({"weight": self.weight.contiguous(), "mean": self.mean.contiguous(),
                   "scale": self.scale.contiguous()}, str(directory / WEIGHTS))
        settings = {**asdict(self.cfg), "max_length": self.max_length, **self.fit_report}
        (directory / SETTINGS).write_text(json.dumps(settings, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> ReplyProbe:
        from safetensors.torch import load_file

        tensors = load_file(str(directory / WEIGHTS))
        settings = json.loads((directory / SETTINGS).read_text())
        keys = ReplyProbeConfig.__dataclass_fields__
        probe = cls(tensors["weight"].numel(), ReplyProbeConfig(**{k: v for k, v in settings.items() if k in keys}),
                    settings["max_length"])
        for name in ("weight", "mean", "scale"):
            getattr(probe, name).copy_(tensors[name])
        return probe.eval()


def cross_validate(chosen: torch.Tensor, rejected: torch.Tensor, l2: float, folds: int,
                   seed: int) -> tuple[float, float]:
    """(mean held-out pairwise log loss, accuracy) of the probe over ``folds`` folds of the pairs."""
    order = list(range(len(chosen)))
    random.Random(seed).shuffle(order)
    loss, right = 0.0, 0.0
    for k in range(folds):
        test = order[k::folds]
        train = sorted(set(order) - set(test))
        _, scale = standardizer(torch.cat([chosen[train], rejected[train]]))   # the mean cancels in differences
        w = fit_weights((chosen[train] - rejected[train]) / scale, l2)
        margin = ((chosen[test] - rejected[test]) / scale) @ w
        loss += F.softplus(-margin).sum().item()
        right += (margin > 0).float().sum().item() + 0.5 * (margin == 0).float().sum().item()
    return loss / len(chosen), right / len(chosen)


def standardizer(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return features.mean(0), features.std(0).clamp_min(1e-6)


def fit_reply_probe(transformer, tokenizer, pairs: list[dict[str, Any]], cfg: ReplyProbeConfig,
                    max_length: int, seed: int, batch_size: int = 16) -> ReplyProbe:
    """Fit the probe on ``pairs``' features under ``transformer``: the L2 penalty by cross-validation,
    then the weights on all pairs. ``probe.fit_report`` holds the chosen penalty and its CV figures."""
    if len(pairs) < cfg.folds:
        raise ValueError(f"the reply probe needs at least {cfg.folds} training pairs (reply_probe.folds), "
                         f"got {len(pairs)}")
    prompts = [p["prompt"] for p in pairs]
    chosen = reply_features(transformer, tokenizer, prompts, [p["chosen"] for p in pairs], max_length, cfg.layer,
                            batch_size)
    rejected = reply_features(transformer, tokenizer, prompts, [p["rejected"] for p in pairs], max_length, cfg.layer,
                              batch_size)
    scores = {l2: cross_validate(chosen, rejected, l2, cfg.folds, seed) for l2 in cfg.l2}
    best = min(cfg.l2, key=lambda l2: scores[l2][0])
    probe = ReplyProbe(chosen.shape[1], cfg, max_length)
    mean, scale = standardizer(torch.cat([chosen, rejected]))
    probe.mean.copy_(mean)
    probe.scale.copy_(scale)
    probe.weight.copy_(fit_weights((chosen - rejected) / scale, best))
    probe.fit_report = {"fitted_l2": best, "cv_loss": scores[best][0], "cv_accuracy": scores[best][1],
                        "train_pairs": len(pairs)}
    log.info("reply probe: %d pairs, l2 %g, cross-validated accuracy %.3f (log loss %.4f; by l2: %s)", len(pairs),
             best, scores[best][1], scores[best][0], {k: round(v[1], 3) for k, v in scores.items()})
    return probe.eval()
