"""Settings every chatforge TRL trainer shares (one place to change when TRL or transformers move).

- ``report_to=["mlflow"]``: transformers 5 defaults to "none"; the trainer's MLflowCallback logs
  into the stage's active run (transformers' ``integrations/integration_utils.py``).
- bf16 only on a GPU that supports it; fp32 on CPU (TRL configs default to bf16, which CPU
  training refuses).
- ``use_cpu`` on a GPU-less machine: without it accelerate reports no distributed type under
  torchrun, so the ranks never all-reduce their gradients.
- No dataloader worker processes: the data is already tokenized and in memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def training_args(output_dir: Path, seed: int, run_name: str, *, logging_steps: int, save_steps: int = 0,
                  **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for any TRL ``*Config`` (a ``TrainingArguments`` subclass)."""
    import torch

    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return dict(output_dir=str(output_dir), seed=seed, run_name=run_name, report_to=["mlflow"],
                logging_steps=logging_steps, save_strategy="steps" if save_steps > 0 else "no",
                save_steps=max(save_steps, 1), bf16=bf16, dataloader_num_workers=0,
                use_cpu=not torch.cuda.is_available(),     # else torchrun on CPU runs without DDP (accelerate 1.15)
                dataloader_pin_memory=torch.cuda.is_available(), **overrides)
