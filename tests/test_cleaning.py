"""clean_data: dirty Chinese and English pages come out as their article, PII becomes placeholders,
duplicates go, bad input is reported and nothing is lost."""

import json
from collections import Counter

import pytest

from chatforge.data.cleaning.boilerplate import Boilerplate, BoilerplateConfig
from chatforge.data.cleaning.dedup import DedupConfig
from chatforge.data.cleaning.pii import redact, valid_id_card
from chatforge.core.files import read_jsonl
from chatforge.data.cleaning.pipeline import CleaningConfig, clean_documents, clean_records

ZH_ARTICLE = [
    "ChatGPT 是 OpenAI 开发的大型语言模型聊天机器人，它通过人类反馈强化学习进行训练，可以回答问题、写作和翻译。",
    "它的训练分为三个阶段：首先在大量文本上进行预训练，让模型学会预测下一个词；然后在人工编写的对话上进行监督微调。",
    "最后，标注人员对模型的多个回答进行排序，用这些数据训练一个奖励模型，再用强化学习让模型的回答得到更高的奖励。",
    "这种方法被称为基于人类反馈的强化学习，它让模型的回答更有帮助，也更安全，是 ChatGPT 成功的关键之一。",
    "与此同时，研究人员也发现模型有时会编造事实，因此在使用时仍然需要人工核实重要的信息和数据。",
]
ZH_PAGE = "\n".join([
    "<html><head><title>ChatGPT是什么</title></head><body>",
    '<div class="nav">当前位置: 首页 > news > 正文</div>',
    '<div class="login"><a href="/login">登录</a> | <a href="/reg">注册</a></div>',
    "<article><h1>ChatGPT是什么？一文读懂</h1>",
    *[f"<p>{p}</p>" for p in ZH_ARTICLE[:2]],
    "<p>在这里插入图片描述</p>",
    *[f"<p>{p}</p>" for p in ZH_ARTICLE[2:]],
    "<p>限时特价 原价¥999 现价¥199 加微信 chatgpt_vip 咨询</p>",
    "<p>投稿邮箱：12345678@qq.com</p>",
    "<p>版权声明：本文为博主原创文章，转载请附上原文出处链接。</p>",
    "<p>相关文章</p><p>GPT-4 发布了</p><p>如何注册 ChatGPT 账号</p><p>十个 AI 写作工具推荐</p>",
    "</article></body></html>",
])
EN_ARTICLE = [
    "Reinforcement learning from human feedback is the recipe behind modern chat assistants, and it has three steps.",
    "First a language model is pretrained on a large corpus of text to predict the next token of every document.",
    "Then it is fine-tuned on conversations written by people, so that it learns to answer in the assistant's turn.",
    "Finally people rank several answers, a reward model is trained on those rankings, and the policy is optimised.",
    "The result is a model that follows instructions better, although it can still make up facts with confidence.",
]
EN_PAGE = "\n".join([
    "Home > Blog > AI", "Log in", "Sign up", "What is RLHF?", *EN_ARTICLE,
    "Buy now for $19.99 - free shipping!", "Contact the author at jane.doe@example.com or +1 (555) 123-4567.",
    "Copyright 2024 Example Inc. All rights reserved.", "You may also like", "Ten facts about GPT",
    "How transformers work",
])


def clean_one(text, source="page.html"):
    result = clean_documents([{"id": "d1", "text": text, "source": source}], CleaningConfig())
    return result


def test_dirty_chinese_page_keeps_the_article_only():
    result = clean_one(ZH_PAGE)
    assert len(result.kept) == 1, result.rejected
    text = result.kept[0]["text"]
    for paragraph in ZH_ARTICLE:
        assert paragraph in text
    for junk in ("当前位置", "登录", "在这里插入图片描述", "¥199", "chatgpt_vip", "qq.com", "版权声明", "相关文章",
                 "GPT-4 发布了", "如何注册"):
        assert junk not in text
    assert result.kept[0]["lang"] == "zh"


def test_dirty_english_page_keeps_the_article_only():
    result = clean_one(EN_PAGE, source="page.txt")
    assert len(result.kept) == 1, result.rejected
    text = result.kept[0]["text"]
    for paragraph in EN_ARTICLE:
        assert paragraph in text
    for junk in ("Home > Blog", "Log in", "$19.99", "Copyright", "You may also like", "Ten facts"):
        assert junk not in text
    assert "<EMAIL>" in text and "<PHONE>" in text and "jane.doe" not in text


@pytest.mark.parametrize("text,expected,kind", [
    ("邮箱zhang.san@qq.com", "邮箱<EMAIL>", "email"),
    ("write to a.b+c@mail.example.org today", "write to <EMAIL> today", "email"),
    ("手机13812345678联系", "手机<PHONE>联系", "phone"),
    ("call +86 139-1234-5678 now", "call <PHONE> now", "phone"),
    ("电话(010)12345678", "电话<PHONE>", "phone"),
    ("热线400-123-4567", "热线<PHONE>", "phone"),
    ("call +44 20 7946 0958", "call <PHONE>", "phone"),
    ("加微信: chatgpt_2023 领取", "加微信: <WECHAT> 领取", "wechat"),
    ("WeChat ID wxid_abc123", "WeChat ID <WECHAT>", "wechat"),
    ("QQ号：123456789", "QQ号：<QQ>", "qq"),
    ("身份证号11010519491231002X", "身份证号<ID_CARD>", "id_card"),
    ("server 8.8.8.8 is up", "server <IP> is up", "ip"),
    ("访问https://example.com/a?b=1了解更多", "访问<URL>了解更多", "url"),
    ("see www.example.cn.", "see <URL>.", "url"),
])
def test_pii_types(text, expected, kind):
    counts = Counter()
    assert redact(text, counts) == expected and counts[kind] == 1


@pytest.mark.parametrize("text", [
    "原价¥299，现价199元，2023年5月3日发布", "The price is $1,299.99 in 2024 (since 1999).",
    "order 20231234567890 shipped", "private 192.168.1.1 and version 1.2.3.4.5", "身份证11010519491231002Y",
    "QQ音乐有123首歌", "Call me at 10 or 11 tomorrow",
])
def test_not_pii_stays(text):
    assert redact(text) == text


def test_id_card_check_digit():
    assert valid_id_card("11010519491231002X") and not valid_id_card("110105194912310021")


@pytest.mark.parametrize("line,rule", [
    ("当前位置: 首页 > 新闻 > 正文", "breadcrumb"), ("您的位置：网站首页 > 科技", "breadcrumb"),
    ("Home > Blog > AI", "breadcrumb"), ("版权所有 © 2024 某某科技有限公司", "footer"),
    ("京ICP备12345678号-1", "footer"), ("Copyright 2024 Example Inc.", "footer"), ("Privacy Policy", "footer"),
    ("分享到：微博 微信 QQ空间", "share_login"), ("登录 | 注册", "share_login"), ("Sign up", "share_login"),
    ("扫描二维码关注我们", "share_login"), ("在这里插入图片描述", "image_placeholder"),
    ("限时秒杀 ¥99 包邮", "ad"), ("Buy now for $19.99 - free shipping!", "ad"),
])
def test_boilerplate_rules(line, rule):
    counts = Counter()
    out = Boilerplate(BoilerplateConfig()).clean(f"{line}\nA real sentence that stays in the article.", counts)
    assert out == "A real sentence that stays in the article." and counts[rule] == 1


def test_long_lines_and_non_title_tails_stay():
    b = Boilerplate(BoilerplateConfig())
    long_line = "This article explains why the copyright of training data matters for people who log in " \
                "to websites every day, and what the courts said."
    assert b.clean(long_line) == long_line
    text = "Intro.\nRelated articles\n" + "A long paragraph that is part of the article and not a title at all, " * 3
    assert b.clean(text) == text                               # the marker is followed by prose, not titles


def test_exact_and_near_duplicates():
    base = " ".join(EN_ARTICLE)
    docs = [{"id": "a", "text": base}, {"id": "b", "text": base}, {"id": "c", "text": base.replace("three", "3")},
            {"id": "d", "text": " ".join(reversed(EN_ARTICLE[:3])) + " A different ending entirely here."}]
    result = clean_documents(docs, CleaningConfig())
    assert [d["id"] for d in result.kept] == ["a", "d"]
    assert {r.record["id"]: r.reason for r in result.rejected} == {"b": "exact_duplicate", "c": "near_duplicate"}
    # Chinese, MinHash alone (exact dedup off: its key already ignores punctuation)
    article = "\n".join(ZH_ARTICLE)
    zh = clean_documents([{"id": "x", "text": article}, {"id": "y", "text": article.replace("。", "！")}],
                         CleaningConfig(dedup=DedupConfig(exact=False)))
    assert [d["id"] for d in zh.kept] == ["x"] and [(r.record["id"], r.reason) for r in zh.rejected] == [
        ("y", "near_duplicate")]


def test_other_kinds_get_pii_and_dedup_and_identical_pairs_are_rejected():
    prefs = [{"id": "p1", "prompt": [{"role": "user", "content": "mail?"}], "chosen": "a@b.com", "rejected": "c@d.com"},
             {"id": "p2", "prompt": [{"role": "user", "content": "hi"}], "chosen": "hello", "rejected": "bye"}]
    result = clean_records("preferences", prefs, CleaningConfig())
    assert [p["id"] for p in result.kept] == ["p2"]
    assert result.rejected[0].reason == "chosen_equals_rejected_after_cleaning" and result.pii["email"] == 2
    conv = {"messages": [{"role": "user", "content": "my number is 13812345678"}, {"role": "assistant", "content": "ok"}]}
    result = clean_records("conversations", [{"id": "c1", **conv}, {"id": "c2", **conv}], CleaningConfig())
    assert result.kept[0]["messages"][0]["content"] == "my number is <PHONE>"
    assert [r.reason for r in result.rejected] == ["exact_duplicate"]


def test_cli_handles_bad_input_and_loses_nothing(tmp_path, capsys):
    from flows.cli import main

    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "page.html").write_text(ZH_PAGE)
    (inputs / "en.txt").write_text(EN_PAGE)
    (inputs / "binary.txt").write_bytes(b"\x00\x01\x02\xff" * 100)
    (inputs / "broken.html").write_text("<html><body><p>unclosed <b>tags and <div> nothing else")
    (inputs / "huge.jsonl").write_text(json.dumps({"text": "word " * 2_100_000}) + "\n" + "{not json\n")
    assert main(["clean", str(inputs), "-o", str(tmp_path / "out"), "--params", str(tmp_path / "none.yaml")]) == 0
    kept = [json.loads(l) for l in (tmp_path / "out/kept.jsonl").read_text().splitlines()]
    rejected = [json.loads(l) for l in (tmp_path / "out/rejected.jsonl").read_text().splitlines()]
    stats = json.loads((tmp_path / "out/stats.json").read_text())
    assert len(kept) == 2 and {k["lang"] for k in kept} == {"zh", "en"}
    where = lambda r: (r["record"] or {}).get("source") if r["source"] in ("", "documents") else r["source"]
    reasons = {(where(r).split("/")[-1], r["reason"].split(" (")[0].split(":")[0]) for r in rejected}
    assert reasons == {("binary.txt", "binary file"), ("huge.jsonl", "invalid JSON"), ("huge.jsonl", "too_long"),
                       ("broken.html", "too_short")}     # broken HTML parses; its text is too short
    assert stats["in"] + stats["unreadable"] == len(kept) + len(rejected) == 6
    (tmp_path / "empty.txt").write_text("")
    assert main(["clean", str(tmp_path / "empty.txt"), "-o", str(tmp_path / "out2")]) == 2
    assert "empty.txt: file is empty" in capsys.readouterr().out


def test_stage_end_to_end_and_validation_failure(tmp_path, monkeypatch, mlflow_uri):
    from chatforge.data.cleaning.validate import ValidationFailed, validate_outputs
    from stages.clean_data import main

    monkeypatch.chdir(tmp_path)
    raw = tmp_path / "data/raw"
    raw.mkdir(parents=True)
    write = lambda name, recs: (raw / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))
    write("documents.jsonl", [{"id": "d1", "text": ZH_PAGE, "source": "a.html", "split": "train"},
                              {"id": "d2", "text": EN_PAGE, "source": "b.txt", "split": "validation"},
                              {"id": "d3", "text": EN_PAGE, "source": "c.txt", "split": "train"}])
    write("conversations.jsonl", [{"id": "c1", "split": "train", "messages": [
        {"role": "user", "content": "email me at x@y.com"}, {"role": "assistant", "content": "sure"}]}])
    write("preferences.jsonl", [{"id": "p1", "split": "train", "prompt": [{"role": "user", "content": "hi"}],
                                 "chosen": "hello there", "rejected": "go away"}])
    write("prompts.jsonl", [{"id": "q1", "split": "train", "messages": [{"role": "user", "content": "hi"}]}])
    (tmp_path / "params.yaml").write_text("clean_data: {}\n")
    main([])
    report = json.loads((tmp_path / "reports/clean.json").read_text())
    assert report["documents"] == {"in": 3, "out": 2} and report["duplicates"] == 1
    # 2 English pages + 1 conversation: the Chinese page's e-mail sits in a contribution notice ("投稿邮箱：..."),
    # a line the notice rule drops before PII redaction
    assert report["drops"] == {"exact_duplicate": 1} and report["pii"]["email"] == 3
    assert report["boilerplate_lines"]["notice"] == 1 and report["entities_decoded"] == 0
    assert report["validation"]["success"] and report["bytes"]["out"] < report["bytes"]["in"]
    clean_docs = [json.loads(l) for l in (tmp_path / "data/clean/documents.jsonl").read_text().splitlines()]
    assert [d["split"] for d in clean_docs] == ["train", "validation"]
    rejected = [json.loads(l) for l in (tmp_path / "data/rejected/clean_data.jsonl").read_text().splitlines()]
    assert [r["reason"] for r in rejected] == ["exact_duplicate"]
    assert "filter,dropped\nexact_duplicate,1\n" == (tmp_path / "reports/clean_drops.csv").read_text()

    bad = {"documents": [{"id": "d", "text": "write to leak@example.com"}], "conversations": [
        {"id": "c", "messages": [{"role": "wizard", "content": "hi"}]}], "preferences": [], "prompts": []}
    with pytest.raises(ValidationFailed) as err:
        validate_outputs(bad, 1000, tmp_path / "gx.json")
    message = str(err.value)
    assert "documents: ExpectColumnValuesToNotMatchRegexList(text) failed on 1 rows" in message
    assert "messages: ExpectColumnValuesToBeInSet(role) failed on 1 rows" in message and "wizard" in message
    assert json.loads((tmp_path / "gx.json").read_text())["documents"]


# --------------------------------------------------------------------------------------------
# The documents path on datatrove executors: shards, workers, Slurm and Ray by params
# --------------------------------------------------------------------------------------------

def test_chunked_validation_counts_add_up_and_catch_a_failure_in_any_chunk(tmp_path):
    from chatforge.data.cleaning.validate import ChunkValidator, ValidationFailed, validate_outputs

    docs = [{"id": f"d{i}", "text": f"document number {i}"} for i in range(7)]
    convs = [{"id": f"c{i}", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
             for i in range(4)]
    prefs = [{"id": "p", "prompt": [], "chosen": "a", "rejected": "b"}]
    check = ChunkValidator(1000, tmp_path / "gx.json", chunk_rows=3)
    for kind, records in (("documents", docs), ("conversations", convs), ("preferences", prefs), ("prompts", [])):
        for record in records:
            check.add(kind, record)
    summary = check.finish()
    # documents 7 rows -> chunks of 3, 3, 1 (4 expectations each); messages 8 rows, 2 a record -> chunks of 4, 4
    # (a chunk closes after the record that fills it; 3 each); preferences 1 chunk (2); the exact id check
    assert check.counts() == {"records": 12, "rows": {"documents": 7, "messages": 8, "preferences": 1},
                              "chunks": {"documents": 3, "messages": 2, "preferences": 1}}
    assert summary == {"evaluated": 3 * 4 + 2 * 3 + 2 + 1, "successful": 21, "success": True}
    assert len(json.loads((tmp_path / "gx.json").read_text())["documents"]) == 3 * 4
    by_chars = ChunkValidator(1000, tmp_path / "gx.json", chunk_rows=1000, chunk_chars=30)
    for record in docs:                                          # 17 characters each: a chunk closes every 2
        by_chars.add("documents", record)
    assert by_chars.finish()["success"] and by_chars.counts()["chunks"]["documents"] == 4

    # leaked e-mails in the first and the last chunk, and an id repeated three chunks apart: all counted
    docs[1]["text"] = docs[6]["text"] = "mail leak@example.com"
    with pytest.raises(ValidationFailed) as err:
        validate_outputs({"documents": docs + [{"id": "d0", "text": "again"}], "conversations": [],
                          "preferences": [], "prompts": []}, 1000, tmp_path / "gx.json", chunk_rows=3)
    message = str(err.value)
    assert "documents: ExpectColumnValuesToNotMatchRegexList(text) failed on 2 rows" in message
    assert "ids: ExpectColumnValuesToBeUnique(key) failed on 1 rows, e.g. ['documents/d0']" in message


def test_the_streaming_driver_writes_what_clean_all_returns(tmp_path):
    """clean_to_files (the stage: records stream to the files, validated in chunks of 2 rows) against clean_all
    holding every result in memory, on raw data with a duplicate document, PII and a dropped preference."""
    from chatforge.data.cleaning.executor import ExecutorConfig
    from chatforge.data.cleaning.pipeline import CleanDataConfig, clean_all, clean_to_files
    from chatforge.data.cleaning.validate import ChunkValidator

    raw = tmp_path / "raw"
    raw.mkdir()
    write = lambda name, recs: (raw / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))
    write("documents.jsonl", [{"id": f"f{i}", "text": t, "split": "train"} for i, t in enumerate(FILLERS)]
          + [{"id": "dup", "text": FILLERS[0], "split": "train"}])
    msgs = lambda text: [{"role": "user", "content": text}, {"role": "assistant", "content": "sure, x@y.com"}]
    write("conversations.jsonl", [{"id": f"c{i}", "split": "train", "messages": msgs(["why", "how", "when"][i % 3])}
                                  for i in range(5)])
    write("preferences.jsonl", [{"id": "p1", "split": "train", "prompt": msgs("hi")[:1], "chosen": "a  b",
                                 "rejected": "a b"}, {"id": "p2", "split": "train", "prompt": msgs("hi")[:1],
                                                      "chosen": "hello", "rejected": "bye"}])
    write("prompts.jsonl", [{"id": "q1", "split": "train", "messages": msgs("hi")[:1]}])
    cfg = lambda out: CleanDataConfig(input_dir=raw, output_dir=out / "clean", rejects=out / "rejected.jsonl",
                                      executor=ExecutorConfig(tasks=1, workers=1, work_dir=out / "work"))
    memory = clean_all(cfg(tmp_path / "memory"))
    check = ChunkValidator(1_000_000, tmp_path / "gx.json", chunk_rows=2)
    streamed, summary = clean_to_files(cfg(tmp_path / "streamed"), check)
    assert summary["success"] and check.counts()["chunks"]["documents"] == 2
    for kind, result in memory.items():
        assert read_jsonl(tmp_path / "streamed" / "clean" / f"{kind}.jsonl") == result.kept
        assert streamed[kind].stats() == result.stats() and streamed[kind].records_out == len(result.kept)
    assert read_jsonl(tmp_path / "streamed" / "rejected.jsonl") == [
        r.to_json() for kind in memory for r in memory[kind].rejected]
    assert [(r["record"]["id"], r["reason"]) for r in read_jsonl(tmp_path / "streamed" / "rejected.jsonl")] == [
        ("dup", "exact_duplicate"), ("c3", "exact_duplicate"), ("c4", "exact_duplicate"),
        ("p1", "chosen_equals_rejected_after_cleaning")]
    kept = sum(r.records_out for r in streamed.values())
    assert check.counts()["records"] == kept == 4 + 3 + 1 + 1 and check.counts()["rows"]["documents"] == 4


FILLERS = [
    "The river flows past the old mill, and the children like to watch the water turn the wheel. In the summer "
    "the town holds a fair on the grass beside it, with music, cakes and a race for the dogs. Nobody remembers "
    "when the mill last ground any flour, but the wheel still turns.",
    "My grandmother grew tomatoes and beans in a small garden behind her house. She gave most of them to the "
    "neighbours every autumn, kept the seeds in paper envelopes on the kitchen shelf and wrote the year on each "
    "one in pencil, so that she always knew which were worth planting again.",
    "Learning to play the piano takes patience. You practise scales every day for months, your fingers are slow "
    "and the neighbours are polite about it, and then one evening the piece you have been working on starts to "
    "sound like music that you would actually want to hear.",
    "The train to the coast was late again, so we sat in the station cafe for an hour and talked about the book "
    "we had both been reading that week. By the time the train arrived we had decided that the ending was wrong "
    "and had written a better one on a napkin.",
]
NO_STOP_WORDS = "apple banana cherry grape lemon mango orange peach plum melon kiwi lime " * 3


@pytest.fixture(scope="module")
def sharded_runs(tmp_path_factory):
    """The documents pipeline on one input, with 1 task and 1 worker and with 2 tasks and 2 workers. The second
    task gets a copy of "a" (before anything else it keeps, so a lower index than "a" has in the first task), a
    near copy of "a" and a near copy of the Chinese page "zh"."""
    from chatforge.data.cleaning.executor import ExecutorConfig
    from chatforge.data.cleaning.pipeline import clean_document_files

    tmp = tmp_path_factory.mktemp("shards")
    base = " ".join(EN_ARTICLE)
    fillers = [{"id": f"f{i}", "text": text} for i, text in enumerate(FILLERS, start=1)]
    docs = [{"id": "zh", "text": ZH_PAGE, "source": "zh.html"}, {"id": "bad", "text": NO_STOP_WORDS}, *fillers[:2],
            {"id": "a", "text": base}, {"id": "b", "text": base.replace(". ", "! ")},
            {"id": "c", "text": base.replace("three", "3")},
            {"id": "zh2", "text": "\n".join(ZH_ARTICLE).replace("三个阶段", "3个阶段")}, *fillers[2:]]
    path = tmp / "documents.jsonl"
    path.write_text("".join(json.dumps({"source": "chat", **d}, ensure_ascii=False) + "\n" for d in docs))
    runs = {n: clean_document_files([path], CleaningConfig(), ExecutorConfig(
        tasks=n, workers=n, work_dir=tmp / f"work{n}", keep_work_dir=True), "documents") for n in (1, 2)}
    return path, tmp, runs


def test_two_workers_keep_the_same_documents_as_one(sharded_runs):
    _, _, runs = sharded_runs
    kept = {n: sorted((d["id"], d["text"], d["lang"]) for d in r.kept) for n, r in runs.items()}
    assert kept[1] == kept[2] and [k[0] for k in kept[1]] == ["a", "f1", "f2", "f3", "f4", "zh"]
    assert {r.record["id"]: r.reason for r in runs[1].rejected} == {r.record["id"]: r.reason for r in runs[2].rejected}
    assert runs[1].pii == runs[2].pii and runs[1].boilerplate_lines == runs[2].boilerplate_lines   # summed over tasks
    assert runs[2].records_in == len(runs[2].kept) + len(runs[2].rejected) == 10


def test_duplicates_in_different_shards_are_caught(sharded_runs):
    from chatforge.data.cleaning.documents import JsonlRangeReader

    path, _, runs = sharded_runs
    shards = [[d.id for d in JsonlRangeReader([path]).run(rank=rank, world_size=2)] for rank in range(2)]
    assert shards == [["zh", "bad", "f1", "f2", "a"], ["b", "c", "zh2", "f3", "f4"]]    # every pair spans both tasks
    reasons = {r.record["id"]: r.reason for r in runs[2].rejected}
    assert reasons["b"] == "exact_duplicate" and reasons["c"] == reasons["zh2"] == "near_duplicate"
    assert {"a", "zh"} <= {d["id"] for d in runs[2].kept}                     # the first copy stays


def test_dropped_documents_carry_the_datatrove_filter_reason(sharded_runs):
    import gzip

    _, tmp, runs = sharded_runs
    bad = next(r for r in runs[2].rejected if r.record["id"] == "bad")
    assert (bad.source, bad.reason, bad.record) == ("documents", "gopher_enough_stop_words",
                                                    {"id": "bad", "text": NO_STOP_WORDS, "source": "chat"})
    # written by the exclusion writer of datatrove's GopherQualityFilter, routed to English plain text
    files = sorted((tmp / "work2/rejected/text_en_GopherQualityFilter").glob("*.jsonl.gz"))
    rows = [json.loads(line) for f in files for line in gzip.open(f, "rt", encoding="utf-8")]
    assert [(r["record"]["id"], r["reason"]) for r in rows] == [("bad", "gopher_enough_stop_words")]
    assert [r.reason for r in runs[2].rejected] == ["gopher_enough_stop_words", "exact_duplicate", "near_duplicate",
                                                    "near_duplicate"]           # in input order


def _slurm_params(tmp_path):
    return {"kind": "slurm", "tasks": 8, "workers": 4, "work_dir": str(tmp_path / "work"),
            "slurm": {"partition": "cpu", "time": "02:00:00", "cpus_per_task": 2, "mem_per_cpu_gb": 4,
                      "env_command": "source .venv/bin/activate", "sbatch_args": {"account": "proj"}}}


def test_executor_params_build_local_slurm_and_ray_executors(tmp_path):
    from datatrove.executor import LocalPipelineExecutor, RayPipelineExecutor, SlurmPipelineExecutor

    from chatforge.core.config import ConfigError, build_dataclass
    from chatforge.data.cleaning.executor import build_chain
    from chatforge.data.cleaning.pipeline import CleanDataConfig, document_pipelines

    pipelines = document_pipelines([tmp_path / "documents.jsonl"], CleaningConfig(), tmp_path / "work")
    names = [p.name for p in pipelines]
    assert names == ["clean", "exact_find", "minhash_sig", "minhash_buckets", "minhash_cluster", "dedup"]

    def chain(executor: dict):
        cfg = build_dataclass(CleanDataConfig, {"executor": executor}, "params.yaml", "clean_data").executor
        return dict(zip(names, build_chain([(p.name, p.steps, p.tasks or cfg.tasks) for p in pipelines], cfg,
                                           tmp_path / "logs")))

    local = chain({"tasks": 3, "workers": 2, "start_method": "spawn"})
    assert all(type(e) is LocalPipelineExecutor for e in local.values())
    assert [(e.tasks, e.workers) for e in local.values()] == [(3, 2), (1, 1), (3, 2), (14, 2), (1, 1), (3, 2)]
    assert local["clean"].start_method == "spawn" and local["clean"].depends is None
    assert local["dedup"].depends is local["minhash_cluster"] and local["exact_find"].depends is local["clean"]
    assert local["clean"].logging_dir.path == str(tmp_path / "logs/clean")

    slurm = chain(_slurm_params(tmp_path))
    assert all(type(e) is SlurmPipelineExecutor for e in slurm.values())
    clean = slurm["clean"]
    assert (clean.job_name, clean.env_command, clean.qos) == ("clean_data_clean", "source .venv/bin/activate", "normal")
    sbatch = clean.get_sbatch_args(max_array=8)
    assert {k: sbatch[k] for k in ("partition", "time", "cpus-per-task", "mem-per-cpu", "array", "account")} == {
        "partition": "cpu", "time": "02:00:00", "cpus-per-task": 2, "mem-per-cpu": "4G", "array": "0-7%4",
        "account": "proj"}
    assert slurm["minhash_buckets"].tasks == 14 and slurm["minhash_cluster"].tasks == 1
    assert slurm["dedup"].depends is slurm["minhash_cluster"]

    ray = chain({"kind": "ray", "tasks": 16, "workers": 8, "ray": {"cpus_per_task": 2, "mem_per_cpu_gb": 3.0,
                                                                    "tasks_per_job": 2, "time_s": 600}})
    assert all(type(e) is RayPipelineExecutor for e in ray.values())
    assert [(e.tasks, e.workers, e.cpus_per_task, e.mem_per_cpu_gb, e.tasks_per_job, e.time)
            for e in (ray["clean"], ray["minhash_cluster"])] == [(16, 8, 2, 3.0, 2, 600), (1, 8, 2, 3.0, 2, 600)]
    assert ray["minhash_sig"].depends is ray["exact_find"]

    with pytest.raises(ConfigError, match="executor.slurm.partition"):
        chain({"kind": "slurm"})
    with pytest.raises(ConfigError, match="executor.tasks must be between 1"):
        chain({"tasks": 0})
    with pytest.raises(ConfigError, match="must be one of"):
        chain({"kind": "kubernetes"})


def test_slurm_wait_fails_when_a_job_leaves_the_queue_undone(tmp_path, monkeypatch):
    import os

    from chatforge.core.config import build_dataclass
    from chatforge.data.cleaning.executor import build_executor, wait_for_slurm
    from chatforge.data.cleaning.pipeline import CleanDataConfig

    cfg = build_dataclass(CleanDataConfig, {"executor": _slurm_params(tmp_path)}).executor
    job = build_executor([], "dedup", 2, cfg, tmp_path / "logs")
    job.job_id = "42"
    squeue = tmp_path / "bin/squeue"
    squeue.parent.mkdir()
    monkeypatch.setenv("PATH", f"{squeue.parent}{os.pathsep}{os.environ['PATH']}")
    squeue.write_text("#!/bin/sh\necho 'PENDING DependencyNeverSatisfied'\n")
    squeue.chmod(0o755)
    with pytest.raises(RuntimeError, match="job 42 .* will never start"):
        wait_for_slurm(job, poll_s=0)
    squeue.write_text("#!/bin/sh\n")                    # no longer in the queue
    with pytest.raises(RuntimeError, match="ended with 2 of 2 tasks undone"):
        wait_for_slurm(job, poll_s=0)
    for rank in range(2):
        job.mark_rank_as_completed(rank)
    wait_for_slurm(job, poll_s=0)                       # every task done: returns


def test_a_work_dir_that_clean_data_did_not_make_is_left_alone(tmp_path):
    from chatforge.core.files import InputError
    from chatforge.data.cleaning.executor import ExecutorConfig
    from chatforge.data.cleaning.pipeline import prepare_work_dir

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty and was not made by clean_data"):
        prepare_work_dir(ExecutorConfig(work_dir=tmp_path))
    assert (tmp_path / "notes.txt").read_text() == "mine"
    work = prepare_work_dir(ExecutorConfig(work_dir=tmp_path / "work"))
    (work / "stale").mkdir()
    assert prepare_work_dir(ExecutorConfig(work_dir=work)) == work and not (work / "stale").exists()
    (work / "stale").mkdir()
    assert (prepare_work_dir(ExecutorConfig(work_dir=work, resume=True)) / "stale").exists()   # resume keeps it
