"""Page furniture that is not short: meta lines, notices, menus and post headers, English and Chinese.

boilerplate.py's single-line rules only look at short lines (60 characters), so that article sentences
which mention "来源" or "copyright" stay. Furniture is often longer ("来源: <URL> 浏览: 3821次 关键词: 早餐,
鸡蛋,营养,减肥"), so it is found by shape rather than length:

- ``meta``: a line made of at least two meta facets (a "key: value" such as 来源/作者/标签/Tags, a view or
  reply counter, a date, "posted by", a forum floor such as 沙发 or #3) and no sentence: it does not end
  with "。" and holds no "。". One facet is not enough ("2023年5月12日，记者从..." is prose).
- ``notice``: reprint, contribution, copyright and disclaimer notices, and the post footers of blogs and
  forums ("转载请注明出处", "如有侵权请联系删除", "投稿邮箱", "This post may contain affiliate links",
  "Last edited by ..."), by phrases that only such notices use; phrases that prose might quote are
  anchored at the start of the line.
- ``menu``: a short line of at least three short items between separators (``|``, ``·``, ``›``, ``/``):
  menus and breadcrumbs; and a line made only of post or product buttons ("回复 举报", "Reply · Quote").

The regexes are lists in ``FurnitureConfig`` so params can extend them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from chatforge.core.config import field_help

DEFAULT_FACETS = [
    # key: value
    r"(?i)(?:^|[\s|·•])(?:来源|出处|作者|编辑|责任编辑|标签|关键词|关键字|分类|栏目|字体|字号|原文链接|本文链接"
    r"|source|author|tags?|keywords|category|categories|filed under|tagged with|posts|karma|joined|reputation)\s*[:：]",
    # counters: views, reads, clicks, replies, comments
    r"(?i)(?:浏览|阅读|点击|查看|回复|评论|人气|热度|点赞|收藏)(?:次数|数|量|人数)?\s*[:：(（]?\s*\d[\d,]*",
    r"(?i)\d[\d,.]*\s*(?:k\s*)?(?:views?|reads?|replies|comments?|likes?|shares?|次浏览|次阅读|人阅读|条评论)\b",
    r"(?i)\b(?:views?|reads|replies|comments|likes|hits)\s*[:：(]\s*\d[\d,]*",
    r"(?i)\b\d+\s*min(?:ute)?s?\s*read\b",
    # dates and times
    r"(?:19|20)\d{2}\s*[-/.年]\s*\d{1,2}\s*[-/.月]\s*\d{1,2}\s*日?(?:\s+\d{1,2}:\d{2})?",
    r"(?i)\b(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.? \d{1,2},? (?:19|20)\d{2}\b",
    r"(?i)\b\d{1,2} (?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]* (?:19|20)\d{2}\b",
    # who and when
    r"(?i)(?:^|[\s|·•])(?:发表于|发布于|发布时间|更新时间|更新于|posted (?:by|on|in)|published|updated|written by|"
    r"started by|quote from|last edited)\b",
    r"(?i)^\s*by [A-Z][\w.'-]*(?: [A-Z][\w.'-]*)?\s*(?:[|·•,]|$)",
    # forum floors and roles
    r"^\s*(?:楼主|沙发|板凳|地板|\d+\s*[楼#]|#\d+)(?=[\s|:：·]|$)", r"^\s*回复\s*[:：]",
    r"(?i)\b(?:member|moderator|administrator|admin)\b\s*[·|]",
]
DEFAULT_NOTICES = [
    r"转载请(?:注明|联系|保留|务必)|未经(?:\S{0,6})?(?:授权|许可|允许|同意)[，,]?\s*(?:禁止|不得|严禁|谢绝)|谢绝转载|禁止转载",
    r"(?:如有|若有|如涉及|若涉及)侵权|(?:请)?联系(?:我们|本站|小编|作者)?(?:进行)?删除|版权归(?:原)?作者所有",
    r"(?:投稿|合作|商务)(?:邮箱|信箱|热线|请联系|请加)|欢迎投稿|仅代表作者(?:个人)?观点|不构成(?:任何)?\S{0,4}建议"
    r"|投资有风险|本帖最后由|您需要登录后才可以|个性签名|打赏作者",
    r"^\s*(?:免责声明|声明|版权声明|特别声明|郑重声明|原标题|本文作者|本文链接|本文地址|本文来源|文章来源|原文地址|原创文章)\s*[:：，,]",
    r"^\s*(?:本文(?:为|系)(?:作者|博主|本站)?原创|本站(?:部分)?(?:文章|内容|资源)(?:均)?来(?:源|自)于?(?:网络|互联网))",
    r"(?i)\b(?:this|the) (?:post|article|page|site) (?:may )?contains? affiliate links|\bfor informational purposes only\b"
    r"|\bnot (?:a substitute|intended as a substitute) for professional\b|\breproduction without permission\b"
    r"|\breprinted with permission\b|\ball rights reserved\b|\byou must (?:log in|be logged in|register|sign in)\b"
    r"|\bcomments are closed\b|\bbuy me a coffee\b|\bsubscribe to (?:my|our) newsletter\b|\benter your email address\b"
    r"|\bsign up for (?:my|our) newsletter\b",
    r"(?i)^\s*(?:disclaimer|disclosure|editor'?s note|previous (?:post|article)|next (?:post|article)|share this"
    r"(?: article| post| story)?|last edited by|(?:enjoyed|liked?) this (?:post|article)\?)",
    r"^\s*(?:上一篇|下一篇|上一页|下一页|上一章|下一章)\s*[:：]",
    r"(?i)^\s*(?:trending(?: now)?|most popular|editor'?s picks?|热搜|今日热点|热点推荐)\s*[:：]",
]
DEFAULT_META_STARTS = [r"(?i)^\s*(?:标签|关键词|关键字|tags?|keywords|filed under|tagged with|posted in)\s*[:：]",
                       r"^\s*(?:\d+\s*[楼#]|#\d+|楼主|沙发|板凳|地板)\s*$",
                       r"(?i)^\s*(?:customer reviews|reviews|ratings|商品评价|累计评价|用户评价|全部评价)\s*[(（]\s*\d"]
# Post and product buttons: a line made only of these (a counter may follow each): "回复 支持(12) 反对(0)".
DEFAULT_BUTTONS = [r"回复|举报|支持|反对|引用|收藏|分享|点赞|评论|快速回复|返回列表|只看该作者|倒序浏览|打印|顶|踩|楼主",
                   r"logged|reply|quote|report|like|share|permalink|flag|go up|back to top|write a review|"
                   r"helpful|not helpful|edit|delete|bookmark"]
MENU_SEPARATORS = re.compile(r"\s+[|·•›»>/]\s+|\s*[|｜]\s*")


@dataclass(frozen=True)
class FurnitureConfig:
    facets: list[str] = field_help(DEFAULT_FACETS, "regexes of one meta facet (a key, a counter, a date, a floor)")
    meta_starts: list[str] = field_help(DEFAULT_META_STARTS, "regexes of a line start that makes a meta line alone")
    buttons: list[str] = field_help(DEFAULT_BUTTONS, "regexes (case-insensitive, no inline flags) of post and product buttons; a line of only these goes")
    min_facets: int = field_help(2, "a line of at least this many distinct facets and no sentence is a meta line")
    max_meta_chars: int = field_help(200, "longer lines are never meta lines")
    notices: list[str] = field_help(DEFAULT_NOTICES, "regexes of reprint, contribution, copyright and post notices")
    max_notice_chars: int = field_help(300, "longer lines are never notices")
    menu_min_items: int = field_help(3, "a menu line has at least this many items between separators")
    menu_item_chars: int = field_help(16, "and each item is at most this long")


class Furniture:
    def __init__(self, cfg: FurnitureConfig):
        self.cfg = cfg
        self.facets = [re.compile(p) for p in cfg.facets]
        self.notices = [re.compile(p) for p in cfg.notices]
        self.meta_starts = [re.compile(p) for p in cfg.meta_starts]
        token = "(?:" + "|".join(f"(?:{p})" for p in cfg.buttons) + r")(?:\s*[(（]\s*\d[\d,]*\s*[)）])?"
        self.buttons = re.compile(rf"{token}(?:[\s|·•/]+{token})*", re.IGNORECASE)

    def facet_count(self, line: str) -> int:
        """Meta facets in ``line``: matches of the facet patterns, overlapping ones counted once."""
        spans = sorted(m.span() for p in self.facets for m in p.finditer(line))
        count, end = 0, -1
        for start, stop in spans:
            if start >= end:
                count, end = count + 1, stop
            else:
                end = max(end, stop)
        return count

    def match(self, line: str) -> str | None:
        """'meta', 'notice', 'menu' or None for one stripped line."""
        if len(line) <= self.cfg.max_notice_chars and any(p.search(line) for p in self.notices):
            return "notice"
        if len(line) <= self.cfg.max_meta_chars and "。" not in line and (
                any(p.search(line) for p in self.meta_starts)
                or self.facet_count(line) >= self.cfg.min_facets):
            return "meta"
        if self.buttons.fullmatch(line):
            return "menu"
        items = [item for item in MENU_SEPARATORS.split(line) if item.strip()]
        if len(items) >= self.cfg.menu_min_items and all(len(i.strip()) <= self.cfg.menu_item_chars for i in items) \
                and not line.rstrip().endswith(("。", ".", "？", "?", "!", "！")):
            return "menu"
        return None
