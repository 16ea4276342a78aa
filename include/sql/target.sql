-- The acquirer's CRM schema: what handover loads into. Natural keys are primary keys,
-- so every load is an idempotent upsert. Resident ID numbers are stored only encrypted
-- (AES-256-GCM, key id beside each value), with a blind index for exact lookups and a
-- masked form for analysts. Timestamps are the legacy system's local time (Asia/Shanghai).
CREATE SCHEMA IF NOT EXISTS crm;

CREATE TABLE IF NOT EXISTS crm.customer (
    customer_id        text PRIMARY KEY,
    full_name          text NOT NULL,
    id_number_enc      bytea NOT NULL,
    id_number_key_id   text NOT NULL,
    id_number_bidx     text NOT NULL,
    id_number_masked   text NOT NULL,
    gender             char(1) NOT NULL CHECK (gender IN ('M', 'F')),
    birth_date         date NOT NULL,
    msisdn             text NOT NULL,
    msisdn_bidx        text NOT NULL,
    msisdn_masked      text NOT NULL,
    address            text,
    city               text,
    opened_on          date NOT NULL,
    status             text NOT NULL CHECK (status IN ('active', 'suspended', 'closed')),
    source_updated_at  timestamp NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS customer_id_number_bidx ON crm.customer (id_number_bidx);
CREATE INDEX IF NOT EXISTS customer_msisdn_bidx ON crm.customer (msisdn_bidx);

CREATE TABLE IF NOT EXISTS crm.consent (
    consent_id   text PRIMARY KEY,
    customer_id  text NOT NULL,
    purpose      text NOT NULL,
    granted      boolean NOT NULL,
    granted_at   timestamp
);

-- One person's consents from every system (the acquirer's own, each acquired export's,
-- merged into one customer: docs/identity.md): a purpose counts as granted only if no
-- system's record withdrew it. `conflicting`: the systems disagree (the report counts them).
CREATE OR REPLACE VIEW crm.consent_effective AS
SELECT customer_id, purpose, bool_and(granted) AS granted, count(*) AS records,
       bool_or(granted) <> bool_and(granted) AS conflicting
FROM crm.consent GROUP BY customer_id, purpose;

CREATE TABLE IF NOT EXISTS crm.call_record (
    cdr_id         text PRIMARY KEY,
    customer_id    text NOT NULL,
    caller_msisdn  text,
    callee_msisdn  text,
    started_at     timestamp NOT NULL,
    duration_s     bigint NOT NULL CHECK (duration_s >= 0),
    cell_id        text,
    charge_fen     bigint NOT NULL CHECK (charge_fen >= 0)
);

CREATE TABLE IF NOT EXISTS crm.data_session (
    session_id   text PRIMARY KEY,
    customer_id  text NOT NULL,
    started_at   timestamp NOT NULL,
    bytes_up     bigint,
    bytes_down   bigint,
    cell_id      text,
    charge_fen   bigint NOT NULL CHECK (charge_fen >= 0)
);

CREATE TABLE IF NOT EXISTS crm.payment (
    payment_id   text PRIMARY KEY,
    customer_id  text NOT NULL,
    paid_at      timestamp NOT NULL,
    amount_fen   bigint NOT NULL CHECK (amount_fen >= 0),
    channel      text NOT NULL
);

CREATE TABLE IF NOT EXISTS crm.complaint (
    complaint_id  text PRIMARY KEY,
    customer_id   text NOT NULL,
    created_at    timestamp NOT NULL,
    category      text NOT NULL,
    body          text,
    satisfaction  bigint
);

CREATE TABLE IF NOT EXISTS crm.browsing_event (
    event_id     text PRIMARY KEY,
    customer_id  text NOT NULL,
    occurred_at  timestamp NOT NULL,
    domain       text,
    search_text  text
);
