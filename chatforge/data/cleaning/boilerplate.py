"""Boilerplate removal by line, English and Chinese (rules applied to short lines only, so
article sentences that mention the same words survive).

Line rules apply only to short lines (``max_line_chars``), so article sentences that merely
mention "copyright" or "登录" survive. A line that is only a "related articles" marker cuts the
rest of the document when what follows looks like a list of titles (short lines without
sentence punctuation). The rules are regex lists in ``BoilerplateConfig`` so params can extend them.

Three rules look past single short lines (issue #18), each with its own count in reports/clean.json:

- ``list_tail``: more markers ("你可能也喜欢", "Customers who bought this item also bought") and a list
  shape whatever the line length: every line after the marker is short, or a title with a snippet that
  ends in an ellipsis ("......", "…"), or a numbered or bulleted item. A marker on the last line goes too.
- ``ad_block``: runs of lines dense in prices, calls to action and contact handles (ads.py).
- ``meta``, ``notice``, ``menu``: furniture lines of any length (furniture.py).

A line that one of the older rules matches keeps that rule's name in the counts, so the older counts
do not move where the new rules also apply.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from chatforge.core.config import field_help
from chatforge.data.cleaning.ads import AdBlocks, AdConfig
from chatforge.data.cleaning.furniture import Furniture, FurnitureConfig

DEFAULT_RULES = {
    "breadcrumb": [r"^\s*(?:当前位置|您的位置|你的位置|您现在的位置|所在位置)\s*[:：]",
                   r"(?:首页|主页|网站首页)\s*(?:>{1,2}|＞|›|»|→|/)",
                   r"(?i)^\s*(?:you are here|home)\s*(?:[:>»›/]|&gt;)"],
    "footer": [r"(?i)^\s*(?:版权所有|版权声明|免责声明|copyright|©|\(c\)|all rights reserved|联系我们|关于我们|网站地图"
               r"|友情链接|上一篇|下一篇|上一页|下一页|返回顶部|返回首页|责任编辑|编辑\s*[:：]|来源\s*[:：]|发布时间\s*[:：]"
               r"|点击(?:数|量|次数)?\s*[:：]|浏览(?:次数)?\s*[:：]|privacy policy|terms of (?:use|service)|cookie policy"
               r"|disclaimer|contact us|about us|sitemap)",
               r"[\u4e00-\u9fa5]ICP[备证]\s*\d+号(?:-\d+)?", r"公网安备\s*\d+号"],
    "share_login": [r"(?i)^\s*(?:分享到|扫一扫|扫描二维码|登录|注册|立即登录|免费注册|登录\s*[|/]\s*注册"
                    r"|share (?:this|on)|log ?in|sign (?:in|up)|register|subscribe|follow us)(?![a-z])",
                    r"(?:长按|扫码|扫描)[^。\n]{0,10}(?:二维码|关注)", r"关注(?:我们的)?公众号", r"点击(?:阅读)?原文",
                    r"转载请注明"],
    "image_placeholder": [r"在这里插入图片描述", r"(?i)^\s*(?:\[?image\]?|\[图片\]|图片|img)\s*$",
                          r"(?i)^\s*!\[[^\]]*\]\([^)]*\)\s*$"],
    "ad": [r"(?:[¥￥$]\s*\d+(?:\.\d+)?|\d+(?:\.\d+)?\s*(?:元|块钱|万元|美元))[^\n]*"
           r"(?:原价|现价|优惠价|特价|包邮|秒杀|下单|库存|招商|加盟|代理|咨询|热线|抢购|微信|vx|QQ|联系)",
           r"(?:原价|现价|优惠价|特价|包邮|秒杀|下单|抢购|招商|加盟|代理)[^\n]*"
           r"(?:[¥￥$]\s*\d+(?:\.\d+)?|\d+(?:\.\d+)?\s*(?:元|块钱|万元|美元))",
           r"(?i)(?:\$\s?\d+(?:\.\d+)?)[^\n]*(?:buy now|order now|add to cart|free shipping|limited offer|call now)",
           r"(?i)(?:buy now|order now|add to cart|free shipping|limited offer)[^\n]*\$\s?\d+"],
}
DEFAULT_TAIL_MARKERS = [r"(?i)^\s*(?:相关文章|相关阅读|相关推荐|相关新闻|热门推荐|推荐阅读|猜你喜欢|延伸阅读|热门文章|精彩推荐"
                        r"|往期回顾|related (?:articles|posts|stories)|you may also like|recommended for you"
                        r"|read more|more stories)\s*[:：]?\s*$"]

MORE_TAIL_MARKERS = [r"(?i)^\s*(?:相关文章推荐|相关链接|更多阅读|热门阅读|热门资讯|最新文章|为[你您]推荐|大家都在看|你(?:可能|或许)"
                     r"(?:也|还)?(?:喜欢|感兴趣|想看)|看了(?:本文|这篇文章)?的人(?:还|也)看了|看了又看|掌柜推荐|店长推荐"
                     r"|更多精彩|猜您喜欢|相关帖子|相关产品|同类推荐|店铺推荐|更多回答|查看更多|热点新闻|热门新闻|热门资讯|达人选购|you (?:may|might) (?:also )?(?:like|enjoy|be interested in)"
                     r"|related (?:reading|content|links|products)|products related to this item|similar items|more answers|most (?:popular|read|viewed)|recommended (?:reading|posts|articles|stories)|popular "
                     r"(?:posts|articles|stories)|trending(?: now| stories)?|more (?:from|articles|posts) [\w ]{0,30}|also on [\w ]{1,30}"
                     r"|(?:customers|people) who (?:bought|viewed) this(?: item)? also (?:bought|viewed)|frequently bought together"
                     r"|sponsored (?:links|content|stories)|read next|further reading)\s*[:：]?\s*$"]
LIST_ITEM = re.compile(r"(?:\.{3,}|…+|。{3,})\s*$|^\s*(?:[-*•·▪►>]|\d{1,2}[.、)）]|\[\d+\]|[（(]\d{1,2}[）)])\s*\S")


@dataclass(frozen=True)
class BoilerplateConfig:
    max_line_chars: int = field_help(60, "line rules only touch lines at most this long (articles survive)")
    rules: dict[str, list[str]] = field_help(DEFAULT_RULES, "rule name -> regexes; a short line matching any is dropped")
    tail_markers: list[str] = field_help(DEFAULT_TAIL_MARKERS, "a line matching one of these cuts the rest")
    tail_max_line_chars: int = field_help(80, "a tail is cut only when its lines are titles (at most this long)")
    list_tails: bool = field_help(True, "also cut tails after more_tail_markers, and tails of long list items "
                                        "(title + snippet ending in an ellipsis, numbered or bulleted)")
    more_tail_markers: list[str] = field_help(MORE_TAIL_MARKERS, "markers that cut a tail when list_tails is on")
    ad_blocks: bool = field_help(True, "drop runs of lines dense in prices, calls to action and contact handles")
    ads: AdConfig = field_help(AdConfig(), "the ad-block signals and thresholds (ads.py)")
    furniture: bool = field_help(True, "drop meta, notice and menu lines whatever their length (furniture.py)")
    furniture_rules: FurnitureConfig = field_help(FurnitureConfig(), "the furniture patterns and thresholds")


class Boilerplate:
    def __init__(self, cfg: BoilerplateConfig):
        self.cfg = cfg
        self.rules = {name: [re.compile(p) for p in pats] for name, pats in cfg.rules.items()}
        self.tail = [re.compile(p) for p in cfg.tail_markers]
        self.more_tail = [re.compile(p) for p in cfg.more_tail_markers] if cfg.list_tails else []
        self.ads = AdBlocks(cfg.ads) if cfg.ad_blocks else None
        self.furniture = Furniture(cfg.furniture_rules) if cfg.furniture else None

    def _is_title_list(self, lines: list[str]) -> bool:
        rest = [l for l in lines if l.strip()]
        return all(len(l.strip()) <= self.cfg.tail_max_line_chars for l in rest)

    def _is_item_list(self, lines: list[str]) -> bool:
        """Every line is a title, or a long item: title + snippet ending in an ellipsis, numbered, bulleted."""
        return all(len(l.strip()) <= self.cfg.tail_max_line_chars or LIST_ITEM.search(l.strip())
                   for l in lines if l.strip())

    def _tail(self, lines: list[str], i: int) -> str | None:
        """The rule that cuts ``lines[i:]`` as a "related articles" tail, or None."""
        line = lines[i].strip()
        if not line or len(line) > self.cfg.tail_max_line_chars:
            return None
        if any(p.search(line) for p in self.tail) and self._is_title_list(lines[i + 1:]):
            return "related_tail"
        if self.cfg.list_tails and any(p.search(line) for p in self.tail + self.more_tail) \
                and self._is_item_list(lines[i + 1:]):
            return "list_tail"
        return None

    def clean(self, text: str, counts: Counter | None = None) -> str:
        """``text`` without boilerplate lines; ``counts`` gets lines removed per rule."""
        counts = Counter() if counts is None else counts
        lines = text.split("\n")
        for i in range(len(lines)):
            if rule := self._tail(lines, i):
                counts[rule] += len([l for l in lines[i:] if l.strip()])
                lines = lines[:i]
                break
        in_ads = self.ads.find(lines) if self.ads else set()
        kept = []
        for i, line in enumerate(lines):
            stripped = line.strip()
            rule = self._match(stripped) if stripped and len(stripped) <= self.cfg.max_line_chars else None
            if rule is None and i in in_ads:
                rule = "ad_block"
            if rule is None and stripped and self.furniture:
                rule = self.furniture.match(stripped)
            if rule:
                counts[rule] += 1
                continue
            kept.append(line)
        return "\n".join(kept)

    def _match(self, line: str) -> str | None:
        for name, patterns in self.rules.items():
            if any(p.search(line) for p in patterns):
                return name
        return None
