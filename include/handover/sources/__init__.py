"""Readers, one per export shape, and the export-folder checks."""
