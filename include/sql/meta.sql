-- handover_meta: the migration's own books, in the target database so that the
-- ledger commits in the same transaction as the data it counts.
CREATE SCHEMA IF NOT EXISTS handover_meta;
-- Scratch space for one transaction's staged rows (reconcile): UNLOGGED tables, created and
-- dropped inside the transaction that uses them, so PostgreSQL may scan them with parallel
-- workers (a TEMP table never is). Only the loader may use it (include/sql/roles.sql).
CREATE SCHEMA IF NOT EXISTS handover_work;

CREATE TABLE IF NOT EXISTS handover_meta.run (
    run_id            text PRIMARY KEY,
    dag_id            text NOT NULL,
    source_system     text NOT NULL,
    source_manifest   text NOT NULL,          -- sha256 of the export manifest
    exported_at       timestamp NOT NULL,
    started_at        timestamptz NOT NULL DEFAULT now(),
    finished_at       timestamptz,
    status            text NOT NULL DEFAULT 'running'
);

-- What a run is: 'migration' (an export moved), 'nightly' (a night's changes),
-- 'subject_request' (a correction's one row). Only migrations are exports: the nightly
-- sync's order check reads its baseline from them.
ALTER TABLE handover_meta.run ADD COLUMN IF NOT EXISTS kind text;

-- One row per run, table, partition and stage: rows in = out + quarantined + excluded.
CREATE TABLE IF NOT EXISTS handover_meta.ledger (
    run_id            text NOT NULL,
    table_name        text NOT NULL,
    partition         text NOT NULL,
    stage             text NOT NULL,
    rows_in           bigint NOT NULL,
    rows_out          bigint NOT NULL,
    rows_quarantined  bigint NOT NULL DEFAULT 0,
    rows_excluded     bigint NOT NULL DEFAULT 0,
    checksum          text,
    detail            jsonb NOT NULL DEFAULT '{}',
    recorded_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, table_name, partition, stage),
    CHECK (rows_in = rows_out + rows_quarantined + rows_excluded)
);
-- Rows of one person merged into a survivor (cleanse): they leave the stage neither
-- moved nor quarantined, so the balance gains a term.
ALTER TABLE handover_meta.ledger ADD COLUMN IF NOT EXISTS rows_merged bigint NOT NULL DEFAULT 0;
DO $$ BEGIN
    IF EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'ledger_check'
               AND conrelid = 'handover_meta.ledger'::regclass) THEN
        ALTER TABLE handover_meta.ledger DROP CONSTRAINT ledger_check;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'ledger_balances'
                   AND conrelid = 'handover_meta.ledger'::regclass) THEN
        ALTER TABLE handover_meta.ledger ADD CONSTRAINT ledger_balances
            CHECK (rows_in = rows_out + rows_quarantined + rows_excluded + rows_merged);
    END IF;
END $$;

-- The merge map: a record of one person (same normalised resident ID, or the same key
-- once normalised) merged into the surviving record, by which rule, in which run. Its
-- child rows were re-parented to the survivor. Keys as the quarantine books hold them.
CREATE TABLE IF NOT EXISTS handover_meta.merge_map (
    run_id        text NOT NULL,
    table_name    text NOT NULL,
    partition     text NOT NULL,
    merged_key    text NOT NULL,
    survivor_key  text NOT NULL,
    rule          text NOT NULL,
    recorded_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS merge_map_run ON handover_meta.merge_map (run_id, table_name, partition);

-- The person map: every customer record of every source system (and the target's own),
-- with the person it belongs to and the target customer that holds that person now.
-- A person id is stable: written once per (system, key), never changed by a rerun.
-- Keys are customer ids as the books hold them; no resident ID or phone number.
CREATE TABLE IF NOT EXISTS handover_meta.person_map (
    source_system       text NOT NULL,
    source_key          text NOT NULL,
    person_id           text NOT NULL,
    target_customer_id  text NOT NULL,
    decision            text NOT NULL,   -- new | merged_same_person | merged_existing | target
    rule                text NOT NULL,   -- resident_id | seed | ...
    run_id              text,
    recorded_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source_system, source_key)
);
CREATE INDEX IF NOT EXISTS person_map_person ON handover_meta.person_map (person_id);
CREATE INDEX IF NOT EXISTS person_map_target ON handover_meta.person_map (target_customer_id);
-- Fields where a record merged into a target customer disagreed with it (the target's
-- value was kept): for a person to decide (`handover review`), every decision audited.
-- Field names only, never a value.
CREATE TABLE IF NOT EXISTS handover_meta.identity_review (
    id                  bigserial PRIMARY KEY,
    source_system       text NOT NULL,
    source_key          text NOT NULL,
    target_customer_id  text NOT NULL,
    field               text NOT NULL,
    rule                text NOT NULL,
    status              text NOT NULL DEFAULT 'open',  -- open | keep-target | correct
    run_id              text,
    opened_at           timestamptz NOT NULL DEFAULT now(),
    resolved_by         text,
    resolved_at         timestamptz,
    note                text,
    UNIQUE (source_system, source_key, field)
);
CREATE INDEX IF NOT EXISTS merge_map_merged ON handover_meta.merge_map (table_name, merged_key);

-- Quarantined rows: the key, the reason and the field; the row itself stays in the lake.
CREATE TABLE IF NOT EXISTS handover_meta.quarantine (
    run_id       text NOT NULL,
    table_name   text NOT NULL,
    partition    text NOT NULL,
    record_key   text NOT NULL,
    reason       text NOT NULL,
    field        text
);
CREATE INDEX IF NOT EXISTS quarantine_run ON handover_meta.quarantine (run_id, table_name, partition);
-- An orphan (child whose parent was unknown) taken into a later night that may bring its
-- parent: the run that took it (it is quarantined again there if the parent still lacks).
ALTER TABLE handover_meta.quarantine ADD COLUMN IF NOT EXISTS released_by text;

-- Rows the policy did not allow to move, with the rule, and when they must be destroyed.
CREATE TABLE IF NOT EXISTS handover_meta.exclusion (
    run_id            text NOT NULL,
    table_name        text NOT NULL,
    partition         text NOT NULL,
    record_key        text NOT NULL,
    rule_id           text NOT NULL,
    destroy_by        date
);
CREATE INDEX IF NOT EXISTS exclusion_run ON handover_meta.exclusion (run_id, table_name, partition);
-- What may not move is not kept: every exclusion is due for destruction (objection and
-- missing consent at the end of the run that excluded the row). NOT VALID: rows written
-- before this rule are not rechecked, every new one is.
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'exclusion_destroy_by_set') THEN
        ALTER TABLE handover_meta.exclusion ADD CONSTRAINT exclusion_destroy_by_set
            CHECK (destroy_by IS NOT NULL) NOT VALID;
    END IF;
END $$;

CREATE TABLE IF NOT EXISTS handover_meta.reconciliation (
    run_id            text NOT NULL,
    table_name        text NOT NULL,
    source_rows       bigint NOT NULL,
    loaded            bigint NOT NULL,
    quarantined       bigint NOT NULL,
    excluded          bigint NOT NULL,
    target_rows       bigint NOT NULL,
    missing_keys      bigint NOT NULL,
    field_mismatches  bigint NOT NULL,
    money_source      bigint,
    money_target      bigint,
    balanced          boolean NOT NULL,
    checked_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, table_name)
);
ALTER TABLE handover_meta.reconciliation ADD COLUMN IF NOT EXISTS merged bigint NOT NULL DEFAULT 0;

-- Money is summed in numeric: a sum of many bigint amounts outgrows bigint (a reconcile
-- that crashed on it left the rows loaded and nothing said).
DO $$ BEGIN
    IF (SELECT data_type FROM information_schema.columns WHERE table_schema = 'handover_meta'
        AND table_name = 'reconciliation' AND column_name = 'money_source') = 'bigint' THEN
        ALTER TABLE handover_meta.reconciliation ALTER COLUMN money_source TYPE numeric,
            ALTER COLUMN money_target TYPE numeric;
    END IF;
END $$;

-- Append-only, hash-chained audit trail: each entry's hash covers the previous hash.
CREATE TABLE IF NOT EXISTS handover_meta.audit_log (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    run_id      text,
    actor       text NOT NULL,
    action      text NOT NULL,
    detail      jsonb NOT NULL DEFAULT '{}',
    prev_hash   text NOT NULL,
    hash        text NOT NULL
);

CREATE OR REPLACE FUNCTION handover_meta.audit_chain() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE last text;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('handover_meta.audit_log'));
    -- The id is drawn again inside the lock: the column default was drawn before it, so
    -- two concurrent inserts could otherwise get ids in one order and chain in the other
    -- (the later id linking to an entry the earlier id never saw). Gaps are harmless.
    NEW.id := nextval(pg_get_serial_sequence('handover_meta.audit_log', 'id'));
    SELECT hash INTO last FROM handover_meta.audit_log ORDER BY id DESC LIMIT 1;
    NEW.prev_hash := coalesce(last, repeat('0', 64));
    NEW.hash := encode(sha256(convert_to(
        NEW.prev_hash || '|' ||
        to_char(NEW.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') || '|' || coalesce(NEW.run_id, '') || '|' ||
        NEW.actor || '|' || NEW.action || '|' || NEW.detail::text, 'UTF8')), 'hex');
    RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION handover_meta.audit_refuse() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'handover_meta.audit_log is append-only: % refused', TG_OP;
END $$;

DROP TRIGGER IF EXISTS audit_chain ON handover_meta.audit_log;
CREATE TRIGGER audit_chain BEFORE INSERT ON handover_meta.audit_log
    FOR EACH ROW EXECUTE FUNCTION handover_meta.audit_chain();
DROP TRIGGER IF EXISTS audit_refuse ON handover_meta.audit_log;
CREATE TRIGGER audit_refuse BEFORE UPDATE OR DELETE OR TRUNCATE ON handover_meta.audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION handover_meta.audit_refuse();

-- One row per gate run: what was checked and how it ended (counts only, never values).
CREATE TABLE IF NOT EXISTS handover_meta.gate_result (
    run_id      text NOT NULL,
    gate        text NOT NULL,
    table_name  text NOT NULL,
    partition   text NOT NULL,
    success     boolean NOT NULL,
    evaluated   integer NOT NULL,
    rows        bigint NOT NULL,
    failed      jsonb NOT NULL DEFAULT '[]',
    docs_path   text,
    checked_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, gate, table_name, partition)
);

-- Data-subject corrections: the new system holds a value the legacy system does not (the
-- customer corrected it here). The nightly reconciliation expects that difference until
-- the legacy row changes after the correction. The key only as a keyed hash
-- (retention.key_digest); the time in the legacy system's clock (Asia/Shanghai).
CREATE TABLE IF NOT EXISTS handover_meta.correction (
    table_name    text NOT NULL,
    key_hmac      text NOT NULL,
    request_id    text NOT NULL,
    corrected_at  timestamp NOT NULL,
    PRIMARY KEY (table_name, key_hmac, request_id)
);

-- The nightly sync's record of every key the legacy system deleted: a replayed older night
-- must not bring a deleted row back (handover.flows.nightly).
CREATE TABLE IF NOT EXISTS handover_meta.tombstone (
    table_name   text NOT NULL,
    record_key   text NOT NULL,
    deleted_at   timestamp NOT NULL,
    run_id       text NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (table_name, record_key)
);
