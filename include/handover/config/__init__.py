"""A source system's four YAML files: schemas, loader, cross-checks; secrets by reference (connections)."""
