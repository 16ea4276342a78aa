"""`python -m handover.lifecycle.backup take|verify|expire|rewrap` (handover.lifecycle.backup.cli)."""

from handover.lifecycle.backup.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
