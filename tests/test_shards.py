"""Shard directories: every JSONL reader takes a file or a directory of shards, and the writer bounds a shard."""

import gzip
import json

import pytest

from chatforge.core.files import InputError, Rejected, ShardWriter, iter_jsonl, read_jsonl, write_jsonl, write_shards
from chatforge.data.preferences import read_preferences
from chatforge.data.records import documents_by_split


def _docs(n):
    return [{"id": f"d{i}", "text": f"document number {i}", "source": "t", "split": "validation" if i % 5 == 0
             else "train"} for i in range(n)]


def test_shard_writer_bounds_shards_and_reads_back_in_order(tmp_path):
    docs = _docs(23)
    assert write_shards(tmp_path / "docs", docs, records_per_shard=10) == 23
    shards = sorted(p.name for p in (tmp_path / "docs").iterdir())
    assert shards == ["00000.jsonl.gz", "00001.jsonl.gz", "00002.jsonl.gz"]
    with gzip.open(tmp_path / "docs" / "00002.jsonl.gz", "rt") as fh:
        assert len(fh.readlines()) == 3
    assert read_jsonl(tmp_path / "docs") == docs


def test_same_records_give_the_same_shard_bytes(tmp_path):
    write_shards(tmp_path / "a", _docs(5))
    write_shards(tmp_path / "b", _docs(5))
    assert (tmp_path / "a/00000.jsonl.gz").read_bytes() == (tmp_path / "b/00000.jsonl.gz").read_bytes()


def test_a_file_and_a_shard_directory_read_the_same(tmp_path):
    docs = _docs(12)
    write_jsonl(tmp_path / "documents.jsonl", docs)
    write_shards(tmp_path / "documents", docs, records_per_shard=4)
    assert documents_by_split(tmp_path / "documents.jsonl") == documents_by_split(tmp_path / "documents")


def test_preference_reader_takes_a_shard_directory(tmp_path):
    pairs = [{"id": f"p{i}", "prompt": [{"role": "user", "content": f"question {i}"}], "chosen": "yes",
              "rejected": "no", "split": "train"} for i in range(7)]
    write_shards(tmp_path / "prefs", pairs, records_per_shard=3)
    loaded = read_preferences(tmp_path / "prefs")
    assert [r["id"] for r in loaded.records] == [p["id"] for p in pairs] and not loaded.rejected


def test_a_bad_line_in_a_shard_names_the_shard_and_line(tmp_path):
    write_shards(tmp_path / "docs", _docs(4), records_per_shard=2)
    with gzip.open(tmp_path / "docs/00001.jsonl.gz", "at") as fh:
        fh.write("{not json\n")
    items = list(iter_jsonl(tmp_path / "docs"))
    bad = [item for _, item in items if isinstance(item, Rejected)]
    assert len(bad) == 1 and bad[0].source.endswith("00001.jsonl.gz") and bad[0].line == 3
    with pytest.raises(InputError, match=r"00001.jsonl.gz:3: invalid JSON"):
        read_jsonl(tmp_path / "docs")


def test_hidden_temporaries_are_not_shards_and_an_empty_directory_is_an_error(tmp_path):
    (tmp_path / "docs").mkdir()
    with pytest.raises(InputError, match="has no .jsonl or .jsonl.gz shards"):
        read_jsonl(tmp_path / "docs")
    (tmp_path / "docs/.00000.jsonl.gz.tmp").write_text(json.dumps({"id": "x"}))
    with pytest.raises(InputError, match="has no .jsonl or .jsonl.gz shards"):
        read_jsonl(tmp_path / "docs")


def test_an_empty_input_still_gets_a_readable_shard(tmp_path):
    with ShardWriter(tmp_path / "none") as writer:
        pass
    assert writer.shards == [tmp_path / "none/00000.jsonl.gz"]
    assert read_jsonl(tmp_path / "none") == []
    with pytest.raises(InputError, match="shards are empty"):
        list(iter_jsonl(tmp_path / "none"))


def test_tokenizer_sample_is_bounded_seeded_and_independent_of_sharding(tmp_path):
    import random

    from chatforge.data.sampling import sample_texts

    rng = random.Random(0)
    docs = [{"id": f"d{i}", "text": "w" * rng.randint(1, 100), "split": "validation" if i % 10 == 0 else "train"}
            for i in range(1000)]
    write_jsonl(tmp_path / "one.jsonl", docs)
    shuffled = docs[:]
    rng.shuffle(shuffled)
    write_shards(tmp_path / "shards", shuffled, records_per_shard=77)
    a, b = sample_texts(tmp_path / "one.jsonl", "train", 5000, seed=1), sample_texts(tmp_path / "shards", "train", 5000, seed=1)
    assert sorted(a) == sorted(b) and 5000 <= sum(map(len, a)) < 5000 + 100        # one document past the budget
    assert sorted(sample_texts(tmp_path / "one.jsonl", "train", 5000, seed=2)) != sorted(a)
    everything = [d["text"] for d in docs if d["split"] == "train"]
    assert sample_texts(tmp_path / "one.jsonl", "train", 10**9, seed=1) == everything   # fits: all, in input order
