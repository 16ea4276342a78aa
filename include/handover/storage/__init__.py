"""The lake (local or S3, the encrypted working set and its end date) and the embedded PostgreSQL."""
