"""Preference readers on every accepted format (ours, Anthropic HH, TRL standard and
conversational, explicit and implicit prompt; .jsonl and .jsonl.gz), and the disjoint splits."""

import gzip
import json
from pathlib import Path

from chatforge.data.preferences import read_preferences, read_prompts, split_preferences

OURS = {"id": "c1#1", "prompt": [{"role": "user", "content": "Hi there"}], "chosen": "Hello!", "rejected": "Go away.",
        "split": "train"}
HH = {"chosen": "\n\nHuman: Hi there\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi there\n\nAssistant: Go away."}
TRL_STANDARD = {"prompt": "Hi there", "chosen": "Hello!", "rejected": "Go away."}
TRL_CONV_EXPLICIT = {"prompt": [{"role": "user", "content": "Hi there"}],
                     "chosen": [{"role": "assistant", "content": "Hello!"}],
                     "rejected": [{"role": "assistant", "content": "Go away."}]}
TRL_CONV_IMPLICIT = {"chosen": [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}],
                     "rejected": [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Go away."}]}
EXPECTED = {"prompt": [{"role": "user", "content": "Hi there"}], "chosen": "Hello!", "rejected": "Go away."}


def write(path: Path, records, gz=False):
    text = "".join(json.dumps(r) + "\n" for r in records)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_every_format_reads_to_the_same_pair(tmp_path):
    for i, rec in enumerate([OURS, HH, TRL_STANDARD, TRL_CONV_EXPLICIT, TRL_CONV_IMPLICIT]):
        loaded = read_preferences(write(tmp_path / f"p{i}.jsonl", [rec]))
        assert not loaded.rejected
        got = loaded.records[0]
        assert {k: got[k] for k in EXPECTED} == EXPECTED, rec
    assert read_preferences(tmp_path / "p0.jsonl").records[0]["split"] == "train"     # a given split is kept


def test_multi_turn_hh_and_gzip(tmp_path):
    hh = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Tell me a joke\n\nAssistant: Why did the chicken...",
          "rejected": "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Tell me a joke\n\nAssistant: No."}
    loaded = read_preferences(write(tmp_path / "hh.jsonl.gz", [hh, HH], gz=True))
    first = loaded.records[0]
    assert [m["role"] for m in first["prompt"]] == ["user", "assistant", "user"]
    assert first["chosen"] == "Why did the chicken..." and first["rejected"] == "No."
    assert len(loaded.records) == 2 and first["id"].startswith("pref-")


def test_bad_records_are_rejected_with_a_reason(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join([
        json.dumps(OURS),
        "{not json",
        json.dumps({"prompt": "x", "chosen": "same", "rejected": "same"}),
        json.dumps({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: c\n\nAssistant: d"}),
        json.dumps({"prompt": "x", "chosen": "y"}),
    ]) + "\n", encoding="utf-8")
    loaded = read_preferences(path)
    assert len(loaded.records) == 1
    reasons = {r.line: r.reason for r in loaded.rejected}
    assert "invalid JSON" in reasons[2] and "identical" in reasons[3]
    assert "same prompt" in reasons[4] and "missing field 'rejected'" in reasons[5]


def test_prompts_reader(tmp_path):
    loaded = read_prompts(write(tmp_path / "prompts.jsonl", [
        {"id": "p1", "messages": [{"role": "user", "content": "Hi"}], "split": "validation"},
        {"prompt": "Plain text prompt"},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "ends with a reply"}]},
    ]))
    assert [r.get("split") for r in loaded.records] == ["validation", None]
    assert loaded.records[1]["messages"] == [{"role": "user", "content": "Plain text prompt"}]
    assert len(loaded.rejected) == 1
    # A preference file read as prompts: each pair's prompt, under the pair's own id (so it splits alike).
    pairs = write(tmp_path / "pairs.jsonl", [HH, OURS])
    as_prompts, as_pairs = read_prompts(pairs).records, read_preferences(pairs).records
    assert [r["messages"] for r in as_prompts] == [EXPECTED["prompt"]] * 2
    assert [r["id"] for r in as_prompts] == [r["id"] for r in as_pairs] and as_prompts[1]["split"] == "train"


def test_splits_are_disjoint_by_conversation_and_deterministic():
    records = [{"id": f"conv{c}#{t}", "prompt": [], "chosen": "a", "rejected": "b"} for c in range(200) for t in (1, 3)]
    parts = split_preferences(records, seed=7, judge_fraction=0.5, validation_fraction=0.1)
    convs = [{r["id"].split("#")[0] for r in part} for part in (parts.reward, parts.judge, parts.validation)]
    assert not (convs[0] & convs[1]) and not (convs[0] & convs[2]) and not (convs[1] & convs[2])
    assert sum(len(p) for p in (parts.reward, parts.judge, parts.validation)) == len(records)
    assert 0.3 < len(parts.judge) / len(records) < 0.6 and parts.validation
    again = split_preferences(records, seed=7, judge_fraction=0.5, validation_fraction=0.1)
    assert again.judge == parts.judge
    # A record's own split wins over the hash.
    pinned = split_preferences([{**records[0], "split": "validation"}], 7, 0.5, 0.1)
    assert pinned.validation and not pinned.reward and not pinned.judge
