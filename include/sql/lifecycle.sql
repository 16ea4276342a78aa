-- The data lifecycle's books, beside the migration's in handover_meta: backups and their
-- files, restore drills, destruction certificates, data-subject requests and the list of
-- erased subjects. Applied idempotently by handover.lifecycle.backup.ensure_lifecycle_schema after
-- meta.sql and target.sql. Key material never lives here: a backup file's data key is in
-- the lake (backup-keys/), wrapped by the keyring, so destroying it is possible without
-- touching this database or any backup of it.

-- One row per backup: a consistent snapshot of crm and handover_meta in the lake.
CREATE TABLE IF NOT EXISTS handover_meta.backup (
    backup_id        text PRIMARY KEY,
    reason           text NOT NULL,          -- scheduled | pre_load | manual
    run_id           text,                   -- the Airflow run that took it
    lake_prefix      text NOT NULL,          -- backups/<backup_id>/
    status           text NOT NULL DEFAULT 'running'
                     CHECK (status IN ('running', 'written', 'complete', 'failed', 'shredded',
                                       'expired')),
    started_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    verified_at      timestamptz,
    expires_at       timestamptz NOT NULL,
    expired_at       timestamptz,
    tables           integer NOT NULL DEFAULT 0,
    rows             bigint NOT NULL DEFAULT 0,
    bytes            bigint NOT NULL DEFAULT 0,
    manifest_sha256  text
);
CREATE INDEX IF NOT EXISTS backup_status ON handover_meta.backup (status, started_at);

-- One row per file of a backup (one table each), with its own data key's id.
CREATE TABLE IF NOT EXISTS handover_meta.backup_file (
    backup_id         text NOT NULL REFERENCES handover_meta.backup (backup_id),
    file              text NOT NULL,          -- <schema>.<table>.parquet.enc
    table_name        text NOT NULL,          -- <schema>.<table>
    rows              bigint NOT NULL,
    bytes             bigint NOT NULL,
    sha256            text NOT NULL,          -- of the encrypted object
    plain_sha256      text NOT NULL,          -- of the Parquet file inside
    content_checksum  text NOT NULL,          -- of the rows, as PostgreSQL renders them
    data_key_id       text NOT NULL,
    wrapping_key_id   text NOT NULL,          -- keyring key that wraps the data key
    shredded_at       timestamptz,            -- data key destroyed: the file is unreadable
    shred_reason      text,
    PRIMARY KEY (backup_id, file)
);

-- One row per restore drill: which backup, how long, and whether it verified.
CREATE TABLE IF NOT EXISTS handover_meta.restore_drill (
    drill_id          text PRIMARY KEY,
    backup_id         text NOT NULL,
    scratch_db        text NOT NULL,
    started_at        timestamptz NOT NULL DEFAULT now(),
    finished_at       timestamptz,
    restore_seconds   double precision,
    verify_seconds    double precision,
    tables            integer,
    rows              bigint,
    success           boolean,
    failure           text,
    detail            jsonb NOT NULL DEFAULT '{}'
);

-- Destruction certificates (retention and erasure); the full certificate is JSON in the
-- lake, bound here and in the audit trail by its sha256. Keys appear only as keyed hashes.
CREATE TABLE IF NOT EXISTS handover_meta.destruction_certificate (
    certificate_id      text PRIMARY KEY,
    kind                text NOT NULL,
    issued_at           timestamptz NOT NULL DEFAULT now(),
    as_of               date,
    request_id          text,
    keys                bigint NOT NULL,
    key_list_sha256     text NOT NULL,
    certificate_sha256  text NOT NULL,
    lake_key            text NOT NULL,
    counts              jsonb NOT NULL DEFAULT '{}'
);

-- A backup a restore drill found damaged is marked 'corrupt' (never restored by default).
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'backup_statuses') THEN
        ALTER TABLE handover_meta.backup DROP CONSTRAINT IF EXISTS backup_status_check;
        ALTER TABLE handover_meta.backup ADD CONSTRAINT backup_statuses CHECK (status IN
            ('running', 'written', 'complete', 'failed', 'shredded', 'expired', 'corrupt'));
    END IF;
END $$;

-- Kinds: retention, erasure, exclusion (a run's excluded rows, destroyed at its end) and
-- working_set (a run's lake stage objects, destroyed after the policy's working_set_days).
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'destruction_certificate_kinds') THEN
        ALTER TABLE handover_meta.destruction_certificate
            DROP CONSTRAINT IF EXISTS destruction_certificate_kind_check;
        ALTER TABLE handover_meta.destruction_certificate
            ADD CONSTRAINT destruction_certificate_kinds
            CHECK (kind IN ('retention', 'erasure', 'exclusion', 'working_set'));
    END IF;
END $$;

-- Data-subject requests (PIPL Art. 45-47): the subject only as a keyed hash.
CREATE TABLE IF NOT EXISTS handover_meta.subject_request (
    request_id    text PRIMARY KEY,
    request_type  text NOT NULL CHECK (request_type IN ('access', 'correction', 'erasure')),
    subject_ref   text NOT NULL,              -- HMAC of the customer id, never the id
    status        text NOT NULL DEFAULT 'running'
                  CHECK (status IN ('running', 'done', 'rejected', 'failed')),
    received_at   timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    detail        jsonb NOT NULL DEFAULT '{}'
);

-- A request as the privacy officer submitted it (`python -m handover.lifecycle.subject submit`):
-- the identifier and a correction's new value sealed (AES-256-GCM under the keyring, the
-- other columns bound as associated data), so the DAG run's config, which Airflow keeps
-- in its database and shows in the UI, carries only the request id. The seal is cleared
-- when the request ends or is rejected; the table is left out of backups.
CREATE TABLE IF NOT EXISTS handover_meta.subject_intake (
    request_id      text PRIMARY KEY,
    request_type    text NOT NULL CHECK (request_type IN ('access', 'correction', 'erasure')),
    identifier_type text NOT NULL
                    CHECK (identifier_type IN ('customer_id', 'resident_id', 'msisdn')),
    field           text NOT NULL DEFAULT '',
    system          text NOT NULL DEFAULT 'legacy_bss',
    key_id          text,
    sealed          bytea,                    -- nonce || ciphertext; NULL once cleared
    submitted_by    text NOT NULL DEFAULT current_user,
    submitted_at    timestamptz NOT NULL DEFAULT now(),
    cleared_at      timestamptz
);

-- Erased subjects: the nightly sync must not bring them back from the legacy system.
CREATE TABLE IF NOT EXISTS handover_meta.erased_subject (
    subject_ref   text PRIMARY KEY,           -- same keyed hash as subject_request
    request_id    text NOT NULL,
    erased_at     timestamptz NOT NULL DEFAULT now()
);

-- Auditors read these books too (roles.sql grants the migration's; see docs/lifecycle.md).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'handover_auditor') THEN
        GRANT SELECT ON handover_meta.backup, handover_meta.backup_file,
            handover_meta.restore_drill, handover_meta.destruction_certificate,
            handover_meta.subject_request, handover_meta.erased_subject TO handover_auditor;
        -- who submitted which request and when, not the sealed identifier
        GRANT SELECT (request_id, request_type, identifier_type, field, system, key_id,
                      submitted_by, submitted_at, cleared_at)
            ON handover_meta.subject_intake TO handover_auditor;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'handover_loader') THEN
        GRANT SELECT, INSERT, UPDATE, DELETE ON handover_meta.backup, handover_meta.backup_file,
            handover_meta.restore_drill, handover_meta.destruction_certificate,
            handover_meta.subject_request, handover_meta.erased_subject,
            handover_meta.subject_intake TO handover_loader;
    END IF;
END $$;
