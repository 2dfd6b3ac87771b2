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
- ``menu``: a line of short items between separators: at least two with ``|`` or ``·`` (which prose does
  not use between short phrases), three with ``›``, ``»`` or ``/``: menus, breadcrumbs, post footers
  ("top_commenter · 4h"); and a line made only of post or product buttons ("回复 举报", "Reply · Share"),
  where one button alone goes only if it cannot be a chat reply ("Logged" yes, "like" no).

The regexes are lists in ``FurnitureConfig`` so params can extend them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from chatforge.core.config import field_help

DEFAULT_FACETS = [
    # key: value
    r"(?i)(?:^|[\s|·•])(?:来源|来自|出处|作者|编辑|责任编辑|标签|关键词|关键字|分类|栏目|字体|字号|原文链接|本文链接"
    r"|source|author|tags?|keywords|category|categories|filed under|tagged with|posts|karma|joined|reputation)\s*[:：]",
    # counters: views, reads, clicks, replies, comments
    r"(?i)(?:浏览|阅读|点击|查看|回复|评论|人气|热度|点赞|收藏)(?:次数|数|量|人数)?\s*[:：(（]?\s*\d[\d,]*",
    r"(?i)\d[\d,.]*\s*(?:k\s*)?(?:views?|reads?|replies|comments?|likes?|shares?|次浏览|次阅读|人阅读|条评论)\b",
    r"(?i)\b(?:views?|reads|replies|comments|likes|hits)\s*[:：(]\s*\d[\d,]*",
    r"(?i)\b\d+\s*min(?:ute)?s?\s*read\b",
    r"(?i)(?:关注者|被浏览|赞同|粉丝)\s*\d[\d,.]*\s*[kK万]?",
    r"(?i)\b\d(?:\.\d)?\s*(?:out of 5(?: stars)?|from \d[\d,]* votes)\b|\b\d[\d,]*\s*(?:global )?(?:ratings|votes)\b"
    r"|(?:^|[·|•]\s*)\d[\d,.]*k?\s*points\s*(?=$|[·|•])",
    # relative times of posts and comments: "5h", "3 days ago", "2小时前"
    r"(?i)(?:^|[·|•]\s*)\d+\s*(?:[smhdwy]|hrs?|mins?|days?|weeks?|months?|years?)(?: ago)?\s*(?=$|[·|•])|\d+\s*(?:秒|分钟|小时|天|周|个月|年)前",
    # dates and times
    r"(?:19|20)\d{2}\s*[-/.年]\s*\d{1,2}\s*[-/.月]\s*\d{1,2}\s*日?(?:\s+\d{1,2}:\d{2})?",
    r"(?i)\b(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.? \d{1,2},? (?:19|20)\d{2}\b",
    r"(?i)\b\d{1,2} (?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]* (?:19|20)\d{2}\b",
    # who and when
    r"(?:^|[\s|·•])(?:发表于|发布于|发布时间|更新时间|更新于|已编辑)",
    # English ones only where a header has them: at the start or after a separator ("I asked him" is prose)
    r"(?i)(?:^|[|·•]\s*)(?:posted (?:by|on|in)|published|updated|written by|started by|quote from|last edited|asked"
    r"|answered|modified|edited)\b|\bviewed \d[\d.,]*k? times\b",
    r"(?i)\b\d+ (?:seconds?|minutes?|hours?|days?|weeks?|months?|years?)(?:, \d+ \w+)? ago\b",
    r"(?i)^\s*by [A-Z][\w.'-]*(?: [A-Z][\w.'-]*)?\s*(?:[|·•,]|$)",
    # forum floors and roles
    r"^\s*(?:楼主|沙发|板凳|地板|\d+\s*[楼#]|#\d+)(?=[\s|:：·]|$)", r"^\s*回复\s*[:：]",
    r"(?i)\b(?:member|moderator|administrator|admin)\b\s*[·|]",
]
DEFAULT_NOTICES = [
    r"转载请(?:注明|联系|保留|务必)|未经(?:\S{0,6})?(?:授权|许可|允许|同意)[，,]?\s*(?:禁止|不得|严禁|谢绝)|谢绝转载|禁止转载",
    r"(?:如有|若有|如涉及|若涉及)侵权|(?:请)?联系(?:我们|本站|小编|作者)?(?:进行)?删除|版权归(?:原)?作者所有",
    r"(?:投稿|合作|商务)(?:邮箱|信箱|热线|请联系|请加)|欢迎投稿|仅代表作者(?:个人)?观点|不构成(?:任何)?\S{0,4}建议"
    r"|投资有风险[，,]\s*\S{0,2}(?:入市|投资|理财)需谨慎|本帖最后由|您需要登录后才可以|^\s*个性签名|打赏作者",
    r"^\s*(?:免责声明|声明|版权声明|特别声明|郑重声明|原标题|本文作者|本文链接|本文地址|本文来源|文章来源|原文地址|原创文章)\s*[:：，,]",
    r"^\s*(?:本文(?:为|系)(?:作者|博主|本站)?原创|本站(?:部分)?(?:文章|内容|资源)(?:均)?来(?:源|自)于?(?:网络|互联网))",
    r"(?i)\b(?:this|the) (?:post|article|page|site) (?:may )?contains? affiliate links|\bfor informational purposes only\b"
    r"|\bnot (?:a substitute|intended as a substitute) for professional\b|\breproduction without permission\b"
    r"|\breprinted with permission\b|\ball rights reserved\b|\byou must (?:log in|be logged in|register|sign in)\b"
    r"|\bcomments are closed\b|\bbuy me a coffee\b|\bsubscribe to (?:my|our) newsletter\b|\benter your email address\b"
    r"|\bsign up for (?:my|our) newsletter\b",
    r"(?i)^\s*(?:(?:disclaimer|disclosure|editor'?s note|previous (?:post|article)|next (?:post|article))\s*[:：]"
    r"|share this(?: article| post| story)?\s*(?:[:：]|$)|last edited by|(?:enjoyed|liked?) this (?:post|article)\?)",
    r"^\s*(?:上一篇|下一篇|上一页|下一页|上一章|下一章)\s*[:：]",
    r"(?i)^\s*(?:trending(?: now)?|most popular|editor'?s picks?|热搜|今日热点|热点推荐)\s*[:：]",
    r"(?i)\b(?:earn|receive|make) (?:a )?(?:small )?commission\b|\baffiliate (?:links?|commission|partner)|打开\s*app|下载\s*app"
    r"|\bopen (?:in|the) app\b|【纠错】|【责任编辑",
    r"^\s*[（(]?\s*原标题\s*[:：]",
    r"(?i)\b(?:tag|follow|mention) (?:us |me )?@\w+|\bfollow (?:us|me) on (?:instagram|twitter|facebook|tiktok|pinterest|x)\b"
    r"|^\s*did you (?:make|try) this recipe\b|^\s*(?:pin|save|print|rate) (?:this|the) recipe\b",
]
DEFAULT_META_STARTS = [r"(?i)^\s*(?:标签|关键词|关键字|tags?|keywords|filed under|tagged with|posted in)\s*[:：]",
                       r"^\s*(?:\d+\s*[楼#]|#\d+|楼主|沙发|板凳|地板)\s*$",
                       r"(?i)^\s*(?:customer reviews|reviews|ratings|商品评价|宝贝评价|累计评价|用户评价|全部评价)\s*(?:[(（]\s*\d|$)",
                       r"(?i)^\s*\d(?:\.\d)?\s*(?:from \d[\d,]* votes|out of 5 stars)"]
# Post and product buttons: a line made only of these (a counter may follow each): "回复 支持(12) 反对(0)".
DEFAULT_BUTTONS = [r"回复|举报|支持|反对|引用|收藏|分享|点赞|赞|转发|回应|我来回应|最赞回应|评论|快速回复|返回列表|只看该作者|倒序浏览|打印|顶|踩|楼主|写回答|邀请回答"
                   r"|添加评论|更多回答|查看全部|收藏宝贝|进店逛逛|关注店铺|加关注|私信",
                   r"logged|reply|quote|report|like|share|save|permalink|flag|go up|back to top|write a review|"
                   r"helpful|not helpful|edit|delete|bookmark|learn more|read more|see more|show more|load more|"
                   r"jump to recipe|print recipe|print|pin it|follow|more answers|more comments|improve this (?:question|answer)|>"]
# One button alone on a line is a chat reply as often as a button ("like", "reply"): only these go alone.
DEFAULT_LONE_BUTTONS = [r"logged|permalink|go up|back to top|write a review|jump to recipe|print recipe|more answers"
                        r"|快速回复|返回列表|只看该作者|我来回应|更多回答|查看全部|收藏宝贝|进店逛逛|关注店铺"]
MENU_SEPARATORS = re.compile(r"\s+[|·•›»/]\s+|\s*[|｜]\s*")     # not ">": "Skipper > Captain > Sailor" in a chat
_STAMP = re.compile(r"(?:19|20)\d{2}[-/.]\d{1,2}[-/.]\d{1,2}\s+\d{1,2}:\d{2}(?::\d{2})?")
_PUNCT = re.compile(r"[。，,！!？?；;]")
_BAR_OR_DOT = re.compile(r"\s*[|｜]\s*|\s+[·•]\s+")


@dataclass(frozen=True)
class FurnitureConfig:
    facets: list[str] = field_help(DEFAULT_FACETS, "regexes of one meta facet (a key, a counter, a date, a floor)")
    meta_starts: list[str] = field_help(DEFAULT_META_STARTS, "regexes of a line start that makes a meta line alone")
    lone_buttons: list[str] = field_help(DEFAULT_LONE_BUTTONS, "regexes of buttons that go even alone on a line")
    buttons: list[str] = field_help(DEFAULT_BUTTONS, "regexes (case-insensitive, no inline flags) of post and product buttons; a line of only these goes")
    min_facets: int = field_help(2, "a line of at least this many distinct facets and no sentence is a meta line")
    max_meta_chars: int = field_help(200, "longer lines are never meta lines")
    stamp_line_chars: int = field_help(50, "a line at most this long with a date and time and no punctuation is meta")
    notices: list[str] = field_help(DEFAULT_NOTICES, "regexes of reprint, contribution, copyright and post notices")
    max_notice_chars: int = field_help(300, "longer lines are never notices")
    menu_min_items: int = field_help(3, "a menu line has at least this many items between separators")
    menu_min_items_bar: int = field_help(2, "... or this many when the separators are | or · (not in prose)")
    menu_item_chars: int = field_help(20, "and each item is at most this long")


class Furniture:
    def __init__(self, cfg: FurnitureConfig):
        self.cfg = cfg
        self.facets = [re.compile(p) for p in cfg.facets]
        self.notices = [re.compile(p) for p in cfg.notices]
        self.meta_starts = [re.compile(p) for p in cfg.meta_starts]
        token = "(?:" + "|".join(f"(?:{p})" for p in cfg.buttons) + r")(?:\s*[(（]\s*\d[\d,]*\s*[)）])?"
        self.buttons = re.compile(rf"{token}(?:[\s|·•/]+{token})+", re.IGNORECASE)
        self.lone_buttons = re.compile("|".join(f"(?:{p})" for p in cfg.lone_buttons), re.IGNORECASE)

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
        if len(line) <= self.cfg.stamp_line_chars and _STAMP.search(line) and not _PUNCT.search(_STAMP.sub("", line)):
            return "meta"              # "喵喵教主 2023-08-14 21:30:12 上海": a post header, name + time stamp
        if len(line) <= self.cfg.max_meta_chars and "。" not in line and (
                any(p.search(line) for p in self.meta_starts)
                or self.facet_count(line) >= self.cfg.min_facets):
            return "meta"
        if self.buttons.fullmatch(line) or self.lone_buttons.fullmatch(line):
            return "menu"
        items = [item for item in MENU_SEPARATORS.split(line) if item.strip()]
        least = self.cfg.menu_min_items_bar if _BAR_OR_DOT.search(line) else self.cfg.menu_min_items
        if len(items) >= least and all(len(i.strip()) <= self.cfg.menu_item_chars for i in items) \
                and not line.rstrip().endswith(("。", ".", "？", "?", "!", "！")):
            return "menu"
        return None
