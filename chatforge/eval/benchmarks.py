"""Benchmarks by the field's yardsticks: EleutherAI's lm-evaluation-harness on each model of the run,
and a CORE-style aggregate over its tasks.

A task is any lm-eval task: one of lm-eval's own (``hellaswag``, ``arc_easy``, ``piqa``; lm-eval
downloads them from the Hugging Face Hub) or a local one from an include folder of task YAMLs over
local JSONL/parquet files (``dataset_path: json``). The tasks shipped in ``lm_eval_tasks/`` read
``../shared/data`` relative to the repo root: ``gsm8k_local`` (GSM8K test, generative, "#### answer")
and ``hh_harmless_mc`` (Anthropic HH harmless pairs, two-way multiple choice).

Each model is scored in-process by lm-eval's own ``HFLM`` around the loaded model (our models are
plain ``LlamaForCausalLM`` directories, so no ``LM`` subclass of ours is needed), with the model's
chat template applied to the tasks marked ``chat``.

The aggregate follows CORE (DCLM, Li et al. 2024, arXiv:2406.11794; nanochat's ``base_eval``): each
accuracy is centred on its random baseline, ``(acc - random) / (1 - random)``, and the centred
values are averaged over the tasks. A task's random baseline is the mean of 1/choices over the docs
it scored (multiple choice) or 0 (generated answers, single-token greedy matches), unless the config
names one. Standard errors are lm-eval's per task; the aggregate's treats the tasks as independent:
``sqrt(sum(se_i / (1 - random_i))^2) / K``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from chatforge.core.config import field_help

log = logging.getLogger(__name__)

SHIPPED_TASKS = Path(str(resources.files("chatforge.eval").joinpath("lm_eval_tasks")))

# Published figures beside our own (accuracy in %, the aggregate as a fraction), keyed by lm-eval
# task name. GPT-2 124M: nanochat's CORE table (https://github.com/karpathy/nanochat) and its
# lm-eval scores; SmolLM2-135M-Instruct: its model card
# (https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct). Figures as issue #17 lists them.
ANCHORS: dict[str, dict[str, float]] = {
    "hellaswag": {"GPT-2 124M": 30.9, "SmolLM2-135M-Instruct": 43.0},
    "arc_easy": {"GPT-2 124M": 41.2, "SmolLM2-135M-Instruct": 54.0},
    "piqa": {"GPT-2 124M": 62.3},
    "lambada_openai": {"GPT-2 124M": 32.3},
    "gsm8k": {"SmolLM2-135M-Instruct": 0.4},
    "gsm8k_local": {"SmolLM2-135M-Instruct": 0.4},
    "aggregate": {"GPT-2 124M (CORE)": 0.114},
}


@dataclass(frozen=True)
class BenchmarkTask:
    task: str = field_help("", "lm-eval task name: one of lm-eval's own (hellaswag, arc_easy; downloaded "
                               "from the Hub) or one in benchmarks.include_paths (gsm8k_local)")
    metric: str = field_help("acc", "the lm-eval metric that is this task's accuracy (acc, acc_norm, exact_match)")
    filter: str = field_help("none", "the filter that metric is reported under (none; gsm8k: strict-match)")
    random: float | None = field_help(None, "random baseline; null = mean 1/choices over the scored docs "
                                            "(multiple choice) or 0 (generated answers)")
    num_fewshot: int | None = field_help(None, "few-shot examples; null = the task's own default")
    limit: int | None = field_help(None, "score the first N docs (benchmarks.limit caps it); null = all")
    chat: bool = field_help(False, "render the prompt (and few-shot turns) with the model's chat template")
    max_gen_toks: int | None = field_help(None, "most generated tokens (generative tasks); null = the task's")
    data_files: Path | None = field_help(None, "a local JSONL/parquet file that replaces the task's test "
                                               "split (relative to the repo root)")


@dataclass(frozen=True)
class BenchmarksConfig:
    enabled: bool = field_help(True, "run the benchmarks in evaluate")
    tasks: list[BenchmarkTask] = field_help([], "the tasks; the aggregate is over all of them")
    include_paths: list[Path] = field_help([], "more folders of local task YAMLs (lm-eval --include_path), "
                                               "besides the shipped chatforge/eval/lm_eval_tasks")
    models: list[str] = field_help(["base", "sft", "policy"], "which models of evaluate.models to score")
    limit: int | None = field_help(None, "most docs per task, for every task (a quick run); null = no cap")
    batch_size: int = field_help(16, "sequences per forward pass")
    seed: int = field_help(1234, "lm-eval's seeds (few-shot sampling, generation)")

    def __post_init__(self) -> None:
        names = [t.task for t in self.tasks]
        if any(not n for n in names):
            raise ValueError("evaluate.benchmarks.tasks: every task needs a 'task' name")
        if len(set(names)) != len(names):
            raise ValueError(f"evaluate.benchmarks.tasks: a task is listed twice in {names}")
        if self.batch_size < 1:
            raise ValueError("evaluate.benchmarks.batch_size must be at least 1")


# --------------------------------------------------------------------------------------------
# The aggregate
# --------------------------------------------------------------------------------------------

def centered(acc: float, se: float, random: float) -> tuple[float, float]:
    """(acc - random) / (1 - random) and its standard error."""
    if not random < 1:
        raise ValueError(f"a random baseline of {random} leaves nothing to centre on")
    return (acc - random) / (1 - random), se / (1 - random)


def aggregate(scores: dict[str, dict[str, float]]) -> dict[str, float]:
    """The CORE-style mean of centred accuracies over ``scores`` ({task: {accuracy, stderr, random}})."""
    if not scores:
        return {"value": math.nan, "stderr": math.nan, "tasks": 0}
    cs = [centered(s["accuracy"], s["stderr"], s["random"]) for s in scores.values()]
    k = len(cs)
    return {"value": sum(c for c, _ in cs) / k, "stderr": math.sqrt(sum(e * e for _, e in cs)) / k, "tasks": k}


def random_baseline(output_type: str, samples: list[dict[str, Any]]) -> float:
    """Mean 1/choices over the scored docs of a multiple-choice task; 0 for any other kind."""
    if output_type != "multiple_choice" or not samples:
        return 0.0
    return sum(1 / len(s["arguments"]) for s in samples) / len(samples)


def task_score(task: BenchmarkTask, result: dict[str, Any]) -> dict[str, Any]:
    """One task's figures from one ``simple_evaluate`` result: accuracy, its standard error, the
    sample count, the random baseline and the centred accuracy."""
    name = task.task
    metrics = result["results"].get(name)
    if metrics is None:
        raise KeyError(f"lm-eval returned no results for task '{name}' (it ran {sorted(result['results'])}); "
                       "is it a group? list its subtasks instead")
    key = f"{task.metric},{task.filter}"
    if key not in metrics:
        have = sorted(k for k in metrics if "," in k and "_stderr" not in k)
        raise KeyError(f"evaluate.benchmarks: task '{name}' has no metric '{key}'; it reports {have} "
                       "(set the task's metric and filter)")
    se = metrics.get(f"{task.metric}_stderr,{task.filter}")
    se = float(se) if isinstance(se, (int, float)) else math.nan
    output_type = result["configs"][name].get("output_type", "")
    random = task.random if task.random is not None else random_baseline(output_type, result["samples"].get(name, []))
    acc = float(metrics[key])
    c, c_se = centered(acc, se, random)
    return {"accuracy": acc, "stderr": se, "samples": int(result["n-samples"][name]["effective"]),
            "random": random, "centered": c, "centered_stderr": c_se, "metric": key,
            "num_fewshot": result["n-shot"].get(name), "chat": task.chat}


# --------------------------------------------------------------------------------------------
# Running lm-eval
# --------------------------------------------------------------------------------------------

def task_manager(cfg: BenchmarksConfig):
    """lm-eval's TaskManager over our include paths; lm-eval's own ~12k task YAMLs are indexed only
    when a task is not found in ours (indexing them costs seconds)."""
    from lm_eval.tasks import TaskManager

    paths = [str(p) for p in dict.fromkeys([SHIPPED_TASKS, *cfg.include_paths])]
    for p in paths:
        if not Path(p).is_dir():
            raise FileNotFoundError(f"evaluate.benchmarks.include_paths: {p} is not a folder")
    local = TaskManager(include_path=paths, include_defaults=False)
    if all(t.task in local.all_tasks for t in cfg.tasks):
        return local
    return TaskManager(include_path=paths, include_defaults=True)


def task_spec(task: BenchmarkTask, manager) -> str | dict[str, Any]:
    """What lm-eval loads: the name, or the task's config with ``data_files`` as its test split."""
    if task.task not in manager.all_tasks:
        raise KeyError(f"evaluate.benchmarks: unknown task '{task.task}': not one of lm-eval's tasks nor in "
                       f"include_paths ({manager.include_path})")
    if task.data_files is None:
        return task.task
    from lm_eval.tasks._yaml_loader import load_yaml

    entry = manager.task_index[task.task]
    if entry.yaml_path is None:
        raise ValueError(f"evaluate.benchmarks: task '{task.task}' is not a YAML task; data_files cannot replace its data")
    path = task.data_files.resolve()
    if not path.is_file():
        raise FileNotFoundError(f"evaluate.benchmarks: task '{task.task}': data_files {task.data_files} "
                                f"(resolved to {path}) does not exist")
    cfg = load_yaml(entry.yaml_path, resolve_func=True)
    split = cfg.get("test_split") or "test"
    kwargs = dict(cfg.get("dataset_kwargs") or {})
    kwargs["data_files"] = {split: str(path)}
    return {**cfg, "dataset_kwargs": kwargs, "test_split": split}


def check_local_data(spec: str | dict[str, Any], manager) -> None:
    """A local task's data files exist (relative ones from the working directory), else an error
    that names the task, the file and the param to change."""
    if isinstance(spec, dict):
        return
    from lm_eval.tasks._yaml_loader import load_yaml

    entry = manager.task_index[spec]
    if entry.yaml_path is None:
        return
    cfg = load_yaml(entry.yaml_path, resolve_func=False)
    if cfg.get("dataset_path") not in ("json", "parquet", "csv"):
        return
    files = (cfg.get("dataset_kwargs") or {}).get("data_files") or {}
    for f in files.values() if isinstance(files, dict) else [files]:
        for one in [f] if isinstance(f, str) else f:
            if not Path(one).exists():
                raise FileNotFoundError(
                    f"evaluate.benchmarks: task '{spec}' ({entry.yaml_path}) reads {one}, which does not exist "
                    f"from {Path.cwd()}; run from the repo root with ../shared/data beside it, or set the task's "
                    "data_files")


def score_model(lm, cfg: BenchmarksConfig, manager) -> dict[str, dict[str, Any]]:
    """Every task of ``cfg`` on one lm-eval ``LM``: {task: figures}."""
    import lm_eval

    out = {}
    for task in cfg.tasks:
        spec = task_spec(task, manager)
        check_local_data(spec, manager)
        limits = [n for n in (task.limit, cfg.limit) if n is not None]
        limit = min(limits) if limits else None
        try:
            result = lm_eval.simple_evaluate(
                lm, tasks=[spec], task_manager=manager, num_fewshot=task.num_fewshot, limit=limit,
                apply_chat_template=task.chat, fewshot_as_multiturn=task.chat, log_samples=True,
                gen_kwargs={"max_gen_toks": task.max_gen_toks} if task.max_gen_toks else None,
                bootstrap_iters=1000, random_seed=cfg.seed, numpy_random_seed=cfg.seed,
                torch_random_seed=cfg.seed, fewshot_random_seed=cfg.seed)
        except AssertionError as err:     # lm-eval asserts where a continuation outgrows the context
            raise ValueError(f"evaluate.benchmarks: task '{task.task}' failed inside lm-eval ({err!r}); the "
                             f"usual cause is an answer longer than the model's context ({lm.max_length} "
                             "tokens): drop the task for this model or use a shorter-answer task") from err
        out[task.task] = task_score(task, result)
        log.info("benchmark %s: %s = %.4f +- %.4f (n=%d, random %.3f)", task.task, task.metric,
                 out[task.task]["accuracy"], out[task.task]["stderr"], out[task.task]["samples"],
                 out[task.task]["random"])
    return out


def hf_lm(model, tokenizer, batch_size: int):
    """lm-eval's HFLM around a loaded transformers causal LM."""
    from lm_eval.models.huggingface import HFLM

    device = str(next(model.parameters()).device)
    return HFLM(pretrained=model.eval(), tokenizer=tokenizer, batch_size=batch_size, device=device)


def run_benchmarks(cfg: BenchmarksConfig, model_dirs: dict[str, Path]) -> dict[str, Any]:
    """Score each model directory of ``model_dirs`` on every task: {model: {"tasks": {...},
    "aggregate": {...}}}; empty when the benchmarks are off or list no task."""
    if not cfg.enabled or not cfg.tasks:
        return {}
    import torch

    from chatforge.train.loading import load_model_and_tokenizer

    manager = task_manager(cfg)
    results = {}
    for name, path in model_dirs.items():
        model, tokenizer = load_model_and_tokenizer(Path(path))
        if torch.cuda.is_available():
            model = model.to("cuda")
        tasks = score_model(hf_lm(model, tokenizer, cfg.batch_size), cfg, manager)
        results[name] = {"tasks": tasks, "aggregate": aggregate(tasks)}
        log.info("benchmarks of %s: aggregate %.4f +- %.4f over %d tasks", name,
                 results[name]["aggregate"]["value"], results[name]["aggregate"]["stderr"], len(tasks))
        del model
    return results
