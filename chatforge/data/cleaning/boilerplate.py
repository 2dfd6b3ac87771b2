"""Boilerplate removal by line, English and Chinese (rules applied to short lines only, so
article sentences that mention the same words survive).

Line rules apply only to short lines (``max_line_chars``), so article sentences that merely
mention "copyright" or "登录" survive. A line that is only a "related articles" marker cuts the
rest of the document when what follows looks like a list of titles (short lines without
sentence punctuation). The rules are regex lists in ``BoilerplateConfig`` so params can extend them.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from chatforge.core.config import field_help

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


@dataclass(frozen=True)
class BoilerplateConfig:
    max_line_chars: int = field_help(60, "line rules only touch lines at most this long (articles survive)")
    rules: dict[str, list[str]] = field_help(DEFAULT_RULES, "rule name -> regexes; a short line matching any is dropped")
    tail_markers: list[str] = field_help(DEFAULT_TAIL_MARKERS, "a line matching one of these cuts the rest")
    tail_max_line_chars: int = field_help(80, "a tail is cut only when its lines are titles (at most this long)")


class Boilerplate:
    def __init__(self, cfg: BoilerplateConfig):
        self.cfg = cfg
        self.rules = {name: [re.compile(p) for p in pats] for name, pats in cfg.rules.items()}
        self.tail = [re.compile(p) for p in cfg.tail_markers]

    def _is_title_list(self, lines: list[str]) -> bool:
        rest = [l for l in lines if l.strip()]
        return all(len(l.strip()) <= self.cfg.tail_max_line_chars for l in rest)

    def clean(self, text: str, counts: Counter | None = None) -> str:
        """``text`` without boilerplate lines; ``counts`` gets lines removed per rule."""
        lines = text.split("\n")
        kept = []
        for i, line in enumerate(lines):
            stripped = line.strip()
            if stripped and len(stripped) <= self.cfg.tail_max_line_chars and any(p.search(stripped) for p in self.tail) \
                    and self._is_title_list(lines[i + 1:]):
                if counts is not None:
                    counts["related_tail"] += len([l for l in lines[i:] if l.strip()])
                break
            rule = self._match(stripped) if stripped and len(stripped) <= self.cfg.max_line_chars else None
            if rule:
                if counts is not None:
                    counts[rule] += 1
                continue
            kept.append(line)
        return "\n".join(kept)

    def _match(self, line: str) -> str | None:
        for name, patterns in self.rules.items():
            if any(p.search(line) for p in patterns):
                return name
        return None
