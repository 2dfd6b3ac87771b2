"""The report card (reports/report.md): what was built and how good it is, for a newcomer.

Sections: headline table, benchmarks (lm-eval tasks x models, published figures beside), data,
tokenizer, models, reward model, RLHF, registry decision, export, environment, plots. Everything comes from plain dicts (eval.json, the stage reports,
MLflow metric histories), so a test can render it from a tiny run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chatforge.eval.benchmarks import ANCHORS
from chatforge.eval.figures import code_size, fmt, md_table, plot_bars, plot_lines
from chatforge.eval.measurements import EvaluateConfig, pick

Curves = dict[str, list[tuple[float, float]]]


def stage_curves(stage: str, keys: tuple[str, ...]) -> Curves:
    """Per-step metric histories of the latest MLflow run of ``stage`` (empty when there is none)."""
    import mlflow

    client = mlflow.MlflowClient()
    runs = mlflow.search_runs(search_all_experiments=True, filter_string=f"tags.stage = '{stage}'",
                              order_by=["attributes.start_time DESC"], max_results=1, output_format="list")
    if not runs:
        return {}
    return {key: [(m.step, m.value) for m in client.get_metric_history(runs[0].info.run_id, key)]
            for key in keys if key in runs[0].data.metrics}


def stage_wall_seconds(stages: tuple[str, ...]) -> dict[str, float]:
    """Wall time of the latest MLflow run of each stage."""
    import mlflow

    out = {}
    for stage in stages:
        runs = mlflow.search_runs(search_all_experiments=True, filter_string=f"tags.stage = '{stage}'",
                                  order_by=["attributes.start_time DESC"], max_results=1, output_format="list")
        if runs and runs[0].info.end_time:
            out[stage] = round((runs[0].info.end_time - runs[0].info.start_time) / 1000, 1)
    return out


def make_plots(plots_dir: Path, curves: dict[str, Curves], drops: dict[str, float]) -> dict[str, Path]:
    """PNG plots for the report; keys are captions."""
    made = {}
    loss = {f"{stage} {key}": pts for stage in ("pretrain", "sft") for key, pts in curves.get(stage, {}).items()
            if key in ("loss", "eval_loss")}
    if (p := plot_lines(loss, "Training and validation loss", "loss (nats/token)", plots_dir / "loss.png")):
        made["Loss curves (pretrain and SFT)"] = p
    rl = curves.get("rlhf", {})
    if (p := plot_lines({k: v for k, v in rl.items() if "reward" in k}, "RLHF reward", "reward",
                        plots_dir / "rlhf_reward.png")):
        made["Reward over RL steps"] = p
    if (p := plot_lines({k: v for k, v in rl.items() if "kl" in k}, "RLHF KL to the SFT model", "KL",
                        plots_dir / "rlhf_kl.png")):
        made["KL over RL steps"] = p
    if (p := plot_bars(drops, "Records dropped per filter (clean_data)", plots_dir / "clean_drops.png")):
        made["Drops per filter"] = p
    return made


def _cell(score: dict[str, Any] | None) -> str:
    if not score:
        return "–"
    return f"{100 * score['accuracy']:.1f} ± {100 * score['stderr']:.1f} (n={score['samples']})"


def benchmark_table(bench: dict[str, dict[str, Any]]) -> str:
    """Tasks x models (accuracy % ± standard error, docs scored), the random baseline, the published
    figures where a task matches, and the CORE-style aggregate last, with a verdict against chance."""
    models = list(bench)
    tasks = list(dict.fromkeys(t for m in models for t in bench[m]["tasks"]))
    rows = []
    for task in tasks:
        first = next(bench[m]["tasks"][task] for m in models if task in bench[m]["tasks"])
        anchors = "; ".join(f"{who} {v:g}" for who, v in ANCHORS.get(task, {}).items())
        rows.append([task, first["metric"] + (" (chat)" if first.get("chat") else ""), f"{100 * first['random']:.1f}",
                     *[_cell(bench[m]["tasks"].get(task)) for m in models], anchors or "–"])
    aggs = []
    for m in models:
        a = bench[m]["aggregate"]
        verdict = "at chance" if abs(a["value"]) <= 2 * a["stderr"] else ("above chance" if a["value"] > 0 else "below chance")
        aggs.append(f"{a['value']:.3f} ± {a['stderr']:.3f} ({verdict})")
    rows.append(["**aggregate** (CORE-style)", "mean centred accuracy", "0", *aggs,
                 "; ".join(f"{who} {v:g}" for who, v in ANCHORS["aggregate"].items())])
    note = ("Accuracy in % ± its standard error (docs scored), by lm-evaluation-harness. *random* is the accuracy "
            "of guessing (mean 1/choices). The aggregate averages (acc - random) / (1 - random) over the tasks, as "
            "CORE does: 0 is chance, 1 is perfect; *at chance* means within two standard errors of 0. Published "
            "figures are for the models named, on the full task (ours may score a limit of docs).")
    return note + "\n\n" + md_table(["task", "metric", "random", *[m.upper() for m in models], "published"], rows)


def _section(title: str, body: str) -> str:
    return f"## {title}\n\n{body}\n"


def render_report_card(ev: dict[str, Any], reports: dict[str, dict[str, Any]], gate: dict[str, Any] | None,
                       env: dict[str, Any], plots: dict[str, Path], root: Path, report_path: Path,
                       wall_seconds: dict[str, float]) -> str:
    pre, sft, rm, rl = (reports.get(k, {}) for k in ("pretrain", "sft", "train_reward", "rlhf"))
    clean, tok, prep = reports.get("clean_data", {}), reports.get("train_tokenizer", {}), reports.get("prepare_data", {})
    held = ev.get("heldout_chat_loss", {})
    parts = ["# chatforge report card", "",
             f"Commit `{env['git_commit']}` on {env['cpu']} ({env['cpu_cores']} cores), GPU: {env['gpu']}.", ""]

    headline = md_table(["metric", "BASE", "SFT", "RLHF"], [
        ["held-out chat loss (nats/token, assistant tokens)", held.get("base"), held.get("sft"), held.get("policy")],
        ["validation bits per byte (documents)", pick(pre, "val_bpb"), None, None],
        ["unigram baseline bits per byte", pick(pre, "unigram_bpb"), None, None],
        ["SFT validation loss", None, pick(sft, "val_loss", "eval_loss"), None],
        ["held-out judge reward", None, pick(rl, "reward_sft"), pick(rl, "reward_policy")],
        ["win rate vs SFT (judge)", None, None, pick(rl, "win_rate")],
        ["length-controlled win rate", None, None, pick(rl, "win_rate_length_controlled")],
        ["KL to SFT (nats/reply)", None, None, pick(rl, "kl")],
        ["mean reply length (tokens)", None, pick(rl, "length_sft"), pick(rl, "length_policy")],
        ["distinct-2", None, pick(rl, "distinct2_sft"), pick(rl, "distinct2_policy")],
    ])
    parts.append(_section("Headline", headline))
    if ev.get("benchmarks"):
        parts.append(_section("Benchmarks", benchmark_table(ev["benchmarks"])))

    data_rows = [["prepare_data: records in / accepted / rejected", f"{fmt(prep.get('records_in'))} / "
                  f"{fmt(prep.get('records_accepted'))} / {fmt(prep.get('records_rejected'))}"]]
    for kind, splits in (prep.get("outputs") or {}).items():
        data_rows.append([f"raw {kind} (train / validation)", f"{fmt(splits.get('train'))} / {fmt(splits.get('validation'))}"])
    if clean:
        data_rows += [["clean documents in / out", f"{fmt(pick(clean, 'documents.in'))} / {fmt(pick(clean, 'documents.out'))}"],
                      ["clean bytes in / out", f"{fmt(pick(clean, 'bytes.in'))} / {fmt(pick(clean, 'bytes.out'))}"],
                      ["duplicates removed", fmt(clean.get("duplicates"))]]
        data_rows += [[f"dropped by {k}", fmt(v)] for k, v in (clean.get("drops") or {}).items()]
        data_rows += [[f"PII redacted: {k}", fmt(v)] for k, v in (clean.get("pii") or {}).items()]
    data_rows.append(["pretraining tokens", fmt(ev.get("data", {}).get("tokens"))])
    parts.append(_section("Data", md_table(["what", "count"], data_rows)))

    parts.append(_section("Tokenizer", md_table(["what", "value"], [[k, v] for k, v in tok.items()
                                                                     if not isinstance(v, (dict, list))])))
    model_rows = []
    for name, stage, rep in (("base", "pretrain", pre), ("sft", "sft", sft), ("reward", "train_reward", rm),
                             ("policy", "rlhf", rl)):
        model_rows.append([name, pick(rep, "parameters", "params"), pick(rep, "tokens_seen", "train_tokens"),
                           wall_seconds.get(stage), pick(rep, "val_loss", "eval_loss", "accuracy")])
    parts.append(_section("Models", md_table(["model", "parameters", "tokens", "stage wall time (s)",
                                              "loss / accuracy"], model_rows)))
    parts.append(_section("Reward model", md_table(["what", "value"], [
        ["held-out pairwise accuracy (training RM)", pick(rm, "accuracy")],
        ["held-out pairwise accuracy (judge)", pick(rm, "judge_accuracy")],
        ["mean margin (chosen - rejected)", pick(rm, "margin_mean")],
        ["chance", 0.5], ["InstructGPT's 6B RM (for scale)", 0.724]])))
    parts.append(_section("RLHF", md_table(["what", "value"], [[k, v] for k, v in rl.items()
                                                               if not isinstance(v, (dict, list))])))
    if gate:
        parts.append(_section("Registry and gate", md_table(["what", "value"], [
            ["decision", "promoted to champion" if gate["promote"] else "kept as candidate"],
            ["reason", gate["reason"]], ["baseline", gate["baseline"]],
            ["candidate held-out reward", gate["candidate_reward"]], ["baseline held-out reward", gate["baseline_reward"]],
            ["KL", gate["kl"]], ["KL bound", gate["kl_bound"]]]
            + ([["benchmark aggregate (candidate / baseline)", f"{fmt(gate['benchmark']['candidate'])} / "
                 f"{fmt(gate['benchmark']['baseline'])} ({gate['benchmark']['baseline_name']})"],
                ["benchmark regression allowed (standard error)", gate["benchmark"]["tolerance"]]]
               if gate.get("benchmark") else [])
            + [[f"registered {k}", v] for k, v in gate.get("versions", {}).items()])))
    export = reports.get("export")
    if export:
        rows = [[f"onnx {k}", v] for k, v in (export.get("onnx") or {}).items() if not isinstance(v, (dict, list))]
        rows += [[f"tensorrt {k}", v] for k, v in (export.get("tensorrt") or {}).items() if not isinstance(v, (dict, list))]
        parts.append(_section("Export", md_table(["what", "value"], rows)))
    env_rows = [[k, v] for k, v in env["versions"].items()] + [["platform", env["platform"]]]
    env_rows += [[f"lines of Python in {k}/", v] for k, v in code_size(root).items()]
    parts.append(_section("Environment", md_table(["what", "value"], env_rows)))
    if plots:
        body = "\n\n".join(f"**{caption}**\n\n![{caption}]({path.relative_to(report_path.parent).as_posix()})"
                           for caption, path in plots.items())
        parts.append(_section("Plots", body))
    return "\n".join(parts)


def write_report_card(ev: EvaluateConfig, figures: dict[str, Any], reports: dict[str, dict[str, Any]],
                      gate: dict[str, Any] | None, root: Path) -> None:
    """The curves from MLflow, the plots (``ev.plots``, made anew) and ``ev.report_card``."""
    import shutil

    from chatforge.core.files import atomic_write_text
    from chatforge.eval.figures import environment

    curves = {"pretrain": stage_curves("pretrain", ("loss", "eval_loss")),
              "sft": stage_curves("sft", ("loss", "eval_loss")),
              "rlhf": stage_curves("rlhf", ("reward", "proxy_reward", "kl", "train/kl"))}
    if ev.plots.exists():
        shutil.rmtree(ev.plots)
    plots = make_plots(ev.plots, curves, (reports.get("clean_data") or {}).get("drops") or {})
    walls = stage_wall_seconds(("pretrain", "sft", "train_reward", "rlhf"))
    card = render_report_card(figures, reports, gate, environment(root), plots, root, ev.report_card, walls)
    atomic_write_text(ev.report_card, card)
