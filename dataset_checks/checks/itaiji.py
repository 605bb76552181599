"""Variant forms of CJK characters that name one person (itaiji), folded to one representative.

NFKC folds compatibility ideographs with a decomposition (U+FA10 塚 → 塚), but not the forms a
registry or a keyboard actually produces for the same surname: 髙橋 and 高橋, 渡邊 and 渡辺,
齋藤 and 斎藤 are one family name written two ways, and a folder may carry either. Traditional
and simplified Chinese forms of common surnames are folded too (陳/陈). The representative is
arbitrary; it is only ever compared, never shown.
"""

from __future__ import annotations

# representative: its variants (old/registry forms, Chinese traditional/simplified forms)
_GROUPS = {
    "高": "髙",
    "崎": "﨑嵜碕",
    "辺": "邊邉边",
    "斎": "齋齊斉斋齐",
    "浜": "濱濵滨",
    "沢": "澤泽",
    "広": "廣广",
    "国": "國囯",
    "桜": "櫻樱",
    "島": "嶋嶌岛",
    "峰": "峯",
    "富": "冨",
    "徳": "德",
    "恵": "惠",
    "栄": "榮荣",
    "真": "眞",
    "寿": "壽寿",
    "実": "實实",
    "蔵": "藏",
    "黒": "黑",
    "浅": "淺",
    "戸": "戶",
    "礼": "禮",
    "竜": "龍龙",
    "槙": "槇",
    "館": "舘",
    "関": "關关",
    "張": "张",
    "陳": "陈",
    "劉": "刘",
    "黄": "黃",
    "趙": "赵",
    "呉": "吳吴",
    "楊": "杨",
    "鄭": "郑",
    "謝": "谢",
    "許": "许",
    "馬": "马",
    "孫": "孙",
    "羅": "罗",
    "鄧": "邓",
    "韓": "韩",
    "馮": "冯",
    "蕭": "萧",
    "蘇": "苏",
    "盧": "卢",
    "蔣": "蒋",
    "賈": "贾",
    "閻": "阎",
    "嚴": "严",
    "鍾": "钟",
}

ITAIJI: dict[int, str] = {ord(v): rep for rep, variants in _GROUPS.items() for v in variants if v != rep}
