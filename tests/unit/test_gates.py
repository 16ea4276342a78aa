"""Tests for handover.gates.suites: a GX suite run on one partition, with results free of data."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from handover import gates
from handover.gates import GateResult, SuiteError, load_suite, run_gate

ROOT = Path(__file__).resolve().parents[2]

# Values that must never leave run_gate: MSISDNs (good and malformed), a name, an ID number.
PII = ["13812345678", "1381234567x", "13987654321", "张三", "11010519491231002X"]

PAYMENTS_SUITE = [
    {
        "type": "expect_table_columns_to_match_set",
        "kwargs": {"column_set": ["payment_id", "cust_id", "amount_fen", "channel"]},
    },
    {"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 1}},
    {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "payment_id"}},
    {"type": "expect_column_values_to_be_unique", "kwargs": {"column": "payment_id"}},
    {
        "type": "expect_column_values_to_match_regex",
        "kwargs": {"column": "payment_id", "regex": r"^P\d{10}$"},
    },
    {
        "type": "expect_column_values_to_be_between",
        "kwargs": {"column": "amount_fen", "min_value": 1},
    },
    {
        "type": "expect_column_values_to_be_in_set",
        "kwargs": {"column": "channel", "value_set": ["alipay", "wechat", "bank", "cash"]},
    },
]


def write_suite(suites_dir: Path, gate: str, table: str, expectations: list[dict]) -> Path:
    path = suites_dir / gate / f"{table}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"name": f"{gate}.{table}", "expectations": expectations}))
    return path


def payments(n: int = 10) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "payment_id": [f"P{i:010d}" for i in range(n)],
            "cust_id": [f"C{i:08d}" for i in range(n)],
            "amount_fen": [100 + i for i in range(n)],
            "channel": ["alipay", "wechat", "bank", "cash", "alipay"] * (n // 5),
        }
    )


@pytest.fixture
def suites(tmp_path: Path) -> Path:
    suites_dir = tmp_path / "suites"
    write_suite(suites_dir, "quality", "payments", PAYMENTS_SUITE)
    return suites_dir


def gate(df: pd.DataFrame, suites_dir: Path, **kwargs) -> GateResult:
    args = {"gate": "quality", "table": "payments", "partition": "p03", "run_id": "manual__1"}
    args.update(kwargs)
    return run_gate(df, suites_dir=suites_dir, docs_dir=args.pop("docs_dir", None), **args)


# --------------------------------------------------------------------------- outcomes


def test_pass(suites: Path) -> None:
    result = gate(payments(10), suites)

    assert result.success
    assert result.evaluated == len(PAYMENTS_SUITE)
    assert result.failed == []
    assert result.rows == 10
    assert result.summary() == (
        "quality gate passed for payments partition p03 (7 expectations, 10 rows)"
    )
    manifest = result.to_manifest()
    assert json.loads(json.dumps(manifest)) == manifest
    assert manifest["success"] is True and manifest["failed"] == []


def test_fail_with_counts(suites: Path) -> None:
    df = payments(10)
    df.loc[[1, 4], "payment_id"] = "bad"  # 2 regex failures, and now a duplicate
    df.loc[7, "amount_fen"] = -5
    df.loc[0, "channel"] = "paypal"

    result = gate(df, suites)

    assert not result.success
    by_type = {(f.expectation, f.column): f for f in result.failed}
    regex = by_type["expect_column_values_to_match_regex", "payment_id"]
    assert regex.unexpected_count == 2
    assert regex.unexpected_percent == pytest.approx(20.0)
    assert "mostly=1.0" in regex.detail
    assert by_type["expect_column_values_to_be_unique", "payment_id"].unexpected_count == 2
    assert by_type["expect_column_values_to_be_between", "amount_fen"].unexpected_count == 1
    assert by_type["expect_column_values_to_be_in_set", "channel"].unexpected_count == 1
    assert len(result.failed) == 4
    assert result.evaluated == 7

    summary = result.summary()
    assert summary.startswith("quality gate failed for payments partition p03: ")
    assert "2 rows fail expect_column_values_to_match_regex on payment_id (20.0%)" in summary
    assert "\n" not in summary


def test_table_level_failures(suites: Path) -> None:
    empty = payments(10).iloc[:0].drop(columns=["channel"]).assign(extra=[])

    result = gate(empty, suites)

    by_type = {f.expectation: f for f in result.failed}
    columns = by_type["expect_table_columns_to_match_set"]
    assert columns.column is None and columns.unexpected_count is None
    assert "missing: channel" in columns.detail and "unexpected: extra" in columns.detail
    assert "observed=0" in by_type["expect_table_row_count_to_be_between"].detail


def test_same_table_new_frame_is_not_served_from_a_cache(suites: Path) -> None:
    """The context, asset and batch id are reused across calls; results must not be."""
    bad = payments(10)
    bad.loc[3, "payment_id"] = "bad"

    assert not gate(bad, suites).success
    assert gate(payments(10), suites).success
    assert gate(bad.head(4), suites, partition="p04").failed[0].unexpected_count == 1


# --------------------------------------------------------------------------- suites


def test_missing_suite_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(SuiteError) as err:
        load_suite(tmp_path, "quality", "nosuch")
    message = str(err.value)
    assert str(tmp_path / "quality" / "nosuch.json") in message
    assert "not found" in message and "\n" not in message


def test_missing_suite_from_run_gate(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match="nosuch.json"):
        run_gate(
            payments(),
            gate="quality",
            table="nosuch",
            partition="p1",
            run_id="r",
            suites_dir=tmp_path,
            docs_dir=None,
        )


def test_invalid_json_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "quality" / "payments.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"expectations": [')
    with pytest.raises(SuiteError) as err:
        load_suite(tmp_path, "quality", "payments")
    assert str(path) in str(err.value) and "not valid JSON" in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("expectation", "expected"),
    [
        ({"type": "expect_column_to_be_awesome", "kwargs": {"column": "a"}}, "unknown"),
        ({"type": "expect_column_values_to_match_regex", "kwargs": {"regex": "x"}}, "column"),
        (
            {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "a", "b": 1}},
            "b: extra fields not permitted",
        ),
        ({"kwargs": {}}, "'type'"),
    ],
)
def test_invalid_expectation_names_file_and_position(
    tmp_path: Path, expectation: dict, expected: str
) -> None:
    """GX itself would log and drop such an expectation; the gate must refuse the suite."""
    good = {"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 1}}
    path = write_suite(tmp_path, "quality", "payments", [good, expectation])
    with pytest.raises(SuiteError) as err:
        load_suite(tmp_path, "quality", "payments")
    message = str(err.value)
    assert str(path) in message and "#2" in message and expected in message
    assert "\n" not in message


def test_bad_gate_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match="invalid gate name"):
        load_suite(tmp_path, "../etc", "payments")


def test_example_suite_loads() -> None:
    suite = load_suite(ROOT / "expectations", "quality", "example")
    assert len(suite["expectations"]) >= 8


# --------------------------------------------------------------------------- no PII


def test_no_pii_in_results_or_docs(tmp_path: Path) -> None:
    suites_dir = tmp_path / "suites"
    docs_dir = tmp_path / "docs"
    write_suite(
        suites_dir,
        "quality",
        "subscribers",
        [
            {
                "type": "expect_column_values_to_match_regex",
                "kwargs": {"column": "msisdn", "regex": r"^1[3-9]\d{9}$"},
            },
            # Aggregate observations are cell values: GX reports them, the gate must not.
            {
                "type": "expect_column_distinct_values_to_be_in_set",
                "kwargs": {"column": "name", "value_set": ["李四"]},
            },
            {"type": "expect_column_max_to_be_between", "kwargs": {"column": "id_number"}},
            # Fails inside pandas with an error that quotes the value it choked on.
            {
                "type": "expect_column_values_to_be_between",
                "kwargs": {"column": "msisdn", "min_value": 0},
            },
            {"type": "expect_column_values_to_be_unique", "kwargs": {"column": "msisdn"}},
        ],
    )
    df = pd.DataFrame(
        {
            "msisdn": ["13812345678", "1381234567x", "13987654321", "1381234567x"],
            "name": ["张三", "张三", "王五", "赵六"],
            "id_number": ["11010519491231002X"] * 4,
        }
    )

    result = run_gate(
        df,
        gate="quality",
        table="subscribers",
        partition="p01",
        run_id="scheduled__2026-11-01T00:00:00+00:00",
        suites_dir=suites_dir,
        docs_dir=docs_dir,
    )

    assert not result.success
    regex = next(f for f in result.failed if f.expectation.endswith("match_regex"))
    assert regex.unexpected_count == 2
    texts = {"summary": result.summary(), "manifest": json.dumps(result.to_manifest())}
    written = [p for d in (docs_dir, gates.store_dir_for(docs_dir)) for p in d.rglob("*")]
    assert any(p.suffix == ".html" for p in written) and any(p.suffix == ".json" for p in written)
    for path in written:
        if path.is_file() and "static" not in path.parts:
            texts[str(path)] = path.read_text(encoding="utf-8", errors="replace")
    texts["manifest (ascii-escaped)"] = json.dumps(result.to_manifest(), ensure_ascii=True)
    for where, text in texts.items():
        for value in PII:
            assert value not in text, f"{value!r} leaked into {where}"
            escaped = json.dumps(value)[1:-1]
            assert escaped not in text, f"{value!r} leaked (escaped) into {where}"


def test_redact_keeps_column_names_and_types_only() -> None:
    message = "could not convert string to float: '1381234567x'\nTraceback ..."
    assert gates._redact(message, {"msisdn"}) == "could not convert string to float: <redacted>"
    assert gates._redact("The column 'msisdn' does not exist", {"msisdn"}) == (
        "The column 'msisdn' does not exist"
    )
    assert gates._redact("'>=' not supported between instances of 'str' and 'int'", set()) == (
        "'>=' not supported between instances of 'str' and 'int'"
    )
    assert "13812345678" not in gates._redact("bad value 13812345678 here", set())
    assert "张三" not in gates._redact("bad name 张三", set())


# --------------------------------------------------------------------------- data docs


def test_docs_pages_accumulate_into_one_site(tmp_path: Path) -> None:
    suites_dir = tmp_path / "suites"
    docs_dir = tmp_path / "docs"
    write_suite(suites_dir, "quality", "payments", PAYMENTS_SUITE)
    write_suite(suites_dir, "landing", "payments", PAYMENTS_SUITE[:2])
    bad = payments(10)
    bad.loc[2, "channel"] = "paypal"

    results = [
        gate(payments(10), suites_dir, partition="p01", docs_dir=docs_dir),
        gate(bad, suites_dir, partition="p02", docs_dir=docs_dir),
        gate(payments(5), suites_dir, gate="landing", partition="p01", docs_dir=docs_dir),
    ]

    for result in results:
        assert result.docs_path is not None
        assert not Path(result.docs_path).is_absolute()
        assert (docs_dir / result.docs_path).is_file()
    assert re.fullmatch(
        r"validations/quality/payments/manual__1/\d{8}T\d{6}\.\d{6}Z/p02\.html",
        results[1].docs_path,
    )
    assert results[1].summary().endswith(f"see {results[1].docs_path}")
    page = (docs_dir / results[1].docs_path).read_text(encoding="utf-8")
    assert "expect_column_values_to_be_in_set" in page or "values must belong" in page
    assert (docs_dir / "expectations" / "quality" / "payments.html").is_file()

    index = gates.build_docs_index(docs_dir)
    assert index == (docs_dir / "index.html").resolve()
    text = index.read_text(encoding="utf-8")
    for result in results:
        assert result.docs_path in text


def test_docs_failure_does_not_hide_the_verdict(
    suites: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args, **kwargs):
        raise OSError("disk full")

    context = gates._get_context(tmp_path / "docs")
    monkeypatch.setattr(context, "build_data_docs", broken)
    bad = payments(10)
    bad.loc[0, "channel"] = "paypal"

    result = gate(bad, suites, docs_dir=tmp_path / "docs")

    assert not result.success and result.docs_path is None
    assert "see " not in result.summary()


# --------------------------------------------------------------------------- import cost


def test_import_does_not_load_great_expectations() -> None:
    code = "import sys, handover.gates.suites; print('great_expectations' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "include")}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- speed settings


def test_gx_tuning_takes_hold_and_pages_still_render(tmp_path: Path) -> None:
    """The two process-wide GX settings run_gate applies (see gates._tune_gx) exist in the
    pinned GX: a GX upgrade that moves them fails here instead of silently slowing gates."""
    suites_dir = tmp_path / "suites"
    write_suite(suites_dir, "quality", "payments", PAYMENTS_SUITE)
    first = gate(payments(10), suites_dir, partition="p01", docs_dir=tmp_path / "docs")

    from great_expectations.execution_engine import pandas_execution_engine
    from great_expectations.render.view.view import DefaultJinjaView

    assert pandas_execution_engine.HASH_THRESHOLD == 0
    view = DefaultJinjaView()
    cache = view.env.bytecode_cache
    assert cache is not None and cache.code, "templates compiled once are kept for the process"
    compiled = len(cache.code)
    second = gate(payments(15), suites_dir, partition="p02", docs_dir=tmp_path / "docs")
    assert len(cache.code) == compiled, "a second page reuses the compiled templates"
    for result in (first, second):
        page = (tmp_path / "docs" / result.docs_path).read_text(encoding="utf-8")
        assert "payments" in page and "</html>" in page

    # A page's build lists only the resources asked for, not the whole store, and the
    # static assets are copied once (and again when the site lost them).
    from great_expectations.data_context.store.html_site_store import HtmlSiteStore
    from great_expectations.data_context.store.store import Store

    listed, copies = [], []
    real_list, real_copy = Store.list_keys, HtmlSiteStore.copy_static_assets
    try:
        Store.list_keys = lambda self: listed.append(self) or real_list(self)
        HtmlSiteStore.copy_static_assets = lambda self, *a, **k: (
            copies.append(1) or real_copy(self, *a, **k)
        )
        import shutil

        third = gate(payments(20), suites_dir, partition="p03", docs_dir=tmp_path / "docs")
        assert listed == [], "no store was listed to render one page"
        styles = tmp_path / "docs" / "static" / "styles"
        assert styles.is_dir()
        shutil.rmtree(styles)
        fourth = gate(payments(20), suites_dir, partition="p04", docs_dir=tmp_path / "docs")
        assert styles.is_dir(), "assets a site lost are copied again"
    finally:
        Store.list_keys, HtmlSiteStore.copy_static_assets = real_list, real_copy
    for result in (third, fourth):
        assert "</html>" in (tmp_path / "docs" / result.docs_path).read_text(encoding="utf-8")


def test_gx_frame_keeps_every_value() -> None:
    df = pd.DataFrame(
        {
            "full": pd.array([1, 2, 3], dtype="Int64"),
            "gaps": pd.array([1, None, 2**53], dtype="Int64"),
            "huge": pd.array([2**62, None, 1], dtype="Int64"),
            "money": pd.array([1.5, None, 2.0], dtype="Float64"),
            "text": ["a", "b", None],
        }
    )
    out = gates._gx_frame(df)

    assert str(out["full"].dtype) == "int64" and out["full"].tolist() == [1, 2, 3]
    assert str(out["gaps"].dtype) == "float64"
    assert out["gaps"].isna().tolist() == [False, True, False]
    assert int(out["gaps"].iloc[2]) == 2**53
    assert out["huge"].dtype == df["huge"].dtype, "beyond 2**53 a float would round: kept"
    assert str(out["money"].dtype) == "float64" and out["money"].isna().sum() == 1
    assert out["text"].equals(df["text"])
    untouched = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    assert gates._gx_frame(untouched) is untouched


def test_between_on_nullable_integers_still_catches_a_breach(suites: Path) -> None:
    bad = payments(10)
    bad["amount_fen"] = pd.array([5] * 9 + [-1], dtype="Int64")
    bad.loc[3, "amount_fen"] = None
    result = gate(bad, suites)
    assert not result.success


# ------------------------------------------------------------ reading only what a gate reads
def test_read_columns_names_the_columns_whose_values_a_suite_reads():
    from handover.gates import read_columns

    suite = {"expectations": PAYMENTS_SUITE}
    assert read_columns(suite) == {"payment_id", "amount_fen", "channel"}
    compound = {
        "expectations": [
            {"type": "expect_compound_columns_to_be_unique", "kwargs": {"column_list": ["a", "b"]}}
        ]
    }
    assert read_columns(compound) == {"a", "b"}
    # A table-level expectation it does not know might read anything: read everything.
    unknown = {
        "expectations": [
            {
                "type": "expect_table_row_count_to_equal_other_table",
                "kwargs": {"other_table_name": "x"},
            }
        ]
    }
    assert read_columns(unknown) is None


@pytest.mark.parametrize("gate", ["intake", "quality", "contract"])
def test_a_gate_on_the_projected_frame_gives_the_verdict_of_the_whole_frame(
    gate, tmp_path, monkeypatch
):
    """The columns no expectation reads become all-null placeholders; planted faults in
    read columns still fail the gate the same way, and faults in unread ones never could."""
    import pyarrow as pa

    from handover.flows import migration as pipeline
    from handover.storage.lake import part_key

    monkeypatch.setenv("HANDOVER_LAKE_URL", f"file://{tmp_path / 'lake'}")
    n = 200
    stage = pipeline.GATE_INPUT[gate]
    if gate == "contract":
        table = pa.table(
            {
                "cdr_id": [None if i == 7 else f"CDR{i:09d}" for i in range(n)],
                "customer_id": [f"C{i:08d}" for i in range(n)],
                "caller_msisdn": ["13812345678"] * n,
                "callee_msisdn": ["13987654321"] * n,
                "started_at": pa.array([0] * n, pa.timestamp("ms")),
                "duration_s": [i for i in range(n)],
                "cell_id": ["C1"] * n,
                "charge_fen": [i for i in range(n)],
            }
        )
    else:
        table = pa.table(
            {
                "cdr_id": [None if i == 7 else f"CDR{i:09d}" for i in range(n)],
                "cust_id": [f"C{i:08d}" for i in range(n)],
                "caller": ["1381234567x" if i == 3 else "13812345678" for i in range(n)],
                "callee": ["13987654321"] * n,
                "start_time": ["2026-01-01 00:00:00"] * n,
                "duration_s": ["-5" if i == 4 else "60" for i in range(n)],
                "cell_id": ["C1"] * n,
                "charge_fen": ["10"] * n,
                "_source_row": list(range(n)),
            }
        )
        if gate == "quality":  # typed as cleanse writes it
            table = table.set_column(
                5, "duration_s", pa.array([-5 if i == 4 else 60 for i in range(n)], pa.int64())
            )
            table = table.set_column(7, "charge_fen", pa.array([10] * n, pa.int64()))
    ctx = {"run_id": "gate_projection", "system": "legacy_bss"}
    pipeline._lake().write_table(part_key(ctx["run_id"], stage, "call_records", "p00"), table)
    projected = pipeline._gate_frame(ctx, gate, "call_records", "p00")
    whole = table.to_pandas().drop(columns=["_source_row"], errors="ignore")
    assert list(projected.columns) == list(whole.columns) and len(projected) == n
    suites = pipeline.suites_dir_for("legacy_bss", gate, "call_records")
    verdicts = [
        run_gate(
            frame,
            gate=gate,
            table="call_records",
            partition="p00",
            run_id="r",
            suites_dir=suites,
            docs_dir=None,
        )
        for frame in (projected, whole)
    ]
    assert verdicts[0].success is False  # the null key is always read
    assert verdicts[0].to_manifest() == verdicts[1].to_manifest()


@pytest.mark.parametrize(
    ("body", "passes"),
    [
        ("电话１３８１２３４５６７８", False),  # full-width MSISDN the redactor missed
        ("电话1３8１２３４５６７８", False),  # mixed widths
        ("证件１１０１０５１９４９１２３１００２Ｘ", False),  # ID-shaped, full-width X
        ("电话[手机号]，谢谢（已回访）", True),
        ("①号线，工单１２３４５", True),
    ],
)
def test_contract_gate_stops_full_width_identifiers_left_in_free_text(
    body: str, passes: bool
) -> None:
    # Free text reaches the gate as written (cleanse does not NFKC it), so the gate's
    # patterns take full-width forms too.
    frame = pd.DataFrame(
        {
            "complaint_id": ["Q1"],
            "customer_id": ["C1"],
            "created_at": [pd.Timestamp("2026-01-01")],
            "category": ["network"],
            "body": [body],
            "satisfaction": [3],
        }
    )
    result = run_gate(
        frame,
        gate="contract",
        table="complaints",
        partition="p00",
        run_id="r",
        suites_dir=ROOT / "expectations" / "legacy_bss",
        docs_dir=None,
    )
    assert result.success is passes


def _gate_in_process(suites_dir: str, docs_dir: str, partition: str, bad: bool) -> str | None:
    frame = payments(10)
    if bad:
        frame.loc[2, "channel"] = "paypal"
    return gate(frame, Path(suites_dir), partition=partition, docs_dir=Path(docs_dir)).docs_path


def test_after_a_gate_failed_the_index_lists_every_gate_of_the_run(tmp_path: Path) -> None:
    """Gates run as parallel processes write one site; publish, which rebuilds the index,
    never runs on a red run. Once one gate failed, each later gate rebuilds the index (one
    at a time, under a lock), so the index left behind lists every validation, not the few
    the failing gate saw."""
    import multiprocessing

    suites_dir, docs_dir = tmp_path / "suites", tmp_path / "docs"
    write_suite(suites_dir, "quality", "payments", PAYMENTS_SUITE)
    first = gate(
        payments(10).assign(channel="paypal"), suites_dir, partition="p00", docs_dir=docs_dir
    )
    assert not first.success
    jobs = [(str(suites_dir), str(docs_dir), f"p{i:02d}", i % 3 == 0) for i in range(1, 7)]
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        pages = pool.starmap(_gate_in_process, jobs)
    text = (docs_dir / "index.html").read_text(encoding="utf-8")
    assert first.docs_path in text
    for page in pages:
        assert page and page in text, page
