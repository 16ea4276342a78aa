"""Where the project's files are: one place, so no module counts parent folders."""

from __future__ import annotations

from pathlib import Path

#: include/ (the library's root on sys.path: handover/, config/, sql/)
INCLUDE_ROOT = Path(__file__).resolve().parents[2]
#: the repository (dags/, docs-assets/, .state/)
PROJECT_ROOT = INCLUDE_ROOT.parent
CONFIG_ROOT = INCLUDE_ROOT / "config"
SQL_DIR = INCLUDE_ROOT / "sql"
