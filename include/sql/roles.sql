-- Access control (PIPL Art. 51): who may read what in the target database.
--
--   handover_loader   writes crm and handover_meta (the pipeline's own login joins it);
--                     the audit trail only by INSERT, never UPDATE or DELETE
--   handover_analyst  reads crm_masked only: masked views, no base table, no ciphertext,
--                     no blind index, no key id (keys never live in the database at all)
--   handover_auditor  reads the books in handover_meta: run, ledger, audit trail,
--                     reconciliation, quarantine, exclusions, merge map, gate results; no customer data
--
-- All three are NOLOGIN group roles: people and services log in as their own roles and
-- are granted membership. Roles are cluster-wide and many databases share a cluster, so
-- creation is guarded; every other statement is idempotent and re-run by ensure_schema
-- after meta.sql and target.sql, so tables added later are covered on the next run.

DO $$
DECLARE r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['handover_loader', 'handover_analyst', 'handover_auditor'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', r);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- another database's DDL created it a moment ago
            END;
        END IF;
    END LOOP;
END $$;

-- ------------------------------------------------------------------ masked views
CREATE SCHEMA IF NOT EXISTS crm_masked;
COMMENT ON SCHEMA crm_masked IS
    'Analyst views of crm: masked identifiers, no ciphertext, no blind index, no key id';

-- The same pattern as handover.protection.fields.mask_msisdn (138****5678); numbers too short to
-- keep seven digits hidden are masked whole.
CREATE OR REPLACE FUNCTION crm_masked.mask_msisdn(v text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN v IS NULL THEN NULL
                WHEN char_length(v) < 11 THEN repeat('*', char_length(v))
                ELSE left(v, 3) || repeat('*', char_length(v) - 7) || right(v, 4) END
$$;

-- Surname only: 张** .
CREATE OR REPLACE FUNCTION crm_masked.mask_name(v text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN v IS NULL THEN NULL
                ELSE left(v, 1) || repeat('*', greatest(char_length(v) - 1, 1)) END
$$;

-- Cell 460-00-<lac>-<ci> -> 460-00-<lac>-*: the location area, not the antenna.
CREATE OR REPLACE FUNCTION crm_masked.coarsen_cell(v text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT regexp_replace(v, '-[^-]*$', '-*')
$$;

-- The resident ID and the MSISDN only in their stored masked forms; name reduced to the
-- surname, birth date to the year, address dropped (city kept).
CREATE OR REPLACE VIEW crm_masked.customer AS
SELECT customer_id,
       crm_masked.mask_name(full_name) AS full_name_masked,
       id_number_masked,
       gender,
       extract(year FROM birth_date)::int AS birth_year,
       msisdn_masked,
       city,
       opened_on,
       status,
       source_updated_at
FROM crm.customer;

CREATE OR REPLACE VIEW crm_masked.consent AS
SELECT consent_id, customer_id, purpose, granted, granted_at
FROM crm.consent;

CREATE OR REPLACE VIEW crm_masked.call_record AS
SELECT cdr_id, customer_id,
       crm_masked.mask_msisdn(caller_msisdn) AS caller_msisdn_masked,
       crm_masked.mask_msisdn(callee_msisdn) AS callee_msisdn_masked,
       started_at, duration_s,
       crm_masked.coarsen_cell(cell_id) AS cell_area,
       charge_fen
FROM crm.call_record;

CREATE OR REPLACE VIEW crm_masked.data_session AS
SELECT session_id, customer_id, started_at, bytes_up, bytes_down,
       crm_masked.coarsen_cell(cell_id) AS cell_area,
       charge_fen
FROM crm.data_session;

CREATE OR REPLACE VIEW crm_masked.payment AS
SELECT payment_id, customer_id, paid_at, amount_fen, channel
FROM crm.payment;

-- Free text was redacted before it left the lake (handover.protection.fields.redact_text).
CREATE OR REPLACE VIEW crm_masked.complaint AS
SELECT complaint_id, customer_id, created_at, category, body, satisfaction
FROM crm.complaint;

CREATE OR REPLACE VIEW crm_masked.browsing_event AS
SELECT event_id, customer_id, occurred_at, domain, search_text
FROM crm.browsing_event;

-- ------------------------------------------------------------------ nobody by default
REVOKE ALL ON SCHEMA crm, crm_masked, handover_meta, handover_work FROM PUBLIC;
REVOKE ALL ON SCHEMA handover_work FROM handover_analyst, handover_auditor;
REVOKE ALL ON ALL TABLES IN SCHEMA crm FROM PUBLIC, handover_analyst, handover_auditor;
REVOKE ALL ON ALL TABLES IN SCHEMA handover_meta FROM PUBLIC, handover_analyst;
REVOKE ALL ON ALL TABLES IN SCHEMA crm_masked FROM PUBLIC, handover_loader, handover_auditor;
REVOKE ALL ON SCHEMA crm, handover_meta FROM handover_analyst;
REVOKE ALL ON SCHEMA crm, crm_masked FROM handover_auditor;
REVOKE ALL ON SCHEMA crm_masked FROM handover_loader;

DO $$
BEGIN
    EXECUTE format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO handover_loader',
                   current_database());
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO handover_analyst, handover_auditor',
                   current_database());
END $$;

-- ------------------------------------------------------------------ loader
GRANT USAGE ON SCHEMA crm, handover_meta TO handover_loader;
GRANT USAGE, CREATE ON SCHEMA handover_work TO handover_loader;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA crm TO handover_loader;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA handover_meta TO handover_loader;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA crm, handover_meta TO handover_loader;
-- The audit trail is append-only for the loader by privilege as well as by trigger.
REVOKE UPDATE, DELETE, TRUNCATE ON handover_meta.audit_log FROM handover_loader;
ALTER DEFAULT PRIVILEGES IN SCHEMA crm, handover_meta
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO handover_loader;

-- ------------------------------------------------------------------ analyst
GRANT USAGE ON SCHEMA crm_masked TO handover_analyst;
GRANT SELECT ON ALL TABLES IN SCHEMA crm_masked TO handover_analyst;

-- ------------------------------------------------------------------ auditor
GRANT USAGE ON SCHEMA handover_meta TO handover_auditor;
REVOKE ALL ON ALL TABLES IN SCHEMA handover_meta FROM handover_auditor;
GRANT SELECT ON handover_meta.run, handover_meta.ledger, handover_meta.audit_log,
    handover_meta.reconciliation, handover_meta.quarantine, handover_meta.exclusion,
    handover_meta.gate_result, handover_meta.tombstone, handover_meta.correction,
    handover_meta.merge_map, handover_meta.person_map, handover_meta.identity_review
    TO handover_auditor;
-- The lifecycle books (backups, drills, destruction certificates, subject requests) are
-- created by their own modules; grant them when they exist, so a re-run of this file does
-- not take the auditor's view of them away.
DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['backup', 'backup_file', 'restore_drill', 'destruction_certificate',
                             'subject_request', 'erased_subject'] LOOP
        IF to_regclass('handover_meta.' || t) IS NOT NULL THEN
            EXECUTE format('GRANT SELECT ON handover_meta.%I TO handover_auditor', t);
        END IF;
    END LOOP;
    -- subject intakes: who submitted which request and when, never the sealed identifier
    -- (as lifecycle.sql grants it)
    IF to_regclass('handover_meta.subject_intake') IS NOT NULL THEN
        GRANT SELECT (request_id, request_type, identifier_type, field, system, key_id,
                      submitted_by, submitted_at, cleared_at)
            ON handover_meta.subject_intake TO handover_auditor;
    END IF;
END $$;
