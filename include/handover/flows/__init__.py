"""The only modules that know the order of stages: the migration, the nightly sync, a data-subject correction, the in-process runner."""
