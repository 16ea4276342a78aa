"""Sealed subject-request intakes: how long an identifier may wait for its request's run.

A data-subject request's identifier is sealed (encrypted) at intake and cleared when the
request ends (handover.lifecycle.subject). Retention clears the seals of requests whose run failed
and was left; both use this module, which imports neither of them.
"""

from __future__ import annotations

import logging

from handover.db import ledger

log = logging.getLogger("handover")

#: Days a submitted request's seal may wait for its run. A request normally ends (and its
#: seal is cleared) within the day; one whose run failed and was left loses its seal at
#: the next retention run after this many days, and must be submitted again.
INTAKE_DAYS = 30


def clear_stale_intakes(conn, days: int = INTAKE_DAYS) -> int:
    """Clear the seals of requests submitted more than `days` ago and never ended;
    audited with their request ids. Caller owns the transaction."""
    stale = [
        r[0]
        for r in conn.execute(
            "UPDATE handover_meta.subject_intake SET sealed = NULL, key_id = NULL, "
            "cleared_at = now() WHERE sealed IS NOT NULL AND submitted_at < now() - "
            "make_interval(days => %s) RETURNING request_id",
            (days,),
        ).fetchall()
    ]
    if stale:
        ledger.audit(
            conn, "subject_intake_expired", detail={"request_ids": sorted(stale), "days": days}
        )
        log.info(
            "cleared the seals of %d subject requests submitted over %d days ago", len(stale), days
        )
    return len(stale)
