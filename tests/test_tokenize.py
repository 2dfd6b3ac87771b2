"""The tokenize stage: documents (a file or shards) -> token shards + index, report and MLflow run."""

import json

import numpy as np

from chatforge.core.files import write_shards


def test_stage_tokenizes_a_shard_directory_into_an_index_that_adds_up(tmp_path, monkeypatch, mlflow_uri,
                                                                      tiny_tokenizer):
    import mlflow

    from stages.tokenize import main

    monkeypatch.chdir(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    docs = [{"id": f"d{i}", "text": f"The weather is lovely today, walk number {i}.", "source": "t",
             "split": "validation" if i % 4 == 0 else "train"} for i in range(30)]
    docs.append({"id": "empty", "text": "", "source": "t", "split": "train"})
    write_shards(tmp_path / "documents", docs, records_per_shard=8)                 # 4 .jsonl.gz shards
    (tmp_path / "params.yaml").write_text(
        "tokenize:\n  input: documents\n  tokenizer: tok\n  output: tokens\n  report: tokenize.json\n"
        "  executor: {tasks: 3, workers: 1, work_dir: work}\n")
    main([])
    index = json.loads((tmp_path / "tokens/index.json").read_text())
    report = json.loads((tmp_path / "tokenize.json").read_text())
    assert index["dtype"] == report["dtype"] == "uint16" and index["vocab_size"] == len(tiny_tokenizer)
    assert report["train"]["documents"] == 22 and report["validation"]["documents"] == 8   # the empty one skipped
    for split, entry in index["splits"].items():
        assert len(entry["shards"]) == 3
        on_disk = sum((tmp_path / "tokens" / split / s["file"]).stat().st_size // 2 for s in entry["shards"])
        assert on_disk == entry["tokens"] == report[split]["tokens"]
    expected = sum(len(tiny_tokenizer(d["text"], add_special_tokens=False)["input_ids"]) + 1 for d in docs
                   if d["text"] and d["split"] == "train")
    assert index["splits"]["train"]["tokens"] == expected
    first = np.fromfile(tmp_path / "tokens/train/00000.bin", np.uint16)
    assert first[0] == tiny_tokenizer.bos_token_id
    assert not (tmp_path / "work").exists()                                           # scratch removed
    run = mlflow.search_runs(experiment_names=["chatforge"], output_format="list")[0]
    assert run.info.run_name == "tokenize" and run.data.metrics["train.tokens"] == expected
