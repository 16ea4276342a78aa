"""Around the migration: backups and restore drills, retention and destruction, request intakes, data-subject requests, key rotation."""
