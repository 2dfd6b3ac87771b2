"""Token log-probabilities of a given sequence: what OpenAI's ``logprobs`` report, and what
lm-evaluation-harness reads back (with ``echo``) to score multiple-choice tasks through a server.

One forward pass over the whole sequence (teacher forcing) through a decoding ``Step`` (PyTorch or
ONNX Runtime, see ``chatforge.inference.decoding``), kept apart from the token loop: the
log-probabilities are those of the model's own distribution, softmax(logits), whatever sampling
settings produced the tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ScoredToken:
    """One token of a sequence: its log-probability given the tokens before it (None for the first,
    which has nothing before it) and the ``top`` most likely tokens at its position."""

    id: int
    logprob: float | None
    top: list[tuple[int, float]] = field(default_factory=list)


def score_tokens(step, ids: list[int], top: int = 0) -> list[ScoredToken]:
    """log p(ids[i] | ids[:i]) for every position, with the ``top`` most likely alternatives."""
    import torch

    if not ids:
        return []
    input_ids = torch.tensor([ids])
    logits, _ = step(input_ids, torch.ones_like(input_ids), None)              # (1, T, V)
    logp = torch.log_softmax(logits[0, :-1].float(), dim=-1)                 # (T-1, V): predicts ids[1:]
    target = torch.tensor(ids[1:])
    chosen = logp.gather(1, target[:, None])[:, 0].tolist()                  # (T-1,)
    if top > 0:
        values, indices = logp.topk(min(top, logp.size(-1)), dim=-1)         # (T-1, top)
        alternatives = [list(zip(i, v)) for i, v in zip(indices.tolist(), values.tolist())]
    else:
        alternatives = [[] for _ in chosen]
    return [ScoredToken(ids[0], None)] + [ScoredToken(t, lp, alt) for t, lp, alt in zip(ids[1:], chosen, alternatives)]
