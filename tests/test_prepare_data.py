"""prepare_data: every input format, determinism, disjoint uses, and bad input that is never lost."""

import json
from pathlib import Path

import pytest

from chatforge.core.files import InputError, read_jsonl
from chatforge.data.ingest import PrepareDataConfig, SourceConfig, ingest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HH_FILE = SHARED_DATA / "hh-rlhf-harmless-base-test.jsonl.gz"


def config(*sources, **kw):
    return PrepareDataConfig(sources=list(sources), **kw)


def write_lines(path: Path, lines: list) -> Path:
    path.write_bytes(b"".join((l if isinstance(l, bytes) else json.dumps(l).encode()) + b"\n" for l in lines))
    return path


def test_chitchat_is_deterministic_disjoint_and_complete():
    cfg = config(SourceConfig(kind="chitchat", limit=400))
    a, b = ingest(cfg, seed=1), ingest(cfg, seed=1)
    assert a.records == b.records                              # same seed, same output
    assert ingest(cfg, seed=2).records != a.records            # the seed matters
    counts = a.counts()
    assert counts["records_in"] == 400 == counts["records_accepted"] + counts["records_rejected"]
    conv_of = lambda rec: rec["id"].split("#")[0]
    owners = {}
    for kind, recs in a.records.items():
        assert recs, f"no {kind} from 400 chitchat conversations"
        for rec in recs:
            assert rec["split"] in ("train", "validation")
            assert owners.setdefault(conv_of(rec), kind) == kind, "a conversation feeds two uses"
    # chitchat's one-message conversations (nobody replied) are rejected with a reason, not dropped
    assert all(r.reason == "conversation has no assistant turn" or "empty" in r.reason for r in a.rejected)
    # next-reply pairs: chosen is the real reply; rejected is another conversation's reply
    replies = {}
    for pref in a.records["preferences"]:
        replies.setdefault(pref["chosen"], conv_of(pref))
    for pref in a.records["preferences"]:
        assert pref["prompt"][-1]["role"] == "user" and pref["chosen"] != pref["rejected"]
        assert replies.get(pref["rejected"], "other") != conv_of(pref)
    for prompt in a.records["prompts"]:
        assert prompt["messages"][-1]["role"] == "user"


def test_several_prompts_and_pairs_per_conversation_stay_in_one_split():
    cfg = config(SourceConfig(kind="chitchat", limit=400), pairs_per_conversation=4, prompts_per_conversation=3)
    a = ingest(cfg, seed=1)
    one = ingest(config(SourceConfig(kind="chitchat", limit=400)), seed=1)
    for kind, most in (("prompts", 3), ("preferences", 4)):
        recs = a.records[kind]
        assert len({r["id"] for r in recs}) == len(recs)                      # one id per cut
        by_conv = {}
        for r in recs:
            by_conv.setdefault(r["id"].split("#")[0], []).append(r)
        assert max(map(len, by_conv.values())) == most and len(recs) > len(one.records[kind])
        for cuts in by_conv.values():
            assert len({r["split"] for r in cuts}) == 1                       # the split goes by conversation
            ends = [r.get("messages") or r["prompt"] for r in cuts]
            assert all(m[-1]["role"] == "user" for m in ends) and len({len(m) for m in ends}) == len(cuts)


def test_streaming_to_files_writes_what_ingest_returns(tmp_path):
    """The stage's streaming path (records to files as they are read) against the in-memory result."""
    from chatforge.data.ingest import ingest_to_files

    cfg = config(SourceConfig(kind="chitchat", limit=300), output_dir=tmp_path / "raw", rejects=tmp_path / "rej.jsonl")
    expected = ingest(cfg, seed=3)
    counts = ingest_to_files(cfg, seed=3).report()
    assert counts == expected.counts()
    for kind, records in expected.records.items():
        assert read_jsonl(tmp_path / "raw" / f"{kind}.jsonl") == records
    assert read_jsonl(tmp_path / "rej.jsonl") == [r.to_json() for r in expected.rejected]
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == [f"{k}.jsonl" for k in sorted(expected.records)]


def test_next_reply_pool_past_its_capacity_still_pairs_every_reply_with_another_conversation():
    cfg = lambda pool: config(SourceConfig(kind="chitchat", limit=400), pairs_per_conversation=4, reply_pool=pool)
    full, bounded = ingest(cfg(100_000), seed=1), ingest(cfg(40), seed=1)
    prefs, small = full.records["preferences"], bounded.records["preferences"]
    assert len(prefs) > 100                                               # the pool of 40 is far smaller
    # the same pairs in the same order, only the rejected replies differ, each from a pool of 40 per split
    assert [(p["id"], p["chosen"]) for p in small] == [(p["id"], p["chosen"]) for p in prefs]
    assert sum(a["rejected"] != b["rejected"] for a, b in zip(prefs, small)) > len(prefs) // 2
    reply_conv = {p["chosen"]: p["id"].split("#")[0] for p in prefs}
    drawn = {split: {p["rejected"] for p in small if p["split"] == split} for split in ("train", "validation")}
    assert 10 < len(drawn["train"]) <= 40 and len(drawn["validation"]) <= 40
    for p in small:
        assert p["rejected"] != p["chosen"] and reply_conv.get(p["rejected"]) != p["id"].split("#")[0]


def test_reply_pool_is_a_uniform_reservoir():
    import random

    from chatforge.data.negatives import ReplyPool

    hits = [0] * 100
    for trial in range(2000):
        pool = ReplyPool(10, random.Random(trial))
        for i in range(100):
            pool.add(f"c{i}", f"r{i}")
        assert len(pool.items) == 10 and pool.seen == 100
        for conv, _ in pool.items:
            hits[int(conv[1:])] += 1
    assert min(hits) > 120 and max(hits) < 290          # each reply kept with p = 0.1: ~200 of 2,000 (sd 13)


def test_seen_ids_are_exact_across_merges():
    from chatforge.data.seen import SeenIds

    seen = SeenIds(buffer=7)                      # merges into the sorted array every 7 new ids
    assert all(seen.add(f"id-{i}") for i in range(100))
    assert not any(seen.add(f"id-{i}") for i in range(100)) and len(seen) == 100
    assert seen.add("id-100") and not seen.add("id-100")


def test_every_file_format(tmp_path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("A whole text file is one document.\nSecond line.")
    (folder / "sub" / "page.html").write_text("<html><body><p>Raw HTML stays for clean_data.</p></body></html>")
    write_lines(folder / "mixed.jsonl", [
        {"id": "d1", "text": "a document", "source": "web"},
        {"id": "c1", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},      # ShareGPT
        {"id": "p1", "prompt": [{"role": "user", "content": "x?"}], "chosen": "good", "rejected": "bad"},
        {"prompt": "Explain DVC.", "chosen": "It versions data.", "rejected": "No."},                # TRL standard
        {"chosen": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],     # TRL conversational
         "rejected": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "5"}]},
        {"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "a"}],
         "rejected": [{"role": "assistant", "content": "b"}]},                                       # TRL explicit prompt
        {"id": "q1", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]},
    ])
    result = ingest(config(SourceConfig(kind="path", path=str(folder))), seed=0)
    assert not result.rejected
    r = result.records
    assert len(r["documents"]) == 3 and len(r["conversations"]) == 2 and len(r["prompts"]) == 1
    assert len(r["preferences"]) == 4
    texts = {d["text"] for d in r["documents"]}
    assert any(t.startswith("<html>") for t in texts)
    trl = next(p for p in r["preferences"] if p["chosen"] == "4")
    assert trl["prompt"] == [{"role": "user", "content": "2+2?"}] and trl["rejected"] == "5"
    assert r["conversations"][1]["messages"][0] == {"role": "user", "content": "q"}


@pytest.mark.skipif(not HH_FILE.exists(), reason="shared HH data not present")
def test_anthropic_hh_file():
    result = ingest(config(SourceConfig(kind="path", path=str(HH_FILE), limit=300)), seed=0)
    counts = result.counts()
    assert counts["records_in"] == 300 == counts["records_accepted"] + counts["records_rejected"]
    prefs = result.records["preferences"]
    assert len(prefs) > 250
    for p in prefs:
        assert p["prompt"][0]["role"] == "user" and p["prompt"][-1]["role"] == "user"
        assert "\n\nHuman:" not in p["chosen"] and p["chosen"] != p["rejected"]
    for rej in result.rejected:                                   # real HH has a few odd pairs
        assert rej.source.endswith(".jsonl.gz") and rej.line > 0 and rej.reason


def test_bad_records_go_to_rejects_with_line_and_reason(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", [
        {"id": "ok", "text": "fine"},
        b'{"id": "broken", "text": ',                                      # line 2: not JSON
        {"id": "x", "text": 42},                                           # line 3: wrong type
        {"id": "y"},                                                       # line 4: no fields of any kind
        b'{"id": "z", "text": "caf\xe9"}',                                 # line 5: Latin-1, not UTF-8
        b"[1, 2]",                                                         # line 6: not an object
        {"chosen": "same", "rejected": "same", "prompt": "p"},             # line 7: identical replies
        {"id": "ok", "text": "duplicate id"},                              # line 8: duplicate id
        {"messages": [{"role": "wizard", "content": "hi"}]},               # line 9: bad role
    ])
    result = ingest(config(SourceConfig(kind="path", path=str(path))), seed=0)
    reasons = {r.line: r.reason for r in result.rejected}
    assert sorted(reasons) == [2, 3, 4, 5, 6, 7, 8, 9]
    assert "invalid JSON" in reasons[2] and "'text' must be a string" in reasons[3]
    assert "cannot tell the record's kind" in reasons[4] and "not UTF-8" in reasons[5]
    assert "expected a JSON object" in reasons[6] and "identical" in reasons[7]
    assert "duplicate id" in reasons[8] and "role must be one of" in reasons[9]
    counts = result.counts()
    assert counts["records_in"] == 9 and counts["records_accepted"] == 1 and counts["records_rejected"] == 8


def test_binary_and_non_utf8_text_files_are_rejected_not_lost(tmp_path):
    (tmp_path / "bin.txt").write_bytes(b"\x00\x01\x02binary")
    (tmp_path / "latin.txt").write_bytes("caf\xe9".encode("latin-1"))
    result = ingest(config(SourceConfig(kind="path", path=str(tmp_path))), seed=0)
    assert {Path(r.source).name: r.reason.split(" (")[0] for r in result.rejected} == {
        "bin.txt": "binary file", "latin.txt": "not UTF-8"}


def test_unreadable_inputs_are_clear_errors(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(InputError, match=r"empty.jsonl: file is empty"):
        ingest(config(SourceConfig(kind="path", path=str(tmp_path / "empty.jsonl"))), seed=0)
    with pytest.raises(InputError, match=r"missing: no such file or folder"):
        ingest(config(SourceConfig(kind="path", path=str(tmp_path / "missing"))), seed=0)
    (tmp_path / "bad.jsonl.gz").write_bytes(b"not gzip at all")
    with pytest.raises(InputError, match=r"bad.jsonl.gz: not a readable gzip file"):
        ingest(config(SourceConfig(kind="path", path=str(tmp_path / "bad.jsonl.gz"))), seed=0)


def test_hugging_face_dataset_from_local_path(tmp_path):
    folder = tmp_path / "hfdata"
    folder.mkdir()
    rows = [{"content": f"document number {i}", "url": f"u{i}"} for i in range(20)]
    write_lines(folder / "train.jsonl", rows)
    src = SourceConfig(kind="hf", path=str(folder), hf_split="train", text_field="content", data_kind="documents")
    result = ingest(config(src, validation_fraction=0.25), seed=0)
    docs = result.records["documents"]
    assert len(docs) == 20 and {d["text"] for d in docs} == {r["content"] for r in rows}
    assert {d["split"] for d in docs} == {"train", "validation"}
    with pytest.raises(InputError, match="could not load split 'test'"):
        ingest(config(SourceConfig(kind="hf", path=str(folder), hf_split="test")), seed=0)


def test_stage_writes_outputs_report_rejects_and_mlflow_run(tmp_path, monkeypatch, mlflow_uri):
    import mlflow

    from stages.prepare_data import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "inputs").mkdir()
    write_lines(tmp_path / "inputs/extra.jsonl", [{"text": "an extra document"}, b"{oops"])
    (tmp_path / "params.yaml").write_text(
        "seed: 7\nprepare_data:\n  sources:\n    - {kind: chitchat, limit: 200}\n"
        "    - {kind: path, path: inputs/extra.jsonl}\n")
    main([])
    for kind in ("documents", "conversations", "preferences", "prompts"):
        assert read_jsonl(tmp_path / "data/raw" / f"{kind}.jsonl")
    report = json.loads((tmp_path / "reports/prepare_data.json").read_text())
    rejects = read_jsonl(tmp_path / "data/rejected/prepare_data.jsonl")
    assert report["records_in"] == 202 == report["records_accepted"] + report["records_rejected"]
    assert len(rejects) == report["records_rejected"] + report["derived_rejected"]
    assert {"source": "inputs/extra.jsonl", "line": 2} == {k: rejects[-1][k] for k in ("source", "line")}
    run = mlflow.search_runs(experiment_names=["chatforge"], output_format="list")[0]
    assert run.info.run_name == "prepare_data" and run.data.tags["stage"] == "prepare_data"
    assert run.data.metrics["records_in"] == 202 and run.data.params["prepare_data.validation_fraction"] == "0.1"


def test_stage_refuses_a_path_source_dvc_cannot_see(tmp_path, monkeypatch):
    from stages.prepare_data import main

    monkeypatch.chdir(tmp_path)
    write_lines(tmp_path / "elsewhere.jsonl", [{"text": "a document"}])
    (tmp_path / "inputs").mkdir()
    (tmp_path / "inputs/linked").symlink_to(tmp_path)           # DVC does not follow links: still outside
    (tmp_path / "params.yaml").write_text(
        "seed: 7\nprepare_data:\n  sources:\n    - {kind: path, path: elsewhere.jsonl}\n"
        "    - {kind: path, path: inputs/linked/../elsewhere.jsonl}\n")
    with pytest.raises(InputError, match=r"outside prepare_data.inputs_dir 'inputs'"):
        main([])
    assert not (tmp_path / "data").exists()


def test_editing_a_path_source_file_makes_dvc_rerun_prepare_data(tmp_path, mlflow_uri, monkeypatch):
    """A real DVC repo (a copy of this one): after a repro, editing a file a path source reads makes
    `dvc status` report prepare_data changed, and nothing else in the file list does."""
    import os
    import subprocess
    import sys

    import yaml

    from tests.test_pipeline_e2e import copy_repo

    root = copy_repo(tmp_path / "repo")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["prepare_data"]["sources"] = [{"kind": "chitchat", "limit": 60}, {"kind": "path", "path": "inputs/web"}]
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / "inputs/web").mkdir()
    write_lines(root / "inputs/web/pages.jsonl", [{"text": f"page {i} about gardens"} for i in range(3)])
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)                      # the copy's own code, not this checkout's
    dvc = lambda *a: subprocess.run([sys.executable, "-m", "dvc", *a], cwd=root, env=env, capture_output=True,
                                    text=True, check=True).stdout
    assert (root / ".dvc").is_dir()                  # the copy is a DVC repo like this one
    dvc("repro", "prepare_data")
    assert "prepare_data" not in dvc("status", "prepare_data")
    write_lines(root / "inputs/web/pages.jsonl", [{"text": f"page {i} about roses"} for i in range(3)])
    status = dvc("status", "prepare_data")
    assert "prepare_data" in status and "inputs" in status and "modified" in status


def test_hugging_face_source_streams_a_named_subset_and_split_up_to_its_limit(tmp_path):
    """A local dataset laid out like FineWeb-Edu on the hub: named configs (subsets) declared in the
    dataset card, each with its own files; the source picks one subset and split, and `limit` stops."""
    folder = tmp_path / "hfdata"
    for subset in ("sample-a", "sample-b"):
        (folder / subset).mkdir(parents=True)
        write_lines(folder / subset / "train-00000.jsonl",
                    [{"text": f"{subset} document {i}", "id": f"{subset}-{i}"} for i in range(2000)])
    (folder / "README.md").write_text(
        "---\nconfigs:\n" + "".join(f"- config_name: {s}\n  data_files:\n  - split: train\n    path: {s}/*.jsonl\n"
                                    for s in ("sample-a", "sample-b")) + "---\n")
    src = SourceConfig(kind="hf", path=str(folder), hf_config="sample-b", hf_split="train", limit=7,
                       data_kind="documents")
    result = ingest(config(src), seed=0)
    docs = result.records["documents"]
    assert result.counts()["records_in"] == 7 and [d["id"] for d in docs] == [f"sample-b-{i}" for i in range(7)]
    with pytest.raises(InputError, match=r"\(config 'sample-c'\): could not load split 'train'"):
        ingest(config(SourceConfig(kind="hf", path=str(folder), hf_config="sample-c")), seed=0)
