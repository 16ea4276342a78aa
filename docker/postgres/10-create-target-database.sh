#!/bin/bash
# Runs once, when the postgres volume is first initialised (docker-entrypoint-initdb.d).
# Airflow's metadata lives in POSTGRES_DB; the migration target gets its own database
# and owner, so the acquirer's data never shares a catalog with the scheduler's.
set -euo pipefail
: "${TARGET_DB_NAME:?set TARGET_DB_NAME in .env}"
: "${TARGET_DB_USER:?set TARGET_DB_USER in .env}"
: "${TARGET_DB_PASSWORD:?set TARGET_DB_PASSWORD in .env}"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v target_db="$TARGET_DB_NAME" -v target_user="$TARGET_DB_USER" \
    -v target_password="$TARGET_DB_PASSWORD" <<'SQL'
CREATE ROLE :"target_user" LOGIN PASSWORD :'target_password';
CREATE DATABASE :"target_db" OWNER :"target_user";
SQL
