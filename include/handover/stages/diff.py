"""Old versus new by segment hashes, in the manner of reladiff.

The nightly sync must prove that the legacy system and the new one agree without moving
either table across the wire. Each side reduces a key range to (row count, checksum),
where the checksum is the sum modulo 2**64 of a 64-bit hash of every row's canonical text;
ranges whose summaries agree are done, ranges that differ are cut into `bisection_factor`
smaller ranges at key quantiles, and only ranges of at most `threshold` rows are fetched,
as (key, row hash) pairs, to name the differing keys. Values never leave a side: the
result holds keys and counts only.

A side is anything with `summary`, `split_points` and `fetch` over half-open key ranges
[lo, hi) (None = unbounded): `FrameSide` holds (key, hash) pairs in memory (the legacy
export, projected by the caller), `PostgresSide` keeps them in a temporary table of the
target database and answers with SQL. Keys compare by code point on both sides (COLLATE
"C" in PostgreSQL), so both cut a range at the same place.
"""

from __future__ import annotations

import bisect
import datetime as dt
import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

MOD = 2**64
SEP = "\x1f"  # chr(31) in SQL
NULL = "\\N"

Range = tuple[str | None, str | None]


# ---------------------------------------------------------------- canonical text and hashes
def canonical(value: Any) -> str:
    """The text of one value that both sides agree on (see `sql_canonical`)."""
    if value is None:
        return NULL
    try:
        if value != value:  # NaN and NaT are unequal to themselves; pd.NA raises
            return NULL
    except TypeError:
        return NULL
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, dt.date):
        return value.isoformat()
    if hasattr(value, "item") and not isinstance(value, str | bytes):  # numpy scalars
        return canonical(value.item())
    if isinstance(value, Decimal):
        return str(int(value)) if value == value.to_integral_value() else str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def row_hash(values: Iterable[Any]) -> int:
    """Signed 64-bit hash of a row: the first 16 hex digits of md5(canonical row text).

    The same as `sql_row_hash` computes in PostgreSQL.
    """
    text = SEP.join(canonical(v) for v in values)
    h = int(hashlib.md5(text.encode("utf-8"), usedforsecurity=False).hexdigest()[:16], 16)
    return h - MOD if h >= 2**63 else h


def sql_canonical(column: str, data_type: str):
    """A PostgreSQL expression giving `canonical`'s text for a column of `data_type`."""
    from psycopg import sql

    col = sql.Identifier(column)
    if data_type.startswith("timestamp"):
        expr = sql.SQL("to_char({}, 'YYYY-MM-DD HH24:MI:SS')").format(col)
    elif data_type == "date":
        expr = sql.SQL("to_char({}, 'YYYY-MM-DD')").format(col)
    elif data_type == "boolean":
        expr = sql.SQL("CASE WHEN {c} THEN 'true' WHEN NOT {c} THEN 'false' END").format(c=col)
    else:
        expr = sql.SQL("{}::text").format(col)
    return sql.SQL("coalesce({}, {})").format(expr, sql.Literal(NULL))


def sql_row_hash(columns: Sequence[tuple[str, str]]):
    """PostgreSQL expression: `row_hash` of (column, data_type) pairs, as bigint."""
    from psycopg import sql

    if not columns:
        return sql.SQL("('x' || substr(md5(''), 1, 16))::bit(64)::bigint")
    parts = sql.SQL(" || chr(31) || ").join(sql_canonical(c, t) for c, t in columns)
    return sql.SQL("('x' || substr(md5({}), 1, 16))::bit(64)::bigint").format(parts)


# ---------------------------------------------------------------- sides
class Side(Protocol):
    name: str

    def summary(self, lo: str | None, hi: str | None) -> tuple[int, int]:
        """(rows, checksum) of the keys in [lo, hi)."""

    def split_points(self, lo: str | None, hi: str | None, parts: int) -> list[str]:
        """Up to parts-1 increasing keys inside (lo, hi) that cut the range evenly."""

    def fetch(self, lo: str | None, hi: str | None) -> dict[str, int]:
        """{key: row hash} of the keys in [lo, hi)."""


class FrameSide:
    """(key, hash) pairs held in memory, sorted, with prefix sums for O(log n) summaries."""

    def __init__(self, name: str, keys: Sequence[str], hashes: Sequence[int]):
        pairs = sorted(zip(keys, hashes, strict=True))
        self.name = name
        self.keys = [k for k, _ in pairs]
        if len(set(self.keys)) != len(self.keys):
            raise ValueError(f"{name}: keys must be unique")
        self.hashes = [int(h) for _, h in pairs]
        self._prefix = [0]
        for h in self.hashes:
            self._prefix.append((self._prefix[-1] + h) % MOD)

    def _bounds(self, lo: str | None, hi: str | None) -> tuple[int, int]:
        i = 0 if lo is None else bisect.bisect_left(self.keys, lo)
        j = len(self.keys) if hi is None else bisect.bisect_left(self.keys, hi)
        return i, max(i, j)

    def summary(self, lo, hi):
        i, j = self._bounds(lo, hi)
        return j - i, (self._prefix[j] - self._prefix[i]) % MOD

    def split_points(self, lo, hi, parts):
        i, j = self._bounds(lo, hi)
        step = math.ceil((j - i) / parts)
        return [self.keys[k] for k in range(i + step, j, step) if step > 0]

    def fetch(self, lo, hi):
        i, j = self._bounds(lo, hi)
        return dict(zip(self.keys[i:j], self.hashes[i:j], strict=True))


class PostgresSide:
    """(key, hash) pairs in a temporary table; summaries are aggregates inside PostgreSQL.

    `source` is a SQL query yielding columns `k` (text) and `h` (bigint); the temporary
    table lives until the caller's transaction ends.
    """

    def __init__(self, conn, name: str, source, params: Sequence[Any] = ()):
        from psycopg import sql

        self.conn = conn
        self.name = name
        self.table = sql.Identifier(f"diff_{name}")
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(self.table))
        conn.execute(
            sql.SQL(
                "CREATE TEMP TABLE {} ON COMMIT DROP AS "
                'SELECT (s.k)::text COLLATE "C" AS k, s.h::bigint AS h FROM ({}) s'
            ).format(self.table, source),
            params,
        )
        conn.execute(sql.SQL("CREATE INDEX ON {} (k)").format(self.table))
        conn.execute(sql.SQL("ANALYZE {}").format(self.table))

    def _where(self, lo, hi):
        from psycopg import sql

        return (
            sql.SQL(
                '(%s::text IS NULL OR k >= %s::text COLLATE "C") AND '
                '(%s::text IS NULL OR k < %s::text COLLATE "C")'
            ),
            (lo, lo, hi, hi),
        )

    def summary(self, lo, hi):
        from psycopg import sql

        where, params = self._where(lo, hi)
        n, total = self.conn.execute(
            sql.SQL("SELECT count(*), coalesce(sum(h::numeric), 0) FROM {} WHERE {}").format(
                self.table, where
            ),
            params,
        ).fetchone()
        return int(n), int(total) % MOD

    def split_points(self, lo, hi, parts):
        from psycopg import sql

        where, params = self._where(lo, hi)
        n = self.summary(lo, hi)[0]
        step = math.ceil(n / parts)
        if step <= 0:
            return []
        rows = self.conn.execute(
            sql.SQL(
                "SELECT k FROM (SELECT k, row_number() OVER (ORDER BY k) - 1 AS rn FROM {} "
                "WHERE {}) s WHERE rn > 0 AND rn %% %s = 0 ORDER BY k"
            ).format(self.table, where),
            (*params, step),
        ).fetchall()
        return [r[0] for r in rows]

    def fetch(self, lo, hi):
        from psycopg import sql

        where, params = self._where(lo, hi)
        return dict(
            self.conn.execute(
                sql.SQL("SELECT k, h FROM {} WHERE {}").format(self.table, where), params
            ).fetchall()
        )


# ---------------------------------------------------------------- the bisection
@dataclass
class DiffResult:
    """Keys that differ, by kind; counts of the work done. Never any value."""

    only_left: list[str] = field(default_factory=list)
    only_right: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    left_rows: int = 0
    right_rows: int = 0
    segments_compared: int = 0
    rows_fetched: int = 0

    @property
    def differing(self) -> int:
        return len(self.only_left) + len(self.only_right) + len(self.changed)

    def keys(self) -> list[str]:
        return sorted(self.only_left + self.only_right + self.changed)

    def counts(self) -> dict[str, int]:
        return {
            "left_rows": self.left_rows,
            "right_rows": self.right_rows,
            "only_left": len(self.only_left),
            "only_right": len(self.only_right),
            "changed": len(self.changed),
            "differing": self.differing,
            "segments_compared": self.segments_compared,
            "rows_fetched": self.rows_fetched,
        }


def diff_sides(
    left: Side, right: Side, *, bisection_factor: int = 32, threshold: int = 512
) -> DiffResult:
    """Bisect [None, None) until every differing key is named."""
    if bisection_factor < 2 or threshold < 1:
        raise ValueError("bisection_factor must be >= 2 and threshold >= 1")
    out = DiffResult()
    first_l, first_r = left.summary(None, None), right.summary(None, None)
    out.left_rows, out.right_rows = first_l[0], first_r[0]
    stack: list[tuple[str | None, str | None, tuple[int, int], tuple[int, int]]] = [
        (None, None, first_l, first_r)
    ]
    while stack:
        lo, hi, sl, sr = stack.pop()
        out.segments_compared += 1
        if sl == sr:
            continue
        points: list[str] = []
        if max(sl[0], sr[0]) > threshold:
            bigger = left if sl[0] >= sr[0] else right
            points = sorted(
                {
                    p
                    for p in bigger.split_points(lo, hi, bisection_factor)
                    if (lo is None or p > lo) and (hi is None or p < hi)
                }
            )
        if not points:  # small enough (or cannot be cut): name the keys
            a, b = left.fetch(lo, hi), right.fetch(lo, hi)
            out.rows_fetched += len(a) + len(b)
            out.only_left += [k for k in a if k not in b]
            out.only_right += [k for k in b if k not in a]
            out.changed += [k for k, h in a.items() if k in b and b[k] != h]
            continue
        edges = [lo, *points, hi]
        for a_lo, a_hi in zip(edges[:-1], edges[1:], strict=True):
            stack.append((a_lo, a_hi, left.summary(a_lo, a_hi), right.summary(a_lo, a_hi)))
    out.only_left.sort()
    out.only_right.sort()
    out.changed.sort()
    return out
