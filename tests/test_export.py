"""export: the ONNX graph matches PyTorch (logits, cache, greedy tokens, chat replies), the stage writes
a verified export and its report, a graph that does not match fails, and TensorRT is built or its
absence reported.

The stage runs once per module on the tiny 2-layer model (an export takes 10-15 s on 2 cores); the
tests of the graph read that export.
"""

import importlib.util
import json
import shlex
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

CHATS = [
    [{"role": "user", "content": "How are you doing today?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is your favourite book?"},
     {"role": "assistant", "content": "I like science fiction."}, {"role": "user", "content": "Why?"}],
]


def write_params(path: Path, **export) -> Path:
    path.write_text(yaml.safe_dump({"seed": 0, "export": {k: str(v) if isinstance(v, Path) else v
                                                          for k, v in export.items()}}))
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tokenizer, tiny_model_config):
    """The tiny 2-layer model with random weights drawn wider than the default 0.02: at 0.02 the tied
    embeddings make it repeat one token forever, and equal greedy tokens would prove little."""
    from dataclasses import replace

    from chatforge.train.model import build_model

    path = tmp_path_factory.mktemp("export-model")
    build_model(replace(tiny_model_config, initializer_range=0.2), tiny_tokenizer, seed=0).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def staged(tmp_path_factory, model_dir, _mlflow_seed_db):
    """The export stage run once on the tiny model, with a real sqlite MLflow store."""
    import mlflow
    from conftest import forget_mlflow_experiment

    from stages.export import main

    root = tmp_path_factory.mktemp("export-stage")
    shutil.copyfile(_mlflow_seed_db, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    params = write_params(root / "params.yaml", input=model_dir, output=root / "models/export",
                          report=root / "reports/export.json", max_new_tokens=16, benchmark_tokens=8)
    forget_mlflow_experiment()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.chdir(root)
        main(["--params", str(params)])
    mlflow.set_tracking_uri(None)
    forget_mlflow_experiment()
    out = root / "models/export"
    return SimpleNamespace(root=root, out=out, uri=uri, params=params,
                           report=json.loads((root / "reports/export.json").read_text()),
                           meta=json.loads((out / "chatforge_export.json").read_text()))


@pytest.fixture(scope="module")
def torch_model(model_dir):
    from chatforge.inference.export import load_policy

    return load_policy(model_dir)


@pytest.fixture(scope="module")
def ort_step(staged):
    from chatforge.inference.onnx_runtime import OrtStep, load_export

    return OrtStep(*load_export(staged.out))


def test_stage_writes_a_verified_export_and_logs_it(staged, model_dir):
    import onnx
    from mlflow import MlflowClient

    from chatforge.core.hashing import file_sha256

    files = {p.name for p in staged.out.iterdir()}
    assert {"model.onnx", "model.onnx.data", "chatforge_export.json", "tokenizer.json"} <= files
    assert not {"fp16", "tensorrt"} & files or torch.cuda.is_available()
    meta, onnx_report = staged.meta, staged.report["onnx"]
    assert meta["sha256"]["model.onnx"] == file_sha256(staged.out / "model.onnx") == onnx_report["sha256"]
    assert meta["sha256"]["model.onnx.data"] == file_sha256(staged.out / "model.onnx.data")
    config = json.loads((model_dir / "config.json").read_text())
    assert (meta["num_layers"], meta["num_kv_heads"], meta["head_dim"], meta["vocab_size"], meta["context_length"]) == (
        2, 2, 8, config["vocab_size"], 128)
    graph = onnx.load(str(staged.out / "model.onnx"), load_external_data=False)
    assert [o.version for o in graph.opset_import if o.domain == ""] == [18] == [meta["opset"]]
    assert [i.name for i in graph.graph.input] == meta["input_names"]
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.graph.input}
    assert dims["input_ids"] == ["batch", "seq"] and dims["past.1.value"] == ["batch", 2, "past", 8]

    assert onnx_report["max_abs_diff"] < 1e-4 and onnx_report["greedy_match"] is True
    assert onnx_report["greedy_prompts"] == 4 and onnx_report["greedy_tokens"] > 0
    assert set(onnx_report["parity"]) == {"batch1_seq6_past0", "batch3_seq1_past9", "batch2_seq4_past3",
                                          "prompt_prefill", "prompt_decode"}
    assert onnx_report["torch_tokens_per_s"] > 0 and onnx_report["ort_tokens_per_s"] > 0
    assert onnx_report["path"] == str(staged.root / "models/export/model.onnx")

    client = MlflowClient(tracking_uri=staged.uri)
    [run] = client.search_runs([e.experiment_id for e in client.search_experiments()],
                               "tags.stage = 'export'")
    assert run.info.status == "FINISHED"
    assert run.data.metrics["onnx.max_abs_diff"] == onnx_report["max_abs_diff"]
    assert run.data.metrics["onnx.opset"] == 18 and run.data.metrics["onnx.greedy_match"] == 1.0
    assert run.data.tags["onnx_sha256"] == meta["sha256"]["model.onnx"]
    assert "chatforge_export.json" in {a.path for a in client.list_artifacts(run.info.run_id)}


@pytest.mark.parametrize("batch, seq, past", [(1, 6, 0), (3, 1, 9), (2, 4, 3)])
def test_ort_matches_torch_at_prefill_decode_and_mixed_shapes(staged, torch_model, ort_step, batch, seq, past):
    from chatforge.inference.export import flat_kv_decoder

    model, _ = torch_model
    gen = torch.Generator().manual_seed(batch * 100 + seq * 10 + past)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=gen)
    mask = torch.ones(batch, past + seq, dtype=torch.long)
    kv = [torch.randn(batch, 2, past, 8, generator=gen) for _ in range(4)]          # (B, n_kv, P, Dh)
    with torch.no_grad():
        want_logits, *want_cache = flat_kv_decoder(model)(ids, mask, *kv)
    logits, cache = ort_step(ids, mask, ort_step.cache_from_torch(kv) if past else None)
    assert logits.shape == (batch, seq, model.config.vocab_size) and logits.dtype == torch.float32
    assert float((logits - want_logits).abs().max()) < 1e-4
    for got, want in zip(cache, want_cache):
        assert got.shape == (batch, 2, past + seq, 8)
        assert float(np.abs(got - want.numpy()).max()) < 1e-4


def test_left_padding_matches_on_real_positions(torch_model, ort_step):
    """A padded row's real positions agree (padded query positions are garbage in both)."""
    from chatforge.inference.export import flat_kv_decoder
    from chatforge.inference.verify import max_diff

    model, _ = torch_model
    ids = torch.randint(0, model.config.vocab_size, (2, 6), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[0, :3] = 0
    with torch.no_grad():
        want, *_ = flat_kv_decoder(model)(ids, mask)
    got, _ = ort_step(ids, mask, None)
    assert max_diff(got, want, mask) < 1e-4


def test_greedy_and_beam_search_through_ort_match_torch(torch_model, ort_step):
    from chatforge.inference.decoding import DecodingConfig, TorchStep, beam_search
    from chatforge.inference.verify import greedy_generate, greedy_loop
    from chatforge.train.chat_format import encode_chat

    model, tokenizer = torch_model
    eos = tokenizer.eos_token_id
    for chat in CHATS:
        prompt = encode_chat(chat, tokenizer, 128, add_generation_prompt=True).input_ids
        want = greedy_generate(model, prompt, 20, eos)
        assert len(set(want)) > 3 and greedy_loop(ort_step, prompt, 20, eos) == want
        beams = DecodingConfig(max_new_tokens=12, num_beams=3)           # exercises OrtStep.reorder
        assert beam_search(ort_step, prompt, beams, {eos}) == beam_search(TorchStep(model), prompt, beams, {eos})


def test_chat_model_from_the_export_replies_like_torch(staged, model_dir):
    from chatforge.inference.decoding import DecodingConfig, load_chat_model

    onnx_chat, torch_chat = load_chat_model(staged.out, onnx=True), load_chat_model(model_dir)
    assert onnx_chat.context_length == torch_chat.context_length == 128
    cfg = DecodingConfig(max_new_tokens=16)
    for chat in CHATS:
        got, want = onnx_chat.complete(chat, cfg), torch_chat.complete(chat, cfg)
        assert got.token_ids and (got.text, got.token_ids, got.finish_reason) == (
            want.text, want.token_ids, want.finish_reason)


def test_ort_step_rejects_a_mask_that_does_not_cover_past_and_new(ort_step):
    past = ort_step.cache_from_torch([torch.zeros(1, 2, 3, 8)] * 4)
    with pytest.raises(ValueError, match=r"expected \(batch, past \+ new\) = \(1, 3 \+ 1\)"):
        ort_step(torch.tensor([[5]]), torch.ones(1, 2, dtype=torch.long), past)


def test_a_graph_with_wrong_weights_fails_verification(staged, torch_model, tmp_path):
    """Perturb the exported embedding (tied to the LM head): the checks must catch it."""
    import onnx
    from onnx import numpy_helper

    from chatforge.inference.export import ExportConfig
    from chatforge.inference.verify import verification_failures, verify_onnx

    model, tokenizer = torch_model
    bad = tmp_path / "bad"
    shutil.copytree(staged.out, bad)
    graph = onnx.load(str(bad / "model.onnx"))
    weight = max(graph.graph.initializer, key=lambda t: np.prod(t.dims))           # (V, H) embedding
    array = numpy_helper.to_array(weight)
    weight.CopyFrom(numpy_helper.from_array(array + np.random.default_rng(0).normal(0, 0.5, array.shape)
                                            .astype(array.dtype), weight.name))
    (bad / "model.onnx.data").unlink()
    onnx.save_model(graph, str(bad / "model.onnx"), save_as_external_data=True, location="model.onnx.data")
    cfg = ExportConfig(input=Path("unused"), output=bad, prompts=CHATS, max_new_tokens=12, benchmark_tokens=4)
    onnx_report = verify_onnx(model, tokenizer, bad, cfg, seed=0)
    failures = verification_failures({"onnx": onnx_report, "tensorrt": {"status": "skipped"}})
    assert onnx_report["max_abs_diff"] > 0.1 and not onnx_report["greedy_match"]
    assert len(failures) == 2 and "above the tolerance" in failures[0] and "greedy tokens differ" in failures[1]


def test_stage_fails_with_the_report_written_and_the_previous_export_kept(staged, model_dir, tmp_path,
                                                                          monkeypatch, mlflow_uri):
    """A tolerance below the diff this model really has (the module's run measured it) fails the stage."""
    from stages.export import main

    measured = staged.report["onnx"]["max_abs_diff"]
    assert measured > 0, "ONNX Runtime matched PyTorch bit for bit: this provocation needs another model"
    monkeypatch.chdir(tmp_path)
    out, report = tmp_path / "models/export", tmp_path / "reports/export.json"
    out.mkdir(parents=True)
    (out / "previous.txt").write_text("the last verified export")
    params = write_params(tmp_path / "params.yaml", input=model_dir, output=out, report=report,
                          max_new_tokens=4, benchmark_tokens=2, tolerance=measured / 2)
    with pytest.raises(SystemExit) as err:
        main(["--params", str(params)])
    message = str(err.value.code)
    assert message.startswith("export: verification failed") and str(report) in message
    assert "above the tolerance" in message and "Traceback" not in message
    written = json.loads(report.read_text())["onnx"]
    assert written["tolerance"] == measured / 2 < written["max_abs_diff"]
    assert [p.name for p in out.iterdir()] == ["previous.txt"]


def expected_tensorrt_reason() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return "tensorrt is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    return None


def test_tensorrt_skipped_is_reported_with_a_working_command(staged):
    from chatforge.core.config import load_params_file
    from stages.export import Params

    reason = expected_tensorrt_reason()
    if reason is None:
        pytest.skip("tensorrt and a CUDA GPU are here: test_tensorrt_engine_is_built_and_matches covers it")
    trt = staged.report["tensorrt"]
    assert trt["status"] == "skipped" and trt["reason"] == reason
    assert "pypi.nvidia.com" in trt["command"] and "python -m stages.export" in trt["command"]
    overrides = shlex.split(trt["command"].split("python -m stages.export", 1)[1])
    assert overrides[0] == "--set"
    assert load_params_file(Params, staged.params, overrides[1::2]).export.tensorrt == "required"
    fp16 = staged.report["fp16"]
    assert fp16["exported"] is torch.cuda.is_available()
    if not fp16["exported"]:
        assert "no CUDA GPU" in fp16["reason"]
    assert "tensorrt" not in staged.meta


def test_tensorrt_required_without_it_fails_before_any_work(tmp_path, model_dir):
    from chatforge.inference.export import ExportConfig
    from chatforge.inference.gpu_export import tensorrt_unavailable
    from stages.export import main

    assert tensorrt_unavailable(ExportConfig(tensorrt="off")) == "export.tensorrt is off"
    reason = expected_tensorrt_reason()
    if reason is None:
        pytest.skip("tensorrt and a CUDA GPU are here")
    out = tmp_path / "export"
    params = write_params(tmp_path / "params.yaml", input=model_dir, output=out, report=tmp_path / "r.json")
    with pytest.raises(SystemExit) as err:
        main(["--params", str(params), "--set", "export.tensorrt=required"])
    assert f"'required' but {reason}" in str(err.value.code) and not out.exists()


@pytest.mark.gpu
def test_tensorrt_engine_is_built_and_matches(tmp_path, model_dir, monkeypatch, mlflow_uri):
    pytest.importorskip("tensorrt")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from stages.export import main

    monkeypatch.chdir(tmp_path)
    out, report = tmp_path / "export", tmp_path / "export.json"
    params = write_params(tmp_path / "params.yaml", input=model_dir, output=out, report=report,
                          max_new_tokens=16, benchmark_tokens=8, tensorrt="required")
    main(["--params", str(params)])
    written = json.loads(report.read_text())
    trt, meta = written["tensorrt"], json.loads((out / "chatforge_export.json").read_text())
    assert written["fp16"]["exported"] and (out / "fp16/model.onnx").exists()
    assert trt["status"] == "built" and (out / "tensorrt/model.plan").exists()
    assert trt["max_abs_diff"] <= trt["tolerance"] and trt["greedy_match"] and trt["tokens_per_s"] > 0
    assert meta["tensorrt"]["sha256"] == trt["sha256"]
