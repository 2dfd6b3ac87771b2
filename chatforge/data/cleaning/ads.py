"""Advertisement blocks inside an article, found by the density of ad signals over a run of lines.

An ad in a content-farm or blog page is rarely one line: it is a run of short lines announcing a product,
with a price, a call to action ("立即购买", "Buy now", "free trial") and a contact handle ("联系微信: ..."),
often opened by a label ("【广告】", "Sponsored"). One such signal in an article sentence means nothing
("一斤鸡蛋要6元", "a plumber would charge you $100"), so a line is never judged alone:

1. Each line gets its signal kinds: ``price`` (amounts, discounts), ``offer`` ("包邮", "free shipping"),
   ``shop`` (sales counts, stock, size and colour options),
   ``cta`` (imperative calls to action: "立即购买", "Sign up now"), ``contact`` (a handle or number offered
   with a word: "加微信 ...", "call 1-800-..."; a word like "电话" alone is not enough) and ``label`` (an ad
   label). The last three are strong; prices, offers and shop widgets are weak. A line that is only an
   ad label ("ADVERTISEMENT", "广告") is a block by itself.
2. A line may belong to a block when it has a strong signal, or a weak one and the shape of an ad line:
   short, or not a declarative sentence (one that ends in "。" or "." and has no "!"). So prose that
   quotes a price or an offer ("商家也开始做包邮的生意。") never joins a block on its own account.
3. A block is a run of such lines, bridging at most ``max_gap`` short signal-free lines ("月销 2000+",
   "No credit card required."). It is an ad when its lines carry at least ``min_signals`` (line, kind)
   pairs, at least one of them strong: two ad lines, or one line with a price and a call to action.

The patterns are lists in ``AdConfig`` so params can extend them. Written by hand: neither datatrove nor
trafilatura has a block-level ad rule (trafilatura drops ad *elements* of a page by class name only).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from chatforge.core.config import field_help
from chatforge.data.cleaning.pii import CN_LANDLINE, CN_MOBILE, EMAIL, HOTLINE, INTL_PHONE, QQ, WECHAT

_AMOUNT = r"\d+(?:[.,]\d+)*"
DEFAULT_PRICE = [
    rf"[¥￥$€£]\s?{_AMOUNT}", rf"{_AMOUNT}\s*(?:元|块钱|万元|美元|欧元|英镑)",
    rf"(?i)(?:USD|RMB|EUR)\s?{_AMOUNT}", rf"(?i){_AMOUNT}\s?%\s*off\b", rf"(?i)\bsave (?:up to )?{_AMOUNT}\s?%",
    r"(?<!\d)\d(?:\.\d)?\s*折(?!磨|叠|腾|断)", r"满\d+减\d+", r"(?:原价|现价|促销价|优惠价|特价|到手价|京东价|售价)\s*[:：]?\s*[¥￥]?\d",
    r"特价|促销|特惠|大促|清仓|折扣|优惠|券后价",
]
# Shop-page widgets: sales counts, stock, options, delivery; weak, like a price.
DEFAULT_SHOP = [
    r"月销(?:量)?\s*\d|累计评价\s*\d|已售\s*\d|库存\s*\d|颜色分类\s*[:：]|尺寸\s*[:：]|数量\s*[:：]|运费\s*[:：]|送积分",
    r"(?i)\bin stock\b|\bout of stock\b|\bships (?:in|within|from)\b|\bsold by\b|\bfree returns\b|\bqty\s*[:：]|\bquantity\s*[:：]"
    r"|\bselect (?:size|colou?r)\b",
]
DEFAULT_OFFER = [
    r"先到先得|名额有限|买\S送\S|包邮|抢购|秒杀|团购|拼团|享\d+(?:\.\d)?折|立减\d+|限时(?:特价|优惠|抢购|折扣|免费)?|领(?:取)?优惠券",
    r"(?i)\bpromo code\b|\bcoupon\b|\blimited(?:[- ]time)? (?:offer|deal|only)\b|\blimited time\b|\bfree (?:shipping|delivery"
    r"|installation|gift)\b|\bcancel anytime\b|\bno credit card required\b|\bdon'?t miss (?:out|this)\b",
]
DEFAULT_CTA = [
    r"立即(?:购买|抢购|下单|领取|预订|预约|咨询|报名|体验|开通)|马上(?:购买|抢购|下单|领取)|点击(?:购买|链接|领取|下载|报名)"
    r"|加入购物车|下单(?:立减|即送|有礼)|现在下单|扫码(?:下载|领取|购买|咨询)|戳链接|免费(?:领取|试用|试听|体验|送)",
    r"(?i)\b(?:buy|order|shop|book|subscribe|sign up|register|download|enroll|claim|grab|apply|act)\b(?:\s+[\w']+){0,3}\s+"
    r"(?:now|today)\b|\bcheck your (?:rate|price|eligibility)\b|^\s*learn more\s*[>»]*\s*$"
    r"|\badd to (?:cart|bag|basket|wish ?list)\b|\bclick here\b"
    r"|\bfree (?:trial|quote|consultation)\b|\b(?:first|1st) month free\b|\bfree for \d+ days\b|\btry \S+(?: \S+){0,3} free\b"
    r"|\bcall (?:us )?(?:now|today)\b|\bget (?:yours|\d+\s?% off)\b|\b(?:visit|shop at|available at) [a-z0-9-]+\.(?:com|io|net"
    r"|shop|store|co)\b|^\s*shop (?:the |our |all )?[\w' -]{1,30}$",
    # a code to type in, in capitals ("use code CLEAN25"); "live with the code" is not one
    r"\b(?:[Uu]se|[Ww]ith|[Ee]nter|[Aa]pply) (?:the )?(?:promo |coupon |discount )?code:? [A-Z0-9]{4,}\b",
]
DEFAULT_LABEL = [
    r"^\s*[【\[]\s*(?:[^】\]]{0,6})(?:广告|推广|福利|活动|特惠|促销|爆款|优惠|限时|秒杀|团购|推荐)[^】\]]{0,4}[】\]]",
    r"(?i)^\s*(?:(?:advertisement|sponsored|promoted|special offer|deal of the day)\b|(?:ad|sale)\s*[:：])",
    r"^\s*(?:广告|推广)\s*[:：]",
]
# A handle counts only next to a word that offers it ("Contact the author at ..." in a byline does not).
CONTACT_WORDS = re.compile(r"(?i)加[vV微]|客服|热线|电话|咨询|联系|预约|\b(?:call|phone|tel|whatsapp|text us|email us|"
                           r"contact us|chat with us)\b")
_TOLL_FREE = re.compile(r"(?<!\d)1?[-\s.]?\(?8(?:00|33|44|55|66|77|88)\)?[-\s.]\d{3}[-\s.]\d{4}(?!\d)")
CONTACT_PATTERNS = [EMAIL, WECHAT, QQ, CN_MOBILE, CN_LANDLINE, HOTLINE, INTL_PHONE, _TOLL_FREE]
_DECLARATIVE_END = re.compile(r"[。.]\s*[”\"')）]?\s*$")
STRONG = ("cta", "contact", "label")
# A line that is only an ad label ("ADVERTISEMENT", "Promoted", "广告") is an ad block by itself; not a bare
# "ad" or "sale", which the default data's chat transcripts have as replies.
LABEL_ONLY = re.compile(r"(?i)^\s*[【\[(（]?\s*(?:advertisement|advertising|sponsored|promoted|广告|推广|赞助)\s*[】\])）]?"
                        r"\s*(?:[-–—:]\s*(?:continue reading below|story continues below|scroll to continue))?\s*$")
_EXCLAMATION = re.compile(r"[!！]")
_WIDE = re.compile(r"[\u2e80-\u9fff\uac00-\ud7af\uff00-\uffef]")


@dataclass(frozen=True)
class AdConfig:
    price: list[str] = field_help(DEFAULT_PRICE, "regexes of a price or a discount (a weak signal)")
    offer: list[str] = field_help(DEFAULT_OFFER, "regexes of an offer such as 包邮 or free shipping (a weak signal)")
    shop: list[str] = field_help(DEFAULT_SHOP, "regexes of shop widgets: sales counts, stock, options (weak)")
    cta: list[str] = field_help(DEFAULT_CTA, "regexes of a call to action, an imperative (strong)")
    label: list[str] = field_help(DEFAULT_LABEL, "regexes of an ad label such as 【广告】 or Sponsored (strong)")
    min_signals: int = field_help(2, "a block is an ad with at least this many (line, signal kind) pairs, one strong")
    max_gap: int = field_help(1, "signal-free lines a block may bridge")
    gap_line_chars: int = field_help(40, "a bridged signal-free line is at most this long")
    short_width: int = field_help(40, "a line with only weak signals joins a block when it is not a sentence (ends in 。 "
                                      "or . with no !) or is at most this wide (CJK characters count 2)")
    max_line_chars: int = field_help(200, "longer lines are never part of an ad block")


def width(line: str) -> int:
    """Display width: CJK characters count 2, so one threshold fits Chinese and English lines."""
    return len(line) + len(_WIDE.findall(line))


class AdBlocks:
    def __init__(self, cfg: AdConfig):
        self.cfg = cfg
        self.kinds = {"price": [re.compile(p) for p in cfg.price],
                      "offer": [re.compile(p) for p in cfg.offer],
                      "shop": [re.compile(p) for p in cfg.shop], "cta": [re.compile(p) for p in cfg.cta],
                      "label": [re.compile(p) for p in cfg.label]}

    def signals(self, line: str) -> set[str]:
        """The signal kinds of one (stripped) line."""
        found = {kind for kind, patterns in self.kinds.items() if any(p.search(line) for p in patterns)}
        if WECHAT.search(line) or QQ.search(line) or (
                CONTACT_WORDS.search(line) and any(p.search(line) for p in CONTACT_PATTERNS)):
            found.add("contact")
        return found

    def _joins(self, line: str, kinds: set[str]) -> bool:
        if not kinds or len(line) > self.cfg.max_line_chars:
            return False
        if kinds & set(STRONG):
            return True
        sentence = _DECLARATIVE_END.search(line) and not _EXCLAMATION.search(line)
        return not sentence or width(line) <= self.cfg.short_width    # "商家也开始做包邮的生意。" is prose, not an ad line

    def find(self, lines: list[str]) -> set[int]:
        """Indices of the lines of ``lines`` that are in an ad block (blank lines neither join nor break one)."""
        rows = [(i, line.strip()) for i, line in enumerate(lines) if line.strip()]
        kinds = [self.signals(text) for _, text in rows]
        joins = [self._joins(text, k) for (_, text), k in zip(rows, kinds)]
        out: set[int] = set()
        start = 0
        while start < len(rows):
            if not joins[start]:
                start += 1
                continue
            end, members = start, [start]          # members: the rows of the block, gaps included
            while True:
                nxt = end + 1
                gap = []
                while nxt < len(rows) and not joins[nxt] and len(gap) < self.cfg.max_gap \
                        and len(rows[nxt][1]) <= self.cfg.gap_line_chars and not kinds[nxt]:
                    gap.append(nxt)
                    nxt += 1
                if nxt < len(rows) and joins[nxt]:
                    members += gap + [nxt]
                    end = nxt
                else:
                    break
            pairs = sum(len(kinds[m]) for m in members)
            if (pairs >= self.cfg.min_signals and any(kinds[m] & set(STRONG) for m in members)) \
                    or any(LABEL_ONLY.match(rows[m][1]) for m in members):
                out.update(rows[m][0] for m in members)
            start = end + 1
        return out
