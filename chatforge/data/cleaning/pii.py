"""PII redaction with typed placeholders (<EMAIL>, <PHONE>, <WECHAT>, <QQ>, <ID_CARD>, <IP>, <URL>).

The patterns cover the contact forms of English and Chinese web pages (tests/test_cleaning.py lists
the cases each must and must not match). CJK characters count as ``\\w`` in Python's ``re``,
so boundaries are explicit ASCII lookarounds rather than ``\\b``; digit runs are guarded with
``(?<!\\d)``/``(?!\\d)`` so order numbers, prices, dates and years are left alone.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter

EMAIL = re.compile(r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
URL = re.compile(r"(?i)(?<![A-Za-z0-9.-])(?:https?://|ftp://|www\.)[A-Za-z0-9\-._~:/?#\[\]@!$&*+,;=%]+")
WECHAT = re.compile(r"(?:微信|薇信|威信|[vV]信|[vV][xX]|[wW][xX]|weixin|[wW]e[cC]hat)\s*(?:号|ID|id)?\s*[:：]?\s*"
                    r"([A-Za-z][-_A-Za-z0-9]{5,19}|1[3-9]\d{9})(?![-_A-Za-z0-9])")
QQ = re.compile(r"(?:QQ|qq|扣扣|企鹅)\s*(?:群|号码|号)?\s*[:：]?\s*([1-9]\d{4,11})(?!\d)")
ID_CARD = re.compile(r"(?<!\d)[1-9]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[\dXx](?![\dXx])")
CN_MOBILE = re.compile(r"(?<!\d)(?:\+?86[-\s]?)?1[3-9]\d(?:[-\s]?\d{4}){2}(?!\d)")
CN_LANDLINE = re.compile(r"(?<!\d)(?:\(0\d{2,3}\)|0\d{2,3}-)\s?\d{7,8}(?!\d)")
HOTLINE = re.compile(r"(?<!\d)[48]00-?\d{3}-?\d{4}(?!\d)")
# International numbers need a + country code or the (xxx) xxx-xxxx shape, so years and prices stay.
INTL_PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[\s.-]?(?:\(\d{1,4}\)[\s.-]?)?\d{2,4}(?:[\s.-]?\d{2,4}){1,3}"
                        r"|\(\d{3}\)\s?\d{3}[\s.-]\d{4})(?!\d)")
IPV4 = re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\d.])")

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


def valid_id_card(number: str) -> bool:
    """ISO 7064 MOD 11-2 check digit of an 18-digit Chinese ID number."""
    total = sum(int(d) * w for d, w in zip(number[:17], _ID_WEIGHTS))
    return _ID_CHECK[total % 11] == number[17].upper()


def _global_ip(m: re.Match) -> bool:
    return ipaddress.ip_address(m.group(0)).is_global


# (placeholder, pattern, group to replace (0 = whole match), extra check); order matters: URLs and
# e-mails first (they contain digits), ID cards before phones (an ID contains a phone-like run).
RULES = [
    ("EMAIL", EMAIL, 0, None),
    ("URL", URL, 0, None),
    ("WECHAT", WECHAT, 1, None),
    ("QQ", QQ, 1, None),
    ("ID_CARD", ID_CARD, 0, lambda m: valid_id_card(m.group(0))),
    ("IP", IPV4, 0, _global_ip),
    ("PHONE", CN_MOBILE, 0, None),
    ("PHONE", CN_LANDLINE, 0, None),
    ("PHONE", HOTLINE, 0, None),
    ("PHONE", INTL_PHONE, 0, None),
]


def redact(text: str, counts: Counter | None = None) -> str:
    """Replace PII in ``text`` with typed placeholders; add what was found to ``counts``."""
    for name, pattern, group, check in RULES:
        def repl(m: re.Match, name: str = name, group: int = group, check=check) -> str:
            if check is not None and not check(m):
                return m.group(0)
            if counts is not None:
                counts[name.lower()] += 1
            if name == "URL":                     # sentence punctuation after a URL is not part of it
                whole = m.group(0)
                return f"<{name}>" + whole[len(whole.rstrip(".,;:!?")):]
            if group == 0:
                return f"<{name}>"
            start, end = m.span(group)
            return m.group(0)[: start - m.start()] + f"<{name}>" + m.group(0)[end - m.start():]
        text = pattern.sub(repl, text)
    return text
