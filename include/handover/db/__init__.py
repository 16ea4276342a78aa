"""The books in handover_meta (ledger, quarantine, exclusions, merge map, audit trail), COPY and upsert into the target, database roles."""
