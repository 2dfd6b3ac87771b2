"""Issue #18: ad blocks, list tails, furniture lines and HTML entities on dirty pages, scored on the labelled
set in tests/data/dirty_pages (bench/clean_eval.py prints the full before/after table)."""

import json
from collections import Counter

import pytest

from chatforge.data.cleaning.ads import AdBlocks, AdConfig
from chatforge.data.cleaning.boilerplate import Boilerplate, BoilerplateConfig
from chatforge.data.cleaning.entities import unescape_entities
from chatforge.data.cleaning.furniture import Furniture, FurnitureConfig
from chatforge.data.cleaning.page_eval import drops_on_clean_text, read_pages, rules_as_on_main, score_pages
from chatforge.data.cleaning.pipeline import CleaningConfig, clean_documents
from tests.conftest import REPO, SHARED_DATA

PAGES = REPO / "tests/data/dirty_pages"

# What the rules reach on the set (bench/clean_eval.py): the floors sit just under it, so a rule change that
# loses junk recall or article precision fails here. Article recall is 143/143 since html_to_text keeps the
# <h1> headline that trafilatura sets aside as the title (3 lines of the set).
MIN_JUNK_REMOVED = 0.97
MIN_KEPT_PRECISION = 0.959
MIN_ARTICLE_KEPT = 1.0            # every article line, the pages' <h1> headlines included


@pytest.fixture(scope="module")
def pages():
    return read_pages(PAGES)


def test_the_set_has_twenty_pages_of_every_kind_language_and_format(pages):
    assert len(pages) >= 20
    assert {p.kind for p in pages} == {"farm", "blog", "forum", "shop"}
    assert {p.lang for p in pages} == {"zh", "en"} and {p.fmt for p in pages} == {"txt", "html"}
    assert all(any(keep for _, keep in p.lines) and any(not keep for _, keep in p.lines) for p in pages)


def test_a_bad_label_names_the_file_and_line(tmp_path):
    from chatforge.core.files import InputError
    from chatforge.data.cleaning.page_eval import read_page

    page = tmp_path / "blog-en-99.txt"
    page.write_text("+ A line a reader keeps.\n* not a label\n", encoding="utf-8")
    with pytest.raises(InputError, match="blog-en-99.txt:2: a line starts with"):
        read_page(page)


def test_junk_recall_and_article_precision_hold_on_the_set(pages):
    after = score_pages(pages, BoilerplateConfig())["all"]
    assert after.junk_removed >= MIN_JUNK_REMOVED, after
    assert after.kept_precision >= MIN_KEPT_PRECISION, after
    assert after.article_kept_share >= MIN_ARTICLE_KEPT, after
    before = score_pages(pages, rules_as_on_main(BoilerplateConfig()), entities=False)["all"]
    assert before.junk_removed < 0.5 and before.article_kept == after.article_kept   # the new rules cost no article line


@pytest.mark.parametrize("escaped,plain", [
    ("你好&#xff0c;世界", "你好，世界"), ("a &amp;#xff0c; b", "a ， b"), ("x&amp;amp;nbsp;y", "x\xa0y"),
    ("if a < b &amp;&amp; c &gt; d", "if a < b && c > d"), ("&ldquo;引号&rdquo;&hellip;", "“引号”…"),
])
def test_entities_are_decoded_even_twice_escaped_and_next_to_a_less_than(escaped, plain):
    counts = Counter()
    assert unescape_entities(escaped, counts) == plain and counts["entities"] >= 1


@pytest.mark.parametrize("text", ["?a=1&para=2&copy=3", "AT&T and R&D", "&notanentity; &#0; &#x1;", "5 & 6"])
def test_what_is_not_a_well_formed_entity_stays(text):
    assert unescape_entities(text) == text


def test_a_page_with_entities_and_a_literal_less_than_comes_out_decoded():
    text = "在 Python 里 a < b 的结果是 True&#xff0c;而 b &lt; a 是 False。\n" * 3
    assert "&#xff0c;" not in Boilerplate(BoilerplateConfig()).clean(unescape_entities(text))


ARTICLE_ZH = ["很多人早上只吃一个鸡蛋就出门，觉得这样既方便又有营养。",
              # over 60 characters: the older single-line "ad" rule drops a shorter sentence with a price and 包邮
              "去年菜市场上一斤鸡蛋要6元左右，今年已经降到了4元多，很多商家也开始在网上做鸡蛋包邮到家的生意，价格比附近的超市还要便宜一些。",
              "如果想了解更多，可以咨询医生，或者打电话到社区医院问一问。"]


def test_an_ad_block_goes_and_article_sentences_with_prices_stay():
    ad = ["【爆款推荐】进口有机土鸡蛋 30枚装", "限时特价 ¥39.9 原价¥69，全国包邮", "立即购买 >> 添加客服微信：jidan8888 领优惠券"]
    counts = Counter()
    out = Boilerplate(BoilerplateConfig()).clean("\n".join(ARTICLE_ZH[:2] + ad + ARTICLE_ZH[2:]), counts)
    assert out.split("\n") == ARTICLE_ZH
    assert counts == {"ad": 1, "ad_block": 2}          # the price line alone is the older single-line rule's


@pytest.mark.parametrize("lines", [
    ["这款手机售价3999元，比上一代便宜了500元。", "官网 www.example.com 上可以看到全部参数。"],
    ["A plumber would charge you $100 to $150 for a flush.", "Call a professional if you are not sure."],
    ["Contact the author at jane@example.com or +1 (555) 123-4567.", "Prices start at $5 a month."],
    ["Buy now"], ["ad"], ["sale", "only $5"], ["二等座的票价是145元。", "我打电话问了客服，她说还有票。"],
    ["MOST OF MY FRIENDS ARE NON MORMONS, SO I THOUGHT MAYBE LIFE WITH THE CODE MIGHT BE HARD",
     "its cool to know i can stiull live with the code"],
])
def test_prose_that_mentions_prices_sites_or_contacts_is_not_an_ad(lines):
    assert AdBlocks(AdConfig()).find(lines) == set()


def test_ad_lines_in_english_with_a_contact_handle():
    lines = ["Questions about your order?", "Now only $299 with FREE installation!", "Call 1-800-555-0199 today."]
    assert AdBlocks(AdConfig()).find(lines) == {1, 2}


def test_list_tails_with_long_items_and_a_marker_on_the_last_line_are_cut():
    b, counts = Boilerplate(BoilerplateConfig()), Counter()
    article = "减肥期间应该多吃蔬菜，少吃油炸食品，并且每天保持适量的运动，这样效果会更好。"
    items = ["早上空腹喝牛奶好吗？很多人都做错了，看完赶紧告诉家人，原来我们一直都喝错了，营养全白费了，"
             "专家提醒这三类人最好不要空腹喝牛奶，尤其是肠胃不好的人更要注意......",
             "减肥期间能吃红薯吗？营养师给出了答案，原来一直吃错了，难怪怎么减都减不下来，快看看你中招了没有，"
             "红薯虽然热量不高，但是吃法不对反而容易长胖，营养师教你三种正确的吃法……"]
    assert min(len(i) for i in items) > BoilerplateConfig().tail_max_line_chars    # too long for the older tail rule
    assert b.clean("\n".join([article, "相关文章", *items]), counts) == article and counts["list_tail"] == 3
    assert rules_as_on_main(BoilerplateConfig()).list_tails is False
    assert Boilerplate(rules_as_on_main(BoilerplateConfig())).clean("\n".join([article, "相关文章", *items])) != article
    assert b.clean(f"{article}\n你可能也喜欢：") == article                       # a marker with nothing after it
    prose = "Related reading on this topic is scarce, and most of what exists was written before the 2020 change. " * 2
    assert b.clean(f"{article}\nYou may also like\n{prose}") == f"{article}\nYou may also like\n{prose}"


@pytest.mark.parametrize("line,rule", [
    ("来源：https://www.yangsheng-abc.com/ 浏览：3821次 关键词：早餐,鸡蛋,营养,减肥", "meta"),
    ("Posted by Admin on March 3, 2023 | 12,554 views | Filed under: Kitchen, Cleaning", "meta"),
    ("楼主 | 发表于 2023-5-12 20:31 | 只看该作者", "meta"), ("Tags: Lisbon, Portugal, budget travel", "meta"),
    ("3#", "meta"), ("声明：本文内容来源于网络，版权归原作者所有，如有侵权请联系删除。", "notice"),
    ("This post may contain affiliate links. We may earn a commission if you buy through them.", "notice"),
    ("下一篇：我是如何在三个月内从零学会 SQL 的，以及这一路上踩过的那些坑和一些经验总结", "notice"),
    ("Home · About · Recipes · Garden Diary · Contact", "menu"), ("回复 支持(12) 反对(0)", "menu"),
    ("Reply · Quote · Report", "menu"), ("Share Improve this question Follow", "menu"),
    ("喵喵教主 2023-08-14 21:30:12 上海", "meta"), ("Asked 3 years, 2 months ago Modified 1 year ago Viewed 48k times", "meta"),
    ("（原标题：电动车进楼充电将被罚款）", "notice"),
])
def test_furniture_lines_of_any_length(line, rule):
    assert Furniture(FurnitureConfig()).match(line) == rule


@pytest.mark.parametrize("line", [
    "2023年5月12日，记者从市教育局获悉，今年全市共有三万名考生参加中考。",
    "The post office on Main Street, opened on March 3, 2023, now has 12 counters and longer hours.",
    "来源于生活的灵感往往最动人，作者在书中写下了自己童年的记忆。",
    "A reply from the council came two weeks later, and it said that the road would be fixed by May.",
    "很多网站在文末都会写上版权声明，但这并不能真正阻止别人复制文章的内容。",
    "Human: Yeah I know. That's not what I asked. I asked what the most effective form of online harassment was.",
    "Tony has 2 times more points than Mike, so he has 2 * 21 points = 42 points.",
    "The rows of 8 stars have a total of: 3 rows * 8 stars/row = 24 stars.",
    "我们都知道投资有风险，所以每个月只拿出工资的一小部分来买基金，其余的钱放在银行里。",
    "他把微信的个性签名改成了一句古诗，朋友们都觉得很有意思。",
    # lines of the default data's chat transcripts that an earlier version of the rules dropped
    "like", "Skipper > Captain > Sailor", "editors note",
])
def test_article_sentences_are_not_furniture(line):
    assert Furniture(FurnitureConfig()).match(line) is None


def test_real_text_without_boilerplate_loses_no_line():
    """GSM8K problems (a price in every other line) and HH dialogues: every line the rules drop is a false drop."""
    import gzip

    with gzip.open(SHARED_DATA / "gsm8k-test.jsonl.gz", "rt", encoding="utf-8") as fh:
        gsm8k = [f"{r['question']}\n{r['answer']}" for r in map(json.loads, fh)][:300]
    with gzip.open(SHARED_DATA / "hh-rlhf-harmless-base-test.jsonl.gz", "rt", encoding="utf-8") as fh:
        hh = [r["chosen"] for r in map(json.loads, fh)][:300]
    lines, counts = drops_on_clean_text(gsm8k + hh, BoilerplateConfig())
    assert lines > 3000 and {rule: n for rule, n in counts.items() if rule != "entities"} == {}


def test_the_pipeline_reports_lines_per_new_rule_and_entities():
    page = "\n".join(["来源：https://www.shenghuo-abc.com/article/2023/0305/12345.html 作者：佚名 时间：2023-03-05 点击：2451",
                      *ARTICLE_ZH, "专业保洁上门服务，深度清洁 ¥199 起", "预约电话：138-0013-8000 微信同号",
                      "名额有限，先到先得，赶快行动吧！", "人们常说&#xff0c;<b>清洁</b>要趁早，家里才会一直干净整洁。",
                      "投稿邮箱：tougao@shenghuo-abc.com，欢迎投稿！", "延伸阅读：",
                      "厨房油烟机怎么清洗最干净？老师傅教你一个小窍门，5分钟搞定，比请人洗还干净还省钱省心，"
                      "很多人都不知道原来这么简单，家里的油烟机用了好几年也能像新的一样，快收藏起来吧……"])
    result = clean_documents([{"id": "p", "text": page, "source": "page.txt"}], CleaningConfig())
    assert len(result.kept) == 1, result.rejected
    text = result.kept[0]["text"]
    assert text.split("\n") == [*ARTICLE_ZH, "人们常说，<b>清洁</b>要趁早，家里才会一直干净整洁。"]
    assert dict(result.boilerplate_lines) == {"meta": 1, "ad_block": 3, "notice": 1, "list_tail": 2}
    assert result.entities == 1 and result.stats()["entities"] == 1


def test_cli_cleans_a_folder_of_mixed_dirty_pages(tmp_path, pages):
    from flows.cli import main

    folder = tmp_path / "pages"
    folder.mkdir()
    for page in pages:
        (folder / page.name).write_text(page.text, encoding="utf-8")
    assert main(["clean", str(folder), "-o", str(tmp_path / "out"), "--params", str(tmp_path / "none.yaml")]) == 0
    kept = [json.loads(line) for line in (tmp_path / "out/kept.jsonl").read_text().splitlines()]
    stats = json.loads((tmp_path / "out/stats.json").read_text())
    assert stats["in"] == len(pages) == stats["out"] + sum(stats["drops"].values())
    assert stats["boilerplate_lines"]["ad_block"] > 0 and stats["boilerplate_lines"]["list_tail"] > 0
    text = "\n".join(k["text"] for k in kept)
    for junk in ("限时特价", "转载请注明出处", "浏览：3821次", "You May Also Like", "Reply · Quote · Report", "&#xff0c;"):
        assert junk not in text
