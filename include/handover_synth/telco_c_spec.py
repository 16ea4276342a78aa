"""What the telco_c export looks like: files, columns, codes, the shares of its quirks.

The constants the dictionary, the table shapers and the answer key share; everything in
`handover_synth.telco_c*` builds on this module.
"""

from __future__ import annotations

from datetime import date

SYSTEM = "telco_c"
DICTIONARY = "数据字典.txt"
TRUTH_COLUMNS = (
    "table",
    "key",
    "defect",
    "expected_outcome",
    "expected_reason",
    "merged_into",
    "reparented_to",
    "amount_yuan",
)

# Shares of the quirks this dialect adds (of the rows they can apply to).
FIRST_GEN_SHARE = 0.2  # customers born 1900-1999 exported with a 15-digit ID
SAME_PERSON_SHARE = 0.02  # clean customers exported twice across ID generations
MOVED_CHILD_SHARE = 0.4  # of such a customer's children, under the second key
KEY_VARIANT_SHARE = 0.12  # customer keys in mixed case / padded
CHILD_KEY_LOWER_SHARE = 0.05
BIRTH_PLACEHOLDER_SHARE = 0.08
GENDER_UNKNOWN_SHARE = 0.05
OTHER_PARTY_SHARE = 0.15  # calls whose other party is not a mobile

# legacy_bss table -> (telco_c table, file, encoding, delimiter)
FILES: dict[str, tuple[str, str, str, str]] = {
    "subscribers": ("khzl", "KHZL_20261101.dat", "gb18030", "^"),
    "consents": ("sqjl", "SQJL_20261101.txt", "utf-16", "\t"),
    "call_records": ("thxd", "THXD_20261101.dat", "gb18030", "\x1f"),
    "data_sessions": ("swjl", "SWJL_20261101.dat", "gb18030", "^"),
    "payments": ("jfjl", "JFJL_20261101.dat", "gb18030", "~"),
    "complaints": ("tsgd", "TSGD_20261101.dat", "gb18030", "^"),
    "browsing_events": ("lljl", "LLJL_20261101.dat", "gb18030", "\x1f"),
}
TABLES = {legacy: spec[0] for legacy, spec in FILES.items()}
# Files the billing system ends with a count line, `共<n>条`.
TRAILERS = {"payments"}

# telco_c columns (file order) with their Chinese names, per telco_c table.
COLUMNS: dict[str, list[tuple[str, str]]] = {
    "khzl": [
        ("khbh", "客户编号"),
        ("khxm", "客户姓名"),
        ("zjhm", "证件号码"),
        ("xb", "性别"),
        ("csrq", "出生日期"),
        ("sjhm", "手机号码"),
        ("lxdz", "联系地址"),
        ("ssds", "所属地市"),
        ("khrq", "开户日期"),
        ("zt", "状态"),
        ("jjzy", "拒绝转移"),
        ("gxsj", "更新时间"),
    ],
    "sqjl": [
        ("sqbh", "授权编号"),
        ("khbh", "客户编号"),
        ("sqyt", "授权用途"),
        ("sfty", "是否同意"),
        ("sqsj", "授权时间"),
    ],
    "thxd": [
        ("lsh", "流水号"),
        ("khbh", "客户编号"),
        ("zjhm", "主叫号码"),
        ("bjhm", "被叫号码"),
        ("kssj", "开始时间"),
        ("thsc", "通话时长"),
        ("xqbs", "小区标识"),
        ("fy", "费用"),
    ],
    "swjl": [
        ("hhbh", "会话编号"),
        ("khbh", "客户编号"),
        ("kssj", "开始时间"),
        ("sxll", "上行流量"),
        ("xxll", "下行流量"),
        ("xqbs", "小区标识"),
        ("fy", "费用"),
    ],
    "jfjl": [
        ("jflsh", "缴费流水号"),
        ("khbh", "客户编号"),
        ("jfsj", "缴费时间"),
        ("jfje", "缴费金额"),
        ("jfqd", "缴费渠道"),
    ],
    "tsgd": [
        ("gdbh", "工单编号"),
        ("khbh", "客户编号"),
        ("slsj", "受理时间"),
        ("tslb", "投诉类别"),
        ("tsnr", "投诉内容"),
        ("myd", "满意度"),
    ],
    "lljl": [
        ("rzbh", "日志编号"),
        ("khbh", "客户编号"),
        ("fwsj", "访问时间"),
        ("fwym", "访问域名"),
        ("ssc", "搜索词"),
    ],
}
NOTES = {  # what the dictionary says beside a column
    ("khzl", "xb"): "GB/T 2261.1：1 男，2 女，0 未知，9 未说明",
    ("khzl", "csrq"): "yyyymmdd；历史数据未清洗",
    ("khzl", "khrq"): "多种格式，含 Excel 序列日",
    ("khzl", "zt"): "ZC 正常，TJ 停机，XH 销户",
    ("khzl", "jjzy"): "Y 是，N 否",
    ("khzl", "gxsj"): "毫秒时间戳，北京时间",
    ("sqjl", "sqyt"): "FW 服务，YX 营销，XW 行为分析",
    ("sqjl", "sfty"): "1 同意，0 不同意",
    ("thxd", "thsc"): "秒",
    ("thxd", "fy"): "元",
    ("swjl", "sxll"): "字节",
    ("swjl", "xxll"): "字节",
    ("swjl", "fy"): "分",
    ("jfjl", "jfje"): "元",
    ("jfjl", "jfqd"): "ZFB 支付宝，WX 微信，YH 银行，XJ 现金",
    ("tsgd", "tslb"): "JF 计费，WL 网络，FW 服务，QT 其他",
    ("tsgd", "myd"): "1-5，可空",
}
STATUS = {"1": "ZC", "2": "TJ", "3": "XH"}
OBJECTION = {"0": "N", "1": "Y"}
PURPOSE = {"service": "FW", "marketing": "YX", "behavioural": "XW"}
CHANNEL = {"alipay": "ZFB", "wechat": "WX", "bank": "YH", "cash": "XJ"}
CATEGORY = {"计费": "JF", "网络": "WL", "服务": "FW", "其他": "QT"}
GENDER = {"男": "1", "女": "2"}
CHILDREN = (
    "consents",
    "call_records",
    "data_sessions",
    "payments",
    "complaints",
    "browsing_events",
)
MOVABLE = ("call_records", "data_sessions", "payments", "complaints")  # not consent-bound
MONEY = {"call_records": "charge_fen", "data_sessions": "charge_fen", "payments": "amount_fen"}
ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
ID_CHECK = "10X98765432"
EXCEL_EPOCH = date(1899, 12, 30)
LANDLINES = ("010-{8}", "021-{8}", "0755 {7}", "(020){8}", "+86 10 {8}", "0571-{8}")
SERVICES = ("10086", "10010", "10000", "95588", "95533", "12345", "114")
IOT = ("1440{9}", "1064{9}")
ABROAD = ("+44 20 {8}", "0044 20 {8}", "+1 415 {7}", "+81 3 {8}")
