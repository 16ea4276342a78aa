"""Synthetic legacy operator export ("legacy_bss") with a known answer key.

Why this exists
---------------
A migration pipeline can only be trusted if we can *prove* what it does with bad data. Real
operator exports cannot be shared and nobody knows which of their rows are broken, so this
module plays the part of the old Chinese telecom BSS: it writes a realistic export (Chinese
names, addresses, GB 11643 resident ID numbers, mobile numbers, CDRs, data sessions, payments,
complaints, browsing events and consents) and deliberately injects the defects listed in
``docs/source-contract.md`` at exact, seeded rates.  Next to the export it writes ``truth.csv``,
the answer key: every row whose expected outcome is not a plain "loaded", plus the rows the
pipeline must repair while loading.  Comparing the pipeline's verdicts with the answer key gives
its precision and recall per defect, and because every row that is *not* in the answer key is
genuinely clean, any quarantine or exclusion of such a row is a false positive.

Design rules
------------
* One ``numpy.random.default_rng(seed)`` drives everything, and the draws happen in a fixed
  order with fixed chunk sizes, so the same seed, subscriber count and proportions give
  byte-identical files.
* Defect rates are exact counts (``round(rate * rows)``) placed by the generator; a row carries
  at most one own defect, and own defects of child rows are injected only on children of
  subscribers without any defect.  Children of defective subscribers take the parent's fate.
* Normal timestamps lie inside the 330 days before the export instant E (at least one hour
  before E), far from every retention boundary; retention violations are 37-60 months
  (consumption) or 25-48 months (complaints) old, future dates at least a day after E.
* Large tables are produced in chunks of ``CHUNK_ROWS`` rows with vectorised numpy code and
  written with the Arrow CSV writer (values never need quoting, which the writer enforces), so
  memory stays bounded and millions of rows are written per second.

Run ``python -m handover_synth.legacy_bss --out DIR --subscribers N [--seed 42]``.
"""

from __future__ import annotations

import argparse
import calendar
import hashlib
import json
import sys
import time
from collections.abc import Callable
from datetime import datetime
from enum import IntEnum
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

__all__ = [
    "CHILD_DEFECT_RATES",
    "MEAN_ROWS_PER_SUBSCRIBER",
    "SUBSCRIBER_DEFECT_RATES",
    "TABLE_COLUMNS",
    "exact_count",
    "generate",
    "id_check_digit",
    "main",
]

SYSTEM = "legacy_bss"
DEFAULT_EXPORTED_AT = "2026-11-01 00:00:00"
CHUNK_ROWS = 500_000

DAY = 86_400
HOUR = 3_600
NORMAL_WINDOW_DAYS = 330

# fmt: off
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "subscribers": (
        "cust_id", "name", "id_number", "gender", "birth_date", "msisdn", "address", "city",
        "open_date", "status", "transfer_objection", "updated_at",
    ),
    "consents": ("consent_id", "cust_id", "purpose", "granted", "granted_at"),
    "call_records": (
        "cdr_id", "cust_id", "caller", "callee", "start_time", "duration_s", "cell_id",
        "charge_fen",
    ),
    "data_sessions": (
        "session_id", "cust_id", "start_time", "bytes_up", "bytes_down", "cell_id", "charge_fen",
    ),
    "payments": ("payment_id", "cust_id", "paid_at", "amount_fen", "channel"),
    "complaints": ("complaint_id", "cust_id", "created_at", "category", "text", "satisfaction"),
    "browsing_events": ("event_id", "cust_id", "ts", "domain", "search_text"),
}
# fmt: on
TRUTH_COLUMNS = ("table", "key", "defect", "expected_outcome", "expected_reason")

#: Average rows per (non-duplicate) subscriber; call records can be scaled from the CLI.
MEAN_ROWS_PER_SUBSCRIBER: dict[str, float] = {
    "call_records": 20.0,
    "data_sessions": 10.0,
    "payments": 6.0,
    "complaints": 0.3,
    "browsing_events": 5.0,
}
MARKETING_GRANTED = 0.5
MARKETING_REFUSED = 0.2  # an explicit granted=0 row
BEHAVIOURAL_GRANTED = 0.4
BEHAVIOURAL_REFUSED = 0.15

#: Subscriber defect rates (of N).  INVALID_DATE is written as FUTURE_DATE or IMPOSSIBLE_DATE.
SUBSCRIBER_DEFECT_RATES: dict[str, float] = {
    "BAD_ID_CHECKSUM": 0.01,
    "ID_BIRTH_MISMATCH": 0.003,
    "MALFORMED_MSISDN": 0.01,
    "FULLWIDTH_MSISDN": 0.01,
    "DUPLICATE_PERSON": 0.005,
    "BLANK_MANDATORY": 0.005,
    "INVALID_DATE": 0.003,
    "OBJECTED_TRANSFER": 0.005,
}
#: Own defect rates of child tables (of the table's row count).
CHILD_DEFECT_RATES: dict[str, dict[str, float]] = {
    "call_records": {
        "ORPHAN_RECORD": 0.005,
        "FUTURE_DATE": 0.003,
        "NEGATIVE_AMOUNT": 0.003,
        "PAST_RETENTION": 0.005,
    },
    "data_sessions": {"FUTURE_DATE": 0.003, "NEGATIVE_AMOUNT": 0.003, "PAST_RETENTION": 0.005},
    "payments": {
        "FUTURE_DATE": 0.003,
        "NEGATIVE_AMOUNT": 0.003,
        "BLANK_MANDATORY": 0.003,
        "PAST_RETENTION": 0.005,
    },
    "complaints": {"PAST_RETENTION": 0.02, "PII_IN_TEXT": 0.2},
    "browsing_events": {},
}
#: Past-retention window per table, in months before E (inclusive ends get a 2-day margin).
PAST_RETENTION_MONTHS: dict[str, tuple[int, int]] = {
    "call_records": (37, 60),
    "data_sessions": (37, 60),
    "payments": (37, 60),
    "complaints": (25, 48),
}


class K(IntEnum):
    """Truth codes: what a row is, and therefore what the pipeline must do with it."""

    CLEAN = 0
    PARENT_OBJECTED = 1
    PARENT_QUARANTINED = 2
    NO_CONSENT = 3
    PAST_RETENTION = 4
    ORPHAN_RECORD = 5
    FUTURE_DATE = 6
    NEGATIVE_AMOUNT = 7
    BLANK_MANDATORY = 8
    PII_IN_TEXT = 9
    BAD_ID_CHECKSUM = 10
    ID_BIRTH_MISMATCH = 11
    MALFORMED_MSISDN = 12
    FULLWIDTH_MSISDN = 13
    DUPLICATE_PERSON = 14
    IMPOSSIBLE_DATE = 15
    OBJECTED_TRANSFER = 16


# (defect, expected_outcome, expected_reason) per truth code.
_TRUTH: dict[K, tuple[str, str, str]] = {
    K.CLEAN: ("", "loaded", ""),
    K.PARENT_OBJECTED: ("PARENT_OBJECTED", "excluded", "OBJECTED_TRANSFER"),
    K.PARENT_QUARANTINED: ("PARENT_QUARANTINED", "quarantined", "PARENT_QUARANTINED"),
    K.NO_CONSENT: ("NO_CONSENT", "excluded", "NO_CONSENT"),
    K.PAST_RETENTION: ("PAST_RETENTION", "excluded", "RETENTION_EXPIRED"),
    K.ORPHAN_RECORD: ("ORPHAN_RECORD", "quarantined", "ORPHAN_RECORD"),
    K.FUTURE_DATE: ("FUTURE_DATE", "quarantined", "INVALID_DATE"),
    K.NEGATIVE_AMOUNT: ("NEGATIVE_AMOUNT", "quarantined", "NEGATIVE_AMOUNT"),
    K.BLANK_MANDATORY: ("BLANK_MANDATORY", "quarantined", "MISSING_FIELD"),
    K.PII_IN_TEXT: ("PII_IN_TEXT", "loaded", ""),
    K.BAD_ID_CHECKSUM: ("BAD_ID_CHECKSUM", "quarantined", "INVALID_ID_CHECKSUM"),
    K.ID_BIRTH_MISMATCH: ("ID_BIRTH_MISMATCH", "quarantined", "INVALID_ID_BIRTHDATE"),
    K.MALFORMED_MSISDN: ("MALFORMED_MSISDN", "quarantined", "INVALID_MSISDN"),
    K.FULLWIDTH_MSISDN: ("FULLWIDTH_MSISDN", "loaded", ""),
    K.DUPLICATE_PERSON: ("DUPLICATE_PERSON", "merged", "SAME_PERSON"),
    K.IMPOSSIBLE_DATE: ("IMPOSSIBLE_DATE", "quarantined", "INVALID_DATE"),
    K.OBJECTED_TRANSFER: ("OBJECTED_TRANSFER", "excluded", "OBJECTED_TRANSFER"),
}
_TRUTH_DEFECT = pa.array([_TRUTH[K(i)][0] for i in range(len(K))])
_TRUTH_OUTCOME = pa.array([_TRUTH[K(i)][1] for i in range(len(K))])
_TRUTH_REASON = pa.array([_TRUTH[K(i)][2] for i in range(len(K))])

# Parent state of a base subscriber, as seen by its child rows.
_P_CLEAN, _P_REPAIRED, _P_QUARANTINED, _P_OBJECTED = 0, 1, 2, 3

# --------------------------------------------------------------------------------------------
# Reference data
# --------------------------------------------------------------------------------------------

# fmt: off
# (region code, province, city, district) - real administrative division codes.
_REGIONS: tuple[tuple[str, str, str, str], ...] = (
    ("110105", "北京市", "北京市", "朝阳区"),
    ("110108", "北京市", "北京市", "海淀区"),
    ("310115", "上海市", "上海市", "浦东新区"),
    ("310104", "上海市", "上海市", "徐汇区"),
    ("120101", "天津市", "天津市", "和平区"),
    ("500103", "重庆市", "重庆市", "渝中区"),
    ("440305", "广东省", "深圳市", "南山区"),
    ("440304", "广东省", "深圳市", "福田区"),
    ("440106", "广东省", "广州市", "天河区"),
    ("330106", "浙江省", "杭州市", "西湖区"),
    ("330203", "浙江省", "宁波市", "海曙区"),
    ("320102", "江苏省", "南京市", "玄武区"),
    ("320505", "江苏省", "苏州市", "虎丘区"),
    ("510107", "四川省", "成都市", "武侯区"),
    ("420106", "湖北省", "武汉市", "武昌区"),
    ("610113", "陕西省", "西安市", "雁塔区"),
    ("370202", "山东省", "青岛市", "市南区"),
    ("350203", "福建省", "厦门市", "思明区"),
    ("430104", "湖南省", "长沙市", "岳麓区"),
    ("410105", "河南省", "郑州市", "金水区"),
    ("210102", "辽宁省", "沈阳市", "和平区"),
    ("220102", "吉林省", "长春市", "南关区"),
    ("230103", "黑龙江省", "哈尔滨市", "南岗区"),
    ("340104", "安徽省", "合肥市", "蜀山区"),
    ("360102", "江西省", "南昌市", "东湖区"),
    ("450103", "广西壮族自治区", "南宁市", "青秀区"),
    ("530102", "云南省", "昆明市", "五华区"),
    ("520102", "贵州省", "贵阳市", "南明区"),
    ("130102", "河北省", "石家庄市", "长安区"),
    ("140105", "山西省", "太原市", "小店区"),
    ("150102", "内蒙古自治区", "呼和浩特市", "新城区"),
    ("620102", "甘肃省", "兰州市", "城关区"),
    ("630103", "青海省", "西宁市", "城中区"),
    ("640104", "宁夏回族自治区", "银川市", "兴庆区"),
    ("650102", "新疆维吾尔自治区", "乌鲁木齐市", "天山区"),
    ("460105", "海南省", "海口市", "秀英区"),
    ("540102", "西藏自治区", "拉萨市", "城关区"),
)
# Rough population weights: the tier-one cities carry more subscribers.
_REGION_WEIGHTS = np.array(
    [5, 4, 5, 3, 3, 4, 4, 3, 4, 3, 2, 3, 2, 4, 3, 3, 2, 2, 2, 3,
     2, 1, 2, 2, 1, 1, 1, 1, 2, 1, 1, 1, 1, 1, 1, 1, 1],
    dtype=float,
)
_STREETS = (
    "人民路", "解放路", "中山路", "建设路", "和平路", "新华路", "文化路", "胜利路", "长江路",
    "黄河路", "青年路", "东风路", "朝阳路", "幸福路", "光明路", "友谊路", "南京路", "北京路",
    "科技路", "学府路", "滨江大道", "世纪大道", "迎宾路", "工业路", "花园路", "体育路",
)
_SURNAMES = (
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程"
    "苏魏吕丁任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝"
    "龚邵万钱严覃武戴莫孔向汤"
)
_GIVEN_MALE = "伟强磊军勇杰涛明超刚平辉鹏华飞鑫波斌宇浩凯健俊帆帅旭宁龙林阳建国志峰亮成东文博"
_GIVEN_FEMALE = "芳娜敏静丽艳娟霞燕玲桂丹萍红梅琳雪慧莹婷倩颖洁佳琪欣怡璐悦薇蕾晶月秀兰"
_GIVEN_NEUTRAL = "子晨思雨嘉宇欣然一佳安文诗梓睿语"

_MSISDN_PREFIXES = np.array(
    [130, 131, 132, 133, 134, 135, 136, 137, 138, 139,
     150, 151, 152, 153, 155, 156, 157, 158, 159,
     173, 176, 177, 178,
     180, 181, 182, 183, 184, 185, 186, 187, 188, 189,
     191, 198, 199],
    dtype=np.int64,
)

# fmt: on

_CONSENT_PURPOSES = ("service", "marketing", "behavioural")
_CHANNELS = pa.array(["alipay", "wechat", "bank", "cash"])
_CHANNEL_P = np.array([0.35, 0.40, 0.15, 0.10])
_PAYMENT_AMOUNTS = np.array([1000, 2000, 3000, 5000, 10000, 20000, 30000, 50000], dtype=np.int64)

_CATEGORIES = ("计费", "网络", "服务", "其他")
_COMPLAINT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "计费": (
        "本月话费比平时多扣了{n}元，请核实。",
        "套餐外流量费用不合理，要求退还{n}元。",
        "我没有订购视频会员，为什么每月扣费？",
        "账单里有一笔{n}元的增值业务费，我从来没用过。",
        "停机期间还在收月租，请尽快处理。",
    ),
    "网络": (
        "小区里信号很差，电话经常打不通。",
        "家里4G网速太慢，看视频一直卡顿。",
        "5G信号时有时无，已经持续{n}天了。",
        "地铁里经常掉线，希望优化基站覆盖。",
        "宽带每天晚上断网，影响上网课。",
    ),
    "服务": (
        "营业厅工作人员态度差，排队等了{n}分钟。",
        "客服电话一直打不进去，转人工太难。",
        "办理携号转网被拒绝，理由说不清楚。",
        "预约的装机师傅迟到了{n}个小时。",
        "投诉了三次都没有回复，非常不满意。",
    ),
    "其他": (
        "希望增加老用户的优惠活动。",
        "营业厅搬迁没有提前通知。",
        "短信里的积分兑换链接打不开。",
        "希望提供国际漫游流量包。",
        "请取消每天发送的营销短信。",
    ),
}
_PII_MSISDN_SUFFIXES = ("请回电{v}。", "联系电话{v}。", "我的手机号是{v}，请尽快联系我。")
_PII_ID_SUFFIXES = ("我的身份证号是{v}，请核实实名信息。", "机主身份证{v}。")

_DOMAINS = (
    "baidu.com",
    "taobao.com",
    "qq.com",
    "weibo.com",
    "jd.com",
    "douyin.com",
    "bilibili.com",
    "zhihu.com",
    "sina.com.cn",
    "163.com",
    "sohu.com",
    "ctrip.com",
    "meituan.com",
    "pinduoduo.com",
    "xiaohongshu.com",
    "alipay.com",
    "12306.cn",
    "toutiao.com",
    "iqiyi.com",
    "youku.com",
)
_DOMAIN_P = np.array([14, 10, 10, 7, 6, 9, 5, 4, 3, 3, 2, 2, 5, 4, 4, 3, 2, 3, 2, 2], dtype=float)
_SEARCH_DOMAINS = {
    "baidu.com",
    "taobao.com",
    "jd.com",
    "douyin.com",
    "bilibili.com",
    "zhihu.com",
    "xiaohongshu.com",
    "pinduoduo.com",
    "meituan.com",
    "ctrip.com",
}
_SEARCH_QUERIES = (
    "附近的火锅店",
    "明天天气预报",
    "北京到上海高铁票",
    "手机流量怎么查询",
    "五一旅游攻略",
    "儿童羽绒服",
    "华为手机最新款",
    "苹果手机价格",
    "家常红烧肉做法",
    "考研报名时间",
    "社保查询",
    "公积金提取流程",
    "电动车充电桩",
    "成都美食推荐",
    "租房注意事项",
    "感冒吃什么药",
    "宽带套餐对比",
    "二手车评估",
    "周末亲子活动",
    "春节放假安排",
    "新能源汽车补贴",
    "高考志愿填报",
    "减肥食谱",
    "蓝牙耳机推荐",
    "空气净化器哪个好",
    "个税专项扣除",
    "机票特价",
    "电影排片",
    "健身房年卡",
    "猫粮品牌",
)

_ID_WEIGHTS = np.array([7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2], dtype=np.int64)
_ID_CHECK_CHARS = "10X98765432"
_FULLWIDTH_DIGITS = str.maketrans("0123456789", "０１２３４５６７８９")
_IMPOSSIBLE_MONTH_DAYS = ("02-30", "02-31", "04-31", "06-31", "09-31", "11-31")

_WRITE_OPTIONS = pacsv.WriteOptions(include_header=False, quoting_style="none")

Progress = Callable[[str, int, float], None]


# --------------------------------------------------------------------------------------------
# Small public helpers
# --------------------------------------------------------------------------------------------


def id_check_digit(first17: str) -> str:
    """Return the GB 11643-1999 check character for the first 17 digits of a resident ID."""
    if len(first17) != 17 or not first17.isascii() or not first17.isdigit():
        raise ValueError(f"expected 17 ASCII digits, got {first17!r}")
    total = sum(int(c) * int(w) for c, w in zip(first17, _ID_WEIGHTS, strict=True))
    return _ID_CHECK_CHARS[total % 11]


def exact_count(rate: float, rows: int) -> int:
    """Number of rows that carry a defect of ``rate`` in a table of ``rows`` rows."""
    return round(rate * rows)


# --------------------------------------------------------------------------------------------
# Internal helpers
# --------------------------------------------------------------------------------------------


def _epoch(dt: datetime) -> int:
    return int((dt - datetime(1970, 1, 1)).total_seconds())


def _months_before(dt: datetime, months: int) -> datetime:
    year, month0 = divmod(dt.year * 12 + dt.month - 1 - months, 12)
    day = min(dt.day, calendar.monthrange(year, month0 + 1)[1])
    return dt.replace(year=year, month=month0 + 1, day=day)


def _uniform_int(
    rng: np.random.Generator, lo: np.ndarray | int, hi: np.ndarray | int, size: int
) -> np.ndarray:
    """Integers uniformly in [lo, hi] (inclusive), element-wise bounds allowed."""
    lo_a = np.asarray(lo, dtype=np.int64)
    span = np.asarray(hi, dtype=np.int64) - lo_a + 1
    return lo_a + (rng.random(size) * span).astype(np.int64)


def _day_strings(days: np.ndarray) -> np.ndarray:
    return np.datetime_as_string(days.astype("datetime64[D]"), unit="D")


def _ymd(days: np.ndarray) -> np.ndarray:
    """yyyymmdd integers for days since the epoch."""
    d = days.astype("datetime64[D]")
    months = d.astype("datetime64[M]")
    year = months.astype(np.int64) // 12 + 1970
    month = months.astype(np.int64) % 12 + 1
    dom = (d - months.astype("datetime64[D]")).astype(np.int64) + 1
    return year * 10000 + month * 100 + dom


def _check_chars(first17: np.ndarray) -> np.ndarray:
    """Vectorised GB 11643 check characters for int64 17-digit numbers."""
    powers = 10 ** np.arange(16, -1, -1, dtype=np.int64)
    digits = (first17[:, None] // powers) % 10
    idx = (digits * _ID_WEIGHTS).sum(axis=1) % 11
    return np.array(list(_ID_CHECK_CHARS))[idx]


def _numbers_with_prefix(prefix: str, numbers: np.ndarray) -> pa.Array:
    return pc.binary_join_element_wise(prefix, pa.array(numbers).cast(pa.string()), "")


def _random_msisdns(rng: np.random.Generator, size: int) -> np.ndarray:
    prefixes = _MSISDN_PREFIXES[rng.integers(0, len(_MSISDN_PREFIXES), size)]
    return prefixes * 100_000_000 + rng.integers(0, 100_000_000, size)


def _unique_msisdns(rng: np.random.Generator, size: int) -> np.ndarray:
    out = _random_msisdns(rng, size)
    while True:
        _, first = np.unique(out, return_index=True)
        dup = np.ones(size, dtype=bool)
        dup[first] = False
        if not dup.any():
            return out
        out[dup] = _random_msisdns(rng, int(dup.sum()))


class _CsvSink:
    """Writes one CSV file chunk by chunk and hashes the bytes on the way."""

    def __init__(self, path: Path, columns: tuple[str, ...]) -> None:
        self.path = path
        self.columns = columns
        self.rows = 0
        self._sha = hashlib.sha256()
        self._fh: IO[bytes] = path.open("wb")
        self._put((",".join(columns) + "\n").encode())

    def _put(self, data: Any) -> None:
        self._fh.write(data)
        self._sha.update(data)

    def write(self, columns: dict[str, Any]) -> None:
        table = pa.table({name: columns[name] for name in self.columns})
        if table.num_rows == 0:
            return
        buf = pa.BufferOutputStream()
        pacsv.write_csv(table, buf, _WRITE_OPTIONS)
        self._put(buf.getvalue())
        self.rows += table.num_rows

    def close(self) -> dict[str, Any]:
        self._fh.close()
        return {"file": self.path.name, "rows": self.rows, "sha256": self._sha.hexdigest()}


# --------------------------------------------------------------------------------------------
# The generator
# --------------------------------------------------------------------------------------------


class _Generator:
    """Holds the per-subscriber state that child tables draw on."""

    def __init__(
        self,
        out_dir: Path,
        n: int,
        seed: int,
        exported_at: str,
        call_records_per_subscriber: float,
        progress: Progress | None,
    ) -> None:
        if n < 1:
            raise ValueError("subscribers must be >= 1")
        self.out_dir = out_dir
        self.n = n
        self.seed = seed
        self.exported_at = exported_at
        self.progress = progress
        self.rng = np.random.default_rng(seed)
        e_dt = datetime.strptime(exported_at, "%Y-%m-%d %H:%M:%S")
        self.e_dt = e_dt
        self.E = _epoch(e_dt)
        self.e_day = self.E // DAY
        self.win_lo = self.E - NORMAL_WINDOW_DAYS * DAY + HOUR
        self.win_hi = self.E - HOUR
        self.means = dict(MEAN_ROWS_PER_SUBSCRIBER)
        self.means["call_records"] = float(call_records_per_subscriber)
        self.truth: _CsvSink | None = None

    # -- planning ---------------------------------------------------------------------------

    def plan(self) -> None:
        rng, n = self.rng, self.n
        # Subscriber own defects: disjoint exact-count sets, plus the originals of duplicates.
        kinds = [
            (K.BAD_ID_CHECKSUM, "BAD_ID_CHECKSUM"),
            (K.ID_BIRTH_MISMATCH, "ID_BIRTH_MISMATCH"),
            (K.MALFORMED_MSISDN, "MALFORMED_MSISDN"),
            (K.FULLWIDTH_MSISDN, "FULLWIDTH_MSISDN"),
            (K.BLANK_MANDATORY, "BLANK_MANDATORY"),
            (K.FUTURE_DATE, "INVALID_DATE"),
            (K.OBJECTED_TRANSFER, "OBJECTED_TRANSFER"),
            (K.DUPLICATE_PERSON, "DUPLICATE_PERSON"),
        ]
        counts = [exact_count(SUBSCRIBER_DEFECT_RATES[name], n) for _, name in kinds]
        picked = rng.choice(n, size=min(sum(counts), n), replace=False)
        codes = np.repeat(np.array([int(k) for k, _ in kinds], dtype=np.int8), counts)
        codes = codes[: len(picked)]
        own = np.zeros(n, dtype=np.int8)
        own[picked] = codes
        # INVALID_DATE rows are a future open_date or an impossible calendar date.
        bad_date = np.flatnonzero(own == K.FUTURE_DATE)
        impossible = rng.random(len(bad_date)) < 0.5
        own[bad_date[impossible]] = K.IMPOSSIBLE_DATE
        self.dup_orig = np.flatnonzero(own == K.DUPLICATE_PERSON)
        own[self.dup_orig] = K.CLEAN  # the original row is clean; its extra copy is the defect
        self.sub_own = own
        state = np.full(n, _P_QUARANTINED, dtype=np.int8)
        state[own == K.CLEAN] = _P_CLEAN
        state[own == K.FULLWIDTH_MSISDN] = _P_REPAIRED
        state[own == K.OBJECTED_TRANSFER] = _P_OBJECTED
        self.state = state

        # Child row counts per subscriber (grouped by subscriber in the files).
        activity = rng.gamma(2.0, 0.5, n)
        data_activity = rng.gamma(1.5, 1 / 1.5, n)
        self.counts = {
            "call_records": rng.poisson(self.means["call_records"] * activity),
            "data_sessions": rng.poisson(self.means["data_sessions"] * data_activity),
            "payments": rng.poisson(self.means["payments"], n),
            "complaints": rng.poisson(self.means["complaints"] * activity),
            "browsing_events": rng.poisson(self.means["browsing_events"] * data_activity),
        }
        self.starts = {
            t: np.concatenate(([0], np.cumsum(c))).astype(np.int64) for t, c in self.counts.items()
        }

        # Consents.
        u = rng.random(n)
        self.marketing_row = u < MARKETING_GRANTED + MARKETING_REFUSED
        self.marketing_granted = u < MARKETING_GRANTED
        v = rng.random(n)
        self.behavioural_row = v < BEHAVIOURAL_GRANTED + BEHAVIOURAL_REFUSED
        self.behavioural = v < BEHAVIOURAL_GRANTED

        # Own defects of child rows: only children of subscribers without any defect.
        eligible = state == _P_CLEAN
        self.child_defects: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        needs_old = np.zeros(n, dtype=bool)
        needs_old[self.dup_orig] = True
        for table, rates in CHILD_DEFECT_RATES.items():
            rows, codes_ = self._plan_child(table, eligible, rates)
            self.child_defects[table] = (rows, codes_)
            past = rows[codes_ == K.PAST_RETENTION]
            needs_old[np.searchsorted(self.starts[table], past, side="right") - 1] = True
        self.needs_old = needs_old

    def _plan_child(
        self, table: str, eligible: np.ndarray, rates: dict[str, float]
    ) -> tuple[np.ndarray, np.ndarray]:
        counts = self.counts[table]
        total = int(counts.sum())
        ks = [exact_count(rate, total) for rate in rates.values()]
        codes = np.repeat(np.array([int(K[name]) for name in rates], dtype=np.int8), ks)
        clean_idx = np.flatnonzero(eligible)
        ccum = np.concatenate(([0], np.cumsum(counts[clean_idx]))).astype(np.int64)
        k = min(len(codes), int(ccum[-1]))
        if k == 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int8)
        ranks = self.rng.choice(int(ccum[-1]), size=k, replace=False)
        j = np.searchsorted(ccum, ranks, side="right") - 1
        rows = self.starts[table][clean_idx[j]] + (ranks - ccum[j])
        order = np.argsort(rows)
        return rows[order], codes[:k][order]

    # -- subscribers ------------------------------------------------------------------------

    def subscribers(self) -> dict[str, Any]:
        rng, n, e_day = self.rng, self.n, self.e_day
        own = self.sub_own
        male = rng.random(n) < 0.51

        # Birth dates: ages 18.3-79.9 at E; "old" customers (open > 5 years ago) are >= 25.2.
        birth_lo = e_day - 29_200
        birth_hi = np.where(self.needs_old, e_day - 9_200, e_day - 6_670)
        birth = _uniform_int(rng, birth_lo, birth_hi, n)
        region = rng.choice(len(_REGIONS), size=n, p=_REGION_WEIGHTS / _REGION_WEIGHTS.sum())
        seq = rng.integers(0, 500, n) * 2 + male.astype(np.int64)
        region_codes = np.array([int(r[0]) for r in _REGIONS], dtype=np.int64)
        while True:  # the first 17 digits must be unique (only duplicates share an ID)
            first17 = region_codes[region] * 10**11 + _ymd(birth) * 1000 + seq
            _, first = np.unique(first17, return_index=True)
            dup = np.ones(n, dtype=bool)
            dup[first] = False
            if not dup.any():
                break
            seq[dup] = rng.integers(0, 500, int(dup.sum())) * 2 + male[dup].astype(np.int64)
        check = _check_chars(first17)
        bad = np.flatnonzero(own == K.BAD_ID_CHECKSUM)
        if len(bad):
            pos = np.array([_ID_CHECK_CHARS.index(c) for c in check[bad]], dtype=np.int64)
            shifted = (pos + rng.integers(1, 11, len(bad))) % 11
            check[bad] = np.array(list(_ID_CHECK_CHARS))[shifted]
        id_number = np.array(
            [f"{a:017d}{c}" for a, c in zip(first17.tolist(), check.tolist(), strict=True)],
            dtype=object,
        )
        self.id_number = id_number

        birth_field = birth.copy()
        mism = np.flatnonzero(own == K.ID_BIRTH_MISMATCH)
        if len(mism):
            shift = rng.integers(30, 1500, len(mism))
            up = birth[mism] + shift
            birth_field[mism] = np.where(up <= e_day - 6_670, up, birth[mism] - shift)
        gender = np.where(male, "男", "女")

        # Names.
        sur_w = 1.0 / (np.arange(len(_SURNAMES)) + 4.0)
        surname = rng.choice(len(_SURNAMES), size=n, p=sur_w / sur_w.sum())
        three = rng.random(n) < 0.65
        pool_m = _GIVEN_MALE + _GIVEN_NEUTRAL
        pool_f = _GIVEN_FEMALE + _GIVEN_NEUTRAL
        g1 = rng.random(n)
        g2 = rng.random(n)
        names = np.empty(n, dtype=object)
        for i, (s, m, t, a, b) in enumerate(
            zip(
                surname.tolist(),
                male.tolist(),
                three.tolist(),
                g1.tolist(),
                g2.tolist(),
                strict=True,
            )
        ):
            pool = pool_m if m else pool_f
            given = pool[int(a * len(pool))]
            if t:
                given += pool[int(b * len(pool))]
            names[i] = _SURNAMES[s] + given
        self.names = names.copy()
        blank = np.flatnonzero(own == K.BLANK_MANDATORY)
        names[blank] = np.array(["", " ", "   "], dtype=object)[rng.integers(0, 3, len(blank))]

        # Addresses: mostly where the ID was issued, some people moved.
        moved = rng.random(n) < 0.3
        home = np.where(
            moved,
            rng.choice(len(_REGIONS), size=n, p=_REGION_WEIGHTS / _REGION_WEIGHTS.sum()),
            region,
        )
        self.home_region = home
        street = rng.integers(0, len(_STREETS), n)
        number = rng.integers(1, 999, n)
        has_flat = rng.random(n) < 0.7
        building = rng.integers(1, 30, n)
        unit = rng.integers(1, 6, n)
        room = rng.integers(1, 33, n) * 100 + rng.integers(1, 5, n)
        address = np.empty(n, dtype=object)
        city = np.empty(n, dtype=object)
        for i in range(n):
            _, prov, cty, dist = _REGIONS[home[i]]
            head = prov + dist if prov == cty else prov + cty + dist
            addr = f"{head}{_STREETS[street[i]]}{number[i]}号"
            if has_flat[i]:
                addr += f"{building[i]}栋{unit[i]}单元{room[i]}室"
            address[i] = addr
            city[i] = cty

        # MSISDNs (unique, including the duplicates' second lines).
        dup_n = len(self.dup_orig)
        all_msisdn = _unique_msisdns(rng, n + dup_n)
        self.msisdn_int = all_msisdn[:n]
        msisdn = np.array([str(x) for x in self.msisdn_int.tolist()], dtype=object)
        self.msisdn = msisdn.copy()
        mal = np.flatnonzero(own == K.MALFORMED_MSISDN)
        style = rng.integers(0, 3, len(mal))
        for i, s in zip(mal.tolist(), style.tolist(), strict=True):
            m = msisdn[i]
            msisdn[i] = m[:8] if s == 0 else ("2" + m[1:] if s == 1 else m[:10] + "x")
        full = np.flatnonzero(own == K.FULLWIDTH_MSISDN)
        style = rng.integers(0, 3, len(full))
        for i, s in zip(full.tolist(), style.tolist(), strict=True):
            m = msisdn[i]
            if s == 0:
                msisdn[i] = m.translate(_FULLWIDTH_DIGITS)
            elif s == 1:
                msisdn[i] = f"+86 {m[:3]} {m[3:7]} {m[7:]}"
            else:
                msisdn[i] = f"{m[:3]}-{m[3:7]}-{m[7:]}"

        # Open dates, updated_at, status.
        age_days = e_day - birth
        hi_off = np.minimum(5_479, age_days - 6_580)
        lo_off = np.where(self.needs_old, 1_900, 60)
        open_day = e_day - _uniform_int(rng, lo_off, hi_off, n)
        self.open_ts = open_day * DAY
        self.since = np.maximum(self.win_lo, self.open_ts + DAY)
        open_field = _day_strings(open_day).astype(object)
        fut = np.flatnonzero(own == K.FUTURE_DATE)
        open_field[fut] = _day_strings(e_day + rng.integers(2, 400, len(fut)))
        imp = np.flatnonzero(own == K.IMPOSSIBLE_DATE)
        years = rng.integers(2012, 2026, len(imp))
        md = rng.integers(0, len(_IMPOSSIBLE_MONTH_DAYS), len(imp))
        open_field[imp] = [
            f"{y}-{_IMPOSSIBLE_MONTH_DAYS[k]}"
            for y, k in zip(years.tolist(), md.tolist(), strict=True)
        ]
        upd_lo = self.since.copy()
        upd_lo[self.dup_orig] = np.maximum(self.E - 200 * DAY, self.since[self.dup_orig])
        updated = _uniform_int(rng, upd_lo, self.win_hi, n)
        status = np.where(rng.random(n) < 0.93, "1", "2").astype(object)
        objection = np.where(own == K.OBJECTED_TRANSFER, "1", "0").astype(object)

        # The DUPLICATE_PERSON extra rows: same person, new cust_id, older record.
        o = self.dup_orig
        x_open = np.maximum(open_day[o] - rng.integers(0, 200, dup_n), birth[o] + 6_580)
        x_upd = _uniform_int(rng, self.win_lo, updated[o] - DAY, dup_n)
        x_status = np.where(rng.random(dup_n) < 0.8, "1", "2").astype(object)

        # File order: ascending cust_id, extra rows at random places.
        total = n + dup_n
        gap_max = max(1, min(400, 79_999_999 // total))
        ids = 10_000_000 + np.cumsum(rng.integers(1, gap_max + 1, total))
        extra_pos = np.sort(rng.choice(total, size=dup_n, replace=False))
        is_extra = np.zeros(total, dtype=bool)
        is_extra[extra_pos] = True
        base_pos = np.flatnonzero(~is_extra)
        cust_all = np.array([f"C{x:08d}" for x in ids.tolist()], dtype=object)
        self.cust_id = cust_all[base_pos]
        self.cust_pos = base_pos
        self.cust_arrow = pa.array(self.cust_id.tolist(), type=pa.string())

        def place(base: np.ndarray, extra: np.ndarray) -> np.ndarray:
            out = np.empty(total, dtype=base.dtype)
            out[base_pos] = base
            out[extra_pos] = extra
            return out

        x_msisdn = np.array([str(x) for x in all_msisdn[n:].tolist()], dtype=object)
        columns: dict[str, Any] = {
            "cust_id": pa.array(cust_all.tolist(), type=pa.string()),
            "name": place(names, self.names[o]),
            "id_number": place(id_number, id_number[o]),
            "gender": place(gender.astype(object), gender[o].astype(object)),
            "birth_date": place(
                _day_strings(birth_field).astype(object),
                _day_strings(birth_field[o]).astype(object),
            ),
            "msisdn": place(msisdn, x_msisdn),
            "address": place(address, address[o]),
            "city": place(city, city[o]),
            "open_date": place(open_field, _day_strings(x_open).astype(object)),
            "status": place(status, x_status),
            "transfer_objection": place(objection, np.full(dup_n, "0", dtype=object)),
            "updated_at": pa.array(place(updated, x_upd), type=pa.timestamp("s")),
        }
        for name in TABLE_COLUMNS["subscribers"]:
            if isinstance(columns[name], np.ndarray):
                columns[name] = pa.array(columns[name].tolist(), type=pa.string())

        truth_code = np.zeros(total, dtype=np.int8)
        truth_code[base_pos] = own
        truth_code[extra_pos] = K.DUPLICATE_PERSON
        self._emit_truth("subscribers", columns["cust_id"], truth_code)
        return columns

    # -- consents ---------------------------------------------------------------------------

    def consents(self) -> dict[str, Any]:
        rng, n = self.rng, self.n
        subs = np.arange(n)
        sel = [subs, np.flatnonzero(self.marketing_row), np.flatnonzero(self.behavioural_row)]
        who = np.concatenate(sel)
        purpose = np.concatenate([np.full(len(s), p, dtype=np.int64) for p, s in enumerate(sel)])
        granted = np.concatenate(
            [np.ones(n, dtype=bool), self.marketing_granted[sel[1]], self.behavioural[sel[2]]]
        )
        order = np.lexsort((purpose, self.cust_pos[who]))
        who, purpose, granted = who[order], purpose[order], granted[order]
        m = len(who)
        # Consents are recorded when the line opens, or at the 2021+ re-consent campaigns.
        campaign = self.E - rng.integers(60, 1_820, n) * DAY
        base = np.maximum(self.open_ts[who], campaign[who])
        late = np.where(purpose == 0, HOUR, 20 * DAY)
        granted_at = base + (rng.random(m) * late).astype(np.int64)
        beh = np.flatnonzero((purpose == 2) & granted)
        self.since_browse = self.since.copy()
        self.since_browse[who[beh]] = np.maximum(self.since[who[beh]], granted_at[beh] + HOUR)

        ids = _numbers_with_prefix("K", 100_000_001 + np.arange(m, dtype=np.int64))
        columns = {
            "consent_id": ids,
            "cust_id": self.cust_arrow.take(pa.array(who)),
            "purpose": pa.array(list(_CONSENT_PURPOSES)).take(pa.array(purpose)),
            "granted": pa.array(np.where(granted, "1", "0").tolist(), type=pa.string()),
            "granted_at": pa.array(granted_at, type=pa.timestamp("s")),
        }
        self._emit_truth("consents", ids, self._cascade(who, np.zeros(m, dtype=np.int8)))
        return columns

    # -- child tables -----------------------------------------------------------------------

    def _cascade(self, parent: np.ndarray, own: np.ndarray) -> np.ndarray:
        """Truth code of child rows: objection first, own exclusion next, then quarantine."""
        code = own.copy()
        ps = self.state[parent]
        policy = (code == K.PAST_RETENTION) | (code == K.NO_CONSENT)
        code[(ps == _P_QUARANTINED) & ~policy] = K.PARENT_QUARANTINED
        code[ps == _P_OBJECTED] = K.PARENT_OBJECTED
        return code

    def _timestamps(
        self, table: str, parent: np.ndarray, own: np.ndarray, since: np.ndarray
    ) -> np.ndarray:
        rng = self.rng
        m = len(parent)
        lo = since[parent]
        ts = lo + (rng.random(m) * (self.win_hi - lo)).astype(np.int64)
        fut = np.flatnonzero(own == K.FUTURE_DATE)
        ts[fut] = self.E + rng.integers(DAY, 400 * DAY, len(fut))
        past = np.flatnonzero(own == K.PAST_RETENTION)
        if len(past):
            near, far = PAST_RETENTION_MONTHS[table]
            p_lo = _epoch(_months_before(self.e_dt, far)) + 2 * DAY
            p_hi = _epoch(_months_before(self.e_dt, near)) - 2 * DAY
            ts[past] = rng.integers(p_lo, p_hi, len(past))
        return ts

    def _cells(self, parent: np.ndarray) -> pa.Array:
        rng = self.rng
        m = len(parent)
        region = self.home_region[parent]
        roam = rng.random(m) < 0.05
        region = np.where(roam, rng.integers(0, len(_REGIONS), m), region)
        idx = region * self.cells_per_region + rng.integers(0, self.cells_per_region, m)
        return self.cell_pool.take(pa.array(idx))

    def _make_cell_pool(self) -> None:
        rng = self.rng
        lacs_per_region, cells_per_lac = 8, 16
        self.cells_per_region = lacs_per_region * cells_per_lac
        lac = rng.choice(
            np.arange(4096, 65535), size=len(_REGIONS) * lacs_per_region, replace=False
        )
        ci = rng.integers(10_000, 65_535, len(_REGIONS) * self.cells_per_region)
        lac_of_cell = np.repeat(lac, cells_per_lac)
        self.cell_pool = pa.array(
            [f"460-00-{a}-{b}" for a, b in zip(lac_of_cell.tolist(), ci.tolist(), strict=True)]
        )

    def _write_child(
        self,
        table: str,
        id_prefix: str,
        id_base: int,
        build: Callable[[np.ndarray, np.ndarray, np.ndarray], dict[str, Any]],
        since: np.ndarray,
    ) -> dict[str, Any]:
        t0 = time.perf_counter()
        sink = _CsvSink(self.out_dir / f"{table}.csv", TABLE_COLUMNS[table])
        starts = self.starts[table]
        total = int(starts[-1])
        d_rows, d_codes = self.child_defects[table]
        orphan_rows = d_rows[d_codes == K.ORPHAN_RECORD]
        orphan_ids = pa.array(
            [
                f"C{x:08d}"
                for x in self.rng.integers(90_000_000, 100_000_000, len(orphan_rows)).tolist()
            ],
            type=pa.string(),
        )
        cust_pool = pa.concat_arrays([self.cust_arrow, orphan_ids])
        for a in range(0, total, CHUNK_ROWS):
            b = min(total, a + CHUNK_ROWS)
            rows = np.arange(a, b, dtype=np.int64)
            parent = np.searchsorted(starts, rows, side="right") - 1
            own = np.zeros(b - a, dtype=np.int8)
            lo, hi = np.searchsorted(d_rows, [a, b])
            own[d_rows[lo:hi] - a] = d_codes[lo:hi]
            if table == "browsing_events":
                own[~self.behavioural[parent]] = K.NO_CONSENT
            ts = self._timestamps(table, parent, own, since)
            cust_idx = parent.copy()
            orphan = np.flatnonzero(own == K.ORPHAN_RECORD)
            cust_idx[orphan] = self.n + np.searchsorted(orphan_rows, rows[orphan])
            ids = _numbers_with_prefix(id_prefix, id_base + rows)
            columns = build(parent, own, ts)
            columns[TABLE_COLUMNS[table][0]] = ids
            columns["cust_id"] = cust_pool.take(pa.array(cust_idx))
            sink.write(columns)
            self._emit_truth(table, ids, self._cascade(parent, own))
        meta = sink.close()
        self._report(table, meta["rows"], time.perf_counter() - t0)
        return meta

    def _build_calls(self, parent: np.ndarray, own: np.ndarray, ts: np.ndarray) -> dict[str, Any]:
        rng = self.rng
        m = len(parent)
        mine = self.msisdn_int[parent]
        orphan = own == K.ORPHAN_RECORD
        mine[orphan] = _random_msisdns(rng, int(orphan.sum()))
        other = _random_msisdns(rng, m)
        outgoing = rng.random(m) < 0.6
        caller = np.where(outgoing, mine, other)
        callee = np.where(outgoing, other, mine)
        duration = np.minimum(7_200, rng.gamma(1.2, 90.0, m).astype(np.int64) + 1)
        rate = np.array([0, 0, 0, 0, 0, 0, 0, 10, 15, 19], dtype=np.int64)[rng.integers(0, 10, m)]
        charge = (duration + 59) // 60 * rate
        neg = own == K.NEGATIVE_AMOUNT
        charge[neg] = -rng.integers(1, 2_000, int(neg.sum()))
        return {
            "caller": pa.array(caller).cast(pa.string()),
            "callee": pa.array(callee).cast(pa.string()),
            "start_time": pa.array(ts, type=pa.timestamp("s")),
            "duration_s": pa.array(duration),
            "cell_id": self._cells(parent),
            "charge_fen": pa.array(charge),
        }

    def _build_sessions(
        self, parent: np.ndarray, own: np.ndarray, ts: np.ndarray
    ) -> dict[str, Any]:
        rng = self.rng
        m = len(parent)
        down = np.minimum(rng.lognormal(15.0, 1.8, m), 2e10).astype(np.int64)
        up = (down * rng.uniform(0.02, 0.3, m)).astype(np.int64)
        charge = np.where(rng.random(m) < 0.85, 0, rng.integers(1, 500, m))
        neg = own == K.NEGATIVE_AMOUNT
        charge[neg] = -rng.integers(1, 2_000, int(neg.sum()))
        return {
            "start_time": pa.array(ts, type=pa.timestamp("s")),
            "bytes_up": pa.array(up),
            "bytes_down": pa.array(down),
            "cell_id": self._cells(parent),
            "charge_fen": pa.array(charge),
        }

    def _build_payments(
        self, parent: np.ndarray, own: np.ndarray, ts: np.ndarray
    ) -> dict[str, Any]:
        rng = self.rng
        m = len(parent)
        round_amount = _PAYMENT_AMOUNTS[rng.integers(0, len(_PAYMENT_AMOUNTS), m)]
        bill = rng.integers(100, 30_000, m)
        amount = np.where(rng.random(m) < 0.6, round_amount, bill)
        neg = own == K.NEGATIVE_AMOUNT
        amount[neg] = -rng.integers(100, 20_000, int(neg.sum()))
        blank = own == K.BLANK_MANDATORY
        channel = rng.choice(len(_CHANNEL_P), size=m, p=_CHANNEL_P)
        return {
            "paid_at": pa.array(ts, type=pa.timestamp("s")),
            "amount_fen": pa.array(amount, mask=blank),
            "channel": _CHANNELS.take(pa.array(channel)),
        }

    def _build_complaints(
        self, parent: np.ndarray, own: np.ndarray, ts: np.ndarray
    ) -> dict[str, Any]:
        rng = self.rng
        m = len(parent)
        cat = rng.choice(len(_CATEGORIES), size=m, p=[0.35, 0.3, 0.25, 0.1])
        tpl = rng.integers(0, 5, m)
        num = rng.integers(2, 99, m)
        pii_kind = rng.integers(0, 5, m)  # 0-2 MSISDN suffixes, 3-4 resident ID suffixes
        texts: list[str] = []
        pii = own == K.PII_IN_TEXT
        for i in range(m):
            text = _COMPLAINT_TEMPLATES[_CATEGORIES[cat[i]]][tpl[i]].format(n=num[i])
            if pii[i]:
                k = int(pii_kind[i])
                if k < 3:
                    text += _PII_MSISDN_SUFFIXES[k].format(v=self.msisdn[parent[i]])
                else:
                    text += _PII_ID_SUFFIXES[k - 3].format(v=self.id_number[parent[i]])
            texts.append(text)
        sat = rng.choice(6, size=m, p=[0.25, 0.12, 0.1, 0.18, 0.2, 0.15])
        return {
            "created_at": pa.array(ts, type=pa.timestamp("s")),
            "category": pa.array(list(_CATEGORIES)).take(pa.array(cat)),
            "text": pa.array(texts, type=pa.string()),
            "satisfaction": pa.array(["", "1", "2", "3", "4", "5"]).take(pa.array(sat)),
        }

    def _build_browsing(
        self, parent: np.ndarray, own: np.ndarray, ts: np.ndarray
    ) -> dict[str, Any]:
        rng = self.rng
        m = len(parent)
        dom = rng.choice(len(_DOMAINS), size=m, p=_DOMAIN_P / _DOMAIN_P.sum())
        searchy = np.array([d in _SEARCH_DOMAINS for d in _DOMAINS])[dom]
        has_query = searchy & (rng.random(m) < 0.7)
        query = rng.integers(0, len(_SEARCH_QUERIES), m) + 1
        query[~has_query] = 0
        return {
            "ts": pa.array(ts, type=pa.timestamp("s")),
            "domain": pa.array(list(_DOMAINS)).take(pa.array(dom)),
            "search_text": pa.array(["", *_SEARCH_QUERIES]).take(pa.array(query)),
        }

    # -- truth and driver -------------------------------------------------------------------

    def _emit_truth(self, table: str, keys: pa.Array, code: np.ndarray) -> None:
        assert self.truth is not None
        mask = code != K.CLEAN
        k = int(mask.sum())
        if k == 0:
            return
        sel = pa.array(code[mask].astype(np.int64))
        self.truth.write(
            {
                "table": pa.repeat(pa.scalar(table), k),
                "key": pc.filter(keys, pa.array(mask)),
                "defect": _TRUTH_DEFECT.take(sel),
                "expected_outcome": _TRUTH_OUTCOME.take(sel),
                "expected_reason": _TRUTH_REASON.take(sel),
            }
        )

    def _report(self, table: str, rows: int, seconds: float) -> None:
        if self.progress is not None:
            self.progress(table, rows, seconds)

    def _write_small(self, table: str, make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        t0 = time.perf_counter()
        sink = _CsvSink(self.out_dir / f"{table}.csv", TABLE_COLUMNS[table])
        sink.write(make())
        meta = sink.close()
        self._report(table, meta["rows"], time.perf_counter() - t0)
        return meta

    def run(self) -> dict[str, Any]:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.plan()
        self.truth = _CsvSink(self.out_dir / "truth.csv", TRUTH_COLUMNS)
        tables: dict[str, Any] = {}
        try:
            tables["subscribers"] = self._write_small("subscribers", self.subscribers)
            tables["consents"] = self._write_small("consents", self.consents)
            self._make_cell_pool()
            tables["call_records"] = self._write_child(
                "call_records", "R", 10**10, self._build_calls, self.since
            )
            tables["data_sessions"] = self._write_child(
                "data_sessions", "S", 10**10, self._build_sessions, self.since
            )
            tables["payments"] = self._write_child(
                "payments", "P", 10**9, self._build_payments, self.since
            )
            tables["complaints"] = self._write_child(
                "complaints", "Q", 10**8, self._build_complaints, self.since
            )
            tables["browsing_events"] = self._write_child(
                "browsing_events", "B", 10**10, self._build_browsing, self.since_browse
            )
        finally:
            truth = self.truth.close()
        self._report("truth", truth["rows"], 0.0)
        manifest = {
            "system": SYSTEM,
            "exported_at": self.exported_at,
            "seed": self.seed,
            "subscribers": self.n,
            "tables": tables,
        }
        (self.out_dir / "export_manifest.json").write_text(
            json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
        )
        return manifest


def generate(
    out_dir: Path,
    subscribers: int,
    seed: int = 42,
    exported_at: str = DEFAULT_EXPORTED_AT,
    progress: Progress | None = None,
    call_records_per_subscriber: float = MEAN_ROWS_PER_SUBSCRIBER["call_records"],
) -> dict[str, Any]:
    """Write the legacy export, ``truth.csv`` and ``export_manifest.json`` into ``out_dir``.

    ``progress(table, rows, seconds)`` is called once per table written.  Returns the manifest.
    """
    gen = _Generator(
        Path(out_dir), subscribers, seed, exported_at, call_records_per_subscriber, progress
    )
    return gen.run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m handover_synth.legacy_bss",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--subscribers", type=int, required=True, help="number of subscribers")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--exported-at", default=DEFAULT_EXPORTED_AT, help="export instant E, 'YYYY-MM-DD HH:MM:SS'"
    )
    parser.add_argument(
        "--call-records-per-subscriber",
        type=float,
        default=MEAN_ROWS_PER_SUBSCRIBER["call_records"],
    )
    args = parser.parse_args(argv)

    def report(table: str, rows: int, seconds: float) -> None:
        rate = f", {rows / seconds:,.0f} rows/s" if seconds > 0 else ""
        print(f"{table}: {rows:,} rows in {seconds:.2f} s{rate}", file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    generate(
        args.out,
        args.subscribers,
        seed=args.seed,
        exported_at=args.exported_at,
        progress=report,
        call_records_per_subscriber=args.call_records_per_subscriber,
    )
    print(f"done in {time.perf_counter() - t0:.2f} s -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
