"""Export the policy to ONNX (and a TensorRT engine on a GPU), verified against PyTorch.

Reads export.input (models/policy/); writes export.output (models/export/: model.onnx +
model.onnx.data, the tokenizer, chatforge_export.json; on a CUDA GPU also fp16/ and, with
tensorrt installed, tensorrt/model.plan) and export.report (reports/export.json: logit
difference, greedy match and tokens/s of ONNX Runtime vs PyTorch; the TensorRT status).
A failed verification writes the report, keeps the previous export and fails the stage.
Params: seed, export.
Run: dvc repro export   or   python -m stages.export --set export.max_new_tokens=48
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from chatforge.core.config import load_config
from chatforge.core.files import atomic_dir
from chatforge.core.tracking import setup_logging, stage_run
from chatforge.inference.export import ExportConfig, ExportError, ExportVerificationFailed, export_policy, load_policy
from chatforge.inference.gpu_export import check_tensorrt_requirement, gpu_exports
from chatforge.inference.onnx_runtime import METADATA_FILE
from chatforge.inference.verify import verification_failures, verify_onnx

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Params:
    seed: int
    export: ExportConfig


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    for chatty in ("onnx_ir", "onnxscript"):                    # INFO lines for every graph pass otherwise
        logging.getLogger(chatty).setLevel(logging.WARNING)
    cfg = load_config(Params, argv, description=__doc__)
    ec = cfg.export
    try:
        check_tensorrt_requirement(ec)
        with stage_run("export", cfg) as run, atomic_dir(ec.output) as out:
            model, tokenizer = load_policy(ec.input)
            meta = export_policy(model, tokenizer, out, ec)
            report = {"onnx": verify_onnx(model, tokenizer, out, ec, cfg.seed)}
            report["fp16"], report["tensorrt"] = gpu_exports(ec.input, tokenizer, out, ec, meta, cfg.seed)
            run.log_artifact(out / METADATA_FILE)
            run.report(ec.report, report)            # before any failure, so the numbers are there to read
            if run.run_id:                            # the hash is text, so a tag rather than a metric
                import mlflow

                mlflow.set_tags({"onnx_sha256": meta["sha256"]["model.onnx"], "onnx_opset": str(ec.opset)})
            failures = verification_failures(report)
            if failures:
                raise ExportVerificationFailed("verification failed (figures in " + str(ec.report) + "):\n  "
                                               + "\n  ".join(failures))
    except ExportError as err:
        raise SystemExit(f"export: {err}") from None
    log.info("export: %s verified (max |logit diff| %.2e, greedy match; ONNX Runtime %.0f vs PyTorch %.0f "
             "tokens/s); TensorRT %s", ec.output, report["onnx"]["max_abs_diff"], report["onnx"]["ort_tokens_per_s"],
             report["onnx"]["torch_tokens_per_s"], report["tensorrt"]["status"])


if __name__ == "__main__":
    main()
