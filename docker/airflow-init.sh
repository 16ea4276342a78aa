#!/usr/bin/env bash
# The compose stack's one-shot init: migrate Airflow's metadata database, then make
# sure the lake bucket exists (with default encryption), using the same settings the
# tasks use (HANDOVER_LAKE_URL and the Airflow connection handover_lake).
set -euo pipefail
echo "handover-init: migrating the Airflow metadata database"
airflow db migrate
echo "handover-init: checking the lake bucket"
python -m handover.storage.lake ensure-bucket
if [ ! -f "${HANDOVER_SOURCE_DIR}/export_manifest.json" ]; then
    echo "handover-init: no export in ${HANDOVER_SOURCE_DIR} yet; mount one there" \
         "(HANDOVER_SOURCE_HOST_DIR in .env) or run: python -m handover_synth.legacy_bss" \
         "--out ${HANDOVER_SOURCE_DIR} --subscribers 10000"
fi
echo "handover-init: done"
