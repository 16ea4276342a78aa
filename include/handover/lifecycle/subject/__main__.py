"""`python -m handover.lifecycle.subject submit|passphrase|decrypt` (handover.lifecycle.subject.cli)."""

from handover.lifecycle.subject.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
