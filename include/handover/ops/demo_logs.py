"""`make demo`'s task logs where the Airflow UI reads them.

`airflow dags test` (scripts/demo.sh) runs every task instance in its own process, one
after the other, and writes no per-task log files: everything goes to its stdout. The UI
(api-server) reads a task instance's log from the file the task handler names,
``[logging] base_log_folder`` / ``log_filename_template`` (``dag_id=…/run_id=…/task_id=…/
[map_index=…/]attempt=<try>.log``), and shows nothing when that file is missing.

demo.sh therefore runs `dags test` with ``[logging] json_logs`` on: every log line is then
one JSON object of the shape a worker writes into a task's log file (``timestamp``,
``level``, ``event``, ``logger``, ``filename``, ``lineno``, ``exception``…), which the
UI renders like any task log. `dags test` brackets each task instance it runs with
``[DAG TEST] starting task_id=<t> map_index=<m>`` and ``[DAG TEST] end task task_id=<t>
map_index=<m>``, and the line after the first names the try's ``ti_id`` (a new id per try
in Airflow 3; earlier tries are in task_instance_history under that id).

* ``split LOG``: the lines of each task instance, byte for byte, into the file the UI
  reads for that try (the task handler's own path). Lines outside any task (DAG
  bookkeeping) stay only in the full log.
* ``render``: stdin's JSON lines as the console text `dags test` prints without
  ``json_logs`` (stdout), so the full log stays readable while the run goes on.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

START = re.compile(
    r"^\[DAG TEST\] starting task_id=(?P<task_id>\S+) map_index=(?P<map_index>-?\d+)$"
)
END = re.compile(r"^\[DAG TEST\] end task task_id=(?P<task_id>\S+) map_index=(?P<map_index>-?\d+)$")
RUNNING = re.compile(
    r"^\[DAG TEST\] running task <TaskInstance: .* ti_id=(?P<ti_id>[0-9a-fA-F-]{36})>$"
)


@dataclass
class TaskLog:
    """The lines `dags test` wrote while it ran one try of one task instance."""

    task_id: str
    map_index: int
    ti_id: str | None = None
    lines: list[str] = field(default_factory=list)


def _event(line: str) -> str | None:
    if not line.startswith("{"):
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    event = record.get("event") if isinstance(record, dict) else None
    return event if isinstance(event, str) else None


def task_logs(lines: Iterable[str]) -> Iterator[TaskLog]:
    """Each task instance's window of `lines` (kept with their line ends), in run order.

    A window opens at a ``starting`` marker and closes at its ``end`` marker; a task whose
    end marker never came (an error inside `dags test` itself) closes at the next start.
    """
    current: TaskLog | None = None
    for line in lines:
        event = _event(line)
        start = START.match(event) if event is not None else None
        if start:
            if current is not None:
                yield current
            current = TaskLog(start["task_id"], int(start["map_index"]))
        if current is None:
            continue
        current.lines.append(line)
        if event is None:
            continue
        if current.ti_id is None and (running := RUNNING.match(event)):
            current.ti_id = running["ti_id"].lower()
        end = END.match(event)
        if end and (end["task_id"], int(end["map_index"])) == (current.task_id, current.map_index):
            yield current
            current = None
    if current is not None:
        yield current


def _read_lines(path: Path) -> list[str]:
    # surrogateescape + no newline translation: what is written back is byte for byte
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        return f.readlines()


def split(log: Path) -> dict[Path, int]:
    """Write each task instance's lines of the `dags test` log `log` into the file the
    UI reads for that try; returns {file: number of lines}. A file written by an earlier
    split of the same log is replaced, not appended to."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.taskinstancehistory import TaskInstanceHistory
    from airflow.utils.log.log_reader import TaskLogReader
    from airflow.utils.session import create_session

    handler = TaskLogReader().log_handler
    base = Path(handler.local_base)
    out: dict[Path, list[str]] = {}
    with create_session() as session:
        for part in task_logs(_read_lines(log)):
            if part.ti_id is None:
                print(
                    f"demo_logs: no ti_id for {part.task_id}[{part.map_index}]; its lines "
                    "stay in the full log only",
                    file=sys.stderr,
                )
                continue
            ti = session.get(TaskInstance, part.ti_id) or session.get(
                TaskInstanceHistory, part.ti_id
            )
            if ti is None:
                print(
                    f"demo_logs: task instance {part.ti_id} ({part.task_id}) is not in the "
                    "metadata database; its lines stay in the full log only",
                    file=sys.stderr,
                )
                continue
            path = base / handler._render_filename(ti, ti.try_number, session=session)
            out.setdefault(path, []).extend(part.lines)
    for path, lines in out.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8", errors="surrogateescape", newline="") as f:
            f.writelines(lines)
    return {path: len(lines) for path, lines in out.items()}


# ------------------------------------------------------------------ readable full log
def _traceback(exception: list[Any]) -> str:
    """structlog's exception dicts (innermost cause last) as Python prints a traceback."""
    chunks = []
    for i, exc in enumerate(reversed(exception)):
        if not isinstance(exc, dict):
            return json.dumps(exception)
        if i:
            chunks.append(
                "\nThe above exception was the direct cause of the following exception:\n\n"
                if exception[len(exception) - i].get("is_cause", True)
                else "\nDuring handling of the above exception, another exception occurred:\n\n"
            )
        chunks.append("Traceback (most recent call last):\n")
        chunks.extend(
            f'  File "{fr.get("filename")}", line {fr.get("lineno")}, in {fr.get("name")}\n'
            for fr in exc.get("frames") or []
        )
        chunks.append(f"{exc.get('exc_type')}: {exc.get('exc_value')}\n")
    return "".join(chunks).rstrip("\n")


def render(lines: Iterable[str], out: TextIO) -> None:
    """JSON log lines as `dags test`'s console text (what it prints without json_logs);
    anything else (print output, warnings on stderr) as it is. Flushes every line."""
    import structlog

    console = structlog.dev.ConsoleRenderer(
        colors=False, exception_formatter=structlog.dev.plain_traceback
    )
    for line in lines:
        record = None
        if line.startswith("{"):
            try:
                record = json.loads(line)
            except ValueError:
                record = None
        if not isinstance(record, dict) or "event" not in record:
            out.write(line)
        else:
            if (
                record.get("logger") != "py.warnings"
                and "filename" in record
                and "lineno" in record
            ):
                record["loc"] = f"{record.pop('filename')}:{record.pop('lineno')}"
            if isinstance(record.get("exception"), list):
                record["exception"] = _traceback(record["exception"])
            try:
                text = console(None, str(record.get("level", "info")), record)
            except (TypeError, ValueError, KeyError, AttributeError):
                # a record the console renderer cannot shape: the line as written
                text = line.rstrip("\n")
            out.write(text + "\n")
        out.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m handover.ops.demo_logs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_split = sub.add_parser("split", help="task instances' lines into the files the UI reads")
    p_split.add_argument("log", type=Path, help="output of `airflow dags test` with json_logs")
    sub.add_parser("render", help="JSON log lines on stdin as console text on stdout")
    args = parser.parse_args(argv)
    if args.command == "render":
        stdin = open(
            sys.stdin.fileno(),
            encoding="utf-8",
            errors="surrogateescape",
            newline="",
            closefd=False,
        )
        stdout = open(
            sys.stdout.fileno(),
            "w",
            encoding="utf-8",
            errors="surrogateescape",
            newline="",
            closefd=False,
        )
        render(stdin, stdout)
        return 0
    written = split(args.log)
    if not written:
        print(
            "demo_logs: no task instance in the log (`dags test` marks each with an INFO line "
            "'[DAG TEST] starting …': is [logging] logging_level above INFO?)",
            file=sys.stderr,
        )
    lines = sum(written.values())
    folder = os.path.commonpath([p.parent for p in written]) if written else "-"
    print(
        f"==> task logs for the UI: {len(written)} task instance tries, {lines} lines, under "
        f"{folder}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
