"""Airflow task glue, the gated-chain task group both flows' DAGs use, notifications, the handover command, config checks, demo logs."""
