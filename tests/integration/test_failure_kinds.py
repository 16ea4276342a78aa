"""One test per failure kind on-call meets: the task's one-line message, and whether
Airflow retries it. Data faults (gate, config, broken export) fail at once; transient
faults (database or object store unreachable) are retried with backoff. Each fault is
produced for real: a drifted export, a broken config file, a closed port."""

from __future__ import annotations

import shutil
import socket
import uuid

import pytest
from airflow.sdk.exceptions import AirflowFailException

from handover.config.loader import CONFIG_ROOT
from handover.flows import migration as pipeline
from handover.ops import tasks
from handover_synth import legacy_bss as synth
from tests.conftest import create_database, drop_database, pg_dsn, reseal

pytestmark = pytest.mark.integration


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def export(tmp_path):
    synth.generate(tmp_path / "src", 200, seed=5)
    return tmp_path / "src"


@pytest.fixture
def env(monkeypatch, tmp_path, keyring_file):
    name = create_database("handover_fk")
    monkeypatch.setenv("HANDOVER_TARGET_DSN", pg_dsn(name))
    monkeypatch.setenv("HANDOVER_LAKE_URL", f"file://{tmp_path / 'lake'}")
    monkeypatch.setenv("HANDOVER_KEYRING_FILE", str(keyring_file))
    yield name
    drop_database(name)


def _payments_cleansed(export):
    """Plan a run of the export, extract and comply subscribers, consents and payments,
    resolve the parents and cleanse payments p00: (ctx, the payments partition)."""
    ctx = pipeline.plan_run(
        run_id=f"fk_{uuid.uuid4().hex[:6]}", dag_id="t", system="legacy_bss", source_dir=str(export)
    )
    for table in ("subscribers", "consents", "payments"):
        for part in pipeline.extract_table(ctx, table):
            pipeline.comply_partition(ctx, part)
    pipeline.resolve_customers(ctx)
    part = {"table": "payments", "partition": "p00"}
    pipeline.cleanse_partition(ctx, part)
    return ctx, part


def test_retry_policy_is_retries_with_backoff_for_every_task():
    assert tasks.DEFAULT_ARGS["retries"] >= 1
    assert tasks.DEFAULT_ARGS["retry_exponential_backoff"] is True


def test_gate_failure_fails_at_once_with_one_line_naming_table_partition_and_page(env, export):
    lines = (export / "payments.csv").read_text().splitlines()
    (export / "payments.csv").write_text(
        "\n".join([lines[0] + ",coupon"] + [ln + ",X" for ln in lines[1:]]) + "\n"
    )
    reseal(export)  # the operator's export has the column
    run_id = f"fk_{uuid.uuid4().hex[:6]}"
    ctx = pipeline.plan_run(run_id=run_id, dag_id="t", system="legacy_bss", source_dir=str(export))
    part = pipeline.extract_table(ctx, "payments")[0]
    with pytest.raises(AirflowFailException) as err:
        tasks.call(pipeline.run_gate_task, ctx, part, "intake")
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("GateFailed: intake gate failed for payments partition p00")
    assert "coupon" in msg and "/docs/validations/intake/payments/" in msg
    assert err.value.__cause__ is None and err.value.__suppress_context__  # no library stack
    assert "(UI: http://" in msg  # a link the log viewer makes clickable

    # The failed run has its report and Data Docs index, telling the same story.
    from handover.storage.lake import lake_from_url, safe_run_id

    lake = lake_from_url()
    report = lake.get_bytes(f"runs/{safe_run_id(run_id)}/reports/report.html").decode()
    assert "This run FAILED at" in report and "intake gate failed for payments" in report
    assert "not reached (no reconciliation): " in report and "subscribers" in report
    index = lake.get_bytes(f"runs/{safe_run_id(run_id)}/docs/index.html").decode()
    assert "payments" in index


def test_config_error_fails_at_once_with_file_line_and_field(env, export, tmp_path):
    bad = tmp_path / "bad_bss"
    shutil.copytree(CONFIG_ROOT / "legacy_bss", bad)
    policy = bad / "policy.yaml"
    policy.write_text(policy.read_text().replace("retention_months: 36", "retention_month: 36"))
    with pytest.raises(AirflowFailException) as err:
        tasks.call(
            pipeline.plan_run, run_id="fk_cfg", dag_id="t", system=str(bad), source_dir=str(export)
        )
    msg = str(err.value)
    assert "\n" not in msg and "policy.yaml line" in msg
    assert "retention_month" in msg and "did you mean 'retention_months'" in msg


def test_database_down_is_transient_and_retried_with_one_line(export, monkeypatch):
    monkeypatch.setenv(
        "HANDOVER_TARGET_DSN",
        f"host=127.0.0.1 port={_closed_port()} user=postgres dbname=x connect_timeout=2",
    )
    with pytest.raises(tasks.TransientFault) as err:
        tasks.call(
            pipeline.plan_run,
            run_id="fk_db",
            dag_id="t",
            system="legacy_bss",
            source_dir=str(export),
        )
    msg = str(err.value)
    assert not isinstance(err.value, AirflowFailException)  # Airflow will retry it
    assert "\n" not in msg and msg.startswith("OperationalError:")
    assert "retries with backoff" in msg


def test_object_store_down_is_transient_and_retried_with_one_line(env, export, monkeypatch):
    port = _closed_port()
    monkeypatch.setenv("HANDOVER_LAKE_URL", "s3://handover-lake/runs")
    monkeypatch.setenv(
        "AIRFLOW_CONN_HANDOVER_LAKE",
        '{"conn_type": "aws", "login": "x", "password": "y", "extra": {"endpoint_url": '
        f'"http://127.0.0.1:{port}", "region_name": "us-east-1", "max_attempts": 2}}}}',
    )
    ctx = pipeline.plan_run(run_id="fk_s3", dag_id="t", system="legacy_bss", source_dir=str(export))
    with pytest.raises(Exception) as err:
        tasks.call(pipeline.extract_table, ctx, "payments")
    msg = str(err.value)
    assert not isinstance(err.value, AirflowFailException)  # Airflow will retry it
    assert "\n" not in msg and f"127.0.0.1:{port}" in msg
    assert "retries" in msg


def test_database_error_reaches_the_log_without_row_values(env):
    """PostgreSQL quotes rows in its errors (DETAIL "Failing row contains (...)", a
    duplicate "Key (...)=(...)", the bad value of a data exception): none of that may reach
    the task log, where Airflow prints the error and any chained cause whole."""
    import psycopg

    phone, resident_id = "13912345678", "110101199003074477"
    with psycopg.connect(pg_dsn(env), autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE t_sub (id text PRIMARY KEY, msisdn text CHECK (length(msisdn) = 11))"
        )
        conn.execute("INSERT INTO t_sub VALUES (%s, %s)", (resident_id, phone))

    def run(statement: str, *params):
        with psycopg.connect(pg_dsn(env), autocommit=True) as conn:
            conn.execute(statement, params)

    # (statement, params, SQLSTATE, constraint named, retried by Airflow)
    cases = [
        # a duplicate may be a concurrent writer of the key, gone on the retry
        ("INSERT INTO t_sub VALUES (%s, %s)", (resident_id, phone), "23505", "t_sub_pkey", True),
        (
            "INSERT INTO t_sub VALUES (%s, %s)",
            ("x", phone + "9"),
            "23514",
            "t_sub_msisdn_check",
            False,
        ),
        ("SELECT %s::bigint", (phone + "x",), "22P02", None, False),
    ]
    for statement, params, state, constraint, retried in cases:
        with pytest.raises(tasks.DatabaseFault if retried else AirflowFailException) as err:
            tasks.call(run, statement, *params)
        msg = str(err.value)
        assert phone not in msg and resident_id not in msg, msg
        assert "\n" not in msg and f"SQLSTATE {state}" in msg
        assert isinstance(err.value, AirflowFailException) is not retried
        assert ("not retried" in msg) is not retried
        if not retried:
            assert msg.startswith("DatabaseFault: ")
        if constraint:
            assert f"constraint {constraint}" in msg and "table t_sub" in msg
        # no cause or context chained: Airflow would print its DETAIL and CONTEXT
        assert err.value.__cause__ is None and err.value.__suppress_context__


def test_database_error_a_retry_may_clear_is_retried(env):
    """An error outside the classes a retry cannot change (here an internal error, as an
    I/O fault on the server raises) stays a DatabaseFault, which Airflow retries."""
    import psycopg

    def run():
        with psycopg.connect(pg_dsn(env), autocommit=True) as conn:
            conn.execute(
                "DO $$ BEGIN RAISE EXCEPTION 'could not read block 7' "
                "USING ERRCODE = 'XX001'; END $$"
            )

    with pytest.raises(tasks.DatabaseFault) as err:
        tasks.call(run)
    assert not isinstance(err.value, AirflowFailException)  # Airflow retries it
    assert "SQLSTATE XX001" in str(err.value) and err.value.__cause__ is None


def test_a_partition_that_would_load_almost_nothing_fails_the_quality_gate(env, export):
    """Every amount written as legacy billing prints it (`¥17,504.10`): no rule reads it,
    cleanse quarantines the table, and the quality gate says so in one line instead of
    a green run that loaded nothing."""
    import pandas as pd

    pays = pd.read_csv(export / "payments.csv", dtype=str, keep_default_na=False)
    pays["amount_fen"] = [f"¥{int(v) / 100:,.2f}" if v.isdigit() else v for v in pays["amount_fen"]]
    pays.to_csv(export / "payments.csv", index=False)
    reseal(export)
    ctx, part = _payments_cleansed(export)
    with pytest.raises(AirflowFailException) as err:
        tasks.call(pipeline.run_gate_task, ctx, part, "quality")
    line = str(err.value)
    assert "\n" not in line
    assert "quality gate failed for payments partition p00" in line
    assert "INVALID_NUMBER" in line and "% > 50% allowed" in line
    assert "max_quarantine_share" in line


def test_children_of_a_vanished_parent_table_fail_min_loaded_share(env, export):
    """Every payment names a customer the export does not hold (a subscriber file from
    another day): no row is malformed, so max_quarantine_share says nothing, but almost
    nothing would load; min_loaded_share fails the quality gate in one line."""
    import pandas as pd

    pays = pd.read_csv(export / "payments.csv", dtype=str, keep_default_na=False)
    pays["cust_id"] = "C" + pays["cust_id"].str[1:].str.zfill(8).str.replace(
        r"^\d", "9", regex=True
    )
    pays.to_csv(export / "payments.csv", index=False)
    reseal(export)
    ctx, part = _payments_cleansed(export)
    with pytest.raises(AirflowFailException) as err:
        tasks.call(pipeline.run_gate_task, ctx, part, "quality")
    line = str(err.value)
    assert "\n" not in line
    assert "quality gate failed for payments partition p00: only" in line
    assert "ORPHAN_RECORD" in line and "min_loaded_share" in line


def test_a_policy_that_lets_nothing_move_fails_the_compliance_gate(env, export):
    """Every consent to marketing and behavioural analysis withdrawn: the browsing events
    are all excluded. Lawful, and still red: max_excluded_share names the rule."""
    import pandas as pd

    cons = pd.read_csv(export / "consents.csv", dtype=str, keep_default_na=False)
    cons.loc[cons["purpose"] != "service", "granted"] = "0"
    cons.to_csv(export / "consents.csv", index=False)
    reseal(export)
    run_id = f"fk_{uuid.uuid4().hex[:6]}"
    ctx = pipeline.plan_run(run_id=run_id, dag_id="t", system="legacy_bss", source_dir=str(export))
    for table in ("subscribers", "consents"):
        for part in pipeline.extract_table(ctx, table):
            pipeline.comply_partition(ctx, part)
    part = pipeline.extract_table(ctx, "browsing_events")[0]
    pipeline.comply_partition(ctx, part)
    with pytest.raises(AirflowFailException) as err:
        tasks.call(pipeline.run_gate_task, ctx, part, "compliance")
    line = str(err.value)
    assert "\n" not in line
    assert "compliance gate failed for browsing_events partition p00" in line
    assert "NO_CONSENT" in line and "max_excluded_share" in line


def test_calls_to_landlines_iot_service_and_abroad_load_in_their_normal_form(env, export):
    """The shipped policy takes a callee of any class (cleansing.yaml phones); a number of
    no class still quarantines its row."""
    import pandas as pd
    import psycopg

    from handover.flows.runner import run_migration

    calls = pd.read_csv(export / "call_records.csv", dtype=str, keep_default_na=False)
    planted = {
        "010-12345678": "01012345678",
        "+86 10 1234 5678": "01012345678",
        "1440123456789": "1440123456789",
        "10086": "10086",
        "0044 20 7946 0958": "+442079460958",
        "2381234567": None,
    }
    rows = calls.index[(calls["cust_id"] == calls["cust_id"].iloc[0])][: len(planted)]
    assert len(rows) == len(planted)
    calls.loc[rows, "callee"] = list(planted)
    calls.to_csv(export / "call_records.csv", index=False)
    reseal(export)
    run_id = f"fk_{uuid.uuid4().hex[:6]}"
    run_migration(run_id=run_id, source_dir=str(export))
    keys = calls.loc[rows, "cdr_id"].str.strip().tolist()
    with psycopg.connect(pg_dsn(env)) as conn:
        loaded = dict(
            conn.execute(
                "SELECT cdr_id, callee_msisdn FROM crm.call_record WHERE cdr_id = ANY(%s)", (keys,)
            ).fetchall()
        )
        reasons = dict(
            conn.execute(
                "SELECT record_key, reason FROM handover_meta.quarantine "
                "WHERE run_id=%s AND record_key = ANY(%s)",
                (run_id, keys),
            ).fetchall()
        )
    want = dict(zip(keys, planted.values(), strict=True))
    assert {k: v for k, v in loaded.items()} == {k: v for k, v in want.items() if v}
    assert reasons == {k: "INVALID_MSISDN" for k, v in want.items() if v is None}


def test_one_person_written_twice_is_one_customer_with_every_child_row(env, export):
    """Two ways an old system writes one person twice, planted in the shipped demo export:
    the same customer id in another case with spaces (` c10012080 ` beside `C10012080`),
    and the same person under a new id with the first-generation 15-digit form of their
    resident ID. Each is merged into one customer (merge map: SAME_KEY, SAME_PERSON), not
    quarantined, and every child row of either record is loaded under the survivor."""
    import pandas as pd
    import psycopg

    from handover.flows.runner import run_migration

    subs = pd.read_csv(export / "subscribers.csv", dtype=str, keep_default_na=False)
    calls = pd.read_csv(export / "call_records.csv", dtype=str, keep_default_na=False)
    truth = pd.read_csv(export / "truth.csv", dtype=str, keep_default_na=False)
    bad = set(truth["key"])
    unique = ~subs["id_number"].duplicated(keep=False)
    callers = set(calls["cust_id"])
    pool = subs[
        unique
        & ~subs["cust_id"].isin(bad)
        & subs["cust_id"].isin(callers)
        & subs["id_number"].str[6:8].eq("19")
    ]
    a, b = pool.iloc[0], pool.iloc[1]
    variant = f" {a['cust_id'].lower()} "  # one customer id, written another way
    twin_a = a.copy()
    twin_a["cust_id"] = variant
    twin_b = b.copy()  # one person, a new id, the 15-digit ID, an older record
    twin_b["cust_id"] = "C99999990"
    twin_b["id_number"] = b["id_number"][:6] + b["id_number"][8:17]
    twin_b["updated_at"] = "2015-01-01 00:00:00"
    subs = pd.concat([subs, pd.DataFrame([twin_a, twin_b])], ignore_index=True)
    template = calls[calls["cust_id"] == a["cust_id"]].iloc[0]
    extra = []
    for i, owner in enumerate([variant, a["cust_id"].lower(), "C99999990", "c99999990"]):
        row = template.copy()
        row["cdr_id"], row["cust_id"] = f"X{i:09d}", owner
        extra.append(row)
    calls = pd.concat([calls, pd.DataFrame(extra)], ignore_index=True)
    subs.to_csv(export / "subscribers.csv", index=False)
    calls.to_csv(export / "call_records.csv", index=False)
    reseal(export, rows=True)
    run_id = f"fk_{uuid.uuid4().hex[:6]}"
    run_migration(run_id=run_id, source_dir=str(export))

    with psycopg.connect(pg_dsn(env)) as conn:
        merges = conn.execute(
            "SELECT merged_key, survivor_key, rule FROM "
            "handover_meta.merge_map WHERE run_id=%s ORDER BY rule",
            (run_id,),
        ).fetchall()
        customers = {
            r[0]
            for r in conn.execute(
                "SELECT customer_id FROM crm.customer WHERE customer_id = ANY(%s)",
                ([a["cust_id"], b["cust_id"], "C99999990", variant.strip()],),
            )
        }
        owners = dict(
            conn.execute(
                "SELECT cdr_id, customer_id FROM crm.call_record WHERE cdr_id LIKE 'X%%'"
            ).fetchall()
        )
        stray = conn.execute(
            "SELECT count(*) FROM handover_meta.quarantine WHERE run_id=%s "
            "AND (record_key = ANY(%s) OR record_key LIKE 'X%%')",
            (run_id, [a["cust_id"], "C99999990"]),
        ).fetchone()[0]
        rec = conn.execute(
            "SELECT merged, balanced FROM handover_meta.reconciliation WHERE "
            "run_id=%s AND table_name='subscribers'",
            (run_id,),
        ).fetchone()
    assert ("C99999990", b["cust_id"], "SAME_PERSON") in merges
    assert (a["cust_id"], a["cust_id"], "SAME_KEY") in merges
    assert customers == {a["cust_id"], b["cust_id"]}
    assert owners == {
        "X000000000": a["cust_id"],
        "X000000001": a["cust_id"],
        "X000000002": b["cust_id"],
        "X000000003": b["cust_id"],
    }
    assert stray == 0
    assert rec[0] >= 2 and rec[1]
